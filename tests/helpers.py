"""Builders shared by the tests (importable from subprocess runners too): tiny model configs and clips."""
from __future__ import annotations

import torch

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
