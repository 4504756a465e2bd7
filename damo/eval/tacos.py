"""TACoS (Regneri et al., TACL 2013) in 2D-TAN's split: R1/R5 at IoU 0.3/0.5/0.7 and mIoU, seconds from
the file's frames and fps as 2D-TAN reads them. Predictions: canonical JSONL."""
from __future__ import annotations

from pathlib import Path

from damo.data.formats import tacos as reader
from damo.eval.benchmark import Benchmark
from damo.eval.grounding import CONVENTION, score_grounding
from damo.eval.predictions import PredictionFile


def score(gt_path: str | Path, preds: PredictionFile, subset: str, convention: str) -> dict:
    return score_grounding(reader, gt_path, preds, subset, None, convention)


BENCHMARK = Benchmark(name="tacos", evaluator="R@IoU as TimeChat / E.T. Bench count it (>=); 2D-TAN's with --convention '>'", reader=reader,
                      scorer=score, options=(CONVENTION,))
