"""The papers' models at full size on the meta device (damo plan), their LLM out of a VLM checkpoint,
trainable-only saves, and tiny stand-ins of each paper config training every stage of its recipe."""
from __future__ import annotations

import copy

import pytest
import torch
import yaml
from transformers import (AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, LlavaNextConfig,
                          LlavaNextForConditionalGeneration, MistralConfig, Phi3Config, Qwen2Config,
                          SiglipVisionConfig, SiglipVisionModel, WhisperConfig)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from damo.config import find, load_recipe
from damo.data.dataset import ClipLoader, load_dataset
from damo.model.configuration_damo import DamoConfig, LLMConfig
from damo.model.modeling_damo import DamoModel
from damo.model.tokenizer import train_tokenizer
from damo.plan import PlanOptions, build_meta, memory_gb, module_counts, plan
from damo.train.loop import run_stage, set_trainable
from damo.train.recipe import build_model
from damo.pipeline import processor_of
from helpers import TINY_MODEL

PAPERS = ["damo", "d2vlm", "llava-st"]
LLM_CLASSES = {"mistral": MistralConfig, "phi3": Phi3Config, "qwen2": Qwen2Config}


def paper_config(name: str) -> dict:
    return yaml.safe_load(find("configs", f"paper-{name}.yaml").read_text())


@pytest.fixture(scope="module")
def meta_models():
    return {name: build_meta(DamoConfig.from_dict(paper_config(name))) for name in PAPERS}


def meta_count(model_cls, config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in model_cls(config).parameters())


@pytest.mark.parametrize("name", PAPERS)
def test_each_tower_has_the_size_of_its_transformers_class(meta_models, name):
    d, model = paper_config(name), meta_models[name]
    v = d["vision"]
    cls, ccls = {"clip": (CLIPVisionModel, CLIPVisionConfig), "siglip": (SiglipVisionModel, SiglipVisionConfig)}[v["family"]]
    assert sum(p.numel() for p in model.video.vision.parameters()) == meta_count(cls, ccls(**v["config"]))
    if d["audio"]["kind"] == "hf_whisper":
        want = meta_count(WhisperEncoder, WhisperConfig(**d["audio"]["config"]))
        assert sum(p.numel() for p in model.video.audio.parameters()) == want
    # the LLM: the transformers class from the same config, plus LoRA and the added token rows
    llm_cfg = LLM_CLASSES[d["llm"]["family"]](**d["llm"]["config"])
    base = model.llm.get_base_model()
    frozen = sum(p.numel() for n, p in base.named_parameters()
                 if "lora_" not in n and "trainable_tokens" not in n and "modules_to_save" not in n)
    added = (len(model.tokenizer) - llm_cfg.vocab_size) * llm_cfg.hidden_size * 2     # untied: embedding + head
    assert frozen == meta_count(lambda c: AutoModelForCausalLM.from_config(c), llm_cfg) + added
    assert model.llm.peft_config["default"].r == d["llm"]["lora"]["r"]


def test_damo_temporal_stage_trains_lora_r32_new_modules_and_token_rows(meta_models):
    """Trainable count of the DaMO recipe's temporal stage from Mistral-7B's layer shapes: LoRA r=32
    adds r (in + out) per target projection per layer; each added token trains one embedding row and
    one head row; the new modules train whole."""
    model = meta_models["damo"]
    recipe = load_recipe("paper-damo")
    stage = next(s for s in recipe.stages if s.name == "temporal")
    n = set_trainable(model, stage.trainable)
    c = paper_config("damo")["llm"]["config"]
    h, kv = c["hidden_size"], c["num_key_value_heads"] * c["hidden_size"] // c["num_attention_heads"]
    shapes = {"q": (h, h), "k": (h, kv), "v": (h, kv), "o": (h, h), "gate": (h, c["intermediate_size"]),
              "up": (h, c["intermediate_size"]), "down": (c["intermediate_size"], h)}
    lora = c["num_hidden_layers"] * sum(32 * (i + o) for i, o in shapes.values())
    rows = 2 * h * len(model.new_token_ids)
    new = sum(p.numel() for m in ("video.residual_v", "video.residual_a", "video.temporal_conv", "video.fuseformer",
                                  "connector.projector", "connector.bridge", "connector.bridge_out")
              for p in model.get_submodule(m).parameters()) + model.connector.bridge_queries.numel()
    assert n == lora + rows + new
    assert lora == 83_886_080
    counts = module_counts(model)
    assert counts["video.vision"]["trainable"] == counts["video.audio"]["trainable"] == 0
    assert counts["llm"]["trainable"] == lora + rows


