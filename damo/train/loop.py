"""One plain training loop for every stage.

A stage freezes all parameters but those matching its ``trainable`` globs, samples batches
with a seeded RNG (deterministic on CPU), sums its weighted losses, and steps AdamW on a
warmup + cosine schedule.

Step ``k``'s global batch comes from an RNG seeded by ``(seed, k)``, so the data position is
the step number: a run resumed from a checkpoint (:mod:`damo.train.checkpoint`) sees the
same batches as an uninterrupted one, and under torchrun each process takes a disjoint share
of the same global batch (:mod:`damo.train.distributed`). On CUDA the forward runs under
bf16 autocast (fp16 with loss scaling where bf16 is unsupported); on CPU in fp32, or under
autocast in the backbones' dtype when the config keeps them in half precision.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import math
import random
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import replace
from itertools import chain
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from damo.config import Stage
from damo.data.collate import Collator
from damo.data.dataset import ClipDataset, StepBatches, loader, sample_video
from damo.data.preflight import Unusable, check_tokens
from damo.data.preference import pair_video
from damo.data.schema import Sample
from damo.model.batch import Batch
from damo.model.processing import ClipTensors, DamoProcessor
from damo.model.modeling_damo import DamoModel
from damo.model.vlm import VLMProcessor
from damo.pipeline import processor_of
from damo.train import distributed
from damo.train.checkpoint import atomic_write_text, latest_checkpoint, load_checkpoint, save_checkpoint
from damo.train.distributed import DistInfo, micro_batches
from damo.train.fpo import focus_masks, pair_samples
from damo.train.grpo import GRPOSettings, RewardPlateau, Rollouts, difficulty_band, rollout_batches
from damo.train.losses import LOSSES, LossInputs, stage_losses, stage_settings


def set_trainable(model: DamoModel, patterns: list[str]) -> int:
    """Freeze everything except parameters whose name matches a glob; returns the trainable count.

    Every pattern must match at least one parameter (a typo would otherwise leave a part frozen
    without a word). The names that ever trained are remembered in ``model.trained``, so a saved
    model knows which pretrained weights changed (:meth:`DamoModel.save`).
    """
    names = [name for name, _ in model.named_parameters()]
    unmatched = [pat for pat in patterns if not any(fnmatch.fnmatch(n, pat) for n in names)]
    if unmatched:
        hint = sorted({".".join(n.split(".")[:1 if n.startswith(("llm.", "evidence.")) else 2]) for n in names})
        raise ValueError(f"trainable patterns {unmatched} match no parameter of this model; fix or remove them "
                         f"(parameters belong to {hint}; LoRA weights match 'llm.*lora_*', new token rows "
                         f"'llm.*trainable_tokens*', whole embeddings under lora.embeddings full 'llm.*modules_to_save*')")
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad = any(fnmatch.fnmatch(name, pat) for pat in patterns)
        if p.requires_grad:
            n += p.numel()
            model.trained.add(name)
    return n


def param_groups(model: nn.Module, stage: Stage) -> list[dict]:
    """The optimizer's parameter groups: each trainable parameter at the learning rate of the first
    ``stage.lrs`` glob its name matches, else ``stage.lr`` (LLaVA-ST's scripts train the resampler at
    2e-5 beside LoRA at 2e-4: ``--mm_vision_resampler_lr``, scripts/train/train_stage2.sh). A glob that
    matches no trainable parameter is an error (a typo would leave a rate unused without a word)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    unused = [g for g in stage.lrs if not any(fnmatch.fnmatch(n, g) for n, _ in named)]
    if unused:
        raise ValueError(f"stage {stage.name!r}: lrs globs {unused} match no trainable parameter; "
                         "name parameters the stage's trainable globs train")
    by_lr: dict[float, list[nn.Parameter]] = defaultdict(list)
    for n, p in named:
        by_lr[next((lr for g, lr in stage.lrs.items() if fnmatch.fnmatch(n, g)), stage.lr)].append(p)
    return [{"params": ps, "lr": lr} for lr, ps in by_lr.items()]


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


