"""Crash-safe checkpoints: a SIGKILLed run resumes to the same weights; files are atomic and pickle-free."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from damo.config import Recipe
from damo.model.modeling_damo import DamoModel
from damo.train import checkpoint as ck
from damo.train.recipe import run_recipe

from helpers import TINY_MODEL, assert_same_weights


def recipe_dict(steps: int = 40) -> dict:
    return {"model": TINY_MODEL, "seed": 0, "data": {"train": "synth://easy?n=12&seed=0"},
            "stages": [
                {"name": "align", "tasks": ["dense_caption"], "losses": {"contrastive": 1.0}, "steps": 3, "batch": 4,
                 "trainable": ["vision.*", "audio.*", "residual_*", "fuseformer.*", "text_encoder.*", "align_video.*"]},
                {"name": "ground", "losses": {"lm": 1.0, "grounding_bce": 5.0, "consistency": 1.0}, "steps": steps,
                 "batch": 4, "lr": 3e-3, "warmup": 2, "save_every": 3, "grad_accum": 2,
                 "trainable": ["fuseformer.*", "projector.*", "time_proj.*", "bridge*", "llm.*", "evidence.*"]},
            ]}


class OneThread:
    """Bitwise comparisons need the same reduction order: one intra-op thread."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


RUNNER = ("import sys, torch; torch.set_num_threads(1); from damo.config import load_recipe; "
          "from damo.train.recipe import run_recipe; run_recipe(load_recipe(sys.argv[1]), sys.argv[2], progress=False)")


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    rfile = tmp_path / "recipe.yaml"
    rfile.write_text(yaml.safe_dump(recipe_dict()))
    killed = tmp_path / "killed"
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(rfile), str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = killed / "checkpoints" / "ground" / "latest"
    deadline = time.time() + 300
    while not latest.is_file():
        if proc.poll() is not None:
            raise AssertionError(f"training process ended before its first checkpoint: {proc.stderr.read().decode()}")
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists() and not (killed / "stages" / "ground").exists(), "killed too late"
    assert (killed / "stages" / "align" / "model.safetensors").is_file()
    step = int(latest.read_text().split("-")[1])
    assert 0 < step < 40

    logs: list[str] = []
    with OneThread():
        resumed = run_recipe(Recipe.from_dict(recipe_dict()), killed, progress=False, log=logs.append)
        straight = run_recipe(Recipe.from_dict(recipe_dict()), tmp_path / "straight", progress=False,
                              log=lambda *_: None)
    assert any("resuming from step-" in m for m in logs), logs
    assert not (killed / "checkpoints" / "ground").exists(), "finished stage's checkpoints are cleared"
    assert_same_weights(resumed, straight)
    # the stage's loss history survives the kill too
    sa = (killed / "stages" / "ground" / "stats.json").read_text()
    sb = (tmp_path / "straight" / "stages" / "ground" / "stats.json").read_text()
    drop = lambda s: {k: v for k, v in yaml.safe_load(s).items() if k not in ("wall_s", "cpu_s")}   # timings
    # (logged losses are float32 sums; summation order may differ between processes in the last bits)
    assert drop(sa).keys() == drop(sb).keys()
    assert drop(sa) == pytest.approx(drop(sb), rel=1e-6)


def test_checkpoint_restores_weights_optimizer_schedule_and_rng(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    net[0].bias.requires_grad = False                       # frozen: not in the checkpoint
    frozen_bias = net[0].bias.detach().clone()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))

    def step():
        opt.zero_grad()
        net(torch.randn(3, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()

    for _ in range(3):
        step()
    random.seed(5), np.random.seed(5)
    ck.save_checkpoint(tmp_path, 3, net, opt, sched, extra={"history": {"lm": [1.5, 1.25]}, "ids": (1, 2)})
    at_save = ck.rng_state()
    step()
    expect = [p.detach().clone() for p in net.parameters()]
    ck.set_rng_state(at_save)
    draws = (random.random(), np.random.rand(), torch.rand(1))

    torch.manual_seed(123)                                   # a fresh process: other weights, other RNG
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    net[0].bias.requires_grad = False
    net[0].bias.data.copy_(frozen_bias)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    state = ck.load_checkpoint(ck.latest_checkpoint(tmp_path), net, opt, sched)
    assert state["step"] == 3 and state["extra"] == {"history": {"lm": [1.5, 1.25]}, "ids": (1, 2)}
    assert sched.last_epoch == 3
    assert (random.random(), np.random.rand(), torch.rand(1)) == draws
    ck.load_checkpoint(ck.latest_checkpoint(tmp_path), net, opt, sched)
    step()                                                   # continues exactly like the uninterrupted run
    for p, q in zip(net.parameters(), expect):
        assert torch.equal(p, q)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["latest", "step-00000003"]


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for s in (2, 4, 6):
        ck.save_checkpoint(tmp_path, s, net, opt, sched, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000004", "step-00000006"]
    assert ck.latest_checkpoint(tmp_path).name == "step-00000006"
    assert ck.latest_checkpoint(tmp_path / "none") is None


def test_atomic_writes_keep_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "w.safetensors"
    ck.atomic_save_tensors({"a": torch.ones(3)}, target)
    ck.atomic_write_text(tmp_path / "latest", "step-1")

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(OSError):
        ck.atomic_save_tensors({"a": torch.zeros(3)}, target)
    with pytest.raises(OSError):
        ck.atomic_write_text(tmp_path / "latest", "step-2")
    monkeypatch.undo()
    assert torch.equal(ck.load_state_file(target)["a"], torch.ones(3))
    assert (tmp_path / "latest").read_text() == "step-1"


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    rec = Recipe.from_dict(recipe_dict(1) | {"stages": [recipe_dict(1)["stages"][0] | {"steps": 1}]})
    model = run_recipe(rec, tmp_path / "run", progress=False, log=lambda *_: None)
    folder = tmp_path / "run" / "model"
    state = ck.load_state_file(folder / "model.safetensors")
    torch.save(state, folder / "model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="arbitrary code.*allow_pickle=True"):
        DamoModel.load(folder)
    again = DamoModel.load(folder, allow_pickle=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    with pytest.raises(ValueError, match="pickles"):
        ck.load_state_file(folder / "model.bin")
