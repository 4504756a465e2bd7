"""Factorized preference pairs (D²VLM section 5, appendix D).

A pair record (one JSONL line)::

    {"id", "sample": <canonical sample dict; its answer/spans/captions are the chosen response>,
     "rejected": {"answer", "spans", "captions"},
     "factor": "temporal" | "textual",
     "subfactor": "shift" | "add" | "delete" | "merge" | "distort" | "repeat",
     "events": [indices of the perturbed events]}
"""
from __future__ import annotations

from pathlib import Path

from damo.data.schema import Sample, read_jsonl

FACTORS = {"temporal": ("shift", "add", "delete", "merge"), "textual": ("distort", "repeat")}
SPAN_TASKS = ("grounding", "multi_grounding", "dense_caption", "grounded_qa")


def _fail(pid: object, msg: str) -> None:
    raise ValueError(f"preference pair {pid!r}: {msg}")


def _check_spans(pid: object, what: str, spans: object, duration: float) -> None:
    if not isinstance(spans, list) or not spans:
        _fail(pid, f"{what} spans must be a non-empty list of [start, end], got {spans!r}")
    for sp in spans:
        if not isinstance(sp, (list, tuple)) or len(sp) != 2 or not all(isinstance(x, (int, float)) for x in sp):
            _fail(pid, f"{what} span {sp!r} is not [start, end] in seconds")
        s, e = float(sp[0]), float(sp[1])
        if not 0 <= s < e <= duration:
            _fail(pid, f"{what} span {[s, e]} must satisfy 0 <= start < end <= duration ({duration})")


def validate_pair(pair: dict) -> None:
    """Raise ``ValueError`` naming the pair and the problem if ``pair`` is not a well-formed preference pair."""
    if not isinstance(pair, dict):
        raise ValueError(f"a preference pair is a JSON object, got {type(pair).__name__}")
    pid = pair.get("id", "?")
    missing = {"id", "sample", "rejected", "factor", "subfactor", "events"} - pair.keys()
    if missing:
        _fail(pid, f"missing keys {sorted(missing)}")
    if pair["factor"] not in FACTORS:
        _fail(pid, f"factor {pair['factor']!r} is not one of {sorted(FACTORS)}")
    if pair["subfactor"] not in FACTORS[pair["factor"]]:
        _fail(pid, f"subfactor {pair['subfactor']!r} does not belong to factor {pair['factor']!r} "
                   f"(valid: {FACTORS[pair['factor']]})")
    try:
        s = Sample.from_dict(pair["sample"])
    except (ValueError, TypeError, AttributeError) as e:
        _fail(pid, f"'sample' is not a canonical sample ({e})")
    if s.task not in SPAN_TASKS:
        _fail(pid, f"task {s.task!r} has no events to perturb; preference pairs cover {SPAN_TASKS}")
    rej = pair["rejected"]
    if not isinstance(rej, dict) or {"answer", "spans", "captions"} - rej.keys():
        _fail(pid, "'rejected' must be an object with 'answer', 'spans' and 'captions'")
    if not isinstance(rej["answer"], str) or not isinstance(rej["captions"], list) or \
            not all(isinstance(c, str) and c.strip() for c in rej["captions"]):
        _fail(pid, "rejected 'answer' must be a string and 'captions' a list of non-empty strings")
    _check_spans(pid, "chosen", s.spans, s.duration)
    _check_spans(pid, "rejected", rej["spans"], s.duration)
    if s.task == "dense_caption" and len(rej["captions"]) != len(rej["spans"]):
        _fail(pid, f"dense captions need one caption per span, got {len(rej['captions'])} captions for "
                   f"{len(rej['spans'])} spans")
    spans_r = [[float(a), float(b)] for a, b in rej["spans"]]
    same_spans = spans_r == s.spans
    same_text = rej["answer"] == s.answer and rej["captions"] == s.captions
    if same_spans and same_text:
        _fail(pid, "rejected response equals the chosen one")
    if pair["factor"] == "temporal" and same_spans:
        _fail(pid, "a temporal perturbation must change the spans")
    if pair["factor"] == "textual" and not same_spans:
        _fail(pid, "a textual perturbation must keep the spans")
    ev = pair["events"]
    n = max(len(s.spans), len(spans_r))
    if not isinstance(ev, list) or not ev or not all(isinstance(i, int) and 0 <= i < n for i in ev):
        _fail(pid, f"'events' must list the perturbed event indices (0..{n - 1}), got {ev!r}")


def chosen_sample(pair: dict) -> Sample:
    """The pair's sample as given: its response is the preferred one."""
    return Sample.from_dict(pair["sample"])


def rejected_sample(pair: dict) -> Sample:
    """The same sample with the dispreferred answer, spans and captions (id suffixed ``#rejected``)."""
    s = Sample.from_dict(pair["sample"])
    r = pair["rejected"]
    s.id = f"{s.id}#rejected"
    s.answer, s.captions = r["answer"], list(r["captions"])
    s.spans = [[float(a), float(b)] for a, b in r["spans"]]
    return s


def load_pairs(path: str | Path) -> list[dict]:
    """Read and validate a preference-pair JSONL; errors name the line."""
    pairs = []
    for n, d in enumerate(read_jsonl(path), 1):
        try:
            validate_pair(d)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
        pairs.append(d)
    return pairs
