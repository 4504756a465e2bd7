"""Builders shared by the tests (importable from subprocess runners too): tiny model configs and clips."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from damo.model.configuration_damo import DamoConfig
from damo.model.processing import ClipTensors

# Debian's headless browser and its driver, for the web demo's browser tests (marked `browser`);
# scripts/setup installs them where it can
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

# A recipe's `model` section: the smallest model that trains end to end in a few seconds.
TINY_MODEL = {"vision": {"width": 32, "layers": 1}, "audio": {"width": 32},
              "fuser": {"width": 32, "blocks": 1, "visual_queries": 4, "audio_queries": 2, "fusion_tokens": 4},
              "llm": {"hidden": 32, "layers": 2, "intermediate": 64, "vocab_size": 400},
              "bridge_tokens": 4, "align_dim": 16}


# Trains the recipe file argv[1] into the folder argv[2] (each torchrun rank runs it).
RUNNER = """
import sys, torch
torch.set_num_threads(1)
from damo.config import load_recipe
from damo.train.recipe import run_recipe
run_recipe(load_recipe(sys.argv[1]), sys.argv[2], progress=False)
"""


def torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run`` with two CPU processes (gloo) on ``args``: one thread each,
    offline, this tree's ``damo``; stdout and stderr captured as text."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "DAMO_THREADS": "1", "HF_HUB_OFFLINE": "1",
                        "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], env=env, capture_output=True, text=True, timeout=timeout)


def train_on_two_ranks(recipe: dict, folder: Path, out: Path) -> subprocess.CompletedProcess:
    """Trains ``recipe`` (a recipe's fields) into ``out`` with torchrun and two processes; the recipe
    file and :data:`RUNNER` are written to ``folder``. Fails the test with the ranks' stderr unless
    both succeed."""
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "runner.py").write_text(RUNNER)
    res = torchrun(str(folder / "runner.py"), str(folder / "recipe.yaml"), str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def tiny_cfg() -> DamoConfig:
    """The default towers with a 2-layer, 32-wide LLM and a one-block fuser."""
    cfg = DamoConfig()
    cfg.llm.hidden, cfg.llm.layers, cfg.llm.intermediate = 32, 2, 64
    cfg.fuser.width, cfg.fuser.blocks = 32, 1
    return cfg


def clip(T: int, seed: int) -> ClipTensors:
    """Random model inputs for a ``T``-second clip at 1 fps (32 px frames, tiny log-mel)."""
    g = torch.Generator().manual_seed(seed)
    return ClipTensors(frames=torch.randint(0, 255, (T, 32, 32, 3), generator=g, dtype=torch.uint8),
                       mel=torch.randn(T, 25, 32, generator=g).half(), times=torch.arange(T) + 0.5, duration=float(T))


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """The two models hold the same parameter and buffer names, each with an equal tensor."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), sorted(sa.keys() ^ sb.keys())
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
