"""ActivityNet Captions (Krishna et al., ICCV 2017): ``{v_id: {duration, timestamps, sentences}}``.

This is the layout of the official ``train.json``/``val_1.json``/``val_2.json`` (also what 2D-TAN
and PDVC ship, and PDVC's YouCook2 conversion). Two ways to read it:

- ``mode="dense"`` (default): one ``dense_caption`` sample per video, id = ``v_id``; ``spans`` and
  ``captions`` are aligned, ``meta["event_ids"]`` keeps each event's index in the file;
- ``mode="grounding"``: one ``grounding`` sample per sentence, id = ``f"{v_id}#{k}"`` with ``k``
  the sentence's zero-based index in the file (stable when other sentences are rejected).

Quirks: segments ending after ``duration`` are clipped (``end_past_duration``; 134 in val_1);
sentences padded with spaces are stripped (``text_stripped``; 11,639 in val_1) and a line
break inside one becomes a space (``line_break_in_text``; one in val_1); an event whose span is rejected
drops its caption with it; an empty sentence is ``empty_caption`` (dense) or ``empty_query``
(grounding) and dropped; a video left with no event is ``sample_without_spans``.

Predictions: the ActivityNet dense-captioning challenge JSON
``{"version", "results": {v_id: [{"sentence", "timestamp": [s, e]}]}, "external_data"}``.
A dense prediction's ``answer`` holds one caption per line, aligned with its spans. Grounding
predictions are written as entries whose ``sentence`` is the query, one per span, best first, in
sample order. The format cannot tell apart identical queries of one video (val_1 has two such
pairs): reading splits their entries evenly in file order (exact when every prediction has the
same number of spans, e.g. top-1 or top-5), and gives all entries to each if they do not divide.
"""
from __future__ import annotations

from pathlib import Path

from damo.data.schema import Prediction, QuirkReport, Sample

from .common import as_span, clean_each, clean_text, pred_dict, read_json, require, to_float, write_json

NAME = "activitynet-captions"
MODES = ("dense", "grounding")
DENSE_QUERY = "Localize a series of events in the video and describe each one."


def load(path: str | Path, report: QuirkReport, durations: str | Path | None = None,
         mode: str = "dense") -> list[Sample]:
    """Load an ActivityNet-Captions-style JSON (durations are in the file)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{video_id: {{duration, timestamps, sentences}}}}")
    return samples_from_videos(data, path, report, mode=mode, source=NAME)


def samples_from_videos(videos: dict, path: str | Path, report: QuirkReport, mode: str,
                        source: str) -> list[Sample]:
    """Turn ``{v_id: {duration, timestamps, sentences}}`` into samples (shared with YouCook2)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    samples = []
    for vid, rec in videos.items():
        where = f"{path}: video {vid!r}"
        require(rec, ("duration", "timestamps", "sentences"), where)
        duration = to_float(rec["duration"], "duration", where)
        if duration <= 0:
            raise ValueError(f"{where}: duration must be positive, got {duration}; fix the record")
        if len(rec["timestamps"]) != len(rec["sentences"]):
            raise ValueError(f"{where}: {len(rec['timestamps'])} timestamps but {len(rec['sentences'])} "
                             f"sentences; they must be aligned")
        raw = [as_span(ts, where) for ts in rec["timestamps"]]
        texts = [clean_text(t, report, where, single_line=True) for t in rec["sentences"]]
        if mode == "grounding":
            for k, (span, text) in enumerate(zip(raw, texts)):
                if not text:
                    report["empty_query"] += 1
                    continue
                kept = clean_each([span], duration, report)[0]
                if kept is None:
                    report["sample_without_spans"] += 1
                    continue
                samples.append(Sample(id=f"{vid}#{k}", video=str(vid), duration=duration, task="grounding",
                                      query=text, spans=[kept], source=source))
            continue
        spans, captions, ids = [], [], []
        for k, (kept, text) in enumerate(zip(clean_each(raw, duration, report), texts)):
            if kept is None:
                continue
            if not text:
                report["empty_caption"] += 1
                continue
            spans.append(kept)
            captions.append(text)
            ids.append(k)
        if not spans:
            report["sample_without_spans"] += 1
            continue
        samples.append(Sample(id=str(vid), video=str(vid), duration=duration, task="dense_caption",
                              query=DENSE_QUERY, spans=spans, captions=captions, source=source,
                              meta={"event_ids": ids}))
    return samples


def write_predictions(preds: dict[str, Prediction] | list[Prediction], samples: list[Sample],
                      path: str | Path) -> None:
    """Write the ActivityNet challenge JSON (see module docstring for the caption convention)."""
    by_id = pred_dict(preds, samples)
    results: dict[str, list[dict]] = {}
    for s in samples:
        if s.id not in by_id:
            continue
        p = by_id[s.id]
        entries = results.setdefault(s.video, [])
        if s.task == "dense_caption":
            lines = (p.answer or "").split("\n")
            for k, sp in enumerate(p.spans):
                entries.append({"sentence": lines[k] if k < len(lines) else "",
                                "timestamp": [float(sp[0]), float(sp[1])]})
        else:
            entries.extend({"sentence": s.query, "timestamp": [float(sp[0]), float(sp[1])]} for sp in p.spans)
    write_json(path, {"version": "VERSION 1.0", "results": results,
                      "external_data": {"used": False, "details": ""}})


def read_predictions(path: str | Path, samples: list[Sample]) -> dict[str, Prediction]:
    """Read the ActivityNet challenge JSON back into canonical predictions for ``samples``."""
    data = read_json(path)
    require(data, ("results",), str(path))
    results = data["results"]
    if not isinstance(results, dict):
        raise ValueError(f"{path}: 'results' must map video id -> list of {{sentence, timestamp}}")
    parsed: dict[str, list[tuple[str, list[float]]]] = {}
    for vid, entries in results.items():
        rows = []
        for k, entry in enumerate(entries):
            where = f"{path}: results[{vid!r}][{k}]"
            require(entry, ("sentence", "timestamp"), where)
            span = as_span(entry["timestamp"], where)
            if "score" in entry:
                span.append(to_float(entry["score"], "score", where))
            rows.append((str(entry["sentence"]), span))
        parsed[str(vid)] = rows
    groups: dict[tuple[str, str], list[str]] = {}
    out = {}
    for s in samples:
        if s.video not in parsed:
            continue
        rows = parsed[s.video]
        if s.task == "dense_caption":
            out[s.id] = Prediction(id=s.id, spans=[sp for _, sp in rows], answer="\n".join(t for t, _ in rows))
        else:
            groups.setdefault((s.video, s.query), []).append(s.id)
    for (video, query), ids in groups.items():
        spans = [sp for t, sp in parsed[video] if t.strip() == query]
        if not spans:
            continue
        k = len(spans) // len(ids) if len(spans) % len(ids) == 0 else 0
        for i, sid in enumerate(ids):
            out[sid] = Prediction(id=sid, spans=spans[i * k:(i + 1) * k] if k else list(spans))
    return out
