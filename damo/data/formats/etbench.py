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
from ``a`` with the ``strict`` answer parser.

Answer parsing (:func:`parse_spans`, :func:`parse_captions`): how E.T. Bench's ``compute_metrics.py``
reads times out of a free-text answer (``parser="etbench"``, its quirks kept), or a corrected
reading (``parser="strict"``). ``damo.eval.etbench`` scores with them.
"""
from __future__ import annotations

import re
from pathlib import Path

from damo.data.schema import Prediction, QuirkReport, Sample, clean_spans

from .common import as_span, clean_each, clean_text, pred_dict, read_json, require, span_text, to_duration, write_json

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
    if task in ("dvc", "slc") and len(lines) == len(pred.spans) and not parse_spans(pred.answer, "strict"):
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


def read_predictions(path: str | Path, samples: list[Sample] | None = None) -> dict[str, Prediction]:
    """Read records carrying ``a`` into canonical predictions (answer text + parsed spans)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of E.T. Bench records with answers 'a'")
    out = {}
    for n, rec in enumerate(data):
        require(rec, ("idx", "a"), f"{path}: record {n}")
        a = str(rec["a"])
        out[str(rec["idx"])] = Prediction(id=str(rec["idx"]), spans=parse_spans(a, "strict") or [], answer=a)
    if samples is not None:
        pred_dict(out, samples)
    return out


# ---------------------------------------------------------------- answer parsing

PARSERS = ("etbench", "strict")

# The official parser's number: digits, then any run of dots, then digits ("1..5" passes).
_ET_NUM = r"\d+\.*\d*"
_ET_RANGE = re.compile(rf"({_ET_NUM})\s*-\s*({_ET_NUM})")
_ET_TO = re.compile(rf"({_ET_NUM})\s* to \s*({_ET_NUM})")
_ET_KEYWORDS = ("starts", "ends", "happens in", "start time", "end time", "start", "end", "happen")
_CLOCK = re.compile(r"\b(?:(\d{1,2}):)?(\d{1,2}):(\d{2}(?:\.\d+)?)\b")
_NUM = r"\d+(?:\.\d+)?"


def check_parser(parser: str) -> None:
    if parser not in PARSERS:
        raise ValueError(f"parser must be one of {PARSERS} ('etbench' reproduces the official answer parsing, "
                         f"'strict' reads clock times and ranges correctly), got {parser!r}")


def clock_to_seconds(text: str) -> str:
    """Replace h:mm:ss / mm:ss clock times by their value in seconds ("1:05" -> "65")."""
    def sec(m: re.Match) -> str:
        h, mnt, s = m.group(1), m.group(2), m.group(3)
        return f"{(int(h) if h else 0) * 3600 + int(mnt) * 60 + float(s):g}"
    return _CLOCK.sub(sec, text)


def _order(pairs: list) -> list[list[float]] | None:
    out = [[float(a), float(b)] if float(b) > float(a) else [float(b), float(a)] for a, b in pairs]
    return out or None


