"""Recipes: parsing, overrides, a short run whose loss falls, reuse of finished stages, CLI eval."""
from __future__ import annotations

import json

import pytest

from damo.config import Recipe, load_recipe
from damo.data.dataset import load_dataset
from damo.train.loop import make_dialogues, set_trainable
from damo.train.recipe import run_recipe

from helpers import TINY_MODEL, assert_same_weights



def test_shipped_recipe_parses_with_overrides():
    r = load_recipe("damo_4stage", ["stages.3.steps=7", "seed=3", "model.llm.layers=3"])
    assert [s.name for s in r.stages] == ["language", "align", "bridge", "temporal", "dialogue"]
    assert r.stages[3].steps == 7 and r.seed == 3 and r.model.llm.layers == 3
    assert r.stages[0].text_only and r.stages[1].losses == {"contrastive": 1.0} and r.stages[4].dialogue


def test_bad_recipes_say_what_is_wrong():
    with pytest.raises(ValueError, match="non-empty 'stages'"):
        Recipe.from_dict({"stages": []})
    with pytest.raises(ValueError, match="unknown keys"):
        Recipe.from_dict({"stages": [{"name": "a", "losses": {"lm": 1}, "steps": 1, "stepz": 3}]})
    with pytest.raises(ValueError, match="unique"):
        Recipe.from_dict({"stages": [{"name": "a", "losses": {"lm": 1}, "steps": 1}] * 2})
    with pytest.raises(ValueError, match="unknown model config"):
        Recipe.from_dict({"model": {"visoin": {}}, "stages": [{"name": "a", "losses": {"lm": 1}, "steps": 1}]})


def test_dialogues_group_a_videos_samples():
    samples = load_dataset("synth://standard?n=3&seed=0")
    dl = make_dialogues(samples, 3, __import__("random").Random(0))
    assert sum(len(d.meta["turns"]) for d in dl) == len(samples)
    assert all(len({samples_by.video for samples_by in [d]}) == 1 and 1 <= len(d.meta["turns"]) <= 3 for d in dl)


def _recipe(steps: int) -> Recipe:
    return Recipe.from_dict({
        "model": TINY_MODEL, "seed": 0, "data": {"train": "synth://easy?n=12&seed=0"},
        "stages": [
            {"name": "align", "tasks": ["dense_caption"], "losses": {"contrastive": 1.0}, "steps": 3, "batch": 6,
             "trainable": ["vision.*", "audio.*", "residual_*", "fuseformer.*", "text_encoder.*", "align_video.*"]},
            {"name": "ground", "losses": {"lm": 1.0, "grounding_bce": 5.0, "consistency": 1.0}, "steps": steps,
             "batch": 6, "lr": 3e-3, "warmup": 2},
        ]})


def test_short_recipe_loss_falls_and_rerun_reuses(tmp_path):
    model = run_recipe(_recipe(30), tmp_path, progress=False, log=lambda *_: None)
    stats = json.loads((tmp_path / "stages" / "ground" / "stats.json").read_text())
    assert stats["lm"] < 0.8 * stats["lm_start"], stats
    assert stats["grounding_bce"] < stats["grounding_bce_start"], stats
    assert (tmp_path / "model" / "model.safetensors").is_file()
    logs = []
    again = run_recipe(_recipe(30), tmp_path, progress=False, log=logs.append)
    assert any("reusing" in m for m in logs)
    assert_same_weights(model, again)
    assert json.loads((tmp_path / "stages" / "ground" / "stats.json").read_text()) == stats


def test_training_is_deterministic(tmp_path):
    a = run_recipe(_recipe(4), tmp_path / "a", progress=False, log=lambda *_: None)
    b = run_recipe(_recipe(4), tmp_path / "b", progress=False, log=lambda *_: None)
    assert_same_weights(a, b)


