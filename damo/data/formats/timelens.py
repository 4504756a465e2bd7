"""TimeLens-Bench (TencentARC/TimeLens): Charades-, ActivityNet- and QVHighlights-TimeLens, the re-annotated
grounding test sets TimeLens, Qwen2.5-VL and Qwen3-VL report on. One JSON object per benchmark,
``{"video_id": {"duration": s, "spans": [[s, e], ...], "queries": [...]}}`` in seconds, query ``k`` grounded
by span ``k`` (the layout ``timelens/dataset/timelens_data.py`` reads, TencentARC/TimeLens at
5d90c067246ddb11db3203adbb0085bdc48d9e5e).

Queries are cleaned as TimeLens' loader cleans them before prompting: runs of whitespace become one
space and surrounding periods are dropped (counted as ``query_normalised``). Spans go through
``clean_spans``; an empty query is ``empty_query``; a query left with no span is ``sample_without_spans``.

``raw_spans=True`` keeps each span as the file writes it, as TimeLens' evaluation scores it.

Sample ids: ``f"{video_id}#{k}"``. Videos are ``{video_id}.mp4`` under the benchmark's video folder
(``--video-root``). Predictions: canonical JSONL, or the files TimeLens' ``evaluation/eval_dataloader.py``
writes (JSONL of ``{"{video_id}.mp4>>>{query}>>>{span}": {"timestamps", "answers", ...}}``, or one JSON
object of such keys).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from damo.data.schema import Prediction, QuirkReport, Sample, clean_spans

from .common import as_span, canonical_predictions, clean_text, read_json, read_jsonl, require, to_duration

NAME = "timelens"


def load(path: str | Path, report: QuirkReport, durations: str | Path | None = None,
         raw_spans: bool = False) -> list[Sample]:
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
            span = as_span(span, f"{where} query {k}")
            spans = [span] if raw_spans else clean_spans([span], duration, report)
            if not spans:
                report["sample_without_spans"] += 1
                continue
            samples.append(Sample(id=f"{video}#{k}", video=str(video), duration=duration, task="grounding",
                                  query=query, spans=spans, source=NAME))
    return samples


write_predictions = canonical_predictions   # the canonical JSONL, in sample order



def read_predictions(path: str | Path, samples: list[Sample]) -> dict[str, Prediction]:
    """TimeLens' own prediction files: each key names a gt query (video file, query, first span); its
    ``timestamps`` become the spans and its ``answers`` the answer. A key repeated in a JSONL file keeps its
    last value, as the official ``compute_metrics.py`` merges the lines."""
    path = Path(path)
    if path.suffix == ".json":
        records = [(f"{path}", read_json(path))]
    else:
        records = [(f"{path}:{n}", r) for n, r in read_jsonl(path)]
    ids = {(f"{s.video}.mp4", s.query, tuple(s.spans[0])): s.id for s in samples}
    out: dict[str, Prediction] = {}
    for where, rec in records:
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object of 'video.mp4>>>query>>>span' keys")
        for key, value in rec.items():
            video, _, rest = key.partition(">>>")
            query, _, span = rest.rpartition(">>>")
            try:
                gt = tuple(float(x) for x in json.loads(span))
            except (ValueError, TypeError):
                raise ValueError(f"{where}: key {key!r} must be 'video.mp4>>>query>>>[start, end]'") from None
            if (video, query, gt) not in ids:
                raise ValueError(f"{where}: no query of the gt file has key {key!r}; score it against the "
                                 "TimeLens-Bench file it was made from")
            value = require(value, ("timestamps",), f"{where}: {key!r}")
            spans = [as_span(sp, f"{where}: {key!r}") for sp in value["timestamps"]]
            answer = value.get("answers")
            out[ids[video, query, gt]] = Prediction(id=ids[video, query, gt], spans=spans,
                                                    answer=answer if isinstance(answer, str) else None)
    return out
