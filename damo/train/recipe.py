"""Run a recipe: build (or reload) the model, then run each stage in order.

Each finished stage is saved to ``WORKDIR/stages/NAME`` and the final model to
``WORKDIR/model``; a rerun reuses finished stages instead of training them again, and a
stage's ``init_from`` loads a named earlier stage (or any model folder) explicitly.

Crash safety: a stage with ``save_every`` writes checkpoints to ``WORKDIR/checkpoints/NAME``;
rerunning the same command after a crash or a kill resumes from the last one and reaches the
same weights as an uninterrupted run. Under ``torchrun`` the same call trains on every process
(rank 0 writes files); see :mod:`damo.train.distributed`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from damo.config import Recipe
from damo.data.clips import ClipStore, load_dataset
from damo.data.collate import response_text, turns_of
from damo.data.schema import Sample
from damo.model import backbones
from damo.model.modeling_damo import DamoConfig, DamoModel
from damo.model.tokenizer import train_tokenizer
from damo.train import distributed
from damo.train.checkpoint import atomic_write_text, clear_checkpoints
from damo.train.loop import run_stage


def corpus(samples: list[Sample], response: str = "interleaved", level: str = "event") -> list[str]:
    """Every text the tiny tokenizer should know: queries, answers, captions, the responses."""
    texts = []
    for s in samples:
        for t in turns_of(s):
            texts += [t["query"], t["answer"], *t["captions"],
                      response_text(t["task"], t["answer"], t["spans"], t["captions"], response=response, level=level)]
    return texts


def build_model(cfg: DamoConfig, samples: list[Sample], seed: int = 0) -> DamoModel:
    """A fresh model: pretrained LLMs bring their tokenizer (plus our special tokens); the tiny
    or from-config LLM gets a BPE tokenizer trained on the recipe's texts."""
    torch.manual_seed(seed)
    if cfg.llm.kind == "hf" and cfg.llm.pretrained:
        tok = backbones.load_tokenizer(cfg.llm)
    else:
        tok = train_tokenizer(corpus(samples, cfg.response, cfg.evidence.level), cfg.llm.vocab_size)
    return DamoModel(cfg, tok)


def clip_store(cfg: DamoConfig, cache_dir: str | Path | None = None) -> ClipStore:
    return ClipStore(cfg.fps, cfg.vision.image_size, cfg.audio.n_mels, cfg.audio.frames, cache_dir=cache_dir)


def run_recipe(recipe: Recipe, workdir: str | Path, progress: bool = True, log=print) -> DamoModel:
    """Train every stage of ``recipe`` into ``workdir`` (resuming whatever a previous run left)."""
    workdir = Path(workdir)
    info = distributed.init_distributed()
    final = workdir / "model"
    if (final / "model.safetensors").is_file():
        log(f"reusing trained model {final}")
        return DamoModel.load(final)
    if "train" not in recipe.data:
        raise ValueError("recipe.data needs a 'train' dataset (synth://... or a JSONL path)")
    if recipe.parallel not in distributed.PARALLEL:
        raise ValueError(f"recipe.parallel must be one of {distributed.PARALLEL}, got {recipe.parallel!r}")
    say = log if info.main else (lambda *_: None)
    samples = load_dataset(recipe.data["train"])
    model = build_model(recipe.model, samples, recipe.seed)
    store = clip_store(recipe.model)
    done: dict[str, Path] = {}
    for i, stage in enumerate(recipe.stages):
        ckpt = workdir / "stages" / stage.name
        if stage.init_from:
            src = done.get(stage.init_from, Path(stage.init_from))
            if not (src / "model.safetensors").is_file():
                raise FileNotFoundError(f"stage {stage.name!r}: init_from {stage.init_from!r} is neither an "
                                        f"earlier stage nor a model folder")
            model = DamoModel.load(src)
        if (ckpt / "model.safetensors").is_file():
            say(f"stage {stage.name}: reusing {ckpt}")
            model = DamoModel.load(ckpt)
        else:
            partial = workdir / "checkpoints" / stage.name
            if (partial / "latest").is_file():
                say(f"stage {stage.name}: resuming from {(partial / 'latest').read_text().strip()}")
            t0 = time.time()
            data = samples + [x for spec in stage.extra_data for x in load_dataset(spec)]
            stats = run_stage(model, stage, data, store, recipe.seed + i, progress, checkpoint_dir=partial,
                              dist_info=info, parallel=recipe.parallel)
            stats["wall_s"] = round(time.time() - t0, 1)
            say(f"stage {stage.name}: " + ", ".join(f"{k}={v:.3f}" for k, v in stats.items()))
            if info.main:
                model.save(ckpt)
                atomic_write_text(ckpt / "stats.json", json.dumps(stats, indent=2))
                clear_checkpoints(partial)
            distributed.barrier()
        done[stage.name] = ckpt
    if info.main:
        model.save(final)
    distributed.barrier()
    return model