def test_d2vlm_trains_attention_lora_and_the_whole_embeddings_as_its_authors(meta_models):
    """d2vlm/train/train.py: LoRA r=128 on Phi-3's qkv_proj and o_proj only (get_target_modules,
    'attention'), and every embed_tokens / lm_head parameter trained whole."""
    model = meta_models["d2vlm"]
    stage = next(s for s in load_recipe("paper-d2vlm").stages if s.name == "instruct")
    set_trainable(model, stage.trainable)
    c = paper_config("d2vlm")["llm"]["config"]
    h, layers = c["hidden_size"], c["num_hidden_layers"]
    lora = layers * 128 * ((h + 3 * h) + (h + h))           # qkv_proj h -> 3h, o_proj h -> h (32 kv heads)
    whole = 2 * len(model.tokenizer) * h                      # untied embeddings and head
    assert module_counts(model)["llm"]["trainable"] == lora + whole
    assert not any(n.startswith("llm.") and "mlp" in n and p.requires_grad for n, p in model.named_parameters())
    assert (stage.lr, stage.lrs) == (2e-5, {"llm.*lora_*": 5e-5})       # --learning_rate, --lora_lr


def test_llava_st_schedule_follows_the_released_scripts():
    from damo.train.loop import param_groups

    cfg = paper_config("llava-st")
    assert (cfg["llm"]["lora"]["r"], cfg["llm"]["lora"]["alpha"]) == (128, 256)
    stages = {s.name: s for s in load_recipe("paper-llava-st").stages}
    assert stages["content"].lr == 1e-4
    tiny = DamoModel(DamoConfig.from_dict(TINY_MODEL), train_tokenizer(["when?"] * 4, 300))
    s = stages["coordinate"]
    s.trainable = ["video.fuseformer.*", "connector.projector.*", "llm.*"]
    set_trainable(tiny, s.trainable)
    groups = {g["lr"]: sum(p.numel() for p in g["params"]) for g in param_groups(tiny, s)}
    assert set(groups) == {2e-4, 2e-5}
    assert groups[2e-5] == sum(p.numel() for m in (tiny.video.fuseformer, tiny.connector.projector)
                               for p in m.parameters())
    s.lrs = {"video.fusefromer.*": 1e-5}
    with pytest.raises(ValueError, match=r"lrs globs \['video.fusefromer.\*'\] match no trainable parameter"):
        param_groups(tiny, s)


def test_lape_tokens_train_in_embeddings_and_output_head(meta_models):
    model = meta_models["llava-st"]
    assert len(model.coord_axes["t"]) == 100 and len(model.coord_axes["x"]) == 100
    deltas = {n: p for n, p in model.named_parameters() if "trainable_tokens" in n}
    assert any("embed_tokens" in n for n in deltas) and any("lm_head" in n for n in deltas)
    assert all(p.shape[0] == len(model.new_token_ids) for p in deltas.values())
    assert set(model.axis_of) <= set(model.new_token_ids)


def test_plan_runs_a_stage_and_reports_what_does_not_fit():
    recipe = load_recipe("paper-damo")
    recipe.stages = [s for s in recipe.stages if s.name == "bridge"]
    p = plan(recipe.model, recipe, PlanOptions(gpus=8, gpu_gb=12.0, frames=8, text_tokens=32))
    e = p["stages"]["bridge"]
    assert e["tokens"] > 32 + 8 and e["activation_gb"] > 0
    mem = e["memory_gb"]
    assert mem["fsdp"] < mem["ddp"]
    # DDP replicates 7.9 B bf16 weights (> 14 GB): does not fit in 12 GB; FSDP over 8 GPUs does, its
    # peaks included: the GPU holds its shards and one whole tensor at a time, loading and gathering
    weights = (2 * (e["total"] - e["trainable"]) + 4 * e["trainable"]) / 1024 ** 3
    assert max(mem["fsdp_load"], mem["fsdp_end"]) < weights / 2      # the whole model, before
    assert mem["fsdp"] == max(mem["fsdp_steady"], mem["fsdp_load"], mem["fsdp_end"])
    assert e["fits"] == {"ddp": False, "fsdp": True}
    assert e["total"] == sum(m["total"] for m in e["modules"].values())


