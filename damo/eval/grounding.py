"""Temporal grounding Recall@k at IoU thresholds and mIoU, the metric of the Charades-STA and TACoS
benchmarks (:mod:`damo.eval.charades_sta`, :mod:`damo.eval.tacos`) and of ``damo eval --data``.

The metric works on plain lists and numpy arrays; :func:`score_grounding` glues it to a benchmark's reader.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from damo.eval.benchmark import Option, Reader, samples_and_predictions
from damo.eval.predictions import PredictionFile
from damo.spans import span_iou

CONVENTIONS = (">=", ">")
CONVENTION = Option("convention", "R@IoU counts IoU >= t (TimeChat, E.T. Bench, VTimeLLM) or IoU > t (2D-TAN, "
                                  "LLaVA-ST)", CONVENTIONS, ">=")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS} (>= for TimeChat/E.T. Bench/VTimeLLM, "
                         f"> for 2D-TAN/LLaVA-ST), got {convention!r}")


def _hit(iou: np.ndarray, thr: float, convention: str) -> np.ndarray:
    return iou >= thr if convention == ">=" else iou > thr


def _best_ious(gt: Sequence[Sequence[Sequence[float]]], pred: Sequence[Sequence[Sequence[float]]],
               k: int) -> np.ndarray:
    """(num_samples, k) IoU of each sample's top-k predictions, max over its gt spans; 0 pads misses."""
    if len(gt) != len(pred):
        raise ValueError(f"gt has {len(gt)} samples but pred has {len(pred)}; pass one (possibly empty) "
                         "prediction list per gt sample, in the same order")
    out = np.zeros((len(gt), k))
    for i, (g, p) in enumerate(zip(gt, pred)):
        if len(g) == 0:
            raise ValueError(f"sample {i} has no gt span; drop it before scoring")
        if len(p) == 0:
            continue
        top = np.asarray([sp[:2] for sp in p[:k]], dtype=np.float64)
        out[i, :len(top)] = span_iou(top, np.asarray([sp[:2] for sp in g], dtype=np.float64)).max(1)
    return out


def grounding_metrics(gt: Sequence[Sequence[Sequence[float]]], pred: Sequence[Sequence[Sequence[float]]],
                      thresholds: Sequence[float] = (0.3, 0.5, 0.7), convention: str = ">=",
                      topk: Sequence[int] = (1,)) -> dict[str, float]:
    """Temporal grounding Recall@k at IoU thresholds and mIoU, as fractions in [0, 1].

    ``gt[i]`` holds sample i's gt spans; ``pred[i]`` its predicted spans ranked best first
    (a third score column is ignored; an empty list is a miss with IoU 0).

    - ``R{k}@{t}``: share of samples whose best IoU among the top-k predictions passes t.
      ``convention=">="`` (IoU >= t) matches TimeChat, E.T. Bench and VTimeLLM;
      ``convention=">"`` (IoU > t) matches 2D-TAN and LLaVA-ST. The two differ only when an
      IoU equals a threshold exactly, which happens on integer-second annotations.
    - ``mIoU``: mean IoU of the top-1 prediction (as TimeChat/VTimeLLM average it).

    A sample with several gt spans (one query, several moments) scores each prediction by
    its max IoU over those spans: matching any annotated moment counts.
    """
    _check_convention(convention)
    topk = sorted(set(int(k) for k in topk))
    if not topk or topk[0] < 1:
        raise ValueError(f"topk must be positive integers, got {topk}")
    ious = _best_ious(gt, pred, max(topk))  # (S, K)
    out: dict[str, float] = {}
    for k in topk:
        best = ious[:, :k].max(1)
        for t in thresholds:
            out[f"R{k}@{t:g}"] = float(_hit(best, t, convention).mean()) if len(best) else 0.0
    out["mIoU"] = float(ious[:, 0].mean()) if len(ious) else 0.0
    return out


def score_grounding(reader: Reader, gt_path: str | Path, preds: PredictionFile, subset: str,
                    durations: str | Path | None, convention: str, **load_options: object) -> dict:
    """R1/R5 at IoU 0.3/0.5/0.7 and mIoU of the predictions against the samples ``reader`` loads."""
    samples, by_id = samples_and_predictions(reader, gt_path, preds, subset, durations, **load_options)
    gt = [s.spans for s in samples]
    pred = [by_id[s.id].spans if s.id in by_id else [] for s in samples]
    out = grounding_metrics(gt, pred, convention=convention, topk=(1, 5))
    return {"n": len(samples), "n_predicted": sum(s.id in by_id for s in samples), **out}
