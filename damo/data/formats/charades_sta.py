"""Charades-STA (Gao et al., ICCV 2017): ``VID start end##sentence`` text files, seconds.

The layout is the one distributed with 2D-TAN (microsoft/VideoX) and used by TimeChat and
E.T. Bench. The txt has no durations: they come from the ``length`` column of Charades'
``Charades_v1_{train,test}.csv`` (pass ``durations=``; otherwise the CSVs next to the txt
are used).

Sample ids: the zero-based line number in the txt, as a string (TimeChat numbers the
queries this way), so ids stay stable when some lines are rejected.

Quirks in the public files (policies from ``schema.clean_spans``): spans ending after the
video's ``length`` are clipped; four train spans have end < start and are swapped, and three
of those then start at or after the video's end and are rejected, which leaves their samples
with no span: such samples are rejected and counted as ``sample_without_spans``. An empty
sentence is rejected and counted as ``empty_query``.

``raw_spans=True`` (what scoring uses unless asked to clip) keeps each span exactly as the txt
has it: TimeChat, VTimeLLM and E.T. Bench score against these raw spans, so an end past the
video's ``length`` stays (counted as ``end_past_duration_kept``). Only a reversed span is still
swapped and an empty one rejected (counted as above). Durations are then optional: a video
missing from the CSV (or with no CSV at all) gets its span's end as duration.

Predictions: canonical JSONL, plus a txt in the same ``VID start end##sentence`` layout that
holds each sample's top-1 span.
"""
from __future__ import annotations

from pathlib import Path

from damo.data.schema import Prediction, QuirkReport, Sample, clean_spans, load_predictions, write_jsonl

from .common import clean_text, pred_dict, read_durations, read_text, to_float, write_lines

NAME = "charades-sta"
CSV_NAMES = ("Charades_v1_train.csv", "Charades_v1_test.csv")


def _durations(path: Path, durations: str | Path | None, required: bool = True) -> dict[str, float]:
    if durations is not None:
        return read_durations(durations)
    found = [path.parent / n for n in CSV_NAMES if (path.parent / n).is_file()]
    if not found and not required:
        return {}
    if not found:
        raise ValueError(f"{path}: Charades-STA has no durations; pass --durations with "
                         f"Charades_v1_train.csv or Charades_v1_test.csv (column 'length')")
    out: dict[str, float] = {}
    for p in found:
        out.update(read_durations(p))
    return out


def _parse_line(line: str, where: str) -> tuple[str, float, float, str]:
    head, sep, sentence = line.partition("##")
    fields = head.split()
    if not sep or len(fields) != 3:
        raise ValueError(f"{where}: expected 'VID start end##sentence', got {line[:80]!r}")
    return (fields[0], to_float(fields[1], "start", where), to_float(fields[2], "end", where), sentence)


def load(path: str | Path, report: QuirkReport, durations: str | Path | None = None,
         raw_spans: bool = False) -> list[Sample]:
    """Load one Charades-STA txt; durations from the Charades CSV (see module docstring).

    ``raw_spans`` keeps the txt's spans unclipped, as the official evaluators score them.
    """
    path = Path(path)
    text = read_text(path)
    lengths = _durations(path, durations, required=not raw_spans)
    samples = []
    missing: list[str] = []
    for n, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        where = f"{path}:{n + 1}"
        vid, s, e, sentence = _parse_line(line, where)
        if vid not in lengths and not raw_spans:
            missing.append(vid)
            continue
        query = clean_text(sentence, report, where, single_line=True)
        if not query:
            report["empty_query"] += 1
            continue
        if raw_spans:
            if e < s:
                s, e = e, s
                report["reversed"] += 1
            duration = lengths.get(vid, e)
            if e > duration:
                report["end_past_duration_kept"] += 1
            spans = [[s, e]] if e > s else []
            if not spans:
                report["empty"] += 1
        else:
            duration = lengths[vid]
            spans = clean_spans([[s, e]], duration, report)
        if not spans:
            report["sample_without_spans"] += 1
            continue
        samples.append(Sample(id=str(n), video=vid, duration=duration, task="grounding", query=query,
                              spans=spans, source=NAME))
    if missing:
        raise ValueError(f"{path}: {len(missing)} queries name videos with no duration "
                         f"(first: {sorted(set(missing))[:3]}); pass --durations with the Charades CSV "
                         f"of the same split")
    return samples


def write_predictions(preds: dict[str, Prediction] | list[Prediction], samples: list[Sample],
                      path: str | Path) -> None:
    """Write canonical JSONL and a top-1 txt beside it.

    ``path`` ending in ``.txt`` names the txt (JSONL goes to the same stem + ``.jsonl``);
    any other path names the JSONL (txt goes to the same stem + ``.txt``).
    """
    path = Path(path)
    txt, jsonl = (path, path.with_suffix(".jsonl")) if path.suffix == ".txt" else (path.with_suffix(".txt"), path)
    by_id = pred_dict(preds, samples)
    ordered = [(s, by_id[s.id]) for s in samples if s.id in by_id]
    write_jsonl(jsonl, (p.to_dict() for _, p in ordered))
    write_lines(txt, (f"{s.video} {float(p.spans[0][0])!r} {float(p.spans[0][1])!r}##{s.query}"
                      for s, p in ordered if p.spans))


def read_predictions(path: str | Path, samples: list[Sample]) -> dict[str, Prediction]:
    """Read canonical JSONL, or a top-1 txt matched to samples by (video, sentence) in file order."""
    path = Path(path)
    if path.suffix != ".txt":
        return load_predictions(path)
    queue: dict[tuple[str, str], list[str]] = {}
    for s in samples:
        queue.setdefault((s.video, s.query), []).append(s.id)
    out = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        vid, s, e, sentence = _parse_line(line, f"{path}:{n}")
        ids = queue.get((vid, sentence.strip()))
        if not ids:
            raise ValueError(f"{path}:{n}: no sample left for video {vid!r} with this sentence; "
                             f"predictions must come from the same annotation file")
        sid = ids.pop(0)
        out[sid] = Prediction(id=sid, spans=[[s, e]])
    return out
