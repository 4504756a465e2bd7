"""E.T. Bench (Liu et al., NeurIPS 2024 D&B; PolyU-ChenLab/ETBench): ``etbench_{txt,vid}_v1.0.json``,
a JSON list of ``{version, idx, task, source, video, duration, src, tgt, p, o, g, q}`` records
(``src``/``tgt``/``p``/``o``/``g`` optional per task); prediction files add the model answer ``a``.

Sample ids: ``str(idx)``. ``query`` is the prompt ``q``; ``meta`` keeps every record key except
``video``/``duration``/``a`` (so ``meta["source"]`` is the source dataset, ``meta["task"]`` the
E.T. Bench task). Tasks map to canonical ones as follows:

- ``tvg``, ``epm`` (one moment) -> ``grounding``; ``tem``, ``tal``, ``evs`` -> ``multi_grounding``;
  spans from ``tgt`` (a flat ``[s, e]`` or a list of them);
- ``vhd`` -> ``highlight``; ``tgt`` may hold one window list per annotator: spans are their
  distinct windows in order;
- ``dvc``, ``slc`` -> ``dense_caption``; ``captions`` = ``g`` aligned with the ``tgt`` spans;
- ``rar``, ``eca``, ``rvq`` -> ``grounded_qa`` with ``answer = o[p]`` and no spans (their ``src``
  timestamps are inputs, kept in meta); ``gvq`` -> ``grounded_qa`` with ``answer = o[p]`` and
  the ``tgt`` evidence spans.

Quirks: spans through ``clean_spans``; a grounding or captioning record left with no span is
``sample_without_spans``; an empty prompt is ``empty_query``.

Predictions: the annotation records with ``a`` filled in, written for every sample (``a = ""``
when a sample has no prediction, which the evaluator counts as failed). ``a`` is the
prediction's answer verbatim; a prediction with spans only becomes text times in seconds
("12.0 - 15.5 seconds, ..."), which E.T. Bench's parser reads; for ``dvc``/``slc`` an answer
holding one caption per line for its spans (the canonical dense-caption prediction, no times in
it) becomes lines "5.0 - 20.0 seconds, crack the eggs". ``read_predictions`` takes spans
from every ``x - y`` pair in ``a`` (a simple reading, not the official parser's fallbacks).
"""
from __future__ import annotations

import re
from pathlib import Path

from damo.data.schema import Prediction, QuirkReport, Sample, clean_spans

from ._common import as_span, clean_each, clean_text, pred_dict, read_json, require, span_text, to_duration, write_json

NAME = "etbench"
TASK_MAP = {
    "tvg": "grounding", "epm": "grounding",
    "tem": "multi_grounding", "tal": "multi_grounding", "evs": "multi_grounding",
    "vhd": "highlight",
    "dvc": "dense_caption", "slc": "dense_caption",
    "rar": "grounded_qa", "eca": "grounded_qa", "rvq": "grounded_qa", "gvq": "grounded_qa",
}
SPAN_TASKS = {"tvg", "epm", "tem", "tal", "evs", "vhd", "dvc", "slc", "gvq"}
RECORD_KEYS = ("version", "idx", "task", "source", "video", "duration", "src", "tgt", "p", "o", "g", "q")
_PAIR = re.compile(r"(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)")


def _depth(x: object) -> int:
    d = 0
    while isinstance(x, (list, tuple)) and x:
        x = x[0]
        d += 1
    return d


def spans_from_tgt(tgt: object, where: str) -> list[list[float]]:
    """``tgt`` as a span list: flat ``[s, e]``, ``[[s, e], ...]`` or per-annotator ``[[[s, e], ...], ...]``."""
    depth = _depth(tgt)
    if depth == 1:
        return [as_span(tgt, where)]
    if depth == 2:
        return [as_span(sp, where) for sp in tgt]  # type: ignore[union-attr]
    if depth == 3:
        out: list[list[float]] = []
        for annotator in tgt:  # type: ignore[union-attr]
            for sp in annotator:
                span = as_span(sp, where)
                if span not in out:
                    out.append(span)
        return out
    raise ValueError(f"{where}: 'tgt' must be [s, e], a list of them, or one list per annotator; got {tgt!r}")


