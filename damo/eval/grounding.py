"""Temporal grounding Recall@k at IoU thresholds and mIoU, the metric of the Charades-STA and TACoS
benchmarks (:mod:`damo.eval.charades_sta`, :mod:`damo.eval.tacos`) and of ``damo eval --data``.

The metric works on plain lists and numpy arrays; :func:`score_grounding` glues it to a benchmark's reader.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from damo.data.schema import Prediction, Sample
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


# ---------------------------------------------------------------- TimeChat-style scoring of free-text answers
# TimeChat's utils/format_tvg.py and its descendants (TimeLens' evaluation/compute_metrics.py, lmms-eval's
# charades_sta and timelens tasks) store each answer under the key "video>>>query>>>span" in a dict, so a later
# query with the same key replaces an earlier one, score the first predicted pair against the key's first gt span,
# and print percentages.

def query_key(sample: Sample) -> tuple:
    return sample.video, sample.query, tuple(map(tuple, sample.spans))


def unique_queries(samples: Sequence[Sample]) -> list[Sample]:
    """One sample per (video, query, spans) key, in the order keys first appear; a repeated key keeps its
    last sample, as a dict updated in order does."""
    return list({query_key(s): s for s in samples}.values())     # a key keeps its first place, takes its last value


def answer_text(by_id: dict[str, Prediction], sample_id: str) -> str:
    """The answer of the prediction for ``sample_id`` ("" when there is none: no time, IoU 0)."""
    if sample_id not in by_id:
        return ""
    answer = by_id[sample_id].answer
    if answer is None:
        raise ValueError(f"--parser reads each prediction's 'answer'; the prediction for {sample_id!r} has none")
    return answer


def hull_iou(gt: Sequence[float], pred: Sequence[float]) -> float:
    """``max(min(ends) - max(starts), 0) / (max(ends) - min(starts))``: a reversed prediction overlaps nothing;
    a hull of no length gives 0 (lmms-eval's guard; TimeChat's and TimeLens' divide by zero there)."""
    hull = max(gt[1], pred[1]) - min(gt[0], pred[0])
    return 0.0 if hull <= 0 else max(min(gt[1], pred[1]) - max(gt[0], pred[0]), 0) / hull


def percent_recall(ious: Sequence[float], names: Sequence[str]) -> dict[str, float]:
    """``names[:3]``: the percentage of IoUs >= 0.3, 0.5, 0.7; ``names[3]``: the mean IoU in percent (0 for none)."""
    n = len(ious)
    out = {name: sum(1 for v in ious if v >= t) * 100 / n if n else 0 for name, t in zip(names, (0.3, 0.5, 0.7))}
    out[names[3]] = sum(ious) * 100 / n if n else 0
    return out
