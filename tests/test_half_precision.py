"""Backbones in half precision (``dtype: bfloat16``, ``--dtype``): tiny stand-ins of the three paper
configs evaluate, ground and train with the LLM and the towers in bfloat16 under CPU autocast, and
match float32 within a stated tolerance.

Tolerance: bfloat16 keeps 8 significant bits (relative rounding error 2^-9, about 0.2 %); through
the stand-ins' few layers the outputs stay within 2 % of their float32 scale (relative L2 error of
logits and evidence logits, and of the first step's loss) and their log-probabilities within 0.02
nats. Half precision that is not applied at all would give an error of exactly zero, which the tests
refuse too."""
from __future__ import annotations

import json
import random

import pytest
import torch

from damo.cli import main
from damo.config import load_recipe
from damo.data.collate import Collator
from damo.data.dataset import ClipLoader, load_dataset
from damo.data.schema import write_jsonl
from damo.model.configuration_damo import DamoConfig
from damo.model.modeling_damo import DamoModel
from damo.train.loop import run_stage
from damo.train.recipe import build_model
from damo.pipeline import DamoPipeline, processor_of
from helpers import tiny_cfg
from test_paper_models import PAPERS, tiny_stand_in

REL_TOL = 0.02      # relative L2 error against float32
LOGP_TOL = 0.02     # largest log-probability difference, nats


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / a.norm())


@pytest.fixture(scope="module")
def samples():
    return load_dataset("synth://easy?n=8&seed=0")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, samples):
    """Each paper's tiny stand-in, saved once with float32 weights."""
    out = {}
    for name in PAPERS:
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(name) / "model"
        build_model(DamoConfig.from_dict(tiny_stand_in(name, 600)), samples, 0).save(path)
        out[name] = path
    return out


def backbone_dtypes(model: DamoModel) -> set[torch.dtype]:
    parts = [model.llm, model.video.vision, model.video.audio]
    return {p.dtype for m in parts for n, p in m.named_parameters() if "lora_" not in n and "trainable_tokens" not in n}


@pytest.mark.parametrize("name", PAPERS)
def test_stand_in_in_bf16_matches_fp32_teacher_forced_and_generates(name, saved, samples):
    fp32 = DamoModel.load(saved[name])
    bf16 = DamoModel.load(saved[name], dtype="bfloat16")
    assert fp32.half_dtype() is None and bf16.half_dtype() == torch.bfloat16
    assert backbone_dtypes(bf16) == {torch.bfloat16}
    # DaMO's own modules stay float32 (they run under autocast)
    assert {p.dtype for m in (bf16.connector, bf16.evidence, bf16.video.fuseformer) for p in m.parameters()} == {torch.float32}
    clips = ClipLoader(processor_of(fp32), memory=True)
    items = [(s, clips(s.video)) for s in samples[:4]]
    batch = Collator(processor_of(fp32))(items, random.Random(0))
    with torch.no_grad():
        a = fp32(batch)
        with bf16.autocast():
            b = bf16(batch)
    keys = ["logits"] + (["evi_logits"] if name == "d2vlm" else [])   # only D²VLM answers with <evi>
    assert set(keys) <= set(a)
    for k in keys:
        assert 0 < rel_err(a[k], b[k]) < REL_TOL, k
    logp = (a["logits"].float().log_softmax(-1) - b["logits"].float().log_softmax(-1)).abs().max()
    assert float(logp) < LOGP_TOL
    # greedy decoding with the KV cache and evidence grounding runs in bf16 (it raised a dtype error)
    clip_list = [c for _, c in items]
    rows = DamoPipeline(bf16).answer(clip_list, [s.query for s, _ in items], max_new_tokens=6)
    assert len(rows) == 4 and all(isinstance(r["answer"], str) for r in rows)
    assert all(0 <= sp[0] <= sp[1] <= c.duration for r, c in zip(rows, clip_list) for sp in r["spans"])


@pytest.mark.parametrize("name", PAPERS)
def test_stand_in_trains_a_step_in_bf16_with_the_loss_of_fp32(name, saved, samples):
    recipe = load_recipe(f"paper-{name}")
    stage = next(s for s in recipe.stages if "llm.*lora_*" in s.trainable)
    stage.steps, stage.batch, stage.grad_accum, stage.warmup, stage.save_every = 1, 2, 1, 1, 0
    losses = {}
    for dtype in ("float32", "bfloat16"):
        model = DamoModel.load(saved[name], dtype=dtype)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        losses[dtype] = run_stage(model, stage, samples, ClipLoader(processor_of(model), memory=True), 0, progress=False)
        moved = [k for k, v in model.named_parameters() if not torch.equal(before[k], v)]
        assert any("lora_B" in k for k in moved)
        assert all(torch.isfinite(v).all() for v in model.parameters())
    a, b = losses["float32"]["total"], losses["bfloat16"]["total"]
    assert a != b and abs(a - b) < REL_TOL * abs(a)


def test_eval_and_ground_take_a_dtype_on_cpu(tmp_path, saved, samples, clip_mkv, capsys):
    data = tmp_path / "test.jsonl"
    write_jsonl(data, (s.to_dict() for s in samples[:3]))
    for dtype in ("float32", "bfloat16"):
        assert main(["eval", "--data", str(data), "--model", str(saved["d2vlm"]), "--out", str(tmp_path / dtype),
                     "--device", "cpu", "--dtype", dtype, "--batch-size", "2"]) == 0
    preds = {d: [json.loads(x) for x in (tmp_path / d / "predictions.jsonl").read_text().splitlines()]
             for d in ("float32", "bfloat16")}
    assert [p["id"] for p in preds["bfloat16"]] == [p["id"] for p in preds["float32"]] == [s.id for s in samples[:3]]
    # the demo's model (the tiny default towers and LLM, every weight float32 when saved) grounds a file in bf16
    torch.manual_seed(0)
    build_model(tiny_cfg(), samples, 0).save(tmp_path / "tiny")
    assert backbone_dtypes(DamoModel.load(tmp_path / "tiny", dtype="bfloat16")) == {torch.bfloat16}
    capsys.readouterr()
    assert main(["ground", str(clip_mkv), "when does the red square appear?", "--model", str(tmp_path / "tiny"),
                 "--device", "cpu", "--dtype", "bfloat16", "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["duration"] == pytest.approx(13.0, abs=0.1)
    assert all(0 <= sp["start"] <= sp["end"] <= out["duration"] for sp in out["spans"])


def test_a_config_dtype_is_honoured_on_cpu(samples):
    cfg = tiny_cfg()
    cfg.llm.dtype = cfg.vision.dtype = cfg.audio.dtype = "bfloat16"
    model = build_model(cfg, samples, 0)
    assert backbone_dtypes(model) == {torch.bfloat16} and model.half_dtype() == torch.bfloat16
    cfg.vision.dtype = "float16"
    with pytest.raises(ValueError, match="both bfloat16 and float16"):
        build_model(cfg, samples, 0).half_dtype()
