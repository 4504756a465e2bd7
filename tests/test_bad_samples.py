"""Samples that cannot train: the pre-flight before training (a corrupt file, a sample over max_len),
and the deterministic replacement of what only decoding reveals (a truncated file), on one and two
processes, through a resumed run and through evaluation."""
from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from damo.cli import main
from damo.config import Recipe, Stage
from damo.data import synthetic
from damo.data.dataset import ClipLoader, load_dataset
from damo.data.preflight import BadSampleError, preflight
from damo.data.schema import write_jsonl
from damo.model.configuration_damo import DamoConfig
from damo.train.loop import run_stage
from damo.train.recipe import build_model, run_recipe
from damo.pipeline import processor_of
from helpers import TINY_MODEL, train_on_two_ranks

MAX_LEN = 160


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Ten procedural samples plus: one whose file is not a video (random bytes), one whose file is cut
    at 60 % (its header is fine: only decoding finds it), one whose answer is far over max_len."""
    root = tmp_path_factory.mktemp("bad")
    good = load_dataset("synth://easy?n=10&seed=0")
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    spec = synthetic.generate_spec("easy", 0, "test", 0)
    whole = synthetic.write_video(spec, root / "whole.mkv").read_bytes()
    truncated = root / "truncated.mkv"
    truncated.write_bytes(whole[:int(len(whole) * 0.6)])
    g = next(s for s in good if s.task == "grounding")
    bad = [replace(g, id="corrupt-file", video=str(corrupt)),
           replace(g, id="truncated-file", video=str(truncated), duration=spec.duration, spans=[[1.0, 3.0]]),
           replace(g, id="too-long", task="grounded_qa", answer=" ".join(["the red square appears"] * 80))]
    samples = good + bad
    path = root / "train.jsonl"
    write_jsonl(path, (s.to_dict() for s in samples))
    return {"path": path, "samples": samples, "root": root}


def recipe(data_path, on_missing: str, parallel: str = "ddp") -> dict:
    return {"model": TINY_MODEL | {"max_len": MAX_LEN}, "seed": 0, "on_missing": on_missing, "parallel": parallel,
            "data": {"train": str(data_path)},
            "stages": [{"name": "ground", "losses": {"lm": 1.0, "grounding_bce": 1.0}, "steps": 3, "batch": 12,
                        "warmup": 1}]}


def test_preflight_names_the_corrupt_file_and_the_long_sample_and_stops_before_training(data, tmp_path):
    with pytest.raises(BadSampleError) as e:
        run_recipe(Recipe.from_dict(recipe(data["path"], "error")), tmp_path / "run", progress=False,
                   log=lambda *_: None)
    msg = str(e.value)
    assert "2 samples cannot train" in msg and "corrupt-file" in msg and "too-long" in msg
    assert f"> max_len {MAX_LEN}" in msg and "truncated-file" not in msg      # its header is fine
    assert not (tmp_path / "run" / "stages").exists()
    # the command says it in one line
    rfile = tmp_path / "recipe.yaml"
    rfile.write_text(yaml.safe_dump(recipe(data["path"], "error")))
    with pytest.raises(SystemExit) as e:
        main(["train", "--recipe", str(rfile), "--workdir", str(tmp_path / "cli")])
    assert str(e.value).startswith("damo train: ") and "corrupt-file" in str(e.value)


def test_a_sample_unreadable_at_run_time_is_replaced_the_same_way_and_not_read_again_on_resume(data, tmp_path):
    samples = [s for s in data["samples"] if s.id != "corrupt-file"]     # no pre-flight: run_stage alone
    model = build_model(DamoConfig.from_dict(TINY_MODEL | {"max_len": MAX_LEN}), samples, 0)
    start = copy.deepcopy(model)
    stage = Stage(name="ground", losses={"lm": 1.0, "grounding_bce": 1.0}, steps=4, batch=11, warmup=1, save_every=2,
                  trainable=["video.fuseformer.*", "connector.*", "llm.*", "evidence.*"])

    reads: list[str] = []

    class Counting(ClipLoader):
        def __call__(self, video):
            reads.append(video)
            return super().__call__(video)

    bad: list[dict] = []
    run_stage(model, stage, samples, Counting(processor_of(model), memory=True), 0, progress=False,
              checkpoint_dir=tmp_path / "ckpt", bad_samples=bad)
    assert sorted(b["id"] for b in bad) == ["too-long", "truncated-file"]
    assert "truncated file" in next(b["reason"] for b in bad if b["id"] == "truncated-file")
    assert f"> max_len {MAX_LEN}" in next(b["reason"] for b in bad if b["id"] == "too-long")
    assert (tmp_path / "ckpt" / "latest").is_file()                         # step 2 of 4
    # the resumed run (steps 2 and 3) knows both from the checkpoint: the truncated file is not read again
    reads.clear()
    again: list[dict] = []
    run_stage(start, stage, samples, Counting(processor_of(start), memory=True), 0, progress=False,
              checkpoint_dir=tmp_path / "ckpt", bad_samples=again)
    assert reads and not any(v.endswith("truncated.mkv") for v in reads)
    assert sorted(b["id"] for b in again) == ["too-long", "truncated-file"]
    for k, v in model.state_dict().items():                                  # the same replacements
        torch.testing.assert_close(start.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_two_processes_skip_and_replace_bad_samples_and_evaluation_goes_to_the_end(data, tmp_path, capsys):
    train_on_two_ranks(recipe(data["path"], "skip"), tmp_path, tmp_path / "two")
    report = json.loads((tmp_path / "two" / "bad_samples.json").read_text())
    assert sorted(r["id"] for r in report["preflight"][str(data["path"])]) == ["corrupt-file", "too-long"]
    assert [r["id"] for r in report["stages"]["ground"]] == ["truncated-file"]
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", "--data", str(data["path"]), "--model", str(tmp_path / "two" / "model"),
                 "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert sorted(f["id"] for f in m["failed"]) == ["corrupt-file", "truncated-file"]
    preds = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == len(data["samples"]) - 2
    assert "2 samples could not be read" in capsys.readouterr().err


def test_preflight_keeps_a_clean_dataset_whole():
    samples = load_dataset("synth://easy?n=6&seed=0")
    model = build_model(DamoConfig.from_dict(TINY_MODEL), samples, 0)
    kept, bad = preflight(samples, processor_of(model))
    assert kept == samples and not bad


def test_a_corrupt_validation_video_is_caught_by_the_preflight_before_the_first_evaluation(data, tmp_path):
    """A GRPO stage evaluating on validation data with one corrupt video: ``on_missing: error`` stops the
    run before any step, naming the validation file and the sample; ``skip`` leaves the sample out,
    lists it in bad_samples.json, and every evaluation runs on the remaining validation samples."""
    good = [s for s in load_dataset("synth://easy?n=4&seed=1") if s.task == "grounding"]
    corrupt = replace(good[0], id="corrupt-val", video=str(data["root"] / "corrupt.mp4"))
    val = tmp_path / "val.jsonl"
    write_jsonl(val, (s.to_dict() for s in good + [corrupt]))

    def rl(on_missing: str) -> Recipe:
        return Recipe.from_dict(
            {"model": TINY_MODEL | {"max_len": MAX_LEN}, "seed": 0, "on_missing": on_missing,
             "data": {"train": "synth://easy?n=4&seed=0", "val": str(val)},
             "stages": [{"name": "rl", "tasks": ["grounding"], "losses": {"grpo": 1.0}, "steps": 2, "batch": 2,
                         "warmup": 1, "trainable": ["llm.*"],
                         "grpo": {"group": 2, "max_new_tokens": 8, "eval_every": 1, "patience": 5}}]})

    with pytest.raises(BadSampleError, match=rf"{val}: 1 samples cannot train: corrupt-val \(.*corrupt.mp4\)"):
        run_recipe(rl("error"), tmp_path / "stop", progress=False, log=lambda *_: None)
    assert not (tmp_path / "stop" / "stages").exists()

    said: list[str] = []
    run_recipe(rl("skip"), tmp_path / "skip", progress=False, log=said.append)
    report = json.loads((tmp_path / "skip" / "bad_samples.json").read_text())
    assert [r["id"] for r in report["preflight"][str(val)]] == ["corrupt-val"]
    assert any(m.startswith(f"{val}: skipping 1 samples") for m in said)
    history = json.loads((tmp_path / "skip" / "stages" / "rl" / "history.json").read_text())
    assert len(history["val_reward"]) == 2
