"""Span arithmetic every layer shares: overlap, temporal IoU, hull, merging, gaps, clipping, rank
scores, and frame times as keys.

A span is ``[start, end]`` in seconds; where a function says so, a third column (a score) rides
along. This is the bottom layer: it imports nothing from ``damo``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

Span = Sequence[float]


def overlap(a: Span, b: Span) -> float:
    """Length of the intersection of two spans; 0 when they are disjoint (or one is reversed)."""
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def span_iou(a: Sequence[Span] | np.ndarray, b: Sequence[Span] | np.ndarray) -> np.ndarray:
    """Temporal IoU of every span in ``a`` (N, 2) with every span in ``b`` (M, 2) -> (N, M).

    Union is ``len(a) + len(b) - intersection``; for overlapping
    spans this equals the ``max(end) - min(start)`` that TimeChat/2D-TAN/moment_detr use, and for
    disjoint ones the intersection is 0 either way. A pair whose union is 0 (two empty spans) has IoU 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter  # (N, M)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def hull(spans: Sequence[Span]) -> list[float]:
    """The smallest span holding all of ``spans`` (at least one)."""
    return [min(sp[0] for sp in spans), max(sp[1] for sp in spans)]


def merge(spans: Sequence[Span], gap: float = 0.0) -> list[list[float]]:
    """The union of ``spans`` as disjoint spans in time order; spans less than ``gap`` apart join."""
    merged: list[list[float]] = []
    for s, e in sorted((float(sp[0]), float(sp[1])) for sp in spans):
        if merged and s <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return merged


def gaps(spans: Sequence[Span], duration: float) -> list[list[float]]:
    """The parts of ``[0, duration]`` that no span covers, in time order."""
    out, t = [], 0.0
    for s, e in merge(spans):
        if s > t:
            out.append([t, s])
        t = e
    if t < duration:
        out.append([t, float(duration)])
    return out


def clip(span: Span, duration: float) -> list[float] | None:
    """The part of ``span`` inside ``[0, duration]``, or None when nothing of it is left."""
    s, e = max(0.0, span[0]), min(duration, span[1])
    return [s, e] if s < e else None


def with_rank_scores(spans: Sequence[Span]) -> list[list[float]]:
    """Spans listed best first, each with a score: its own third column, else a rank-based one
    (1, 1/2, 1/3, ...), so the order survives a re-sort by score."""
    return [[float(sp[0]), float(sp[1]), float(sp[2]) if len(sp) > 2 else 1.0 / (k + 1)]
            for k, sp in enumerate(spans)]


def time_key(t: float) -> str:
    """A frame time as a JSON-safe dictionary key: seconds with up to 3 decimals ("2.5")."""
    return f"{float(t):.3f}".rstrip("0").rstrip(".")
