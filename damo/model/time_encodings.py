"""How frame tokens learn their time (``model.time_encoding``): one strategy class per encoding.

A :class:`TimeEncoding` says what an encoding contributes on each side of the model:

- to the vocabulary: plain tokens (:attr:`~TimeEncoding.vocabulary`, added as single tokens) and LAPE's
  time anchors (:attr:`~TimeEncoding.anchors`, the ``t`` axis of :func:`~damo.model.coordinates.coordinate_axes`);
- to the prompt: text in front of each frame token's placeholders (:meth:`~TimeEncoding.frame_prefixes`);
- to the answers: how a span is written in a target text (:meth:`~TimeEncoding.write_span`) and how the
  spans are read back from a generated one (:meth:`~TimeEncoding.read_spans`);
- to the model: a module adding time to every frame token before the projector (:meth:`~TimeEncoding.frame_module`).

The base class is ``none`` (the frames' order only). A new encoding is a subclass in its own file plus
one line in :data:`TIME_ENCODINGS`; ``model.time_encoding`` then names it.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from damo.model.coordinates import time_to_token, timestamp_prompt
from damo.model.fuseformer import sinusoid

_NUM = r"(\d+(?:\.\d+)?)"
# "3.0 - 5.0 seconds" or LLaVA-ST's "{3.0, 5.0}" (what a "{<t_a><t_b>}" answer renders to)
_SPAN_TEXT = re.compile(rf"{_NUM}\s*-\s*{_NUM}\s*seconds|\{{\s*{_NUM}[\s,]+{_NUM}\s*\}}")


def _seconds_text(a: str, b: str, sep: str) -> str:
    return f"{a} - {b} seconds"


def _braces_text(a: str, b: str, sep: str) -> str:
    return "{" + a + sep + b + "}"


# How a span is written in a text answer: ours, or LLaVA-ST's braces around two time tokens (its
# inference/src/utils.py format_span_in_text writes "{<TEMP-OUTPUT...><TEMP-OUTPUT...>}" from "{s, e}").
TIME_TEXTS = {"seconds": _seconds_text, "braces": _braces_text}


def span_text(span: Sequence[float], duration: float | None = None, time_bins: int = 0, style: str = "seconds") -> str:
    """A span as text, the way coupled models write timestamps (:data:`TIME_TEXTS`): ``"3.0 - 5.0
    seconds"``, or in LLaVA-ST's braces ``"{3.0, 5.0}"``.

    With ``time_bins`` (LAPE, LLaVA-ST section 3.2) each bound is its closest time token instead:
    ``"<t_3> - <t_5> seconds"``, ``"{<t_3><t_5>}"``; the model reads the value back from the anchors.
    """
    if time_bins:
        return TIME_TEXTS[style](*(time_to_token(t, duration, time_bins) for t in span[:2]), "")
    return TIME_TEXTS[style](f"{span[0]:.1f}", f"{span[1]:.1f}", ", ")


def text_spans(answer: str, duration: float) -> list[list[float]]:
    """Spans written as text ("3.0 - 5.0 seconds" or "{3.0, 5.0}"), in order of appearance, clipped to
    the video, each with score 1 (text timestamps carry no confidence); reversed pairs are swapped."""
    out = []
    for a, b, c, d in _SPAN_TEXT.findall(answer):
        s, e = sorted((min(float(a or c), duration), min(float(b or d), duration)))
        out.append([s, e, 1.0])
    return out


class TimeEncoding:
    """``none``: frame tokens carry no time but their order; answers write seconds as text.

    ``bins`` is the config's ``time_bins`` (the encodings with time tokens use it)."""

    vocabulary: list[str] = []      # plain tokens this encoding adds (each stays one token)
    anchors: int = 0                # LAPE time anchors <t_0> .. <t_{anchors-1}> (coordinate tokens on the t axis)

    def __init__(self, bins: int):
        self.bins = bins

    def frame_prefixes(self, times: Sequence[float]) -> list[str]:
        """Text written in front of each frame token's placeholders (frame tokens starting at ``times``)."""
        return [""] * len(times)

    def write_span(self, span: Sequence[float], duration: float, style: str) -> str:
        """A span ``[start, end]`` (seconds of a ``duration``-second video) as target text, in ``style``
        (:data:`TIME_TEXTS`)."""
        return span_text(span, duration, self.anchors, style)

    def read_spans(self, answer: str, duration: float) -> list[list[float]]:
        """The spans ``[start, end, score]`` a generated answer's text writes, in order."""
        return text_spans(answer, duration)

    def frame_module(self, width: int) -> nn.Module | None:
        """A module ``times (B, N) -> (B, N, width)`` added to every frame token before the projector,
        or None."""
        return None


class SinusoidTime(nn.Linear):
    """A learned map of a sinusoid of the seconds ``(B, N) -> (B, N, D)`` (a Linear: its weights keep
    the names ``connector.time_proj.weight`` and ``.bias``)."""

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        return super().forward(sinusoid(times, self.in_features))


class Sinusoid(TimeEncoding):
    """Our default: the model adds a learned map of a sinusoid of each frame token's seconds."""

    def frame_module(self, width: int) -> nn.Module:
        return SinusoidTime(width, width)


class Timestamps(TimeEncoding):
    """Dynamic-VLM's timestamp text (section 5.3): ``"2.5s: "`` before each frame token."""

    def frame_prefixes(self, times: Sequence[float]) -> list[str]:
        return timestamp_prompt(times)


class Lape(TimeEncoding):
    """LLaVA-ST's LAPE (section 3.2): ``bins`` time tokens anchored at equal fractions of the video, whose
    embeddings the model interpolates onto each frame token and which write the answer's timestamps."""

    def __init__(self, bins: int):
        if bins < 2:
            raise ValueError(f"model.time_bins must be >= 2 for LAPE time tokens, got {bins}")
        super().__init__(bins)
        self.anchors = bins


# model.time_encoding -> its strategy class
TIME_ENCODINGS: dict[str, type[TimeEncoding]] = {"sinusoid": Sinusoid, "timestamp": Timestamps, "lape": Lape,
                                                 "none": TimeEncoding}