class StageLoss(nn.Module):
    """The model plus a stage's weighted losses, so one ``forward`` holds every use of a parameter
    (what DDP and FSDP need to see: the contrastive loss calls model heads outside ``DamoModel.forward``).

    Every loss is called the same way (:class:`~damo.train.losses.LossInputs`). When a loss's
    settings ask for a reference (FPO in ``dpo`` mode, GRPO with ``beta > 0``), each batch is also
    scored by a frozen copy of the model taken when the stage starts (held outside the module tree,
    so no optimizer or wrapper sees it; ``start``, the model whose weights it copies, when ``model`` has no
    values yet, as under FSDP). ``forward`` returns the weighted total, each loss's value and the numbers the
    losses logged."""

    def __init__(self, model: DamoModel, stage: Stage, start: DamoModel | None = None):
        super().__init__()
        self.model, self.losses = model, stage.losses
        self.use_llm = stage_losses(stage.name, stage.losses)[1]
        self.settings = stage_settings(stage)
        self._ref = []
        if any(st is not None and st.reference for st in self.settings.values()):
            ref = copy.deepcopy(start or model).eval()
            ref.requires_grad_(False)
            self._ref.append(ref)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        out = self.model(batch if self.use_llm else replace(batch, input_ids=None))
        ref_out = None
        if self._ref:     # taken on the CPU under FSDP (the model is sharded where it lies): it follows the batch
            with torch.no_grad():
                ref_out = self._ref[0].to(batch.input_ids.device)(batch)
        log: dict[str, float] = {}
        vals = [LOSSES[n].fn(LossInputs(out, batch, self.model, ref_out, self.settings[n], log)) for n in self.losses]
        total = sum(w * v for w, v in zip(self.losses.values(), vals)) + out.get("zero", 0.0)
        return total, torch.stack([v.detach().float() for v in vals]), log


def micro_seed(seed: int, step: int, micro: int) -> int:
    """The torch seed of micro-batch ``micro`` (counted over all processes) of step ``step``."""
    return random.Random(f"{seed}:{step}:{micro}:torch").getrandbits(63)


# draws for one unusable record before the step gives up (a dataset this broken needs the pre-flight)
MAX_REPLACEMENTS = 16