def test_plan_takes_the_micro_batch_from_the_recipe_and_counts_the_logits():
    """paper-damo's bridge stage: a global batch of 128 over 8 GPUs x 8 accumulation steps is 2 clips per
    forward; Mistral-7B's 32,000-word vocabulary (plus our tokens) over every LLM token, 14 bytes each."""
    from damo.plan import format_plan

    recipe = load_recipe("paper-damo")
    recipe.stages = [s for s in recipe.stages if s.name == "bridge"]
    p = plan(recipe.model, recipe, PlanOptions(gpus=8, frames=8, text_tokens=32))
    e = p["stages"]["bridge"]
    assert recipe.stages[0].batch == 128 and recipe.stages[0].grad_accum == 8 and e["micro_batch"] == 2
    vocab = meta_vocab(recipe.model)
    assert e["logits_gb"] == round(e["tokens"] * vocab * 14 / 1024 ** 3, 2)
    assert "micro-batch 2" in format_plan(p, "paper-damo")
    one = plan(recipe.model, recipe, PlanOptions(gpus=8, frames=8, text_tokens=32, micro_batch=1))["stages"]["bridge"]
    assert one["micro_batch"] == 1 and one["memory_gb"]["ddp"] < e["memory_gb"]["ddp"]


def meta_vocab(cfg: DamoConfig) -> int:
    return build_meta(cfg).llm.get_output_embeddings().weight.shape[0]


def test_memory_model_scales_with_gpus_only_under_fsdp():
    a = memory_gb(7 * 10**9, 10**8, 2 * 1024**3, gpus=1, micro_batch=1, unit=10**8)
    b = memory_gb(7 * 10**9, 10**8, 2 * 1024**3, gpus=8, micro_batch=1, unit=10**8)
    assert a["ddp"] == b["ddp"] and b["fsdp_steady"] < a["fsdp_steady"] and b["fsdp"] < a["fsdp"]


def test_a_trainable_pattern_that_matches_nothing_fails(meta_models):
    with pytest.raises(ValueError, match=r"\[.video\.fusefromer\.\*.\] match no parameter"):
        set_trainable(meta_models["damo"], ["video.fuseformer.*", "video.fusefromer.*"])


# ------------------------------------------------------------------ LLM out of a VLM checkpoint
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["when does the red square appear?", "the high tone plays", "red"] * 20, 300)


def test_llm_loads_out_of_a_llava_next_checkpoint_with_the_same_tensors(tmp_path, tok):
    torch.manual_seed(0)
    text = MistralConfig(vocab_size=len(tok), sliding_window=None, tie_word_embeddings=False, **TINY)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              patch_size=8, image_size=32)
    vlm = LlavaNextForConditionalGeneration(LlavaNextConfig(text_config=text, vision_config=vision,
                                                            image_token_index=3, image_grid_pinpoints=[[32, 32]]))
    vlm.save_pretrained(tmp_path / "vlm")
    tok.save_pretrained(tmp_path / "vlm")
    cfg = DamoConfig(llm=LLMConfig(kind="hf", family="mistral", name_or_path=str(tmp_path / "vlm"),
                                   submodule="model.language_model", config={"hidden_size": 32}))
    model = build_model(cfg, [])
    mine = model.llm.state_dict()
    theirs = {f"model.{k}": v for k, v in vlm.model.language_model.state_dict().items()} | {"lm_head.weight": vlm.lm_head.weight}
    n = len(tok)
    for k, v in theirs.items():
        w = mine[k]
        torch.testing.assert_close(w[:n] if w.shape[0] > n and "embed" in k or "lm_head" in k else w,
                                   v[:w.shape[0]] if "embed" in k or "lm_head" in k else v, rtol=0, atol=0)
    assert set(mine) == set(theirs)
    bad = copy.deepcopy(cfg)
    bad.llm.config = {"hidden_size": 4096}
    with pytest.raises(ValueError, match="stated llm.config"):
        build_model(bad, [])


