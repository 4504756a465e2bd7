"""Frozen-tower features inside a recipe under torchrun: every process extracts its share on its own device
(not rank 0 alone while the others wait at a barrier); training then reads them as the towers give them."""
from __future__ import annotations

import json

import pytest

from helpers import TINY_MODEL, train_on_two_ranks


def recipe(features: str | None) -> dict:
    return {"model": TINY_MODEL, "seed": 0, "data": {"train": "synth://easy?n=4&seed=0"}, "features": features,
            "stages": [{"name": "ground", "losses": {"lm": 1.0, "grounding_bce": 5.0}, "steps": 3, "batch": 4,
                        "warmup": 1, "trainable": ["fuseformer.*", "projector.*", "llm.*", "evidence.*"]}]}


def run_two(tmp_path, name: str, features: str | None) -> tuple[dict, str]:
    res = train_on_two_ranks(recipe(features), tmp_path, tmp_path / name)
    return json.loads((tmp_path / name / "stages" / "ground" / "stats.json").read_text()), res.stdout


def test_two_processes_extract_on_their_devices_and_train_on_the_merged_features(tmp_path):
    feats = tmp_path / "features"
    stored, out = run_two(tmp_path, "stored", str(feats))
    assert "features: 4 videos computed ([" in out                           # every process took part
    (folder,) = feats.iterdir()
    assert not list(folder.glob("shard-*.json"))                             # merged into the index
    assert len(json.loads((folder / "index.json").read_text())["videos"]) == 4
    towers, _ = run_two(tmp_path, "towers", None)                            # the towers themselves, no store
    for k in ("lm", "grounding_bce", "lm_start"):
        assert stored[k] == pytest.approx(towers[k], abs=1e-5)
