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
from damo.data.formats._common import read_text, require, to_float
from damo.data.formats._common import read_jsonl as read_jsonl_numbered
from damo.data.schema import Prediction, QuirkReport, Sample, read_jsonl
from damo.eval import metrics as M

TASKS = ("charades-sta", "qvhighlights", "activitynet-captions", "youcook2", "etbench", "didemo", "tacos")
SUBSETS = ("all", "predicted")
DUPLICATES = ("error", "first", "last")
DIDEMO_SEGMENT_SECONDS = 5


class Rows(list):
    """Prediction records plus, in ``where``, the file and line (or record) each came from."""

    def __init__(self, rows: list, where: list[str]):
        super().__init__(rows)
        self.where = where


def _read_any(path: str | Path, duplicates: str, report: QuirkReport) -> dict | Rows | str:
    """A JSON document, or the rows of a JSONL file, or a ``.txt`` file's text (Charades-STA's own
    prediction layout, read by its format module); an empty file is an error.

    A key repeated inside one JSON object (two ``results`` entries for one video) follows the
    ``duplicates`` policy like repeated ids, counted as ``duplicate_key``.
    """
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise ValueError(f"{path}: the prediction file is empty; write one prediction per sample")
    if path.suffix == ".txt":
        return text

    def pairs(items: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for k, v in items:
            if k in out:
                if duplicates == "error":
                    raise ValueError(f"{path}: key {k!r} appears twice in one JSON object; keep one, or pass "
                                     f"--duplicates first|last")
                report["duplicate_key"] += 1
                if duplicates == "first":
                    continue
            out[k] = v
        return out

    try:
        doc = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError:
        numbered = list(read_jsonl_numbered(path))     # errors name the line
        return Rows([r for _, r in numbered], [f"{path}:{n}" for n, _ in numbered])
    if isinstance(doc, list):
        return Rows(doc, [f"{path}: record {i}" for i in range(len(doc))])
    if isinstance(doc, dict) and ({"id", "spans"} <= doc.keys() or {"qid", "pred_relevant_windows"} <= doc.keys()):
        return Rows([doc], [f"{path}:1"])                # a one-line JSONL file
    return doc


def _is_canonical(rows: dict | list) -> bool:
    return isinstance(rows, list) and bool(rows) and isinstance(rows[0], dict) and {"id", "spans"} <= rows[0].keys()


def _keep(seen: dict, key, where: str, what: str, duplicates: str, report: QuirkReport) -> bool:
    """Whether a record with ``key`` is kept under the ``duplicates`` policy (``first`` keeps the first)."""
    if key not in seen:
        seen[key] = where
        return True
    if duplicates == "error":
        raise ValueError(f"{where}: {what} {key!r} appears again (first at {seen[key]}); keep one prediction per "
                         f"sample, or pass --duplicates first|last")
    report["duplicate_id"] += 1
    return duplicates == "last"


def _spans(value: object, where: str, report: QuirkReport, width: tuple[int, ...] = (2, 3)) -> list[list[float]]:
    """Checked spans: a list of ``[start, end]`` / ``[start, end, score]`` of finite numbers.

    A span with end < start is kept as given and counted as ``pred_reversed``: every reproduced
    evaluator gives it IoU 0 (its intersection with anything is empty), and so do we.
    """
    if not isinstance(value, list):
        raise ValueError(f"{where}: spans must be a list of [start, end] pairs, got {type(value).__name__}")
    out = []
    for sp in value:
        if not isinstance(sp, (list, tuple)) or len(sp) not in width:
            raise ValueError(f"{where}: a span must be {' or '.join(map(str, width))} numbers "
                             f"[start, end{', score' if 3 in width else ''}], got {sp!r}")
        vals = [to_float(x, name, where) for x, name in zip(sp, ("span start", "span end", "span score"))]
        if vals[1] < vals[0]:
            report["pred_reversed"] += 1
        out.append(vals)
    return out


def _canonical(rows: Rows, duplicates: str, report: QuirkReport) -> dict[str, Prediction]:
    """Canonical prediction rows, each checked; errors name the file and line."""
    out: dict[str, Prediction] = {}
    seen: dict = {}
    for r, where in zip(rows, rows.where):
        require(r, ("id", "spans"), where)
        answer = r.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise ValueError(f"{where}: 'answer' must be text, got {type(answer).__name__}")
        pid = str(r["id"])
        spans = _spans(r["spans"], where, report)
        if _keep(seen, pid, where, "prediction id", duplicates, report):
            out[pid] = Prediction(id=pid, spans=spans, answer=answer, tube=r.get("tube"))
    return out


def _with_quirks(out: dict, report: QuirkReport) -> dict:
    """Metrics plus ``prediction_quirks`` when a tolerated quirk was counted."""
    return {**out, "prediction_quirks": dict(report)} if report else out


def _restrict(samples: list[Sample], preds: dict, subset: str) -> list[Sample]:
    if subset == "predicted":
        samples = [s for s in samples if s.id in preds]
        if not samples:
            raise ValueError("subset='predicted' but no prediction id matches a gt sample id")
    return samples


def score(task: str, gt_path: str | Path, pred_path: str | Path, durations: str | Path | None = None,
          subset: str = "all", convention: str | None = None, parser: str = "etbench", clip_gt: bool = False,
          unmatched_caption: str = "random", duplicates: str = "error") -> dict:
    """Metrics for ``task`` with keys named as the official evaluator names them.

    ``convention`` (``">="`` or ``">"``) applies to Charades-STA/TACoS R@IoU (default ``>=``,
    TimeChat/E.T. Bench); ``parser`` to E.T. Bench answers (``etbench`` = official, ``strict``).
    ``clip_gt`` clips Charades-STA gt ends to the CSV lengths (default: raw spans, as TimeChat,
    VTimeLLM and E.T. Bench score). ``unmatched_caption`` is the reference a dense caption
    without an overlapping gt segment is scored against: ``random`` (densevid_eval, TimeChat)
    or ``abc123`` (PDVC ``evaluate2018.py``).

    Prediction files are checked first: an empty file, a non-numeric, NaN or infinite time, a
    malformed span or record is an error naming the file and line (or record); so is an id
    (canonical ``id``, QVHighlights ``qid``, E.T. Bench ``(task, source, idx)``, a repeated
    ActivityNet ``results`` key) seen twice, unless ``duplicates`` is ``"first"`` or ``"last"``
    (then counted as ``duplicate_id``/``duplicate_key``). Tolerated as the official evaluators
    tolerate them, and counted under ``prediction_quirks``: a span with end < start (IoU 0), a
    sample with no prediction or an empty span list (a miss).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
    report = QuirkReport()
    rows = _read_any(pred_path, duplicates, report)
    if not rows:
        raise ValueError(f"{pred_path}: holds no predictions")
    if task in ("charades-sta", "tacos"):
        options = {"raw_spans": not clip_gt} if task == "charades-sta" else {}
        out = _grounding(task, gt_path, rows, pred_path, durations, subset, convention or ">=", options,
                         duplicates, report)
    elif task == "didemo":
        out = _didemo(gt_path, rows, pred_path, durations, subset, duplicates, report)
    elif task == "qvhighlights":
        out = _qvhighlights(gt_path, rows, subset, duplicates, report)
    elif task == "etbench":
        out = _etbench(gt_path, rows, subset, parser, duplicates, report)
    else:
        out = _dense_captions(gt_path, rows, pred_path, subset, unmatched_caption, report)
    return _with_quirks(out, report)


def _grounding(task: str, gt_path, rows, pred_path, durations, subset: str, convention: str,
               options: dict, duplicates: str, report: QuirkReport) -> dict:
    samples, _ = formats.load(task, gt_path, durations=durations, **options)
    if _is_canonical(rows):
        preds = _canonical(rows, duplicates, report)
    else:
        preds = formats.get(task).read_predictions(pred_path, samples)
    samples = _restrict(samples, preds, subset)
    gt = [s.spans for s in samples]
    pred = [preds[s.id].spans if s.id in preds else [] for s in samples]
    out = M.grounding_metrics(gt, pred, convention=convention, topk=(1, 5))
    return {"n": len(samples), "n_predicted": sum(s.id in preds for s in samples), **out}


def _didemo(gt_path, rows, pred_path, durations, subset: str, duplicates: str, report: QuirkReport) -> dict:
    samples, _ = formats.load("didemo", gt_path, durations=durations)
    if _is_canonical(rows):
        preds = _canonical(rows, duplicates, report)
    else:
        preds = formats.get("didemo").read_predictions(pred_path, samples)
    samples = _restrict(samples, preds, subset)
    # canonical spans are seconds: segment k covers [5k, 5k + 5)
    to_idx = lambda sp: [round(sp[0] / DIDEMO_SEGMENT_SECONDS), round(sp[1] / DIDEMO_SEGMENT_SECONDS) - 1]  # noqa: E731
    gt = [s.meta["times"] for s in samples]
    pred = [[to_idx(sp) for sp in preds[s.id].spans] if s.id in preds else [] for s in samples]
    return {"n": len(samples), **M.didemo_metrics(gt, pred)}


def _qvhighlights(gt_path, rows, subset: str, duplicates: str, report: QuirkReport) -> dict:
    gt = list(read_jsonl(gt_path))
    if _is_canonical(rows):
        # canonical spans are ranked best first; a missing score takes a rank-decreasing one
        subs = []
        qids = {str(g["qid"]): g["qid"] for g in gt}
        for p in _canonical(rows, duplicates, report).values():
            wins = [sp if len(sp) == 3 else [sp[0], sp[1], 1.0 / (k + 1)] for k, sp in enumerate(p.spans)]
            subs.append({"qid": qids.get(p.id, p.id), "pred_relevant_windows": wins})
    else:
        if not isinstance(rows, Rows):
            raise ValueError("QVHighlights predictions must be a submission JSONL (qid, pred_relevant_windows) "
                             "or canonical JSONL")
        kept: dict = {}
        seen: dict = {}
        for r, where in zip(rows, rows.where):
            require(r, ("qid", "pred_relevant_windows"), where)
            sub = {**r, "pred_relevant_windows": _spans(r["pred_relevant_windows"], where, report, (3,))}
            if "pred_saliency_scores" in r:
                if not isinstance(r["pred_saliency_scores"], list):
                    raise ValueError(f"{where}: pred_saliency_scores must be a list of numbers")
                sub["pred_saliency_scores"] = [to_float(x, "saliency score", where) for x in r["pred_saliency_scores"]]
            if _keep(seen, r["qid"], where, "qid", duplicates, report):
                kept[r["qid"]] = sub
        subs = list(kept.values())
    if subset == "predicted":
        have = {d["qid"] for d in subs}
        gt = [g for g in gt if g["qid"] in have]
    return M.qvhighlights_metrics(gt, subs)


def _etbench(gt_path, rows, subset: str, parser: str, duplicates: str, report: QuirkReport) -> dict:
    if _is_canonical(rows):
        records = json.loads(Path(gt_path).read_text(encoding="utf-8"))
        preds = _canonical(rows, duplicates, report)
        for r in records:
            p = preds.get(str(r["idx"]))
            r["a"] = "" if p is None else p.answer if p.answer is not None else " ".join(
                f"{sp[0]} - {sp[1]} seconds." for sp in p.spans)
        if subset == "predicted":
            records = [r for r in records if str(r["idx"]) in preds]
    else:
        if not (isinstance(rows, Rows) and rows and isinstance(rows[0], dict) and "a" in rows[0]):
            raise ValueError("E.T. Bench predictions must be records with the answer in 'a', or canonical JSONL")
        kept: dict = {}
        seen: dict = {}
        for r, where in zip(rows, rows.where):
            require(r, ("task", "source", "idx", "a"), where)
            if not isinstance(r["a"], str):
                raise ValueError(f"{where}: the answer 'a' must be text, got {type(r['a']).__name__}")
            key = (r["task"], r["source"], r["idx"])
            if _keep(seen, key, where, "record (task, source, idx)", duplicates, report):
                kept[key] = r
        records = list(kept.values())
        if subset == "all":  # gt records missing from the prediction file are failures
            have = {(r["task"], r["source"], r["idx"]) for r in records}
            gt = json.loads(Path(gt_path).read_text(encoding="utf-8"))
            records = records + [{**g, "a": ""} for g in gt if (g["task"], g["source"], g["idx"]) not in have]
    return M.etbench_metrics(records, parser=parser)


def _dense_captions(gt_path, rows, pred_path, subset: str, unmatched_caption: str, report: QuirkReport) -> dict:
    gt = json.loads(Path(gt_path).read_text(encoding="utf-8"))
    if not (isinstance(rows, dict) and isinstance(rows.get("results"), dict)):
        raise ValueError("dense-captioning predictions must be an ActivityNet challenge JSON with 'results'")
    pred = {}
    for vid, props in rows["results"].items():
        where = f"{pred_path}: results[{vid!r}]"
        if not isinstance(props, list):
            raise ValueError(f"{where}: expected a list of {{timestamp, sentence}} proposals")
        pred[vid] = []
        for i, p in enumerate(props):
            require(p, ("timestamp", "sentence"), f"{where}[{i}]")
            if not isinstance(p["sentence"], str):
                raise ValueError(f"{where}[{i}]: 'sentence' must be text, got {type(p['sentence']).__name__}")
            (span,) = _spans([p["timestamp"]], f"{where}[{i}]", report, (2,))
            pred[vid].append({"timestamp": span, "sentence": p["sentence"]})
    if not any(pred.values()):
        raise ValueError(f"{pred_path}: 'results' holds no proposals")
    if subset == "predicted":
        gt = {v: g for v, g in gt.items() if v in pred}
    with M.CaptionScorer() as captioner:
        out = M.dense_caption_metrics(gt, pred, captioner=captioner, unmatched_caption=unmatched_caption)
        out.update(M.soda_c(gt, pred, captioner=captioner))
    return out