# ------------------------------------------------------------------ trainable-only saves
def test_save_with_pretrained_backbones_stores_only_what_differs_and_reloads_exactly(tmp_path, tok):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(MistralConfig(vocab_size=len(tok), sliding_window=None,
                                                   tie_word_embeddings=False, **TINY)).save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     patch_size=8, image_size=32)).save_pretrained(tmp_path / "clip")
    cfg = DamoConfig.from_dict({"time_encoding": "lape", "time_bins": 8,
                                "vision": {"kind": "hf_vision", "family": "clip", "name_or_path": str(tmp_path / "clip")},
                                "llm": {"kind": "hf", "name_or_path": str(tmp_path / "llm"), "lora": {"r": 4, "alpha": 8}}})
    model = build_model(cfg, [])
    set_trainable(model, ["llm.*lora_*", "llm.*trainable_tokens*", "connector.projector.*", "video.vision.model.post_layernorm.*"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    model.save(tmp_path / "out")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("llm.") and "lora_" not in k and "trainable_tokens" not in k and "::" not in k for k in keys)
    assert "video.vision.model.post_layernorm.weight" in keys              # trained: stored
    assert "video.vision.model.pre_layrnorm.weight" not in keys             # pretrained, frozen: named
    assert (tmp_path / "out" / "llm_adapter" / "adapter_config.json").is_file()
    back = DamoModel.load(tmp_path / "out")
    a, b = model.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ tiny stand-ins train every stage
def tiny_stand_in(name: str, tok_len: int) -> dict:
    """The paper config with the same classes at tiny sizes (random weights, nothing fetched)."""
    d = paper_config(name)
    fam = d["llm"]["family"]
    extra = {"phi3": dict(original_max_position_embeddings=512), "mistral": dict(sliding_window=None)}.get(fam, {})
    d["llm"] |= {"pretrained": False, "submodule": None, "gradient_checkpointing": False, "dtype": "float32",
                 "config": TINY | extra | {"vocab_size": tok_len, "max_position_embeddings": 4096,
                                           "tie_word_embeddings": False}}
    d["llm"]["lora"] |= {"r": 4, "alpha": 8}
    v = d["vision"]
    v |= {"pretrained": False, "dtype": "float32", "image_size": 28,
          "config": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         patch_size=14, image_size=28)}
    if d["audio"]["kind"] == "hf_whisper":
        d["audio"] |= {"pretrained": False, "dtype": "float32",
                       "config": dict(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                                      decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
                                      max_source_positions=1500, max_target_positions=32, vocab_size=64,
                                      decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)}
    d["fuser"] |= {"width": 16, "blocks": 1, "heads": 2, "visual_queries": 4, "audio_queries": 2, "fusion_tokens": 4,
                   "frame_tokens": min(d["fuser"]["frame_tokens"], 2), "visual_tokens": 4}
    if d.get("compressor", {}).get("kind") == "stp":
        d["compressor"] |= {"budget": 24, "k_max": 4, "options": {"heads": 2, "fast_side": 1, "stride": 2}}
    d["evidence"] |= {"dim": 8} | ({"hidden": 8} if d["evidence"].get("hidden") else {})
    if "capture_layer" in d["evidence"]:   # an intermediate layer of the 2-layer stand-in (official: 6 of 32)
        d["evidence"]["capture_layer"] = 1
    d |= {"bridge_tokens": 2, "align_dim": 8, "llm_frames": 8, "time_bins": min(d.get("time_bins", 32), 8),
          "uniform_frames": min(d.get("uniform_frames", 0), 6),
          "box_bins": min(d.get("box_bins", 0), 4)}
    return d


