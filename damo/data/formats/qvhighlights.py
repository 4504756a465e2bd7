"""QVHighlights (Lei et al., NeurIPS 2021; jayleicn/moment_detr): one JSON object per line with
``qid, query, duration, vid, relevant_windows, relevant_clip_ids, saliency_scores``.

Sample ids: ``str(qid)``. Task ``highlight``: spans are the relevant windows (moment retrieval);
``meta`` keeps ``qid``, ``vid``, ``relevant_clip_ids`` and ``saliency_scores`` (2-s clips, three
annotators, 0-4) for highlight detection. Records without ``relevant_windows`` (the hidden test
release) load with no spans and are counted as ``unlabelled``; records whose windows all vanish
under ``clean_spans`` are rejected and counted as ``sample_without_spans``.

Predictions: moment_detr's submission JSONL, one line per query with ``qid, query, vid,
pred_relevant_windows [[s, e, score], ...], pred_saliency_scores``. Our canonical predictions
carry no per-clip saliency, so the written ``pred_saliency_scores`` give each 2-s clip the best
score of the predicted windows overlapping it (0 elsewhere); unscored spans get rank scores
1, 1/2, 1/3, ... so their order is kept.
"""
from __future__ import annotations

import math
from pathlib import Path

from damo.data.schema import Prediction, QuirkReport, Sample, clean_spans, write_jsonl
from damo.spans import with_rank_scores

from .common import as_span, clean_text, pred_dict, read_jsonl, require, to_duration, to_float

NAME = "qvhighlights"
CLIP_SECONDS = 2.0  # moment_detr's clip length
REQUIRED = ("qid", "query", "duration", "vid")


def load(path: str | Path, report: QuirkReport, durations: str | Path | None = None) -> list[Sample]:
    """Load a QVHighlights JSONL (durations are in the file; ``durations`` is not used)."""
    samples = []
    seen: set[str] = set()
    for n, rec in read_jsonl(path):
        where = f"{path}:{n}"
        require(rec, REQUIRED, where)
        sid = str(rec["qid"])
        if sid in seen:
            raise ValueError(f"{where}: qid {sid} appears twice; qids must be unique")
        seen.add(sid)
        duration = to_duration(rec["duration"], where)
        query = clean_text(rec["query"], report, where, single_line=True)
        if not query:
            report["empty_query"] += 1
            continue
        meta = {"qid": rec["qid"], "vid": rec["vid"]}
        for k in ("relevant_clip_ids", "saliency_scores"):
            if k in rec:
                meta[k] = rec[k]
        if "relevant_windows" in rec:
            spans = clean_spans([as_span(w, where) for w in rec["relevant_windows"]], duration, report)
            if not spans:
                report["sample_without_spans"] += 1
                continue
        else:
            spans = []
            report["unlabelled"] += 1
        samples.append(Sample(id=sid, video=str(rec["vid"]), duration=duration, task="highlight", query=query,
                              spans=spans, source=NAME, meta=meta))
    return samples


def saliency_from_spans(spans: list[list[float]], duration: float) -> list[float]:
    """Per-clip scores: the best score among scored windows overlapping each 2-s clip."""
    n = max(1, math.ceil(duration / CLIP_SECONDS))
    scores = [0.0] * n
    for s, e, score in with_rank_scores(spans):
        for i in range(n):
            lo, hi = i * CLIP_SECONDS, (i + 1) * CLIP_SECONDS
            if min(e, hi) > max(s, lo):
                scores[i] = max(scores[i], score)
    return scores


def write_predictions(preds: dict[str, Prediction] | list[Prediction], samples: list[Sample],
                      path: str | Path) -> None:
    """Write moment_detr's submission JSONL for the samples that have a prediction."""
    by_id = pred_dict(preds, samples)
    rows = []
    for s in samples:
        if s.id not in by_id:
            continue
        p = by_id[s.id]
        rows.append({
            "qid": s.meta["qid"],
            "query": s.query,
            "vid": s.meta["vid"],
            "pred_relevant_windows": with_rank_scores(p.spans),
            "pred_saliency_scores": saliency_from_spans(p.spans, s.duration),
        })
    write_jsonl(path, rows)


def read_predictions(path: str | Path, samples: list[Sample] | None = None) -> dict[str, Prediction]:
    """Read a moment_detr submission JSONL; windows keep their ``[s, e, score]`` and file order."""
    out = {}
    for n, rec in read_jsonl(path):
        where = f"{path}:{n}"
        require(rec, ("qid", "pred_relevant_windows"), where)
        spans = [[to_float(x, "window value", where) for x in w] for w in rec["pred_relevant_windows"]]
        out[str(rec["qid"])] = Prediction(id=str(rec["qid"]), spans=spans)
    if samples is not None:
        pred_dict(out, samples)  # refuses qids that no sample has
    return out

