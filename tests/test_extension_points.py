"""The extension points: a new time encoding or vision tower is one class plus one registry line, and a
tiny model trains and answers with it end to end."""
from __future__ import annotations

import re
from typing import Sequence

import pytest
import torch
from torch import nn

import damo.model.modeling_damo as md
from damo.config import Stage
from damo.data.collate import Collator
from damo.model.encoders import VISION_ENCODERS, VisionTower
from damo.model.modeling_damo import DamoModel
from damo.model.time_encodings import TIME_ENCODINGS, TimeEncoding
from damo.model.tokenizer import train_tokenizer
from damo.pipeline import DamoPipeline
from damo.train.loop import run_stage
from helpers import clip, tiny_cfg
from test_model import TEXTS, sample


class SecondTokens(TimeEncoding):
    """One token per whole second, ``<sec_0> .. <sec_{bins-1}>``; a span is written as its two bounds' tokens."""

    def __init__(self, bins: int):
        super().__init__(bins)
        self.vocabulary = [f"<sec_{i}>" for i in range(bins)]

    def write_span(self, span: Sequence[float], duration: float, style: str) -> str:
        return " ".join(f"<sec_{min(round(t), self.bins - 1)}>" for t in span[:2])

    def read_spans(self, answer: str, duration: float) -> list[list[float]]:
        return [[float(a), float(b), 1.0] for a, b in re.findall(r"<sec_(\d+)>\s*<sec_(\d+)>", answer)]


def test_a_toy_time_encoding_writes_the_targets_trains_and_reads_the_answer(monkeypatch, tmp_path):
    monkeypatch.setitem(TIME_ENCODINGS, "seconds", SecondTokens)      # the registry line
    cfg = tiny_cfg()
    cfg.time_encoding, cfg.response, cfg.time_bins = "seconds", "coupled", 8
    torch.manual_seed(0)
    model = DamoModel(cfg, train_tokenizer(TEXTS, 300))
    sec = model.tokenizer.convert_tokens_to_ids([f"<sec_{i}>" for i in range(8)])
    assert len(set(sec)) == 8 and model.tokenizer.unk_token_id not in sec and set(sec) <= set(model.new_token_ids)
    # the targets write each span with the encoding's tokens: one token per bound
    batch = Collator.for_model(model)([(sample(0, spans=((1.0, 3.0),)), clip(6, 0))])
    learned = [int(x) for x in batch.labels[0] if x != -100]
    assert learned.count(sec[1]) == 1 and learned.count(sec[3]) == 1
    assert re.search(r"in\s*<sec_1>\s*<sec_3>", model.tokenizer.decode(learned))
    # a few training steps move the rows of the tokens the targets hold
    rows = model.llm.get_input_embeddings().weight
    before = rows[sec].detach().clone()
    clips = {f"v{i}": clip(6, i) for i in range(4)}
    stats = run_stage(model, Stage(name="ground", losses={"lm": 1.0}, steps=3, batch=4, lr=1e-2, warmup=1,
                                   trainable=["llm.*"]), [sample(i, spans=((1.0, 3.0),)) for i in range(4)],
                      lambda v: clips[v], 0, progress=False)
    assert torch.isfinite(torch.tensor(stats["lm"]))
    moved = (rows[sec].detach() - before).abs().sum(1) > 0
    assert moved[1] and moved[3]
    # an answer that writes two of its tokens is read back by the encoding into a span in seconds
    script = iter([sec[2], sec[4], model.tokenizer.eos_token_id])
    monkeypatch.setattr(md, "next_tokens", lambda logits, seen, settings, rng: torch.tensor([next(script)]))
    pipe = DamoPipeline(model)
    pipe.save(tmp_path)
    r = DamoPipeline.load(tmp_path).answer([clip(6, 0)], ["when does the red square appear?"], 4)[0]
    assert "<sec_2>" in r["answer"] and r["spans"] == [[2.0, 4.0, 1.0]]


class MeanColourTower(VisionTower):
    """Each frame's 2 x 2 quadrants' mean colours, projected: a global token (the whole frame) and a
    square grid of 4 patch tokens."""

    def __init__(self, width: int, **_: object):
        super().__init__()
        self.proj = nn.Linear(3, width)
        self.width = width

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        quads = nn.functional.adaptive_avg_pool2d(frames.flatten(0, 1), 2).flatten(2).transpose(1, 2)   # (B*T, 4, 3)
        x = torch.cat([quads.mean(1, keepdim=True), quads], 1)                                        # (B*T, 5, 3)
        return self.proj(x).unflatten(0, frames.shape[:2])                                           # (B, T, 5, D)


def test_a_toy_vision_tower_runs_a_training_step(monkeypatch):
    monkeypatch.setitem(VISION_ENCODERS, "mean_colour", MeanColourTower)      # the registry line
    cfg = tiny_cfg()
    cfg.vision.kind, cfg.vision.width = "mean_colour", 24
    torch.manual_seed(0)
    model = DamoModel(cfg, train_tokenizer(TEXTS, 300))
    assert isinstance(model.video.vision, MeanColourTower) and model.video.residual_v.local.in_features == 24
    before = model.video.vision.proj.weight.detach().clone()
    clips = {f"v{i}": clip(6, i) for i in range(4)}
    stats = run_stage(model, Stage(name="ground", losses={"lm": 1.0, "grounding_bce": 1.0}, steps=2, batch=4,
                                   lr=1e-2, warmup=1, trainable=["video.*", "llm.*", "evidence.*"]),
                      [sample(i) for i in range(4)], lambda v: clips[v], 0, progress=False)
    assert torch.isfinite(torch.tensor(stats["grounding_bce"]))
    assert not torch.equal(model.video.vision.proj.weight, before)          # the tower trained with the rest


def test_a_tower_without_a_square_patch_grid_is_refused_in_one_line(monkeypatch):
    class ThreePatches(MeanColourTower):
        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            return super().forward(frames)[:, :, :4]                   # a global token and 3 patches

    monkeypatch.setitem(VISION_ENCODERS, "three", ThreePatches)
    cfg = tiny_cfg()
    cfg.vision.kind = "three"
    model = DamoModel(cfg, train_tokenizer(TEXTS, 300))
    with pytest.raises(ValueError, match="gave 3 patch tokens per frame, not a square grid"):
        model(Collator.for_model(model)([(sample(0), clip(6, 0))]))
