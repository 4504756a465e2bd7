"""Hostile recipes: YAML aliases that expand to billions of nodes, numbers that are not numbers,
learning rates that blow up, a loss that turns NaN. Each fails before any model is built, or at the
first non-finite loss, with nothing saved."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from damo.cli import main
from damo.config import Recipe, load_recipe
from damo.train import loop, recipe as recipe_mod

from helpers import TINY_MODEL

STAGE = {"name": "ground", "losses": {"lm": 1.0}, "steps": 3, "batch": 2}


def _write(path: Path, stage: dict) -> Path:
    path.write_text(yaml.safe_dump({"model": TINY_MODEL, "data": {"train": "synth://easy?n=4&seed=0"},
                                    "stages": [stage]}))
    return path


def test_yaml_aliases_are_refused_at_once(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    lines += ["stages:", "  - name: s", "    losses: {lm: 1.0}", "    steps: 1", "    tasks: *a8"]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")                # 10^9 leaves once expanded
    assert bomb.stat().st_size < 1500
    with pytest.raises(ValueError, match=r"bomb\.yaml:2: YAML aliases \(\*name\) are not accepted"):
        load_recipe(bomb)
    with pytest.raises(ValueError, match="YAML aliases"):
        load_recipe("damo_4stage", ["stages.0.tasks=[&x a, *x]"])


@pytest.mark.parametrize("key, value, message", [
    ("lr", math.inf, r"lr must be a number in \(0, 1\], got inf"),
    ("lr", "1e30", r"lr must be a number in \(0, 1\], got '1e30'"),
    ("lr", 0, r"lr must be a number in \(0, 1\]"),
    ("lr", "fast", r"lr must be a number"),
    ("batch", -1, r"batch must be a whole number >= 1, got -1"),
    ("steps", "1e12", r"steps must be a whole number >= 1, got '1e12'"),
    ("steps", -5, r"steps must be a whole number >= 1, got -5"),
    ("steps", True, r"steps must be a whole number"),
    ("warmup", 2.5, r"warmup must be a whole number >= 0"),
    ("weight_decay", math.nan, r"weight_decay must be a number in \[0, 1\]"),
    ("losses", {"lm": math.nan}, r"losses must map loss names to finite weights"),
])
def test_numbers_are_checked_before_any_model_is_built(tmp_path, monkeypatch, capsys, key, value, message):
    built = []
    monkeypatch.setattr(recipe_mod, "build_model", lambda *a, **k: built.append(1))
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict({"model": TINY_MODEL, "stages": [STAGE | {key: value}]})
    path = _write(tmp_path / "r.yaml", STAGE | {key: value})
    with pytest.raises(SystemExit) as e:
        main(["train", "--recipe", str(path), "--workdir", str(tmp_path / "work")])
    assert str(e.value.code).startswith("damo train: stage 'ground': ") and "\n" not in str(e.value.code)
    assert built == [] and not (tmp_path / "work").exists()


def test_shipped_recipes_pass_the_checks():
    assert load_recipe("damo_4stage").stages[1].lr == pytest.approx(2e-3)


def test_training_stops_at_the_first_non_finite_loss_saving_nothing(tmp_path, monkeypatch):
    calls = []
    lm = loop.LOSSES["lm"]

    def lm_then_nan(x):
        calls.append(1)
        value = lm.fn(x)
        return value * math.nan if len(calls) == 2 else value

    monkeypatch.setitem(loop.LOSSES, "lm", dataclasses.replace(lm, fn=lm_then_nan))
    r = Recipe.from_dict({"model": TINY_MODEL, "data": {"train": "synth://easy?n=4&seed=0"},
                          "stages": [STAGE | {"steps": 4, "save_every": 1}]})
    with pytest.raises(loop.TrainingDiverged, match=r"stage 'ground': the loss is nan at step 2 .*lower its lr"):
        recipe_mod.run_recipe(r, tmp_path, progress=False, log=lambda *_: None)
    assert len(calls) == 2
    assert not list(tmp_path.rglob("model.safetensors")) and not (tmp_path / "model").exists()
