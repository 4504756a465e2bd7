"""One plain training loop for every stage.

A stage freezes all parameters but those matching its ``trainable`` globs, samples batches
with a seeded RNG (deterministic on CPU), sums its weighted losses, and steps AdamW on a
warmup + cosine schedule.
"""
from __future__ import annotations

import fnmatch
import math
import random
from collections import defaultdict

import torch
from tqdm import tqdm

from damo.config import Stage
from damo.data.clips import ClipStore
from damo.data.collate import Collator
from damo.data.schema import Sample
from damo.model.modeling_damo import DamoModel
from damo.train.losses import LOSSES, NEEDS_LLM, NEEDS_MODEL


def set_trainable(model: DamoModel, patterns: list[str]) -> int:
    """Freeze everything except parameters whose name matches a glob; returns the trainable count."""
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad = any(fnmatch.fnmatch(name, pat) for pat in patterns)
        n += p.numel() if p.requires_grad else 0
    if n == 0:
        raise ValueError(f"trainable patterns {patterns} match no parameter; names look like "
                         f"{[k for k, _ in list(model.named_parameters())[:3]]}")
    return n


def make_dialogues(samples: list[Sample], max_turns: int, rng: random.Random) -> list[Sample]:
    """Group each video's samples into multi-turn dialogues of up to ``max_turns`` (DaMO stage 4)."""
    by_video: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_video[s.video].append(s)
    out = []
    for video, group in by_video.items():
        group = group[:]
        rng.shuffle(group)
        for i in range(0, len(group), max_turns):
            chunk = group[i:i + max_turns]
            turns = [{"task": s.task, "query": s.query, "answer": s.answer, "spans": s.spans,
                      "captions": s.captions} for s in chunk]
            out.append(Sample(id=f"dlg-{chunk[0].id}", video=video, duration=chunk[0].duration, task="dialogue",
                              query=chunk[0].query, answer=chunk[0].answer,
                              spans=[sp for s in chunk for sp in s.spans], source=chunk[0].source,
                              meta={"turns": turns}))
    return out


def stage_samples(stage: Stage, samples: list[Sample], seed: int) -> list[Sample]:
    keep = [s for s in samples if stage.tasks is None or s.task in stage.tasks]
    if not keep:
        raise ValueError(f"stage {stage.name!r}: no samples of tasks {stage.tasks}")
    return make_dialogues(keep, 3, random.Random(seed)) if stage.dialogue else keep


def run_stage(model: DamoModel, stage: Stage, samples: list[Sample], store: ClipStore, seed: int,
              progress: bool = True) -> dict[str, float]:
    """Train ``model`` in place for one stage.

    Returns each loss averaged over the last 10% of steps, and as ``NAME_start`` over the first 10%.
    """
    unknown = set(stage.losses) - set(LOSSES)
    if unknown:
        raise ValueError(f"stage {stage.name!r}: unknown losses {sorted(unknown)}; valid: {sorted(LOSSES)}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    data = stage_samples(stage, samples, seed)
    set_trainable(model, stage.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)

    def lr_at(step: int) -> float:
        if step < stage.warmup:
            return (step + 1) / stage.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - stage.warmup) / max(1, stage.steps - stage.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    collate = Collator(model.tokenizer, model.cfg.bridge_tokens, model.cfg.fuser.frame_tokens, model.cfg.fps,
                       model.cfg.query_first)
    use_llm = bool(NEEDS_LLM & set(stage.losses))
    model.train()
    history: dict[str, list[float]] = defaultdict(list)
    bar = tqdm(range(stage.steps), desc=stage.name, disable=not progress, dynamic_ncols=True)
    for step in bar:
        items = [(s, store.get(s.video)) for s in rng.sample(data, min(stage.batch, len(data)))]
        batch = collate(items, rng)
        if not use_llm:
            batch = {k: v for k, v in batch.items() if k != "input_ids"}
        out = model(batch)
        total = 0.0
        for name, w in stage.losses.items():
            fn = LOSSES[name]
            val = fn(out, batch, model) if name in NEEDS_MODEL else fn(out, batch)
            total = total + w * val
            history[name].append(float(val.detach()))
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history["total"].append(float(total.detach()))
        if step % 10 == 0:
            bar.set_postfix({k: f"{v[-1]:.3f}" for k, v in history.items()})
    model.eval()
    tail = max(1, stage.steps // 10)
    out = {k: sum(v[-tail:]) / tail for k, v in history.items()}
    return out | {f"{k}_start": sum(v[:tail]) / tail for k, v in history.items()}