def parse_spans(answer: str, parser: str = "etbench") -> list[list[float]] | None:
    """Spans (seconds) read from a free-text answer; None is a parse failure.

    ``parser="etbench"`` reproduces E.T. Bench ``compute_metrics.py`` ``tvg_format`` exactly:
    every ``a - b`` in the answer, else every ``a to b``, else the first number of each
    sentence (split on ``! ? newline``) holding a keyword like "start"/"end", paired up in
    order; reversed pairs are swapped. Its misreadings are kept: "00:12 - 00:20" reads as
    12 - 00 -> [0, 12]; a clock time in a keyword sentence reads as its first field
    ("starts at 1:05" -> 1), and its h:mm:ss fallback only runs when the keyword sentences
    hold fewer than two numbers, so "from 00:01:05 to 00:01:30" on two lines reads [0, 0].
    ``parser="strict"`` first turns clock times into seconds, then reads ranges
    ("a - b", "a to b", "between a and b") with plain decimal numbers.
    """
    check_parser(parser)
    ans = answer.lower()
    if parser == "strict":
        ans = clock_to_seconds(ans)
        for pat in (rf"({_NUM})\s*(?:-|–|to|and)\s*({_NUM})",):
            found = re.findall(pat, ans)
            if found:
                return _order(found)
    else:
        found = _ET_RANGE.findall(ans) or _ET_TO.findall(ans)
        if found:
            return _order(found)
    sentences = re.split(r"[!?\n]", ans)
    candidates = [s for s in sentences if any(k in s for k in _ET_KEYWORDS)]
    found = [re.findall(r"\b(\d+\.\d+\b|\b\d+)\b", s) for s in candidates]
    # official: the first number of each keyword sentence; strict: every number in them
    times = [float(x) for t in found for x in (t if parser == "strict" else t[:1])]
    times = times[:len(times) // 2 * 2]
    if not times and parser == "etbench":
        # the official's last resort: the first h:mm:ss of each keyword sentence
        clocks = [re.findall(r"\b((\d{1,2}:\d{2}:\d{2}))\b", s) for s in candidates]
        times = [sum(int(x) * f for x, f in zip(c[0][0].split(":"), (3600, 60, 1))) for c in clocks if c]
        times = times[:len(times) // 2 * 2]
    return _order(list(zip(times[0::2], times[1::2])))


def first_number(answer: str) -> float | None:
    m = re.search(r"[-+]?\d*\.\d+|[-+]?\d+", answer)
    return float(m.group(0)) if m else None


def parse_captions(answer: str, parser: str = "etbench") -> tuple[list[list[float]] | None, list[str] | None]:
    """(spans, sentences) read from a dense-caption answer, or (None, None) on failure.

    ``parser="etbench"`` reproduces ``dvc_format``: "a - b" ranges split the (lower-cased)
    paragraph into captions; else "start time: a ... end time: b ... description: ..."
    blocks; the "start time a, end time b" form always fails (the official asserts it
    found nothing); else per-line "<time> seconds, <caption>" with a single time t read as
    [t - 20, t + 20] (or [t, t + 40] when t <= 20). ``parser="strict"`` converts clock times
    first and accepts the "start time a, end time b" form.
    """
    check_parser(parser)
    text = clock_to_seconds(answer) if parser == "strict" else answer
    try:
        spans, caps = _paragraph(text, strict=parser == "strict")
    except ValueError:
        return None, None
    if not spans:
        if "\n" in text:
            lines = [c for c in text.split("\n") if len(c) > 7]
        else:
            lines = [c + "." for c in text.split(".") if len(c) > 7]
        for line in lines:
            if spans:
                break
            parts = [p.strip(",") for p in line.split("seconds")]
            found = _time_part(parts[0])
            if not found:
                continue
            bounds = found[0].split("-")
            try:
                s, e = round(float(bounds[0].strip()), 2), round(float(bounds[1].strip()), 2)
            except (ValueError, IndexError):
                continue
            spans.append([s, e])
            caps.append(parts[-1].strip())
    if not spans:
        return None, None
    return [[min(sp), max(sp)] for sp in spans], caps


def _paragraph(paragraph: str, strict: bool) -> tuple[list[list[float]], list[str]]:
    p = paragraph.lower()
    spans = [[float(a), float(b)] for a, b in _ET_RANGE.findall(p)]
    caps: list[str] = []
    if spans:
        rest = p
        for s in re.findall(rf"({_ET_NUM}\s*-\s*{_ET_NUM})", p):
            rest = rest.replace(s, "\n")
        caps = rest.replace("seconds", "").split("\n")
    if not spans:
        starts = re.findall(rf"(?:start(?:ing)? time: ({_ET_NUM})(?:s| seconds)?)", p, re.DOTALL | re.IGNORECASE)
        ends = re.findall(rf"(?:end(?:ing)? time: ({_ET_NUM})(?:s| seconds)?)", p, re.DOTALL | re.IGNORECASE)
        if starts and ends:
            spans = [[float(a), float(b)] for a, b in zip(starts, ends)]
            caps = re.findall(r"description: (.*)", p) or re.findall(r"\*\s*(.*)", p)
    if not spans:
        pairs = re.findall(rf"start time ({_ET_NUM}), end time ({_ET_NUM})", p)
        if pairs:
            if not strict:  # the official asserts len(timestamps) <= 0 here: this form always fails
                raise ValueError("start time/end time form")
            spans = [[float(a), float(b)] for a, b in pairs]
            for a, b in pairs:
                p = p.replace(f"start time {a}, end time {b}", "\n")
            caps = p.split("\n")
    caps = [c.strip().strip(", ").rstrip() for c in caps if len(c) > 5]
    n = min(len(spans), len(caps))
    return spans[:n], caps[:n]


def _time_part(text: str) -> list[str]:
    """The official ``extract_time_part``: a "a - b" string from one caption line, or []."""
    radius = 20
    found = re.findall(rf"{_ET_NUM}\s*-\s*{_ET_NUM}", text)
    if not found:
        clocks = re.findall(rf"{_ET_NUM}:{_ET_NUM}", text)
        try:
            if text.count(":") == 1:
                m, s = clocks[0].split(":")
                t = int(m) * 60 + int(s)
                found = [f"{t - radius} - {t + radius}" if t > radius else f"{t} - {t + 2 * radius}"]
            elif text.count(":") == 2:
                a, b = clocks
                found = [f"{int(a.split(':')[0]) * 60 + int(a.split(':')[1])} - "
                         f"{int(b.split(':')[0]) * 60 + int(b.split(':')[1])}"]
        except (ValueError, IndexError):
            raise ValueError("unreadable clock time") from None
    if not found:
        nums = re.findall(rf"{_ET_NUM}(?!\.)", text)
        if len(nums) == 1:
            t = float(nums[0])
            found = [f"{t - radius} - {t + radius}" if t > radius else f"{t} - {t + 2 * radius}"]
        elif len(nums) == 2:
            found = [f"{nums[0]} - {nums[1]}"]
    return found
