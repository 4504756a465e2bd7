"""Score a prediction file against a benchmark's gt file with the official evaluator's conventions."""
from __future__ import annotations

from pathlib import Path

from damo.eval import BENCHMARKS


def score(task: str, gt_path: str | Path, pred_path: str | Path, subset: str = "all", duplicates: str = "error",
          **options: object) -> dict:
    """Metrics for benchmark ``task`` (a key of :data:`~damo.eval.BENCHMARKS`) with keys named as its official
    evaluator names them; ``options`` are the ones that benchmark takes (see ``damo eval --help``).

    A gt sample without a prediction counts as a miss; ``subset="predicted"`` scores only the predicted
    ids (TimeChat's ``--sample``). Prediction files are checked first: an empty file, a non-numeric, NaN
    or infinite time, a malformed span or record is an error naming the file and line (or record); so is
    an id (canonical ``id``, QVHighlights ``qid``, E.T. Bench ``(task, source, idx)``, a repeated
    ActivityNet ``results`` key) seen twice, unless ``duplicates`` is ``"first"`` or ``"last"`` (then
    counted as ``duplicate_id``/``duplicate_key``). Tolerated as the official evaluators tolerate them,
    and counted under ``prediction_quirks``: a span with end < start (IoU 0), a sample with no
    prediction or an empty span list (a miss).
    """
    if task not in BENCHMARKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[task].score(gt_path, pred_path, subset, duplicates, **options)
