"""DiDeMo (Hendricks et al., ICCV 2017; LisaAnne/LocalizingMoments): a JSON list of
``{"video", "times": [[s_seg, e_seg], ...], "description", "annotation_id", ...}``.

Videos were annotated in 5-s chunks (indices 0-5; videos truncated to 30 s), one ``times`` pair
per annotator (about four). Chunk pair ``[s, e]`` is the span ``[5*s, 5*(e+1)]`` seconds.

Sample ids: ``str(annotation_id)``. Task ``grounding``; ``spans`` are the distinct annotator spans,
most agreed first (ties in annotator order), so ``spans[0]`` is the consensus moment; ``meta["times"]``
keeps every annotator's raw pair (the official evaluator averages over the best three annotators).

Durations: the annotation has none. With ``durations=`` (CSV or JSON, see ``common.read_durations``)
each video's real length is used, and the last chunk's end is clipped to it (``end_past_duration``,
as the dataset README prescribes for videos shorter than 30 s). Without it the duration is
``5 * num_segments`` when the record has ``num_segments``, else 30 s, counted as ``duration_assumed``.

Predictions: the evaluator's own layout (``utils/eval.py``), a JSON list aligned with the samples,
each item the 21 chunk pairs ``[s, e]`` (0 <= s <= e <= 5) ranked best first. Predicted spans in
seconds map to their best-IoU chunk pair; the remaining pairs follow by IoU with the top-1 span.
Every sample needs a prediction, since the layout is positional.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from damo.data.schema import Prediction, QuirkReport, Sample, clean_spans
from damo.spans import span_iou

from .common import clean_text, pred_dict, read_durations, read_json, require, to_float, write_json

NAME = "didemo"
SEGMENT = 5.0
N_SEGMENTS = 6
CANDIDATES = [(s, e) for s in range(N_SEGMENTS) for e in range(s, N_SEGMENTS)]  # the 21 moments


def chunks_to_span(pair: list[int] | tuple[int, int]) -> list[float]:
    return [SEGMENT * pair[0], SEGMENT * (pair[1] + 1)]


def load(path: str | Path, report: QuirkReport, durations: str | Path | None = None) -> list[Sample]:
    """Load a DiDeMo ``*_data.json`` list."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of DiDeMo annotations")
    lengths = read_durations(durations) if durations is not None else None
    samples = []
    for k, rec in enumerate(data):
        where = f"{path}: record {k}"
        require(rec, ("video", "times", "description", "annotation_id"), where)
        video = str(rec["video"])
        if lengths is not None:
            if video not in lengths:
                raise ValueError(f"{where}: video {video!r} is not in the durations file {durations}; "
                                 f"pass a durations file that covers every video")
            duration = lengths[video]
        else:
            duration = SEGMENT * int(rec["num_segments"]) if "num_segments" in rec else SEGMENT * N_SEGMENTS
            report["duration_assumed"] += 1
        query = clean_text(rec["description"], report, where, single_line=True)
        if not query:
            report["empty_query"] += 1
            continue
        times = rec["times"]
        if not isinstance(times, list) or not all(isinstance(t, (list, tuple)) and len(t) == 2 for t in times):
            raise ValueError(f"{where}: 'times' must be a list of [start_chunk, end_chunk] pairs, got {times!r}")
        raw = [chunks_to_span([to_float(a, "chunk", where), to_float(b, "chunk", where)]) for a, b in times]
        kept = clean_spans(raw, duration, report)
        if not kept:
            report["sample_without_spans"] += 1
            continue
        votes = Counter(tuple(sp) for sp in kept)
        first = {}
        for i, sp in enumerate(kept):
            first.setdefault(tuple(sp), i)
        spans = [list(sp) for sp in sorted(votes, key=lambda sp: (-votes[sp], first[sp]))]
        meta = {"times": times, "annotation_id": rec["annotation_id"]}
        if "num_segments" in rec:
            meta["num_segments"] = rec["num_segments"]
        samples.append(Sample(id=str(rec["annotation_id"]), video=video, duration=duration, task="grounding",
                              query=query, spans=spans, source=NAME, meta=meta))
    return samples


def rank_candidates(spans: list[list[float]]) -> list[list[int]]:
    """The 21 chunk pairs, best first: each predicted span's best pair, then the rest by IoU with the top-1."""
    top = [float(x) for x in spans[0][:2]] if spans else [0.0, SEGMENT]
    iou = span_iou([chunks_to_span(c) for c in CANDIDATES], [sp[:2] for sp in spans] + [top])   # (21, P + 1)
    ranked: list[tuple[int, int]] = []
    for j in range(len(spans)):
        best = CANDIDATES[int(np.argmax(iou[:, j]))]                 # the first of equally good pairs
        if best not in ranked:
            ranked.append(best)
    rest = sorted((k for k, c in enumerate(CANDIDATES) if c not in ranked), key=lambda k: -iou[k, -1])
    return [list(c) for c in ranked] + [list(CANDIDATES[k]) for k in rest]


def write_predictions(preds: dict[str, Prediction] | list[Prediction], samples: list[Sample],
                      path: str | Path) -> None:
    """Write the evaluator's positional list of ranked chunk pairs."""
    by_id = pred_dict(preds, samples)
    missing = [s.id for s in samples if s.id not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} DiDeMo sample(s) have no prediction (first: {missing[:3]}); "
                         f"the evaluator's layout is positional, so predict every sample")
    write_json(path, [rank_candidates(by_id[s.id].spans) for s in samples])


def read_predictions(path: str | Path, samples: list[Sample]) -> dict[str, Prediction]:
    """Read the positional ranked chunk pairs back to spans in seconds (all 21, best first)."""
    data = read_json(path)
    if not isinstance(data, list) or len(data) != len(samples):
        raise ValueError(f"{path}: expected a list of {len(samples)} ranked chunk-pair lists, one per sample "
                         f"in annotation order")
    out = {}
    for s, ranked in zip(samples, data):
        spans = [chunks_to_span([int(a), int(b)]) for a, b in ranked]
        out[s.id] = Prediction(id=s.id, spans=spans)
    return out
