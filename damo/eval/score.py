"""Score a prediction file against a benchmark's gt file with the official evaluator's conventions.

One module per benchmark family owns its metrics and its reading of predictions; :data:`SCORERS`
names each benchmark's scorer and is the only list of benchmarks (``damo eval --task`` offers its
keys). A scorer is ``fn(gt_path, preds: PredictionFile, subset, **options) -> dict`` and takes the
options it knows by name (``durations``, ``convention``, ``clip_gt``, ``parser``,
``unmatched_caption``), ignoring the others.
"""
from __future__ import annotations

from pathlib import Path

from damo.eval.captions import score_dense_captions
from damo.eval.didemo import score_didemo
from damo.eval.etbench import score_etbench
from damo.eval.grounding import score_charades_sta, score_tacos
from damo.eval.predictions import SUBSETS, PredictionFile
from damo.eval.qvhighlights import score_qvhighlights

SCORERS = {
    "charades-sta": score_charades_sta,
    "qvhighlights": score_qvhighlights,
    "activitynet-captions": score_dense_captions,
    "youcook2": score_dense_captions,
    "etbench": score_etbench,
    "didemo": score_didemo,
    "tacos": score_tacos,
}


def score(task: str, gt_path: str | Path, pred_path: str | Path, durations: str | Path | None = None,
          subset: str = "all", convention: str | None = None, parser: str = "etbench", clip_gt: bool = False,
          unmatched_caption: str = "random", duplicates: str = "error") -> dict:
    """Metrics for ``task`` with keys named as the official evaluator names them.

    ``convention`` (``">="`` or ``">"``) applies to Charades-STA/TACoS R@IoU (default ``>=``,
    TimeChat/E.T. Bench); ``parser`` to E.T. Bench answers (``etbench`` = official, ``strict``).
    ``clip_gt`` clips Charades-STA gt ends to the CSV lengths (default: raw spans, as TimeChat,
    VTimeLLM and E.T. Bench score). ``unmatched_caption`` is the reference a dense caption
    without an overlapping gt segment is scored against: ``random`` (densevid_eval, TimeChat)
    or ``abc123`` (PDVC ``evaluate2018.py``). A gt sample without a prediction counts as a miss;
    ``subset="predicted"`` scores only the predicted ids (TimeChat's ``--sample``).

    Prediction files are checked first: an empty file, a non-numeric, NaN or infinite time, a
    malformed span or record is an error naming the file and line (or record); so is an id
    (canonical ``id``, QVHighlights ``qid``, E.T. Bench ``(task, source, idx)``, a repeated
    ActivityNet ``results`` key) seen twice, unless ``duplicates`` is ``"first"`` or ``"last"``
    (then counted as ``duplicate_id``/``duplicate_key``). Tolerated as the official evaluators
    tolerate them, and counted under ``prediction_quirks``: a span with end < start (IoU 0), a
    sample with no prediction or an empty span list (a miss).
    """
    if task not in SCORERS:
        raise ValueError(f"unknown task {task!r}; expected one of {tuple(SCORERS)}")
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    preds = PredictionFile(pred_path, duplicates)
    out = SCORERS[task](gt_path, preds, subset, durations=durations, convention=convention, parser=parser,
                        clip_gt=clip_gt, unmatched_caption=unmatched_caption)
    return {**out, "prediction_quirks": dict(preds.report)} if preds.report else out
