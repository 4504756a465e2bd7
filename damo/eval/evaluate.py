"""Run a model over canonical samples -> canonical predictions + grounding metrics.

Metrics follow the ``>=`` convention (TimeChat, E.T. Bench) and are reported overall (on
single-moment ``grounding`` queries), per task, per event modality (visual / audio /
audio-visual, from ``meta['modality']``) and per query kind (``meta['kind']``).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from tqdm import tqdm

from damo.data.dataset import ClipDataset, loader
from damo.data.preflight import Unusable
from damo.data.schema import Prediction, Sample
from damo.eval.grounding import grounding_metrics
from damo.eval.stvg import stvg_metrics
from damo.pipeline import DamoPipeline
from damo.ranks import ONE, DistInfo, Parts, run_share, share

if TYPE_CHECKING:
    from damo.model.vlm import VideoLLM


def _items(batch: list) -> list:
    return batch


@torch.no_grad()
def predict(model: DamoPipeline | VideoLLM, samples: list[Sample], clips, batch_size: int = 8, num_workers: int = 0,
            progress: bool = True, max_new_tokens: int = 48, failures: list[dict] | None = None,
            on_batch: Callable[[list[Prediction], list[dict]], None] | None = None) -> list[Prediction]:
    """Answer every sample's query about its video with a DaMO pipeline or a whole VLM, ``batch_size``
    at a time on the model's device (left-padded prompts, KV cache); ``num_workers`` loader processes decode ahead.
    ``clips`` maps a video reference to model inputs (a :class:`~damo.data.dataset.ClipLoader`).
    A sample whose video cannot be read gets no prediction (it scores as a miss) and is appended to
    ``failures`` (``{"id", "video", "reason"}``); the others go on. ``on_batch`` receives each batch's
    predictions and failures as soon as they are known."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    preds = []
    # closed however the loop ends, so a message after a failure starts on its own line
    with tqdm(total=len(samples), desc="predict", disable=not progress, dynamic_ncols=True) as bar:
        for items in loader(ClipDataset(samples, clips), _items, num_workers, batch_size=batch_size):
            bar.update(len(items))
            bad = [c.to_dict() for _, _, c in items if isinstance(c, Unusable)]
            if failures is not None:
                failures += bad
            items = [it for it in items if not isinstance(it[2], Unusable)]
            # a DaMO model takes each sample's task for its generation settings (a whole VLM's preset has its own)
            tasks = {"tasks": [str(s.meta.get("task", s.task)) for _, s, _ in items]} if isinstance(model, DamoPipeline) else {}
            rows = model.answer([c for _, _, c in items], [s.query for _, s, _ in items], max_new_tokens,
                                **tasks) if items else []
            new = [Prediction(id=s.id, spans=[[round(x, 3) for x in sp] for sp in r["spans"]], answer=r["answer"],
                              tube=r["tube"]) for (_, s, _), r in zip(items, rows)]
            preds += new
            if on_batch is not None:
                on_batch(new, bad)
    return preds


def _row_id(row: dict) -> str:
    """The sample a part-file row is about: a prediction, or ``{"failed": {"id", "video", "reason"}}``."""
    return row["failed"]["id"] if "failed" in row else row["id"]


def predict_resumable(model: DamoPipeline | VideoLLM, samples: list[Sample], clips, parts: Path, job: dict, info: DistInfo = ONE,
                      progress: bool = True, **options) -> tuple[list[Prediction], list[dict], dict]:
    """:func:`predict` that survives a kill and spreads over torchrun's ranks (:mod:`damo.ranks`).

    Each rank answers its share of the samples not yet in ``parts`` (a :class:`~damo.ranks.Parts` folder of the
    ``job``) and appends every finished batch there. Returns, on rank 0, the predictions and the failures in
    sample order, as one process gives them, and ``{"world_size", "samples_per_rank", "resumed"}``; other ranks
    get empty results."""
    store = Parts(parts, job, info)
    done = {_row_id(r) for r in store.rows}
    todo = [s for s in samples if s.id not in done]

    def work() -> int:
        mine = share(todo, info)
        with store.writer() as add:
            predict(model, mine, clips, progress=progress and info.main, **options,
                    on_batch=lambda preds, bad: add([p.to_dict() for p in preds] + [{"failed": x} for x in bad]))
        return len(mine)

    per_rank = run_share(info, work)
    if not info.main:
        return [], [], {}
    rows = {_row_id(r): r["failed"] if "failed" in r else Prediction.from_dict(r) for r in store.read()}
    ordered = [rows[s.id] for s in samples if s.id in rows]
    return ([r for r in ordered if isinstance(r, Prediction)], [r for r in ordered if isinstance(r, dict)],
            {"world_size": info.world, "samples_per_rank": per_rank, "resumed": len(samples) - len(todo)})


def grounding_report(samples: list[Sample], preds: list[Prediction], convention: str = ">=") -> dict:
    """Metrics overall (task ``grounding``), and by task, modality and query kind; R@t counts IoU >= t,
    or IoU > t with ``convention=">"``."""
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
        m = grounding_metrics([s.spans for s in ss], [by[s.id].spans if s.id in by else [] for s in ss],
                              convention=convention)
        out[name] = {k: round(v, 4) for k, v in m.items()} | {"n": len(ss)}
    st = [s for s in samples if s.task == "stvg" and s.meta.get("boxes")]
    if st:      # LLaVA-ST's STVG metrics; a prediction without a tube scores 0 (sIoU) and by its span (tIoU)
        pred = [by[s.id].tube or {"span": (by[s.id].spans or [None])[0]} if s.id in by else {} for s in st]
        m = stvg_metrics([{"span": s.spans[0], "boxes": s.meta["boxes"]} for s in st], pred)
        out["stvg"] = {k: round(v, 4) for k, v in m.items()} | {"n": len(st)}
    return out