def load(path: str | Path, report: QuirkReport, durations: str | Path | None = None) -> list[Sample]:
    """Load an E.T. Bench annotation (or prediction) JSON list."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of E.T. Bench records")
    samples = []
    for n, rec in enumerate(data):
        where = f"{path}: record {n}"
        require(rec, ("idx", "task", "video", "duration", "q"), where)
        task = rec["task"]
        if task not in TASK_MAP:
            raise ValueError(f"{where}: unknown E.T. Bench task {task!r}; known: {sorted(TASK_MAP)}")
        duration = to_duration(rec["duration"], where)
        query = clean_text(rec["q"], report, where)
        if not query:
            report["empty_query"] += 1
            continue
        meta = {k: rec[k] for k in RECORD_KEYS if k in rec and k not in ("video", "duration")}
        answer = ""
        if "p" in rec and "o" in rec:
            p, options = rec["p"], rec["o"]
            if not isinstance(p, int) or not 0 <= p < len(options):
                raise ValueError(f"{where}: answer index p={p!r} is outside the {len(options)} options in 'o'")
            answer = str(options[p])
        spans: list[list[float]] = []
        captions: list[str] = []
        if task in SPAN_TASKS:
            if "tgt" not in rec:
                raise ValueError(f"{where}: task {task!r} needs 'tgt' timestamps")
            raw = spans_from_tgt(rec["tgt"], where)
            if task in ("dvc", "slc"):
                require(rec, ("g",), where)
                if len(rec["g"]) != len(raw):
                    raise ValueError(f"{where}: {len(raw)} tgt spans but {len(rec['g'])} captions in 'g'")
                for kept, cap in zip(clean_each(raw, duration, report), rec["g"]):
                    if kept is not None:
                        spans.append(kept)
                        captions.append(clean_text(cap, report, where, single_line=True))
            else:
                spans = clean_spans(raw, duration, report)
            if not spans:
                report["sample_without_spans"] += 1
                continue
        samples.append(Sample(id=str(rec["idx"]), video=str(rec["video"]), duration=duration, task=TASK_MAP[task],
                              query=query, answer=answer, spans=spans, captions=captions, source=NAME, meta=meta))
    return samples


def answer_text(pred: Prediction, task: str) -> str:
    """The text answer ``a`` for one prediction (see the module docstring)."""
    if pred.answer is None:
        return span_text(pred.spans)
    lines = pred.answer.split("\n")
    if task in ("dvc", "slc") and len(lines) == len(pred.spans) and not parse_spans(pred.answer):
        # captions one per line, aligned with the spans: the canonical dense-caption prediction
        return "\n".join(f"{span_text([sp])}, {cap}" for sp, cap in zip(pred.spans, lines))
    return pred.answer


def write_predictions(preds: dict[str, Prediction] | list[Prediction], samples: list[Sample],
                      path: str | Path) -> None:
    """Write the annotation records with the model answer ``a`` for every sample."""
    by_id = pred_dict(preds, samples)
    foreign = [s.id for s in samples if "idx" not in s.meta or "task" not in s.meta]
    if foreign:
        raise ValueError(f"{len(foreign)} sample(s) did not come from an E.T. Bench file (first: {foreign[:3]}); "
                         f"E.T. Bench predictions need the samples loaded from its annotation JSON")
    rows = []
    for s in samples:
        fields = {**s.meta, "video": s.video, "duration": s.duration}
        rec = {k: fields[k] for k in RECORD_KEYS if k in fields}
        rec["a"] = answer_text(by_id[s.id], str(s.meta["task"])) if s.id in by_id else ""
        rows.append(rec)
    write_json(path, rows)


def parse_spans(text: str) -> list[list[float]]:
    """Every ``x - y`` pair in a text answer, as ``[min, max]`` seconds."""
    return [sorted([float(a), float(b)]) for a, b in _PAIR.findall(text)]


def read_predictions(path: str | Path, samples: list[Sample] | None = None) -> dict[str, Prediction]:
    """Read records carrying ``a`` into canonical predictions (answer text + parsed spans)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of E.T. Bench records with answers 'a'")
    out = {}
    for n, rec in enumerate(data):
        require(rec, ("idx", "a"), f"{path}: record {n}")
        a = str(rec["a"])
        out[str(rec["idx"])] = Prediction(id=str(rec["idx"]), spans=parse_spans(a), answer=a)
    if samples is not None:
        pred_dict(out, samples)
    return out
