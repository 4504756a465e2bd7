"""TimeLens-Bench (Charades-, ActivityNet- and QVHighlights-TimeLens): R1 at IoU 0.3/0.5/0.7 and mIoU in
percent, as TimeLens scores it (TencentARC/TimeLens at 5d90c067246ddb11db3203adbb0085bdc48d9e5e,
``evaluation/compute_metrics.py`` with ``timelens/utils.py``'s ``iou``; the answers read by
``evaluation/eval_dataloader.py``).

The official scorer keys each answer by ``video>>>query>>>span`` (a repeated key counts once, with its
last answer), scores the first predicted pair against the query's span as written in the file (IoU >= t),
and prints ``IOU 0.3``, ``IOU 0.5``, ``IOU 0.7`` and ``mIOU``. A query without a prediction is a miss here;
the official counts only the queries in its prediction file (``--subset predicted``).

Parsers (``--parser``):
- ``spans`` (default): the predictions' spans as they are, as ``compute_metrics.py`` scores the stored
  ``timestamps`` (``damo eval --preset timelens`` stores them rounded as TimeLens' inference does);
- ``timelens``: each prediction's answer read as ``eval_dataloader.py`` reads it (``extract_time``; no time
  gives ``[duration + 10, duration + 20]``; ends rounded to whole seconds, halves to even);
- ``lmms-timelens``: lmms-eval 0.7.3's tasks ``timelens_{charades,activitynet,qvhighlights}``
  (``lmms_eval/tasks/timelens/utils.py``, ``_timelens_compute_metrics``): the same ``extract_time`` without
  rounding, no time scoring 0, under lmms-eval's metric names.
"""
from __future__ import annotations

from pathlib import Path

from damo.data.formats import timelens as reader
from damo.eval.benchmark import PARSER, Benchmark, samples_and_predictions
from damo.eval.grounding import answer_text, hull_iou, percent_recall, unique_queries
from damo.eval.predictions import PredictionFile
from damo.model.presets import get_preset, timelens_spans

OFFICIAL_METRICS = ("IOU 0.3", "IOU 0.5", "IOU 0.7", "mIOU")
LMMS_METRICS = ("timelens_IOU@3", "timelens_IOU@5", "timelens_IOU@7", "timelens_mIOU")


def score(gt_path: str | Path, preds: PredictionFile, subset: str, parser: str) -> dict:
    samples, by_id = samples_and_predictions(reader, gt_path, preds, subset, raw_spans=True)
    queries = unique_queries(samples)
    if parser == "spans":
        found = [by_id[s.id].spans if s.id in by_id else [] for s in queries]
    elif parser == "timelens":    # the preset reads and rounds answers as TimeLens' inference does
        found = [get_preset("timelens").spans(answer_text(by_id, s.id)) or [[s.duration + 10, s.duration + 20]]
                 for s in queries]
    else:
        found = [timelens_spans(answer_text(by_id, s.id)) for s in queries]
    ious = [hull_iou(s.spans[0], f[0]) if f else 0.0 for s, f in zip(queries, found)]
    names = LMMS_METRICS if parser == "lmms-timelens" else OFFICIAL_METRICS
    return {"n": len(queries), "failed": sum(not f for f in found), **percent_recall(ious, names)}


BENCHMARK = Benchmark(name="timelens", evaluator="TimeLens evaluation/compute_metrics.py (TimeLens-Bench, percent)",
                      reader=reader, scorer=score, options=(PARSER,),
                      parsers={"spans": "the predictions' spans, as compute_metrics.py scores stored timestamps",
                               "timelens": "the answers read as TimeLens' eval_dataloader.py reads them (whole "
                                           "seconds)",
                               "lmms-timelens": "lmms-eval 0.7.3's timelens_* tasks (their extract_time, no "
                                                "rounding)"})
