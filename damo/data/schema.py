"""The one canonical sample format (DESIGN.md section 4) and its JSONL I/O.

A sample is one question about one video. Times are seconds everywhere. Spans are
``[start, end]`` pairs, validated against the duration where data enters the system:
every format loader routes its spans through :func:`clean_spans`, which applies one
explicit policy per quirk and counts what it touched in a :class:`QuirkReport`.
Nothing is dropped or changed silently.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from damo.textio import line_too_long, loads, read_lines

TASKS = (
    "grounding",        # one query -> one span
    "multi_grounding",  # one query -> several spans
    "dense_caption",    # captions with spans
    "grounded_qa",      # question -> answer text + evidence span(s)
    "dialogue",         # multi-turn QA with timestamps
    "highlight",        # saliency / highlight detection
)


@dataclass
class Sample:
    id: str
    video: str
    duration: float
    task: str
    query: str
    answer: str = ""
    spans: list[list[float]] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    source: str = ""
    meta: dict = field(default_factory=dict)  # format-specific extras (modality, kind, saliency...)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        missing = {"id", "video", "duration", "task", "query"} - d.keys()
        if missing:
            raise ValueError(f"sample {d.get('id', '?')!r} lacks required keys {sorted(missing)}")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        extra = {k: v for k, v in d.items() if k not in cls.__dataclass_fields__}
        s = cls(**known)
        s.meta = {**extra, **s.meta}
        s.duration = float(s.duration)
        s.id = str(s.id)
        s.spans = [[float(a), float(b)] for a, b in (sp[:2] for sp in s.spans)]
        return s


@dataclass
class Prediction:
    """One line of the canonical prediction JSONL: spans ranked best first.

    Each span is ``[start, end]`` or ``[start, end, score]``. Spatio-temporal grounding answers
    add ``tube``: ``{"span": [s, e], "boxes": {frame_time: [x0, y0, x1, y1]}}`` (boxes in [0, 1]).
    """
    id: str
    spans: list[list[float]] = field(default_factory=list)
    answer: str | None = None
    tube: dict | None = None

    def to_dict(self) -> dict:
        d = {"id": self.id, "spans": self.spans}
        if self.answer is not None:
            d["answer"] = self.answer
        if self.tube is not None:
            d["tube"] = self.tube
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Prediction":
        if "id" not in d or "spans" not in d:
            raise ValueError(f"prediction line needs 'id' and 'spans', got keys {sorted(d)}")
        return cls(id=str(d["id"]), spans=[[float(x) for x in sp] for sp in d["spans"]], answer=d.get("answer"),
                   tube=d.get("tube"))


class QuirkReport(Counter):
    """Counts of what each data-quirk policy touched, by policy name."""

    def summary(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.items())) or "none"


def clean_spans(spans: Iterable[Iterable[float]], duration: float, report: QuirkReport) -> list[list[float]]:
    """Apply the span policies and count each one that fires.

    Policies (the same for every format):
    - ``end_past_duration``: end > duration -> clipped to the duration (start kept);
    - ``start_past_duration``: start >= duration -> span rejected (nothing of it is in the video);
    - ``negative_start``: start < 0 -> clipped to 0;
    - ``reversed``: end < start -> the two are swapped (annotators swap them; the interval is intact);
    - ``empty``: end == start -> rejected (a zero-length span has no IoU with anything).
    """
    out = []
    for sp in spans:
        s, e = float(list(sp)[0]), float(list(sp)[1])
        if e < s:
            s, e = e, s
            report["reversed"] += 1
        if s < 0:
            s = 0.0
            report["negative_start"] += 1
        if duration > 0 and s >= duration:
            report["start_past_duration"] += 1
            continue
        if duration > 0 and e > duration:
            e = duration
            report["end_past_duration"] += 1
        if e == s:
            report["empty"] += 1
            continue
        out.append([s, e])
    return out


def round_span(start: float, end: float, duration: float, digits: int = 2,
               duration_digits: int = 3) -> tuple[float, float, float]:
    """``(start, end, duration)`` rounded for display so the span never passes the shown duration.

    Rounding the end to ``digits`` and the duration to ``duration_digits`` separately can print
    an end past the duration (a span clipped at 14.977 s shows 14.98 > 14.977). Here the
    duration is rounded first and the rounded span is then clipped into ``[0, rounded
    duration]``, so ``0 <= start <= end <= duration`` holds for the printed numbers too.
    """
    d = round(float(duration), duration_digits)
    s = min(max(round(float(start), digits), 0.0), d)
    e = min(max(round(float(end), digits), s), d)
    return s, e, d


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """The records of a UTF-8 JSONL file; a line that is too long, too deeply nested, not UTF-8 or
    not JSON is a ValueError naming the file and line."""
    with open(path, "rb") as f:
        for n, raw in read_lines(f):
            if raw is None:
                raise ValueError(f"{path}:{n}: {line_too_long(n)}")
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 text (bad byte at offset {e.start}); "
                                 "re-encode the file as UTF-8") from None
            if not line:
                continue
            try:
                yield loads(line, f"{path}:{n}")
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows atomically (temp file + rename). Returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def load_samples(path: str | Path) -> list[Sample]:
    return [Sample.from_dict(d) for d in read_jsonl(path)]


def save_samples(path: str | Path, samples: Iterable[Sample]) -> int:
    return write_jsonl(path, (s.to_dict() for s in samples))


def load_predictions(path: str | Path) -> dict[str, Prediction]:
    return {p.id: p for p in (Prediction.from_dict(d) for d in read_jsonl(path))}
