"""What training moves between processes and onto disk: worker batches carry uint8 frames (a quarter
of float32 through shared memory), and training writes no media cache entry unless the recipe asks,
then a cheaply keyed one in the folder it names."""
from __future__ import annotations

from dataclasses import replace

import torch

from damo.config import Recipe
from damo.data.collate import Collator
from damo.data.dataset import ClipDataset, ClipLoader, StepBatches, load_dataset, loader
from damo.data.schema import write_jsonl
from damo.model.configuration_damo import DamoConfig
from damo.train.distributed import micro_batches
from damo.train.loop import StepCollate
from damo.train.recipe import build_model, run_recipe
from damo.pipeline import processor_of
from helpers import TINY_MODEL


def test_worker_batches_hold_uint8_frames():
    samples = load_dataset("synth://easy?n=4&seed=0")
    model = build_model(DamoConfig.from_dict(TINY_MODEL), samples, 0)
    dataset = ClipDataset(samples, ClipLoader(processor_of(model)))
    steps = StepBatches(len(samples), 4, 1, 0, 0, 1, range(1), micro_batches)
    step, batch, replaced = next(iter(loader(dataset, StepCollate(Collator(processor_of(model)), 0, "samples", dataset), 1, steps)))
    B, T = batch.frame_mask.shape
    S = model.cfg.vision.image_size
    assert batch.frames.dtype == torch.uint8 and batch.frames.shape == (B, T, 3, S, S)
    assert batch.frames.numel() * batch.frames.element_size() == B * T * 3 * S * S       # one byte per value
    assert step == 0 and not replaced
    # the model scales them to [0, 1] itself, on its device, before the towers read them
    with torch.no_grad():
        ref = model.video.vision(batch.frames.float() / 255.0)
        assert torch.equal(model.video._per_frames(model.video.vision, batch.frames), ref)

def test_training_writes_no_media_cache_unless_the_recipe_names_one(tmp_path, monkeypatch, clip_mkv):
    monkeypatch.setenv("DAMO_CACHE", str(tmp_path / "home-cache"))
    g = next(s for s in load_dataset("synth://easy?n=4&seed=0") if s.task == "grounding")
    data = tmp_path / "train.jsonl"
    write_jsonl(data, [replace(g, id=f"file-{i}", video=str(clip_mkv), duration=13.0, spans=[[1.0, 3.0]]).to_dict()
                       for i in range(2)])
    recipe = {"model": TINY_MODEL, "seed": 0, "data": {"train": str(data)},
              "stages": [{"name": "ground", "losses": {"lm": 1.0}, "steps": 2, "batch": 2, "warmup": 1}]}
    run_recipe(Recipe.from_dict(recipe), tmp_path / "run", progress=False, log=lambda *_: None)
    assert not (tmp_path / "home-cache").exists()
    # asked for: entries in the named folder, keyed by path, size and time (the file is not hashed)
    run_recipe(Recipe.from_dict(recipe | {"media_cache": str(tmp_path / "node-cache")}), tmp_path / "run2",
               progress=False, log=lambda *_: None)
    entries = list((tmp_path / "node-cache").glob("*.npz"))
    assert len(entries) == 1 and entries[0].name.startswith("stat-")
    assert not (tmp_path / "home-cache").exists()


def test_step_batches_see_every_sample_once_per_epoch_and_resume_where_they_stopped():
    n, batch, steps = 10, 4, 10                     # 40 draws: four epochs of ten samples
    whole = StepBatches(n, batch, steps, 0, 3, 2, range(2), micro_batches)
    drawn = [i for mb in whole for i, _ in mb]
    epochs = [sorted(drawn[e * n:(e + 1) * n]) for e in range(steps * batch // n)]
    assert epochs == [list(range(n))] * 4          # i.i.d. draws would miss about a third of them in one epoch
    assert drawn[:n] != drawn[n:2 * n]              # a new order every epoch
    # resumed at step 6 on one process of two: exactly the micro-batches it would have had
    resumed = list(StepBatches(n, batch, steps, 6, 3, 2, range(1, 2), micro_batches))
    assert resumed == [mb for mb in whole if mb[0][1][0] >= 6 and mb[0][1][1] == 1]
    assert StepBatches(n, batch, steps, 0, 4, 2, range(2), micro_batches).global_batch(0) != whole.global_batch(0)
    assert StepBatches(3, 8, 2, 0, 0, 1, range(1), micro_batches).global_batch(1) == \
        StepBatches(3, 8, 2, 0, 0, 1, range(1), micro_batches).permutation(1)    # a batch larger than the dataset
