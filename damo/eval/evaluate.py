"""Run a model over canonical samples -> canonical predictions + grounding metrics.

Metrics follow the ``>=`` convention (TimeChat, E.T. Bench) and are reported overall (on
single-moment ``grounding`` queries), per task, per event modality (visual / audio /
audio-visual, from ``meta['modality']``) and per query kind (``meta['kind']``).
"""
from __future__ import annotations

import re
from collections import defaultdict

import torch
from tqdm import tqdm

from damo.data.clips import ClipStore
from damo.data.collate import ClipTensors, Collator, encode
from damo.data.schema import Prediction, Sample
from damo.data.synthetic import time_key
from damo.eval.metrics import grounding_metrics, stvg_metrics
from damo.model.modeling_damo import DamoModel


def predict_one(model: DamoModel, clip: ClipTensors, query: str, max_new_tokens: int = 48) -> dict:
    """Answer one query about one prepared clip: text, spans (best first) and evidence."""
    if not query.strip():
        raise ValueError("the query is empty; ask a question about the video")
    T = clip.frames.shape[0]
    frames = clip.frames.permute(0, 3, 1, 2).float().div(255.0)[None]   # (1, T, 3, H, W)
    ids = Collator.for_model(model).prompt(query, clip.times)
    gen = model.generate(frames, clip.mel.float()[None], clip.times[None], ids, clip.duration, max_new_tokens,
                         query_ids=encode(model.tokenizer, query))
    ev = gen["evidence"]
    answer = model.render_answer(gen["ids"], ev, gen["coords"])
    answer_ev = [e for e in ev if e["stage"] == 2] or [e for e in ev if e["stage"] == 1]
    if model.cfg.response == "interleaved":
        spans = sorted((e["span"] for e in answer_ev), key=lambda s: -s[2])
    else:   # the answer writes its timestamps as text (coupled / decomposed baselines)
        spans = text_spans(answer, clip.duration)
        answer_ev = [e for e in ev if e["stage"] == 1]
    xy = [v for a, v in gen["coords"] if a in "xy"]
    boxes = [xy[i:i + 4] for i in range(0, len(xy) - 3, 4)]
    return {"answer": answer, "spans": spans, "evidence": [e["span"] for e in ev if e["stage"] == 1],
            "scores": [e["scores"] for e in answer_ev],
            "tube": tube(spans[0], boxes, clip.times.tolist()) if spans and boxes else None}


def tube(span: list[float], boxes: list[list[float]], times: list[float]) -> dict:
    """A spatio-temporal tube from a span and the boxes at its start and end: a box at every
    frame time inside ``[start, end)``, linearly interpolated between the first and last box
    (LLaVA-ST's tube format; the metric matches frames by time)."""
    inside = [t for t in times if span[0] <= t < span[1]]
    a, b = boxes[0], boxes[-1]
    out = {}
    for t in inside:
        w = (t - inside[0]) / (inside[-1] - inside[0]) if len(inside) > 1 else 0.0
        x0, y0, x1, y1 = (p + (q - p) * w for p, q in zip(a, b))
        out[time_key(t)] = [round(v, 4) for v in (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))]
    return {"span": [float(span[0]), float(span[1])], "boxes": out}


_SPAN_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*seconds")


def text_spans(answer: str, duration: float) -> list[list[float]]:
    """Spans written as text ("3.0 - 5.0 seconds"), in order of appearance, clipped to the video,
    each with score 1 (text timestamps carry no confidence); reversed pairs are swapped."""
    out = []
    for a, b in _SPAN_TEXT.findall(answer):
        s, e = sorted((min(float(a), duration), min(float(b), duration)))
        out.append([s, e, 1.0])
    return out


@torch.no_grad()
def predict(model: DamoModel, samples: list[Sample], store: ClipStore, progress: bool = True) -> list[Prediction]:
    preds = []
    for s in tqdm(samples, desc="predict", disable=not progress, dynamic_ncols=True):
        r = predict_one(model, store.get(s.video), s.query)
        preds.append(Prediction(id=s.id, spans=[[round(x, 3) for x in sp] for sp in r["spans"]], answer=r["answer"],
                                tube=r["tube"]))
    return preds


def grounding_report(samples: list[Sample], preds: list[Prediction]) -> dict:
    """Metrics overall (task ``grounding``), and by task, modality and query kind."""
    by = {p.id: p for p in preds}
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if not s.spans:
            continue
        groups[f"task/{s.task}"].append(s)
        if s.task == "grounding":
            groups["overall"].append(s)
            groups[f"modality/{s.meta.get('modality', 'unknown')}"].append(s)
            groups[f"kind/{s.meta.get('kind', 'unknown')}"].append(s)
    out = {}
    for name, ss in sorted(groups.items()):
        m = grounding_metrics([s.spans for s in ss], [by[s.id].spans if s.id in by else [] for s in ss])
        out[name] = {k: round(v, 4) for k, v in m.items()} | {"n": len(ss)}
    st = [s for s in samples if s.task == "stvg" and s.meta.get("boxes")]
    if st:      # LLaVA-ST's STVG metrics; a prediction without a tube scores 0 (sIoU) and by its span (tIoU)
        pred = [by[s.id].tube or {"span": (by[s.id].spans or [None])[0]} if s.id in by else {} for s in st]
        m = stvg_metrics([{"span": s.spans[0], "boxes": s.meta["boxes"]} for s in st], pred)
        out["stvg"] = {k: round(v, 4) for k, v in m.items()} | {"n": len(st)}
    return out
