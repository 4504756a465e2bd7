"""D²VLM conversation annotations (Factorized Learning for Temporally Grounded Video-Language
Models, ICCV 2025, appendix B), in either of two layouts, record by record.

The authors' training files (nusnlp/d2vlm 756d340, ``d2vlm/train/train.py``: ``anno['tgt']``,
``anno['src']``; E.T. Instruct's layout) hold flat span lists:

``{"video", "duration", "task", "conversations": [...], "tgt": [s1, e1, s2, e2, ...], "src": [...]}``

``tgt`` are the spans the response's ``<evi>`` ground, in order, the same for the grounding stage and
the answer (``d2vlm_arch.py`` ``forward_evi`` appends ``tgt`` twice); ``src`` are spans the *question*
refers to with its own ``<evi>`` tokens (their frames' features are added to those tokens). Our model
grounds only response tokens, so each question ``<evi>`` is written as its span in text ("3.0 - 5.0
seconds", quirk ``question_refs_as_text``) and ``src`` is kept in ``meta``. The duration comes from the
record, else from ``--durations`` (keyed by the video's file stem). Task names are E.T. Bench's
(``tvg``, ``dvc``, ...), kept in ``meta['etbench_task']`` and mapped by :data:`ETBENCH_TASKS`.

The E.T.-style layout with nested ``time_gt`` is a JSON list of

``{"video", "duration", "time_gt": {"evidence_grounding", "interleaved_response"},
"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "<evi> <evi> </evi> ... <evi> ..."}]}``

The gpt turn is the pure evidence-grounding stage (one ``<evi>`` per event), ``</evi>``, then the
answer interleaving text and ``<evi>`` references. ``time_gt`` holds the spans of both stages;
single-event records store a flat ``[s, e]``.

Canonical mapping: ``query`` = the human text without the ``<image>`` placeholder; ``answer`` = the
interleaved answer after ``</evi>`` (``<evi>`` kept as written); ``spans`` = ``evidence_grounding``;
``meta`` keeps ``interleaved_response`` and the raw gpt ``response``. Task = the record's ``task``
key when it names a canonical task (our writer adds it), else ``grounded_qa``; for
``dense_caption`` the captions are the texts following each ``<evi>`` of the answer.

Sample ids: the record's ``id`` key when present (our writer adds it), else the zero-based
position in the list.

Quirks: spans through ``clean_spans``; since the k-th ``<evi>`` refers to the k-th span, a record
that loses any span is rejected (``evidence_span_rejected``) instead of being misaligned; a gpt
turn whose ``<evi>`` count differs from its spans is counted as ``evi_count_mismatch``; it is kept
when its answer has no ``<evi>`` at all (the references are then composed), else rejected
(``evi_refs_rejected``): the answer's own references could not be matched to the spans. An answer's
``<evi>`` references are filled in as written when training (``processing.response_text``), not
appended to again.

Predictions: the same record layout with the model's spans in ``time_gt`` and its response in the
gpt turn (``write_predictions``/``read_predictions``); ``write_annotations`` turns any canonical
samples into D²VLM training records.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from damo.data.schema import TASKS, Prediction, QuirkReport, Sample

from .common import (as_span, clean_each, clean_text, pred_dict, read_durations, read_json, require, to_duration,
                     write_json)

NAME = "d2vlm"
EVI, EVI_END, IMAGE = "<evi>", "</evi>", "<image>"
# E.T. Bench task names of the authors' files -> canonical tasks (others: grounded_qa)
ETBENCH_TASKS = {"tvg": "grounding", "epm": "grounding", "tal": "multi_grounding", "evs": "multi_grounding",
                 "dvc": "dense_caption", "slc": "dense_caption"}


def _spans(x: object, where: str) -> tuple[list[list[float]], bool]:
    """Spans from a ``time_gt`` entry and whether it was stored flat."""
    if isinstance(x, list) and x and not isinstance(x[0], (list, tuple)):
        return [as_span(x, where)], True
    if not isinstance(x, list):
        raise ValueError(f"{where}: expected [s, e] or a list of [s, e], got {x!r}")
    return [as_span(sp, where) for sp in x], False


def _turn(conv: list, role: str, where: str) -> str:
    values = [t["value"] for t in conv if isinstance(t, dict) and t.get("from") == role and "value" in t]
    if len(values) != 1:
        raise ValueError(f"{where}: expected exactly one '{role}' turn with a 'value', found {len(values)}")
    return values[0]


def _flat(rec: dict, n: int, where: str, report: QuirkReport, durations: dict[str, float]) -> Sample | None:
    """One record of the authors' training layout (flat ``tgt``/``src``, see the module doc)."""
    require(rec, ("video", "conversations"), where)
    video = str(rec["video"])
    if "duration" in rec:
        duration = to_duration(rec["duration"], where)
    elif Path(video).stem in durations:
        duration = durations[Path(video).stem]
    else:
        raise ValueError(f"{where}: no duration for video {video!r}; pass --durations (a CSV or JSON of "
                         "video id -> seconds)")
    flat = rec.get("tgt") or []
    if len(flat) % 2:
        raise ValueError(f"{where}: tgt must list [s1, e1, s2, e2, ...], got an odd count {len(flat)}")
    raw = [as_span(flat[i:i + 2], f"{where}.tgt") for i in range(0, len(flat), 2)]
    human = _turn(rec["conversations"], "human", where).replace(IMAGE + "\n", "").replace(IMAGE, "")
    src = rec.get("src") or []
    refs = [as_span(src[i:i + 2], f"{where}.src") for i in range(0, len(src), 2)]
    if human.count(EVI):
        if human.count(EVI) != len(refs):
            report["evi_refs_rejected"] += 1
            return None
        report["question_refs_as_text"] += 1
        parts = human.split(EVI)
        human = "".join(a + f"{s:.1f} - {e:.1f} seconds" for a, (s, e) in zip(parts, refs)) + parts[-1]
    query = clean_text(human, report, where)
    if not query:
        report["empty_query"] += 1
        return None
    response = _turn(rec["conversations"], "gpt", where)
    grounding, sep, answer = response.partition(EVI_END)
    answer = answer.strip() if sep else response.strip()
    if (sep and grounding.count(EVI) != len(raw)) or answer.count(EVI) not in (0, len(raw)):
        report["evi_count_mismatch"] += 1
        report["evi_refs_rejected"] += 1
        return None
    spans = clean_each(raw, duration, report)
    if None in spans:
        report["evidence_span_rejected"] += 1
        return None
    task = rec["task"] if rec.get("task") in TASKS else ETBENCH_TASKS.get(rec.get("task"), "grounded_qa")
    if task == "grounding" and len(spans) > 1:
        task = "multi_grounding"
    captions = [c.strip().lstrip(",").strip() for c in answer.split(EVI)[1:]] if task == "dense_caption" else []
    meta = {"response": response, "src": refs, "etbench_task": rec.get("task")}
    return Sample(id=str(rec["id"]) if "id" in rec else str(n), video=video, duration=duration, task=task,
                  query=query, answer=answer, spans=spans, captions=captions, source=NAME,  # type: ignore[arg-type]
                  meta=meta)


