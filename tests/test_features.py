"""Stored frozen-tower outputs: the same losses and answers as running the towers, resumable writes."""
from __future__ import annotations

import json
import random

import pytest
import torch

from damo.cli import main
from damo.config import Recipe
from damo.data.collate import Collator
from damo.data.dataset import ClipLoader
from damo.data.features import FeatureLoader, extract, settings_dir
from damo.data.synthetic import synth_samples
from damo.model.configuration_damo import DamoConfig
from damo.model.modeling_damo import DamoModel
from damo.model.tokenizer import train_tokenizer
from damo.train import losses
from damo.train.recipe import run_recipe
from damo.pipeline import DamoPipeline, processor_of

from helpers import TINY_MODEL


@pytest.fixture(scope="module")
def setup():
    samples = synth_samples("synth://easy?n=3&seed=0")
    torch.manual_seed(0)
    model = DamoModel(DamoConfig.from_dict(TINY_MODEL), train_tokenizer([s.query for s in samples] + [s.answer for s in samples], 300))
    return model.eval(), samples


def test_stored_features_give_the_same_losses_and_answers(setup, tmp_path):
    model, samples = setup
    clips = ClipLoader(processor_of(model))
    r = extract(model, [s.video for s in samples], clips, tmp_path, shard_videos=2, progress=False)
    assert r["videos"] == 3 and r["shards"] == 2
    stored = FeatureLoader(tmp_path, model)
    items = [(s, clips(s.video)) for s in samples[:6]]
    items_f = [(s, stored(s.video)) for s in samples[:6]]
    assert items_f[0][1].frames.numel() == 0                       # no frames: the towers do not run
    col = Collator.for_model(model)
    with torch.no_grad():
        a, b = col(items, random.Random(0)), col(items_f, random.Random(0))
        oa, ob = model(a), model(b)
        for name in ("lm", "grounding_bce", "consistency"):
            assert float(losses.LOSSES[name].fn(losses.LossInputs(oa, a))) == pytest.approx(
                float(losses.LOSSES[name].fn(losses.LossInputs(ob, b))), abs=1e-5)
        assert float(losses.contrastive(losses.LossInputs(oa, a, model))) == pytest.approx(
            float(losses.contrastive(losses.LossInputs(ob, b, model))), abs=1e-5)
    q = [s.query for s in samples[:4]]
    assert DamoPipeline(model).answer([c for _, c in items[:4]], q, 8) == DamoPipeline(model).answer([c for _, c in items_f[:4]], q, 8)


def test_a_killed_extraction_resumes_and_other_weights_get_their_own_folder(setup, tmp_path):
    model, samples = setup
    videos = sorted({s.video for s in samples})
    clips = ClipLoader(processor_of(model))

    def dies_on_third(v):
        if v == videos[2]:
            raise KeyboardInterrupt
        return clips(v)

    with pytest.raises(KeyboardInterrupt):
        extract(model, videos, dies_on_third, tmp_path, shard_videos=1, progress=False)
    r = extract(model, videos, clips, tmp_path, shard_videos=1, progress=False)
    assert (r["written"], r["reused"], r["videos"]) == (1, 2, 3)
    with torch.no_grad():
        model.video.vision.patchify.weight.add_(1.0)
    try:
        assert settings_dir(tmp_path, model)[0].name != r["folder"].rsplit("/", 1)[1]
        with pytest.raises(FileNotFoundError, match="no features of this model's encoders"):
            FeatureLoader(tmp_path, model)
    finally:
        with torch.no_grad():
            model.video.vision.patchify.weight.sub_(1.0)


def test_a_recipe_with_features_trains_frozen_encoder_stages_like_the_towers(tmp_path):
    def recipe(features):
        return Recipe.from_dict({"model": TINY_MODEL, "seed": 0, "data": {"train": "synth://easy?n=4&seed=0"},
                                 "features": features, "stages": [
            {"name": "ground", "losses": {"lm": 1.0, "grounding_bce": 5.0}, "steps": 3, "batch": 4, "warmup": 1,
             "trainable": ["fuseformer.*", "projector.*", "llm.*", "evidence.*"]}]})
    run_recipe(recipe(None), tmp_path / "a", progress=False, log=lambda *_: None)
    run_recipe(recipe(str(tmp_path / "f")), tmp_path / "b", progress=False, log=lambda *_: None)
    sa, sb = (json.loads((tmp_path / x / "stages" / "ground" / "stats.json").read_text()) for x in "ab")
    for k in ("lm", "grounding_bce", "lm_start"):
        assert sa[k] == pytest.approx(sb[k], abs=1e-5)
    assert list((tmp_path / "f").glob("*/shard-*.safetensors"))


def test_features_command_from_a_model_config(tmp_path, capsys):
    cfg = tmp_path / "m.yaml"
    cfg.write_text(json.dumps(TINY_MODEL))
    assert main(["data", "features", "--model", str(cfg), "--data", "synth://easy?n=2&seed=1", "--out",
                 str(tmp_path / "f"), "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["written"] == r["videos"] == 2
