"""Run a recipe: build (or reload) the model, then run each stage in order.

Each finished stage is saved to ``WORKDIR/stages/NAME`` and the final model to
``WORKDIR/model``; a rerun reuses finished stages instead of training them again, and a
stage's ``init_from`` loads a named earlier stage (or any model folder) explicitly.
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
from damo.model.modeling_damo import DamoConfig, DamoModel
from damo.model.tokenizer import train_tokenizer
from damo.train.loop import run_stage


def corpus(samples: list[Sample]) -> list[str]:
    """Every text the tiny tokenizer should know: queries, answers, captions, response templates."""
    texts = []
    for s in samples:
        for t in turns_of(s):
            texts += [t["query"], t["answer"], *t["captions"],
                      response_text(t["task"], t["answer"], t["spans"], t["captions"])]
    return texts


def build_model(cfg: DamoConfig, samples: list[Sample], seed: int = 0) -> DamoModel:
    torch.manual_seed(seed)
    return DamoModel(cfg, train_tokenizer(corpus(samples), cfg.llm.vocab_size))


def clip_store(cfg: DamoConfig, cache_dir: str | Path | None = None) -> ClipStore:
    return ClipStore(cfg.fps, cfg.vision.image_size, cfg.audio.n_mels, cfg.audio.frames, cache_dir=cache_dir)


def run_recipe(recipe: Recipe, workdir: str | Path, progress: bool = True, log=print) -> DamoModel:
    workdir = Path(workdir)
    final = workdir / "model"
    if (final / "model.safetensors").is_file():
        log(f"reusing trained model {final}")
        return DamoModel.load(final)
    if "train" not in recipe.data:
        raise ValueError("recipe.data needs a 'train' dataset (synth://... or a JSONL path)")
    samples = load_dataset(recipe.data["train"])
    model = build_model(recipe.model, samples, recipe.seed)
    store = clip_store(recipe.model)
    done: dict[str, Path] = {}
    report = []
    for i, stage in enumerate(recipe.stages):
        ckpt = workdir / "stages" / stage.name
        if stage.init_from:
            src = done.get(stage.init_from, Path(stage.init_from))
            if not (src / "model.safetensors").is_file():
                raise FileNotFoundError(f"stage {stage.name!r}: init_from {stage.init_from!r} is neither an "
                                        f"earlier stage nor a model folder")
            model = DamoModel.load(src)
        if (ckpt / "model.safetensors").is_file():
            log(f"stage {stage.name}: reusing {ckpt}")
            model = DamoModel.load(ckpt)
        else:
            t0 = time.time()
            stats = run_stage(model, stage, samples, store, recipe.seed + i, progress)
            stats["wall_s"] = round(time.time() - t0, 1)
            log(f"stage {stage.name}: " + ", ".join(f"{k}={v:.3f}" for k, v in stats.items()))
            model.save(ckpt)
            (ckpt / "stats.json").write_text(json.dumps(stats, indent=2))
            report.append({"stage": stage.name, **stats})
        done[stage.name] = ckpt
    model.save(final)
    return model