class StepCollate:
    """``(tag, record, clip)`` items of one micro-batch -> a model batch; runs in the loader's
    workers. Preference records become their chosen rows, then their rejected rows, sharing the clip
    (the FPO batch contract of :mod:`damo.train.fpo`); a rollout stage gets the prompts' samples and
    clips, from which :class:`~damo.train.grpo.Rollouts` samples in the main process. Returns
    ``(step, batch, replaced)``.

    A record whose clip could not be made (:class:`~damo.data.preflight.Unusable`) is replaced by
    one drawn from ``dataset`` with an RNG seeded by the step, the micro-batch and the failed index:
    the same replacement in every run, resumed or on any number of processes. ``replaced`` lists
    the unusable records."""

    def __init__(self, collator: Collator, seed: int, kind: str, dataset: ClipDataset):
        self.collator, self.seed, self.kind, self.dataset = collator, seed, kind, dataset

    def usable(self, items: list, step: int, m: int) -> tuple[list, list[Unusable]]:
        out, replaced = [], []
        for tag, r, c in items:
            draw = 0
            while isinstance(c, Unusable):
                replaced.append(c)
                if draw == MAX_REPLACEMENTS:
                    raise RuntimeError(f"step {step}: {MAX_REPLACEMENTS} records in a row could not be read, the "
                                       f"last {c.name} ({c.video}): {c.reason}; check the data (on_missing runs a "
                                       "pre-flight over it)")
                j = random.Random(f"{self.seed}:{step}:{m}:{c.index}:{draw}").randrange(len(self.dataset))
                tag, r, c = self.dataset[(j, tag)]
                draw += 1
            out.append((tag, r, c))
        return out, replaced

    def __call__(self, items: list[tuple[tuple[int, int], object, ClipTensors | None]]) -> tuple[int, Batch | list, list]:
        step, m = items[0][0]
        items, replaced = self.usable(items, step, m)
        rng = random.Random(f"{self.seed}:{step}:{m}")
        if self.kind == "rollouts":
            return step, [(s, c) for _, s, c in items], replaced
        if self.kind == "samples":
            return step, self.collator([(s, c) for _, s, c in items], rng), replaced
        pairs, clips = [p for _, p, _ in items], [c for _, _, c in items]
        batch = self.collator(list(zip(pair_samples(pairs), clips + clips)), rng)
        proc = self.collator.processor
        return step, replace(batch, **focus_masks(batch, pairs, proc.evi_id, proc.config.evidence_level)), replaced


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: training stops before the broken weights can be saved."""


def run_stage(model: DamoModel, stage: Stage, samples: list[Sample], clips, seed: int,
              progress: bool = True, checkpoint_dir: str | Path | None = None, dist_info: DistInfo | None = None,
              parallel: str = "ddp", num_workers: int = 0, pairs: list[dict] | None = None,
              bad_samples: list[dict] | None = None, history_file: str | Path | None = None,
              val: list[Sample] | None = None, processor: DamoProcessor | VLMProcessor | None = None) -> dict[str, float]:
    """Train ``model`` in place for one stage; ``clips`` maps a video reference to its
    :class:`~damo.model.processing.ClipTensors` (a :class:`~damo.data.dataset.ClipLoader`), called
    in ``num_workers`` loader processes; ``processor`` writes the training sequences (default: the
    model's, :func:`~damo.pipeline.processor_of`). A preference stage trains on ``pairs`` (validated records,
    e.g. ``damo data prefs`` output) if given, else on pairs made from ``samples``.

    ``checkpoint_dir``: where periodic checkpoints go (every ``stage.save_every`` steps); if it
    holds one, training resumes from it. Under torchrun pass ``dist_info`` (and ``parallel``).
    Records whose clip cannot be made are replaced (:class:`StepCollate`), printed, kept in the
    checkpoints (a resumed run does not read them again) and, from every process, appended to
    ``bad_samples`` (``{"id", "video", "reason"}`` each).
    A GRPO stage may first keep only its prompts of a difficulty band
    (:func:`~damo.train.grpo.difficulty_band`) and may stop early on a plateau of its reward on
    ``val`` (validation samples), ending with the weights of its best evaluation
    (:class:`~damo.train.grpo.RewardPlateau`, whose state the checkpoints keep).
    Returns each loss (and each number the losses and the batch source log, e.g. a GRPO stage's
    rewards) averaged over the last 10% of steps, and as ``NAME_start`` over the first 10%;
    ``history_file`` receives every step's values (JSON, name -> list; ``val_reward`` per evaluation).
    """
    kind = stage_losses(stage.name, stage.losses)[0]
    preference = kind == "pairs"
    if stage.text_only and (set(stage.losses) != {"lm"} or stage.dialogue):
        raise ValueError(f"stage {stage.name!r} is text_only: its only loss is lm (no video, no evidence), "
                         f"got {sorted(stage.losses)}{' with dialogue' if stage.dialogue else ''}")
    info = dist_info or DistInfo(0, 1, 0, torch.device("cpu"))
    torch.manual_seed(seed)
    if not preference:
        data = stage_samples(stage, samples, seed)
    elif pairs is not None:
        data = [p for p in pairs if stage.tasks is None or p["sample"]["task"] in stage.tasks]
        if not data:
            raise ValueError(f"stage {stage.name!r}: none of its {len(pairs)} preference pairs has a task in {stage.tasks}")
    else:   # D²VLM §5: one factorised preference pair per sample, deterministic per seed
        from damo.data.preference import make_pairs
        data = make_pairs(stage_samples(stage, samples, seed), seed)[0]
        if not data:
            raise ValueError(f"stage {stage.name!r}: no preference pair could be made from its samples")
    set_trainable(model, stage.trainable)
    parts = info.world * stage.grad_accum                   # micro-batches per optimizer step, all processes
    fsdp = parallel == "fsdp" and info.world > 1
    if fsdp and kind == "rollouts":
        raise ValueError(f"stage {stage.name!r} samples from the policy, which needs whole weights: set "
                         "recipe.parallel to ddp for it")
    # FSDP shards a copy made on the meta device (no weights: distributed.wrap gives it its shards); the trained
    # weights are copied back into the CPU model at the end
    work = distributed.meta_copy(model) if fsdp else model
    work.fixed_graph = fsdp                                 # the same collectives on every rank (DamoModel.forward)
    if not fsdp:
        work.to(info.device)
    collate = Collator.for_processor(processor or processor_of(model))
    found: dict[str, float] = {}        # a GRPO stage's difficulty band and best evaluation, for its stats
    plateau = None
    if kind == "rollouts":
        grpo = GRPOSettings.from_dict(stage.grpo)
        try:
            if grpo.eval_every:
                plateau = RewardPlateau(work, collate.processor,
                                        [s for s in val or [] if stage.tasks is None or s.task in stage.tasks], clips, grpo)
            if grpo.difficulty:
                data, found = difficulty_band(work, collate.processor, data, clips, grpo)
        except ValueError as e:
            raise ValueError(f"stage {stage.name!r}: {e}") from None
        if found and info.main:
            tqdm.write(f"stage {stage.name}: difficulty band {grpo.difficulty} keeps {found['difficulty_kept']:.0f} "
                       f"prompts, drops {found['difficulty_dropped']:.0f}")
    values = {f"model.{k}": v for k, v in chain(model.state_dict().items(), model.named_buffers())} if fsdp else None
    step_fn, whole = distributed.wrap(StageLoss(work, stage, start=model), parallel, info, values)
    params = [p for p in work.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(param_groups(work, stage), lr=stage.lr, weight_decay=stage.weight_decay)

    def lr_at(step: int) -> float:
        if step < stage.warmup:
            return (step + 1) / stage.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - stage.warmup) / max(1, stage.steps - stage.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    cuda = info.device.type == "cuda"
    # GPUs train under autocast; on CPU only backbones kept in half precision need it
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else model.half_dtype()
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)
    history: dict[str, list[float]] = defaultdict(list)
    bad: dict[int, dict] = {}          # index in ``data`` -> {"id", "video", "reason"}, this process's
    start = 0
    last = latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if last is not None:
        state = load_checkpoint(last, work, opt, sched)
        start = state["step"]
        history.update(state["extra"]["history"])
        bad.update({int(k): v for k, v in state["extra"].get("bad", {}).items()})
        if plateau:
            plateau.load_state(state["extra"]["plateau"])
    work.train()
    bar = tqdm(range(start, stage.steps), desc=stage.name, disable=not progress or not info.main,
               dynamic_ncols=True, initial=start, total=stage.steps)
    dataset = ClipDataset(data, clips, with_clips=not stage.text_only, video_of=pair_video if preference else sample_video,
                          name_of=(lambda p: p["id"]) if preference else (lambda s: s.id),
                          check=None if preference else (lambda s, c: check_tokens(collate.processor, s, c.times)),
                          known_bad={i: b["reason"] for i, b in bad.items()})
    mine = range(info.rank * stage.grad_accum, (info.rank + 1) * stage.grad_accum)
    steps = StepBatches(len(data), stage.batch, stage.steps, start, seed, parts, mine, micro_batches)
    batches = iter(loader(dataset, StepCollate(collate, seed, kind, dataset), num_workers, steps,
                          pin_memory=cuda))
    if kind == "rollouts":    # sampled from the policy being trained, step by step
        rollouts = Rollouts(work, collate.processor, grpo, seed + 1_000 * info.rank)
        source = rollout_batches(rollouts, batches, stage.grad_accum)
    else:
        source = ((b, {}, replaced) for _, b, replaced in batches)
    for step in bar:
        opt.zero_grad(set_to_none=True)
        logged = torch.zeros(len(stage.losses) + 1, device=info.device)    # read once per step: no sync per micro-step
        extra: dict[str, float] = defaultdict(float)
        for j in range(stage.grad_accum):
            batch, data_log, replaced = next(source)
            for u in replaced:
                if u.index not in bad:
                    bad[u.index] = u.to_dict()
                    bar.write(f"stage {stage.name}, step {step}: replaced sample {u.name} ({u.video}): {u.reason}")
            batch = batch.to(info.device, non_blocking=True)
            last = j == stage.grad_accum - 1
            if fsdp:        # one reduce-scatter per step: earlier micro-steps accumulate unsharded gradients
                step_fn.set_requires_gradient_sync(last)
            ctx = step_fn.no_sync() if not last and isinstance(step_fn, nn.parallel.DistributedDataParallel) else nullcontext()
            # every micro-batch draws its own dropout masks, from (seed, step, its index over all processes): ranks
            # differ, one process with grad_accum N draws as N processes do, and a resumed run as an uninterrupted one
            torch.manual_seed(micro_seed(seed, step, mine[j]))
            with ctx:
                with torch.autocast(info.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    total, vals, loss_log = step_fn(batch)
                scaler.scale(total / stage.grad_accum).backward()
            logged += torch.cat([vals, total.detach().float()[None]]) / stage.grad_accum
            for k, v in (data_log | loss_log).items():
                extra[k] += v / stage.grad_accum
        distributed.average_grads(whole)
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        logged = torch.cat([logged, torch.tensor([extra[k] for k in sorted(extra)], device=info.device)])
        logged = distributed.mean_across(logged).cpu()
        names = [*stage.losses, "total", *sorted(extra)]
        if not math.isfinite(logged[len(stage.losses)]):
            # every process sees the same mean, so all stop together; the caller saves nothing
            raise TrainingDiverged(f"stage {stage.name!r}: the loss is {logged[len(stage.losses)].item()} at step "
                                   f"{step + 1} ({dict(zip(names, logged.tolist()))}); nothing was saved from this "
                                   f"stage; lower its lr (now {stage.lr:g}) or check the data")
        for name, v in zip(names, logged.tolist()):
            history[name].append(v)
        if info.main and step % 10 == 0:
            bar.set_postfix({k: f"{v[-1]:.3f}" for k, v in history.items()})
        if plateau and plateau.due(step + 1):
            history["val_reward"].append(plateau.evaluate(step + 1))
            if plateau.stop:
                bar.write(f"stage {stage.name}: validation reward has not improved for {plateau.st.patience} "
                          f"evaluations; stopping at step {step + 1}, keeping step {plateau.best_step}")
                break
        if checkpoint_dir and stage.save_every and (step + 1) % stage.save_every == 0 and step + 1 < stage.steps:
            save_checkpoint(checkpoint_dir, step + 1, work, opt, sched, write=info.main,
                            extra={"history": dict(history), "bad": distributed.gather_dicts(bad),
                                   "plateau": plateau.state() if plateau else None})
            distributed.barrier()
    if plateau:
        found |= plateau.restore()
    if fsdp:            # only trainable weights changed: into rank 0's CPU model, then the other processes'
        trained = distributed.gather_trained(step_fn)
        model.load_state_dict({k.removeprefix("model."): v for k, v in trained.items()}, strict=False)
        distributed.broadcast_from_main([p for p in model.parameters() if p.requires_grad], info.device)
    model.cpu().eval()
    if history_file and info.main:
        atomic_write_text(history_file, json.dumps(history))
    if bad_samples is not None:
        bad_samples += [b for _, b in sorted(distributed.gather_dicts(bad).items())]
    tail = max(1, stage.steps // 10)
    out = {k: sum(v[-tail:]) / len(v[-tail:]) for k, v in history.items()}
    return out | {f"{k}_start": sum(v[:tail]) / len(v[:tail]) for k, v in history.items()} | found
