"""Helpers shared by the format modules and the evaluators that read peers' files: strict file
reading, text policies, number formatting.

Every reader names the offending file (and line or record) and says what to do, so a bad
annotation file fails where it enters the system instead of deep inside training.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterable, Iterator

from damo.data.schema import Prediction, QuirkReport, Sample, clean_spans, write_jsonl
from damo.textio import MAX_LINE_BYTES, line_too_long, loads


def read_text(path: str | Path) -> str:
    """Read a whole UTF-8 file; a missing file or foreign encoding gets an actionable error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file; check the path")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); "
                         f"re-encode the file as UTF-8") from None


def read_json(path: str | Path) -> object:
    text = read_text(path)
    try:
        return loads(text, str(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each non-blank line."""
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            raise ValueError(f"{path}:{n}: {line_too_long(n)}")
        try:
            rec = loads(line, f"{path}:{n}")
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object per line, got {type(rec).__name__}")
        yield n, rec


def write_json(path: str | Path, obj: object) -> None:
    """Write JSON atomically (temp file + rename), like ``schema.write_jsonl``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
    tmp.replace(path)


def write_lines(path: str | Path, lines: Iterable[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    tmp.replace(path)


def require(rec: object, keys: Iterable[str], where: str) -> dict:
    """Check a record is an object holding ``keys``; ``where`` names file and record."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in keys if k not in rec]
    if missing:
        raise ValueError(f"{where}: missing required key(s) {missing}; "
                         f"the record has {sorted(rec)}; fix or remove this record")
    return rec


def to_float(x: object, what: str, where: str) -> float:
    """A finite number (int, float or numeric text); NaN, infinities and booleans are errors."""
    if isinstance(x, bool):
        raise ValueError(f"{where}: {what} must be a number, got {x!r}")
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} must be a number, got {x!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{where}: {what} must be a finite number, got {x!r}; fix or remove this record")
    return v


def to_duration(x: object, where: str, what: str = "duration") -> float:
    """A video duration: a finite number of seconds above 0."""
    v = to_float(x, what, where)
    if v <= 0:
        raise ValueError(f"{where}: {what} must be positive, got {x!r}; fix or remove this record")
    return v


def as_span(x: object, where: str) -> list[float]:
    if not isinstance(x, (list, tuple)) or len(x) < 2:
        raise ValueError(f"{where}: a span must be [start, end], got {x!r}")
    return [to_float(x[0], "span start", where), to_float(x[1], "span end", where)]


def clean_text(text: object, report: QuirkReport, where: str, single_line: bool = False) -> str:
    """Strip surrounding whitespace, counted as ``text_stripped`` (annotations often pad sentences).

    ``single_line`` is for captions and one-sentence queries: a line break inside one (ActivityNet
    val_1 has one) becomes a space, counted as ``line_break_in_text``, so that one caption stays
    one line in prediction files that hold a caption per line.
    """
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected text, got {type(text).__name__}")
    stripped = text.strip()
    if stripped != text:
        report["text_stripped"] += 1
    if single_line and ("\n" in stripped or "\r" in stripped):
        stripped = " ".join(part.strip() for part in stripped.splitlines())
        report["line_break_in_text"] += 1
    return stripped


def clean_each(spans: list[list[float]], duration: float, report: QuirkReport) -> list[list[float] | None]:
    """``clean_spans`` one span at a time, so callers can keep captions aligned with surviving spans."""
    out: list[list[float] | None] = []
    for sp in spans:
        kept = clean_spans([sp], duration, report)
        out.append(kept[0] if kept else None)
    return out


def read_durations(path: str | Path) -> dict[str, float]:
    """Video durations from a CSV (``id``/``video`` + ``length``/``duration`` columns) or a JSON object.

    The CSV shape is Charades' ``Charades_v1_*.csv`` (column ``length``, seconds).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        obj = read_json(path)
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: a durations JSON must map video id -> seconds")
        return {str(k): to_duration(v, f"{path}: video {k!r}") for k, v in obj.items()}
    rows = list(csv.DictReader(read_text(path).splitlines()))
    if not rows:
        raise ValueError(f"{path}: durations CSV has no rows")
    cols = set(rows[0])
    id_col = next((c for c in ("id", "video", "vid") if c in cols), None)
    len_col = next((c for c in ("length", "duration") if c in cols), None)
    if id_col is None or len_col is None:
        raise ValueError(f"{path}: durations CSV needs an id column (id/video) and a length column "
                         f"(length/duration); it has {sorted(cols)}")
    out = {}
    for n, r in enumerate(rows, 2):
        out[r[id_col]] = to_duration(r[len_col], f"{path}:{n}", len_col)
    return out


def pred_dict(preds: dict[str, Prediction] | list[Prediction], samples: list[Sample]) -> dict[str, Prediction]:
    """Normalise predictions to a dict and refuse ids that no sample has (a sign of mixed-up files)."""
    if isinstance(preds, dict):
        out = dict(preds)
    else:
        out = {}
        for p in preds:
            if p.id in out:
                raise ValueError(f"duplicate prediction id {p.id!r}; keep one prediction per sample")
            out[p.id] = p
    known = {s.id for s in samples}
    unknown = [k for k in out if k not in known]
    if unknown:
        raise ValueError(f"{len(unknown)} prediction id(s) match no sample (first: {unknown[:3]}); "
                         f"predictions must use the sample ids of the same annotation file")
    return out


def fmt_time(x: float) -> str:
    """Seconds as short text with up to 3 decimals, always with a decimal point ('12.0', '6.337')."""
    s = f"{float(x):.3f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def span_text(spans: list[list[float]]) -> str:
    """Spans as the text answer E.T. Bench's parser reads: '12.0 - 15.5 seconds, 20.0 - 22.0 seconds'."""
    return ", ".join(f"{fmt_time(sp[0])} - {fmt_time(sp[1])} seconds" for sp in spans)


def canonical_predictions(preds: dict[str, Prediction] | list[Prediction], samples: list[Sample],
                      path: str | Path) -> None:
    """Canonical prediction JSONL, in sample order."""
    by_id = pred_dict(preds, samples)
    write_jsonl(path, (by_id[s.id].to_dict() for s in samples if s.id in by_id))