def load(path: str | Path, report: QuirkReport, durations: str | Path | None = None) -> list[Sample]:
    """Load a D²VLM annotation JSON list: the authors' flat ``tgt``/``src`` records or E.T.-style
    ``time_gt`` ones (see the module doc)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of D²VLM conversation records")
    lengths = read_durations(durations) if durations is not None else {}
    samples = []
    for n, rec in enumerate(data):
        where = f"{path}: record {n}"
        if isinstance(rec, dict) and "time_gt" not in rec:
            s = _flat(rec, n, where, report, lengths)
            if s is not None:
                samples.append(s)
            continue
        require(rec, ("video", "duration", "time_gt", "conversations"), where)
        require(rec["time_gt"], ("evidence_grounding",), f"{where}.time_gt")
        duration = to_duration(rec["duration"], where)
        human = _turn(rec["conversations"], "human", where)
        response = _turn(rec["conversations"], "gpt", where)
        query = clean_text(human.replace(IMAGE + "\n", "").replace(IMAGE, ""), report, where)
        if not query:
            report["empty_query"] += 1
            continue
        grounding, sep, answer = response.partition(EVI_END)
        if not sep:
            raise ValueError(f"{where}: the gpt turn has no '{EVI_END}' closing the evidence-grounding stage")
        answer = answer.strip()
        raw, flat = _spans(rec["time_gt"]["evidence_grounding"], f"{where}.time_gt.evidence_grounding")
        inter_raw = (_spans(rec["time_gt"]["interleaved_response"], f"{where}.time_gt.interleaved_response")[0]
                     if "interleaved_response" in rec["time_gt"] else raw)
        if grounding.count(EVI) != len(raw) or answer.count(EVI) != len(inter_raw):
            report["evi_count_mismatch"] += 1
            if answer.count(EVI):   # references that cannot be matched to the spans one to one
                report["evi_refs_rejected"] += 1
                continue
        spans, inter = clean_each(raw, duration, report), clean_each(inter_raw, duration, report)
        if None in spans or None in inter:
            report["evidence_span_rejected"] += 1
            continue
        task = rec["task"] if rec.get("task") in TASKS else "grounded_qa"
        captions = []
        if task == "dense_caption":
            captions = [c.strip().lstrip(",").strip() for c in answer.split(EVI)[1:]]
        meta = {"interleaved_response": inter, "response": response, "time_gt_flat": flat}
        samples.append(Sample(id=str(rec["id"]) if "id" in rec else str(n), video=str(rec["video"]),
                              duration=duration, task=task, query=query, answer=answer, spans=spans,  # type: ignore[arg-type]
                              captions=captions, source=NAME, meta=meta))
    return samples


def _evi_list(n: int) -> str:
    refs = [EVI] * n
    return refs[0] if n == 1 else ", ".join(refs[:-1]) + " and " + refs[-1]


def compose_answer(sample: Sample) -> str:
    """The interleaved answer for a sample from any format (D²VLM's three templates)."""
    n = len(sample.spans)
    if sample.task == "dense_caption" and len(sample.captions) == n:
        return " ".join(f"{EVI}, {c}" for c in sample.captions)
    if n == 0:
        return sample.answer
    where = f"The event happens in {EVI}." if n == 1 else f"The events happen in {_evi_list(n)}."
    if sample.answer:
        return f"{sample.answer.rstrip()} {where.replace('The event', 'The relevant event')}"
    return where


def _time_gt(spans: list[list[float]]) -> list:
    return [float(x) for x in spans[0][:2]] if len(spans) == 1 else [[float(a), float(b)] for a, b, *_ in spans]


def to_record(sample: Sample) -> dict:
    """One canonical sample as a D²VLM record (keeps a loaded record's own response text)."""
    if "response" in sample.meta:
        response = sample.meta["response"]
    else:
        grounding = " ".join([EVI] * len(sample.spans) + [EVI_END])
        response = f"{grounding} {compose_answer(sample)}".strip()
    inter = sample.meta.get("interleaved_response", sample.spans)
    return {
        "id": sample.id,
        "task": sample.task,
        "video": sample.video,
        "duration": sample.duration,
        "time_gt": {"evidence_grounding": _time_gt(sample.spans), "interleaved_response": _time_gt(inter)},
        "conversations": [{"from": "human", "value": f"{IMAGE}\n{sample.query}"},
                          {"from": "gpt", "value": response}],
    }


def write_annotations(samples: list[Sample], path: str | Path) -> int:
    """Write canonical samples as D²VLM training records; returns the record count."""
    rows = [to_record(s) for s in samples]
    write_json(path, rows)
    return len(rows)


def write_predictions(preds: dict[str, Prediction] | list[Prediction], samples: list[Sample],
                      path: str | Path) -> None:
    """Records of the annotation layout holding each prediction's spans and response."""
    by_id = pred_dict(preds, samples)
    rows = []
    for s in samples:
        if s.id not in by_id:
            continue
        p = by_id[s.id]
        meta = {k: v for k, v in s.meta.items() if k not in ("response", "interleaved_response")}
        captions = (p.answer or "").split("\n") if s.task == "dense_caption" else []  # one caption per line
        answered = replace(s, spans=[sp[:2] for sp in p.spans], answer=p.answer or "", captions=captions, meta=meta)
        if p.answer is not None and EVI in p.answer:
            meta["response"] = " ".join([EVI] * len(p.spans) + [EVI_END]) + " " + p.answer
        rows.append(to_record(answered))
    write_json(path, rows)


def read_predictions(path: str | Path, samples: list[Sample] | None = None) -> dict[str, Prediction]:
    """Read records in the annotation layout back to canonical predictions, spans as predicted."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of D²VLM prediction records")
    out = {}
    for n, rec in enumerate(data):
        where = f"{path}: record {n}"
        require(rec, ("time_gt", "conversations"), where)
        require(rec["time_gt"], ("evidence_grounding",), f"{where}.time_gt")
        sid = str(rec["id"]) if "id" in rec else str(n)
        spans, _ = _spans(rec["time_gt"]["evidence_grounding"], f"{where}.time_gt.evidence_grounding")
        answer = _turn(rec["conversations"], "gpt", where).partition(EVI_END)[2].strip()
        out[sid] = Prediction(id=sid, spans=spans, answer=answer)
    if samples is not None:
        pred_dict(out, samples)
    return out