def test_freezing_by_pattern(tmp_path):
    model = run_recipe(_recipe(1), tmp_path, progress=False, log=lambda *_: None)
    n = set_trainable(model, ["evidence.*"])
    assert n == sum(p.numel() for p in model.evidence.parameters())
    assert not any(p.requires_grad for p in model.llm.parameters())
    with pytest.raises(ValueError, match="match no parameter"):
        set_trainable(model, ["nothing.*"])


def test_fpo_stage_trains_on_preference_pairs(tmp_path):
    r = _recipe(2)
    r.stages.append(Recipe.from_dict({"stages": [{
        "name": "fpo", "losses": {"fpo": 1.0, "lm_chosen": 1.0, "grounding_bce_chosen": 5.0}, "steps": 3,
        "batch": 4, "lr": 1e-3, "warmup": 1}]}).stages[0])
    run_recipe(r, tmp_path, progress=False, log=lambda *_: None)
    stats = json.loads((tmp_path / "stages" / "fpo" / "stats.json").read_text())
    assert {"fpo", "lm_chosen", "grounding_bce_chosen"} <= set(stats)
    assert stats["fpo"] > 0


def test_preference_losses_cannot_mix_with_plain_ones(tmp_path):
    r = _recipe(1)
    r.stages[1].losses = {"fpo": 1.0, "lm": 1.0}
    with pytest.raises(ValueError, match=r"mixes losses that train on different batches \{'samples': \['lm'\], 'pairs': \['fpo'\]\}"):
        run_recipe(r, tmp_path, progress=False, log=lambda *_: None)


def test_shipped_fpo_recipe_parses():
    r = load_recipe("d2vlm_fpo")
    assert r.stages[-1].name == "fpo" and "fpo" in r.stages[-1].losses


def test_text_only_stage_trains_the_llm_without_videos(tmp_path, monkeypatch):
    r = _recipe(1)
    r.stages.insert(0, Recipe.from_dict({"stages": [{
        "name": "language", "text_only": True, "losses": {"lm": 1.0}, "steps": 60, "batch": 16, "lr": 3e-3,
        "warmup": 2, "trainable": ["llm.*"]}]}).stages[0])
    r.stages = r.stages[:1]

    def no_clips(self, uri):    # a text-only stage must never decode a video
        raise AssertionError(f"decoded {uri}")

    monkeypatch.setattr("damo.data.dataset.ClipLoader.__call__", no_clips)
    run_recipe(r, tmp_path, progress=False, log=lambda *_: None)
    stats = json.loads((tmp_path / "stages" / "language" / "stats.json").read_text())
    assert stats["lm"] < 0.7 * stats["lm_start"], stats


def test_text_only_stage_accepts_only_the_lm_loss(tmp_path):
    r = _recipe(1)
    r.stages[1].text_only = True
    with pytest.raises(ValueError, match="text_only"):
        run_recipe(r, tmp_path, progress=False, log=lambda *_: None)


def test_a_finished_stage_is_reused_only_for_the_same_recipe(tmp_path):
    run_recipe(_recipe(4), tmp_path, progress=False, log=lambda *_: None)
    logs = []
    run_recipe(_recipe(4), tmp_path, progress=False, log=logs.append)
    assert logs == [f"reusing trained model {tmp_path / 'model'}"]
    changed = _recipe(4)
    changed.stages[1].lr = 1e-4
    with pytest.raises(ValueError, match=r"different recipe.*stage\.lr: 0\.003 -> 0\.0001.*--overwrite"):
        run_recipe(changed, tmp_path, progress=False, log=lambda *_: None)
    logs = []
    run_recipe(changed, tmp_path, progress=False, log=logs.append, overwrite=True)
    assert "stage align: reusing" in logs[0] and any(x.startswith("stage ground: lm=") for x in logs)
    other_data = _recipe(4)
    other_data.data["train"] = "synth://easy?n=13&seed=0"
    with pytest.raises(ValueError, match=r"data\.train"):
        run_recipe(other_data, tmp_path, progress=False, log=lambda *_: None)
