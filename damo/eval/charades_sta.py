"""Charades-STA (Gao et al., ICCV 2017): R1/R5 at IoU 0.3/0.5/0.7 and mIoU, as TimeChat, VTimeLLM and
E.T. Bench score it.

Gt spans are scored as the benchmark txt holds them, as those evaluators do, even where they end after
the video's length in ``Charades_v1_test.csv``; ``clip_gt`` clips them to the known lengths first, as
conversion does. Predictions: canonical JSONL, or a top-1 txt in the benchmark's own layout.
"""
from __future__ import annotations

from pathlib import Path

from damo.data.formats import charades_sta as reader
from damo.eval.benchmark import DURATIONS, Benchmark, Option
from damo.eval.grounding import CONVENTION, score_grounding
from damo.eval.predictions import PredictionFile

CLIP_GT = Option("clip_gt", "clip gt ends to the CSV lengths (default: raw spans, as TimeChat and E.T. Bench score)",
                 default=False, flag=True)


def score(gt_path: str | Path, preds: PredictionFile, subset: str, durations: str | Path | None, convention: str,
          clip_gt: bool) -> dict:
    return score_grounding(reader, gt_path, preds, subset, durations, convention, raw_spans=not clip_gt)


BENCHMARK = Benchmark(name="charades-sta", evaluator="TimeChat / VTimeLLM / E.T. Bench (R@IoU >=, raw gt spans); "
                                                     "2D-TAN's with --convention '>'",
                      reader=reader, scorer=score, options=(DURATIONS, CONVENTION, CLIP_GT))
