"""DiDeMo: Rank@1, Rank@5 and mIoU over 5-s segments, as LocalizingMoments computes them.

Predictions: canonical JSONL (seconds) or the evaluator's own positional list of ranked segment pairs."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from damo.data.formats import didemo as reader
from damo.eval.benchmark import DURATIONS, Benchmark, samples_and_predictions
from damo.eval.predictions import PredictionFile


def didemo_metrics(gt: Sequence[Sequence[Sequence[int]]], pred: Sequence[Sequence[Sequence[int]]]) -> dict[str, float]:
    """DiDeMo Rank@1, Rank@5 and mIoU as LocalizingMoments ``utils/eval.py`` computes them.

    Times are 5-s segment indices with inclusive ends (``[0, 0]`` is the first 5 s).
    ``gt[i]``: the annotators' segments (usually 4); ``pred[i]``: segments ranked best first
    (normally all 21). Each annotator's segment gets the rank at which it appears in the
    prediction; a query scores the mean of its 3 best ranks, so Rank@k counts queries whose
    mean is ``<= k`` (Rank@1 needs the top prediction to equal 3 annotators' segments).
    mIoU averages the 3 best IoUs of the top prediction, with inclusive-index IoU
    ``(min end + 1 - max start) / (max end + 1 - min start)``. Fractions in [0, 1].
    The official requires every annotated segment in the list; here a missing one ranks
    just after the list.
    """
    if len(gt) != len(pred):
        raise ValueError(f"gt has {len(gt)} queries but pred has {len(pred)}; pass one ranked list per query")
    ranks, ious = [], []
    for g, p in zip(gt, pred):
        p = [tuple(int(x) for x in sp[:2]) for sp in p]
        g = np.asarray(g, dtype=np.int64).reshape(-1, 2)
        pos = {sp: k + 1 for k, sp in reversed(list(enumerate(p)))}          # first occurrence wins
        r = np.array([pos.get(tuple(x), len(p) + 1) for x in g.tolist()])
        ranks.append(np.mean(np.sort(r)[:3]))
        if p:
            top = np.asarray(p[0])
            inter = np.maximum(0, np.minimum(top[1], g[:, 1]) + 1 - np.maximum(top[0], g[:, 0]))
            union = np.maximum(top[1], g[:, 1]) + 1 - np.minimum(top[0], g[:, 0])
            ious.append(np.mean(np.sort(inter / union)[-3:]))
        else:
            ious.append(0.0)
    ranks_a = np.asarray(ranks)
    return {"Rank@1": float(np.sum(ranks_a <= 1) / len(ranks_a)), "Rank@5": float(np.sum(ranks_a <= 5) / len(ranks_a)),
            "mIoU": float(np.mean(ious))}


def score(gt_path: str | Path, preds: PredictionFile, subset: str, durations: str | Path | None) -> dict:
    """DiDeMo metrics of canonical (seconds) or official (segment) predictions."""
    samples, by_id = samples_and_predictions(reader, gt_path, preds, subset, durations)
    # canonical spans are seconds: segment k covers [5k, 5k + 5)
    to_idx = lambda sp: [round(sp[0] / reader.SEGMENT), round(sp[1] / reader.SEGMENT) - 1]  # noqa: E731
    gt = [s.meta["times"] for s in samples]
    pred = [[to_idx(sp) for sp in by_id[s.id].spans] if s.id in by_id else [] for s in samples]
    return {"n": len(samples), **didemo_metrics(gt, pred)}


BENCHMARK = Benchmark(name="didemo", evaluator="LocalizingMoments utils/eval.py", reader=reader, scorer=score,
                      options=(DURATIONS,))
