"""Score a prediction file against a benchmark's gt file with the official evaluator's conventions.

Glue between the format loaders (``damo.data.formats``) and the numpy metrics
(``damo.eval.metrics``). Predictions are read in the peer's own format where one exists
(QVHighlights submission JSONL, ActivityNet challenge JSON, E.T. Bench records with ``a``)
or in our canonical prediction JSONL; which one is decided by the file's content. A gt
sample without a prediction counts as a miss; ``subset="predicted"`` scores only the
predicted ids (TimeChat's ``--sample``).

Charades-STA gt spans are scored as the benchmark txt holds them (TimeChat, VTimeLLM and
E.T. Bench do so), even where they end after the video's length in ``Charades_v1_test.csv``;
``clip_gt=True`` clips them to the known lengths first, as conversion does.
"""
from __future__ import annotations

import json
from pathlib import Path

from damo.data import formats
from damo.data.schema import Prediction, Sample, read_jsonl
from damo.eval import metrics as M

TASKS = ("charades-sta", "qvhighlights", "activitynet-captions", "youcook2", "etbench", "didemo", "tacos")
SUBSETS = ("all", "predicted")
DIDEMO_SEGMENT_SECONDS = 5


def _read_any(path: str | Path) -> dict | list:
    """A JSON document, or the rows of a JSONL file."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return list(read_jsonl(path))


def _is_canonical(rows: dict | list) -> bool:
    return isinstance(rows, list) and bool(rows) and isinstance(rows[0], dict) and {"id", "spans"} <= rows[0].keys()


def _canonical(rows: list) -> dict[str, Prediction]:
    return {p.id: p for p in (Prediction.from_dict(r) for r in rows)}


def _restrict(samples: list[Sample], preds: dict, subset: str) -> list[Sample]:
    if subset == "predicted":
        samples = [s for s in samples if s.id in preds]
        if not samples:
            raise ValueError("subset='predicted' but no prediction id matches a gt sample id")
    return samples


def score(task: str, gt_path: str | Path, pred_path: str | Path, durations: str | Path | None = None,
          subset: str = "all", convention: str | None = None, parser: str = "etbench", clip_gt: bool = False,
          unmatched_caption: str = "random") -> dict:
    """Metrics for ``task`` with keys named as the official evaluator names them.

    ``convention`` (``">="`` or ``">"``) applies to Charades-STA/TACoS R@IoU (default ``>=``,
    TimeChat/E.T. Bench); ``parser`` to E.T. Bench answers (``etbench`` = official, ``strict``).
    ``clip_gt`` clips Charades-STA gt ends to the CSV lengths (default: raw spans, as TimeChat,
    VTimeLLM and E.T. Bench score). ``unmatched_caption`` is the reference a dense caption
    without an overlapping gt segment is scored against: ``random`` (densevid_eval, TimeChat)
    or ``abc123`` (PDVC ``evaluate2018.py``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    rows = _read_any(pred_path)
    if task in ("charades-sta", "tacos"):
        options = {"raw_spans": not clip_gt} if task == "charades-sta" else {}
        return _grounding(task, gt_path, rows, pred_path, durations, subset, convention or ">=", options)
    if task == "didemo":
        return _didemo(gt_path, rows, pred_path, durations, subset)
    if task == "qvhighlights":
        return _qvhighlights(gt_path, rows, subset)
    if task == "etbench":
        return _etbench(gt_path, rows, subset, parser)
    return _dense_captions(gt_path, rows, subset, unmatched_caption)


def _grounding(task: str, gt_path, rows, pred_path, durations, subset: str, convention: str,
               options: dict) -> dict:
    samples, _ = formats.load(task, gt_path, durations=durations, **options)
    preds = _canonical(rows) if _is_canonical(rows) else formats.get(task).read_predictions(pred_path, samples)
    samples = _restrict(samples, preds, subset)
    gt = [s.spans for s in samples]
    pred = [preds[s.id].spans if s.id in preds else [] for s in samples]
    out = M.grounding_metrics(gt, pred, convention=convention, topk=(1, 5))
    return {"n": len(samples), "n_predicted": sum(s.id in preds for s in samples), **out}


def _didemo(gt_path, rows, pred_path, durations, subset: str) -> dict:
    samples, _ = formats.load("didemo", gt_path, durations=durations)
    preds = _canonical(rows) if _is_canonical(rows) else formats.get("didemo").read_predictions(pred_path, samples)
    samples = _restrict(samples, preds, subset)
    # canonical spans are seconds: segment k covers [5k, 5k + 5)
    to_idx = lambda sp: [round(sp[0] / DIDEMO_SEGMENT_SECONDS), round(sp[1] / DIDEMO_SEGMENT_SECONDS) - 1]  # noqa: E731
    gt = [s.meta["times"] for s in samples]
    pred = [[to_idx(sp) for sp in preds[s.id].spans] if s.id in preds else [] for s in samples]
    return {"n": len(samples), **M.didemo_metrics(gt, pred)}


def _qvhighlights(gt_path, rows, subset: str) -> dict:
    gt = list(read_jsonl(gt_path))
    if _is_canonical(rows):
        # canonical spans are ranked best first; a missing score takes a rank-decreasing one
        subs = []
        for p in _canonical(rows).values():
            wins = [sp if len(sp) == 3 else [sp[0], sp[1], 1.0 / (k + 1)] for k, sp in enumerate(p.spans)]
            qid = next((g["qid"] for g in gt if str(g["qid"]) == p.id), p.id)
            subs.append({"qid": qid, "pred_relevant_windows": wins})
    else:
        subs = rows
    if subset == "predicted":
        have = {d["qid"] for d in subs}
        gt = [g for g in gt if g["qid"] in have]
    return M.qvhighlights_metrics(gt, subs)


def _etbench(gt_path, rows, subset: str, parser: str) -> dict:
    if _is_canonical(rows):
        records = json.loads(Path(gt_path).read_text(encoding="utf-8"))
        preds = _canonical(rows)
        for r in records:
            p = preds.get(str(r["idx"]))
            r["a"] = "" if p is None else p.answer if p.answer is not None else " ".join(
                f"{sp[0]} - {sp[1]} seconds." for sp in p.spans)
        if subset == "predicted":
            records = [r for r in records if str(r["idx"]) in preds]
    else:
        if not (isinstance(rows, list) and rows and "a" in rows[0]):
            raise ValueError("E.T. Bench predictions must be records with the answer in 'a', or canonical JSONL")
        records = rows
        if subset == "all":  # gt records missing from the prediction file are failures
            have = {(r["task"], r["source"], r["idx"]) for r in records}
            gt = json.loads(Path(gt_path).read_text(encoding="utf-8"))
            records = records + [{**g, "a": ""} for g in gt if (g["task"], g["source"], g["idx"]) not in have]
    return M.etbench_metrics(records, parser=parser)


def _dense_captions(gt_path, rows, subset: str, unmatched_caption: str) -> dict:
    gt = json.loads(Path(gt_path).read_text(encoding="utf-8"))
    if not (isinstance(rows, dict) and "results" in rows):
        raise ValueError("dense-captioning predictions must be an ActivityNet challenge JSON with 'results'")
    pred = rows["results"]
    if subset == "predicted":
        gt = {v: g for v, g in gt.items() if v in pred}
    with M.CaptionScorer() as captioner:
        out = M.dense_caption_metrics(gt, pred, captioner=captioner, unmatched_caption=unmatched_caption)
        out.update(M.soda_c(gt, pred, captioner=captioner))
    return out
