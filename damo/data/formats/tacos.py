"""TACoS (Regneri et al., TACL 2013) in the 2D-TAN split (microsoft/VideoX, 2D-TAN/data/TACoS):
``{"sXX-dYY.avi": {"timestamps": [[start_frame, end_frame], ...], "sentences": [...], "fps", "num_frames"}}``.

Frames become seconds as 2D-TAN reads them: ``t = frame / fps``, ``duration = num_frames / fps``.

Sample ids: ``f"{video}#{k}"`` with ``k`` the sentence's zero-based index in the video's list.
Task ``grounding``; ``meta`` keeps ``fps``, ``num_frames`` and the raw frame pair. Spans go through
``clean_spans`` (2D-TAN drops pairs with start >= end; we swap reversed ones and reject empty ones,
counted); an empty sentence is ``empty_query``; a query left with no span is ``sample_without_spans``.

Predictions: 2D-TAN has no prediction file of its own, so they are canonical JSONL.
"""
from __future__ import annotations

from pathlib import Path

from damo.data.schema import Prediction, QuirkReport, Sample, clean_spans, load_predictions

from .common import as_span, canonical_predictions, clean_text, pred_dict, read_json, require, to_float

NAME = "tacos"


def load(path: str | Path, report: QuirkReport, durations: str | Path | None = None) -> list[Sample]:
    """Load a 2D-TAN TACoS JSON (fps and frame counts are in the file)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{video: {{timestamps, sentences, fps, num_frames}}}}")
    samples = []
    for video, rec in data.items():
        where = f"{path}: video {video!r}"
        require(rec, ("timestamps", "sentences", "fps", "num_frames"), where)
        fps = to_float(rec["fps"], "fps", where)
        if fps <= 0:
            raise ValueError(f"{where}: fps must be positive, got {fps}; fix the record")
        duration = to_float(rec["num_frames"], "num_frames", where) / fps
        if len(rec["timestamps"]) != len(rec["sentences"]):
            raise ValueError(f"{where}: {len(rec['timestamps'])} timestamps but {len(rec['sentences'])} "
                             f"sentences; they must be aligned")
        for k, (frames, sentence) in enumerate(zip(rec["timestamps"], rec["sentences"])):
            f0, f1 = as_span(frames, f"{where} sentence {k}")
            query = clean_text(sentence, report, where, single_line=True)
            if not query:
                report["empty_query"] += 1
                continue
            spans = clean_spans([[f0 / fps, f1 / fps]], duration, report)
            if not spans:
                report["sample_without_spans"] += 1
                continue
            samples.append(Sample(id=f"{video}#{k}", video=str(video), duration=duration, task="grounding",
                                  query=query, spans=spans, source=NAME,
                                  meta={"fps": rec["fps"], "num_frames": rec["num_frames"], "frames": list(frames)}))
    return samples


write_predictions = canonical_predictions   # the canonical JSONL, in sample order


def read_predictions(path: str | Path, samples: list[Sample]) -> dict[str, Prediction]:
    return pred_dict(load_predictions(path), samples)