@pytest.mark.parametrize("name", PAPERS)
def test_tiny_stand_in_trains_every_stage_and_changes_exactly_what_the_recipe_names(name):
    import fnmatch

    recipe = load_recipe(f"paper-{name}")
    samples = load_dataset("synth://easy?n=8&seed=0")
    cfg = DamoConfig.from_dict(tiny_stand_in(name, 600))     # resized to the trained tokenizer when built
    assert cfg.llm.family == recipe.model.llm.family and cfg.vision.family == recipe.model.vision.family
    model = build_model(cfg, samples, 0)
    clips = ClipLoader(processor_of(model), memory=True)
    for i, stage in enumerate(recipe.stages):
        stage.steps, stage.batch, stage.grad_accum, stage.warmup, stage.save_every = 2, 2, 1, 1, 0
        before = {k: v.clone() for k, v in model.named_parameters()}
        stats = run_stage(model, stage, samples, clips, i, progress=False)
        named = {k for k in before if any(fnmatch.fnmatch(k, p) for p in stage.trainable)}
        moved = {k for k, v in model.named_parameters() if not torch.equal(before[k], v)}
        assert moved <= named, f"{stage.name}: {sorted(moved - named)[:5]} changed but the recipe does not train them"
        assert not any(k.startswith(("video.vision.", "video.audio.")) for k in moved)   # the frozen towers
        if "grpo" in stage.losses and stats["zero_variance"] == 1.0:
            # an untrained stand-in writes no span: every sampled group scores 0, so no gradient moves anything
            assert not moved, stage.name
            continue
        assert moved, stage.name
        if "llm.*lora_*" in stage.trainable:
            assert any("lora_B" in k for k in moved)
        if "llm.*trainable_tokens*" in stage.trainable:
            assert any("lm_head" in k and "trainable_tokens" in k for k in moved)
        if "llm.*modules_to_save*" in stage.trainable:     # D²VLM: the whole embeddings and head
            assert {"embed_tokens", "lm_head"} <= {x for k in moved if "modules_to_save" in k
                                                   for x in ("embed_tokens", "lm_head") if x in k}


def test_llava_st_feeds_the_packers_slow_and_fast_streams_to_the_llm():
    """LLaVA-ST section 3.3: 100 frames of 3 x 3 fast tokens and 20 slow steps of 9 x 9 tokens, 2520 in all."""
    from damo.model.compressors import TokenBudget
    from damo.model.processing import DamoProcessor

    cfg = DamoConfig.from_dict(paper_config("llava-st"))
    assert cfg.compressor.placement == "llm"
    c, o = cfg.compressor, cfg.compressor.options
    budget = TokenBudget(c.kind, cfg.fuser.visual_tokens, c.budget, c.k_min, c.k_max, o["fast_side"], o["stride"])
    assert budget.split(100) == (9, 9) and budget.tokens(100) == 100 * 9 + 20 * 81 == c.budget
    tok = train_tokenizer(["when?"] * 4, 300)
    lay = DamoProcessor.from_model_config(cfg, tok).layout(100)
    assert (lay.group, lay.per_frame, lay.slow_side, lay.slow_tokens(100)) == (1, 9, 9, 1620)


def test_llava_st_lora_step_changes_exactly_our_token_rows_of_the_untied_head():
    """LLaVA-ST extends the input embeddings and the output layer (section 3.2, eq. 4). One step of the
    coordinate stage (LoRA + `llm.*trainable_tokens*`) moves exactly our added tokens' rows of the
    untied head (the softmax reaches every row; LAPE's time term reaches the <t_i> rows too), and in the
    input embeddings only rows among them, including every time anchor."""
    recipe = load_recipe("paper-llava-st")
    stage = next(s for s in recipe.stages if s.name == "coordinate")
    stage.steps, stage.batch, stage.grad_accum, stage.warmup, stage.save_every = 1, 2, 1, 1, 0
    samples = load_dataset("synth://easy?n=4&seed=0")
    model = build_model(DamoConfig.from_dict(tiny_stand_in("llava-st", 600)), samples, 0)
    emb, head = model.llm.get_input_embeddings(), model.llm.get_output_embeddings()
    e0, h0 = emb.weight.detach().clone(), head.weight.detach().clone()
    assert e0.data_ptr() != h0.data_ptr() and not torch.equal(e0, h0)            # untied
    run_stage(model, stage, samples, ClipLoader(processor_of(model), memory=True), 0, progress=False)
    ours = set(model.new_token_ids)
    assert changed_rows(h0, head.weight) == ours
    assert set(model.coord_axes["t"]) <= changed_rows(e0, emb.weight) <= ours


def changed_rows(before: torch.Tensor, after: torch.Tensor) -> set[int]:
    return set((after.detach() != before).any(1).nonzero().flatten().tolist())
