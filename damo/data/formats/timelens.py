"""TimeLens-Bench (TencentARC/TimeLens): Charades-, ActivityNet- and QVHighlights-TimeLens, the re-annotated
grounding test sets TimeLens, Qwen2.5-VL and Qwen3-VL report on. One JSON object per benchmark,
``{"video_id": {"duration": s, "spans": [[s, e], ...], "queries": [...]}}`` in seconds, query ``k`` grounded
by span ``k`` (the layout ``timelens/dataset/timelens_data.py`` reads, TencentARC/TimeLens at
5d90c067246ddb11db3203adbb0085bdc48d9e5e).

Queries are cleaned as TimeLens' loader cleans them before prompting: runs of whitespace become one
space and surrounding periods are dropped (counted as ``query_normalised``). Spans go through
``clean_spans``; an empty query is ``empty_query``; a query left with no span is ``sample_without_spans``.

Sample ids: ``f"{video_id}#{k}"``. Videos are ``{video_id}.mp4`` under the benchmark's video folder
(``--video-root``). Predictions: canonical JSONL.
"""
from __future__ import annotations

import re
from pathlib import Path

from damo.data.schema import Prediction, QuirkReport, Sample, clean_spans, write_jsonl

from .common import as_span, clean_text, pred_dict, read_json, require, to_duration

NAME = "timelens"


def load(path: str | Path, report: QuirkReport, durations: str | Path | None = None) -> list[Sample]:
    """Load one TimeLens-Bench JSON (durations are in the file)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{video_id: {{duration, spans, queries}}}}")
    samples = []
    for video, rec in data.items():
        where = f"{path}: video {video!r}"
        require(rec, ("duration", "spans", "queries"), where)
        duration = to_duration(rec["duration"], where)
        if len(rec["spans"]) != len(rec["queries"]):
            raise ValueError(f"{where}: {len(rec['spans'])} spans but {len(rec['queries'])} queries; they must "
                             "be aligned")
        for k, (span, text) in enumerate(zip(rec["spans"], rec["queries"])):
            raw = clean_text(text, report, where, single_line=True)
            query = re.sub(r"\s+", " ", raw).strip(".").strip()
            if query != raw:
                report["query_normalised"] += 1
            if not query:
                report["empty_query"] += 1
                continue
            spans = clean_spans([as_span(span, f"{where} query {k}")], duration, report)
            if not spans:
                report["sample_without_spans"] += 1
                continue
            samples.append(Sample(id=f"{video}#{k}", video=str(video), duration=duration, task="grounding",
                                  query=query, spans=spans, source=NAME))
    return samples


def write_predictions(preds: dict[str, Prediction] | list[Prediction], samples: list[Sample],
                      path: str | Path) -> None:
    """Canonical prediction JSONL, in sample order."""
    by_id = pred_dict(preds, samples)
    write_jsonl(path, (by_id[s.id].to_dict() for s in samples if s.id in by_id))

