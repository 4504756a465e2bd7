"""Training whole VLMs with `damo train`: the shipped Qwen2.5-VL recipe (supervised answers with LoRA and
evidence heads, then GRPO) on a tiny random stand-in built here, on CPU, in the one training loop."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import yaml
from safetensors.torch import load_file

import vlm_tiny
from damo.cli import main
from damo.config import Recipe
from damo.data.collate import Collator
from damo.data.dataset import ClipLoader, load_dataset
from damo.model.generation import Generation
from damo.model.vlm import VideoLLM
from damo.train.grpo import GRPOSettings, grpo_objective, token_logps
from damo.train.recipe import run_recipe
from helpers import train_on_two_ranks

RECIPE = "qwen2.5-vl-grounding"
QUERY = "when does the man open the door?"
# a small frame and pixel budget (1 fps, at most 6 frames of 4-16 tokens) over the preset's
VIDEO = "{fps: 1.0, max_frames: 6, min_pixels: 3136, max_pixels: 12544}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return vlm_tiny.save("qwen2.5-vl", tmp_path_factory.mktemp("vlm") / "qwen2.5-vl")


def settings(folder, sft_steps: int = 6, grpo_steps: int = 2, **extra: str) -> list[str]:
    """``--set`` overrides running the shipped recipe on the tiny stand-in and procedural clips in seconds."""
    values = {"model.vlm.name_or_path": str(folder), "model.vlm.config": "{model_type: qwen2_5_vl}",
              "model.vlm.dtype": "float32", "model.vlm.lora": "{r: 4, alpha: 8}", "model.vlm.video": VIDEO,
              "data.train": "synth://easy?n=6&seed=0", "video_root": "null", "on_missing": "error",
              "num_workers": "0", "clip_memory": "true",
              "stages.0.steps": str(sft_steps), "stages.0.batch": "4", "stages.0.grad_accum": "1",
              "stages.0.lr": "3.0e-2", "stages.0.warmup": "0", "stages.0.save_every": "0",
              "stages.1.steps": str(grpo_steps), "stages.1.batch": "2", "stages.1.save_every": "0",
              "stages.1.grpo.group": "2", "stages.1.grpo.max_new_tokens": "12", "stages.1.lr": "1.0e-3"} | extra
    return [x for k, v in values.items() for x in ("--set", f"{k}={v}")]


def test_damo_train_runs_sft_then_grpo_and_saves_only_what_trained(folder, shared_data, tmp_path, capsys):
    work = tmp_path / "run"
    assert main(["train", "--recipe", RECIPE, "--workdir", str(work), *settings(folder)]) == 0
    sft = json.loads((work / "stages" / "sft" / "history.json").read_text())
    assert len(sft["lm"]) == len(sft["grounding_bce"]) == 6 and sft["lm"][-1] < sft["lm"][0] - 0.1
    grpo = json.loads((work / "stages" / "grpo" / "history.json").read_text())
    assert len(grpo["reward"]) == len(grpo["reward_iou"]) == len(grpo["zero_variance"]) == 2
    assert all(0 <= r <= 1 for r in grpo["reward_iou"])

    # the saved folders hold the LoRA adapters and the evidence heads, nothing of the checkpoint itself
    for stage in ("stages/sft", "model"):
        keys = load_file(str(work / stage / "trained.safetensors")).keys()
        assert keys and all("lora_" in k or k.startswith("evidence.") for k in keys)
        assert any(k.startswith("evidence.") for k in keys) and any(".language_model." in k for k in keys)
        assert not any("visual" in k for k in keys)
    saved = json.loads((work / "model" / "vlm.json").read_text())
    assert saved["base"] == str(folder) and saved["preset"] == "qwen2.5-vl" and saved["evidence"]

    # it reloads into the same VLM, whose answers differ from the untrained checkpoint's
    trained = VideoLLM.from_pretrained(str(work / "model"), dtype="float32").eval()
    base = VideoLLM.from_pretrained(str(folder), dtype="float32", video=trained.video).eval()
    sample = next(s for s in load_dataset("synth://easy?n=6&seed=0") if s.task == "grounding")
    clip = ClipLoader(trained.processor, cache="off")(sample.video)
    with torch.no_grad():
        batch = trained.inputs([clip], [sample.query])
        assert not torch.allclose(trained(batch)["logits"], base(batch)["logits"], atol=1e-3)

    # and grounds a real video under its preset
    capsys.readouterr()
    video = shared_data / "videos" / "carphone_pristine.mp4"
    assert main(["ground", str(video), QUERY, "--model", str(work / "model"), "--preset", "qwen2.5-vl", "--quiet",
                 "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["preset"] == "qwen2.5-vl" and len(out["evidence"]) == 1
    start, end, _ = out["evidence"][0]
    assert 0 <= start < end <= out["duration"]


def test_init_runs_only_the_stages_a_saved_vlm_has_not_trained(folder, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", "--recipe", RECIPE, "--workdir", str(first), *settings(folder, sft_steps=2)]) == 0
    capsys.readouterr()
    again = tmp_path / "again"
    assert main(["train", "--recipe", RECIPE, "--workdir", str(again), "--init", str(first / "stages" / "sft"),
                 *settings(folder, sft_steps=2)]) == 0
    assert f"--init {first / 'stages' / 'sft'}: trained through sft; running grpo" in capsys.readouterr().out
    assert not (again / "stages" / "sft").exists() and (again / "model" / "trained.safetensors").is_file()
    start = load_file(str(first / "stages" / "sft" / "trained.safetensors"))
    end = load_file(str(again / "model" / "trained.safetensors"))
    assert start.keys() == end.keys()
    assert any(not torch.equal(start[k], end[k]) for k in start if "lora_" in k)       # GRPO moved the adapters
    assert all(torch.equal(start[k], end[k]) for k in start if k.startswith("evidence."))   # and only them


@pytest.mark.parametrize("setting,line", [
    ("model.vlm.preset=qwen2.5-vision", "damo train: {recipe}: model: vlm: unknown preset 'qwen2.5-vision'; valid: "),
    ("stages.0.losses={lm: 1.0, contrastive: 1.0}",
     "damo train: recipe qwen2.5-vl-grounding: a whole VLM trains on single questions with its video, with the losses "
     "lm, grounding_bce, grpo; remove ['contrastive'] from its stages"),
    ("model.vlm.lora={r: 4, targets: [q_proj, qkv]}",
     "damo train: recipe qwen2.5-vl-grounding: model: vlm: lora.targets ['qkv'] match no linear module of the "
     "language model; it has down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"),
])
def test_a_bad_vlm_setting_is_one_line_before_any_work(folder, tmp_path, setting, line):
    from damo.config import find

    with pytest.raises(SystemExit) as e:
        main(["train", "--recipe", RECIPE, "--workdir", str(tmp_path / "run"), *settings(folder), "--set", setting])
    assert str(e.value).startswith(line.format(recipe=find("recipes", RECIPE))) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def sft_recipe(folder, grad_accum: int, parallel: str = "ddp") -> dict:
    """The supervised stage alone, on the tiny stand-in."""
    return {"name": "vlm-sft", "seed": 0, "clip_memory": True, "parallel": parallel,
            "data": {"train": "synth://easy?n=6&seed=0"},
            "model": {"vlm": {"name_or_path": str(folder), "preset": "qwen2.5-vl",
                              "config": {"model_type": "qwen2_5_vl"}, "dtype": "float32",
                              "lora": {"r": 4, "alpha": 8}, "evidence": True, "video": yaml.safe_load(VIDEO)}},
            "stages": [{"name": "sft", "tasks": ["grounding"], "trainable": ["model.*lora_*", "evidence.*"],
                        "losses": {"lm": 1.0, "grounding_bce": 1.0}, "steps": 3, "batch": 4, "lr": 3.0e-2,
                        "warmup": 0, "grad_accum": grad_accum}]}


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_train_the_same_adapters_as_one(folder, tmp_path, parallel):
    train_on_two_ranks(sft_recipe(folder, 1, parallel), tmp_path, tmp_path / "two")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:   # one process, two micro-batches per step: the same global batch split the same way
        run_recipe(Recipe.from_dict(sft_recipe(folder, 2)), tmp_path / "one", progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(n)
    one, two = (load_file(str(tmp_path / run / "model" / "trained.safetensors")) for run in ("one", "two"))
    assert one.keys() == two.keys()
    for k in one:        # the ranks' gradients summed in another order (FSDP: reduce-scattered): float noise only
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=3e-5, msg=k)
    lora_b = [k for k in one if "lora_B" in k]      # peft starts them at zero: training moved them, alike in both runs
    assert lora_b and all(one[k].abs().sum() > 0 for k in lora_b)


def test_grpo_scores_the_sampled_answers_under_the_distribution_they_were_drawn_from(folder):
    torch.manual_seed(0)
    vlm = VideoLLM.from_pretrained(str(folder), dtype="float32", video=yaml.safe_load(VIDEO))
    vlm.add_lora({"r": 4})
    samples = [s for s in load_dataset("synth://easy?n=6&seed=0") if s.task == "grounding"][:2] * 3
    loader = ClipLoader(vlm.processor, cache="off")
    items = [(s, loader(s.video)) for s in samples]
    prompts = vlm.processor.generation_batch([c for _, c in items], [s.query for s, _ in items])
    # transformers' own sampling from the whole softmax at temperature 1, with its scores
    torch.manual_seed(7)
    with torch.no_grad():
        ref = vlm.model.generate(**prompts.inputs, max_new_tokens=10, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, output_scores=True, return_dict_in_generate=True)
    rows = vlm.generate(prompts, 10, seed=7, policy=Generation(do_sample=True))
    L = prompts.inputs["input_ids"].shape[1]
    assert [r["ids"] for r in rows] == [s[L:L + len(r["ids"])].tolist() for s, r in zip(ref.sequences, rows)]
    assert len({tuple(r["ids"]) for r in rows}) > 1
    # teacher-forced, each sampled token's log-prob is the one it was drawn with
    stop = vlm.processor.response_ids("", last=True)
    batch = Collator.for_model(vlm).completions(items, [r["ids"] + stop for r in rows], [[] for _ in rows])
    vlm.train()
    logp = token_logps(vlm(batch)["logits"], batch.labels)                       # (B, L - 1)
    for b, r in enumerate(rows):
        got = logp[b][batch.labels[b, 1:] != -100][:len(r["ids"])]
        drawn = torch.stack([torch.log_softmax(ref.scores[i][b], -1)[t] for i, t in enumerate(r["ids"])])
        torch.testing.assert_close(got, drawn, rtol=1e-4, atol=1e-4)
    # the clipped objective moves the adapters by the advantages alone
    st = GRPOSettings(group=3, rewards={"iou": 1.0})
    grads = []
    for adv in (torch.zeros(len(rows)), torch.tensor([1.0, -1.0] * 3)):
        vlm.zero_grad()
        grpo_objective(vlm(replace(batch, advantages=adv)), replace(batch, advantages=adv), st, None, {}).backward()
        grads.append(sum(p.grad.abs().sum() for p in vlm.parameters() if p.grad is not None))
    assert grads[0] == 0 and grads[1] > 0


TEXT = {"vocab_size": 320, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096}
VISION = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 256}


def saved_bytes(lm: torch.nn.Module, tokens: int, layers: int) -> int:
    """Bytes autograd keeps for the backward (each storage once) in a bf16-autocast forward of the first
    ``layers`` decoder layers of the language model ``lm`` on ``tokens`` tokens."""
    full, seen = lm.layers, {}
    lm.layers = full[:layers]

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(1, tokens, TEXT["hidden_size"], dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(tokens).view(1, 1, tokens).expand(3, 1, tokens)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            lm(inputs_embeds=x, position_ids=pos, use_cache=False)
    finally:
        lm.layers = full
    return sum(seen.values())


@pytest.mark.parametrize("family,lora", [
    ("qwen2_5_vl", {"r": 8}), ("qwen2_5_vl", {"r": 4, "targets": ["q_proj", "v_proj"]}), ("qwen2_5_vl", None),
    ("qwen3_vl", {"r": 8}), ("qwen3_vl", None)])
def test_the_planned_layer_activations_are_what_autograd_keeps(family, lora):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig,
                              Qwen3VLForConditionalGeneration)

    from damo.model.vlm import add_lora
    from damo.plan import layer_activation_bytes

    torch.manual_seed(0)
    rope = {"rope_type": "default", "rope_theta": 1e4}
    model = (Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=TEXT | {"rope_parameters": rope | {"mrope_section": [8, 12, 12]}}, vision_config=VISION))
        if family == "qwen2_5_vl" else Qwen3VLForConditionalGeneration(Qwen3VLConfig(
            text_config=TEXT | {"head_dim": 32, "rope_parameters": rope | {"mrope_section": [4, 6, 6],
                                                                            "mrope_interleaved": True}},
            vision_config=VISION | {"num_position_embeddings": 64, "deepstack_visual_indexes": [0]})))
    model = model.to(torch.bfloat16).train()
    if lora:
        add_lora(model, lora)
    lm = model.model.language_model
    # one layer's bytes per token: a second layer's, less what does not grow with the tokens
    second = {n: saved_bytes(lm, n, 2) - saved_bytes(lm, n, 1) for n in (256, 512)}
    per_token = (second[512] - second[256]) / 256
    assert layer_activation_bytes(model.config.text_config, lora) == per_token


def test_plan_of_the_vlm_recipe_counts_adapters_activations_and_logits(capsys):
    from damo.config import load_recipe
    from damo.model.evidence import EvidenceHead
    from damo.plan import plan_vlm

    assert main(["plan", "--recipe", RECIPE, "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    sft, grpo = stages["sft"], stages["grpo"]
    # r-64 LoRA on 28 layers' q, k, v, o (3584 wide; k and v 512) and gate, up, down (18944); the heads in sft only
    lora = 28 * 64 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + (3584 + 18944) * 2 + (18944 + 3584))
    heads = sum(p.numel() for p in EvidenceHead(3584).parameters())
    assert sft["trainable"] == lora + heads and grpo["trainable"] == lora
    assert sft["modules"]["visual"]["trainable"] == sft["modules"]["lm_head"]["trainable"] == 0
    assert sft["tokens"] == 14336 + 256 and grpo["tokens"] == 14336 + 256 + 48      # TimeLens' visual budget
    # GRPO teacher-forces its group of 8 completions of each prompt and keeps their sampling cache
    assert grpo["activation_gb"] > 8 * sft["activation_gb"] > 0
    # logits at the answers alone: 129 positions of the sft clip, 8 x 49 of the GRPO prompt
    assert 0 < sft["logits_gb"] < 0.5 and grpo["logits_gb"] / sft["logits_gb"] == pytest.approx(8 * 49 / 129, rel=0.03)
    assert sft["memory_gb"]["ddp"] < grpo["memory_gb"]["ddp"] and sft["fits"]["ddp"]
    # gradient checkpointing keeps one bf16 input per layer instead of every layer's activations
    recipe = load_recipe(RECIPE)
    full = plan_vlm(replace(recipe.model, gradient_checkpointing=False), None, recipe)["stages"]["sft"]
    assert full["activation_gb"] > 10 * sft["activation_gb"]


def test_a_stopped_vlm_stage_resumes_to_the_same_adapters(folder, tmp_path, monkeypatch):
    import damo.train.loop as loop

    recipe = sft_recipe(folder, 1)
    recipe["stages"][0] |= {"steps": 4, "save_every": 2}
    quiet = {"progress": False, "log": lambda *_: None}
    run_recipe(Recipe.from_dict(recipe), tmp_path / "whole", **quiet)

    class Stop(Exception):
        pass

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise Stop

    save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        run_recipe(Recipe.from_dict(recipe), tmp_path / "stopped", **quiet)
    monkeypatch.setattr(loop, "save_checkpoint", save)
    logs: list[str] = []
    run_recipe(Recipe.from_dict(recipe), tmp_path / "stopped", progress=False, log=logs.append)
    assert "stage sft: resuming from step-00000002" in logs
    whole, resumed = (load_file(str(tmp_path / run / "model" / "trained.safetensors")) for run in ("whole", "stopped"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.parametrize("name,preset,model_type", [("qwen3-vl", "timelens", "qwen3_vl"),
                                                    ("qwen2.5-omni", "qwen2.5-omni", "qwen2_5_omni_thinker")])
def test_the_other_families_train_through_the_same_recipe(tmp_path, shared_data, capsys, name, preset, model_type):
    folder = vlm_tiny.save(name, tmp_path / name)
    work = tmp_path / "run"
    family = {"model.vlm.preset": preset, "model.vlm.config": f"{{model_type: {model_type}}}"}
    assert main(["train", "--recipe", RECIPE, "--workdir", str(work),
                 *settings(folder, sft_steps=2, grpo_steps=1, **family)]) == 0
    assert len(json.loads((work / "stages" / "grpo" / "history.json").read_text())["reward"]) == 1
    assert json.loads((work / "model" / "vlm.json").read_text())["preset"] == preset
    capsys.readouterr()
    video = shared_data / "videos" / "chaplin.mp4"          # with sound: the Omni thinker hears it
    assert main(["ground", str(video), QUERY, "--model", str(work / "model"), "--quiet", "--device", "cpu",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["preset"] == preset and len(out["evidence"]) == 1


def test_grpo_compares_rewards_once_sft_teaches_the_answers_form(folder, tmp_path):
    recipe = sft_recipe(folder, 1)
    recipe["model"]["vlm"] |= {"lora": {"r": 8, "alpha": 16}, "evidence": False}
    recipe["stages"] = [
        {"name": "sft", "tasks": ["grounding"], "trainable": ["model.*lora_*", "model.lm_head.*"],
         "losses": {"lm": 1.0}, "steps": 40, "batch": 4, "lr": 3.0e-2, "warmup": 0},
        {"name": "grpo", "tasks": ["grounding"], "trainable": ["model.*lora_*"], "losses": {"grpo": 1.0},
         "grpo": {"group": 4, "max_new_tokens": 16, "rewards": {"iou": 1.0, "format": 1.0}},
         "steps": 3, "batch": 2, "lr": 1.0e-3, "warmup": 0, "weight_decay": 0.0}]
    run_recipe(Recipe.from_dict(recipe), tmp_path, progress=False, log=lambda *_: None)
    sft = json.loads((tmp_path / "stages" / "sft" / "history.json").read_text())
    assert sft["lm"][-1] < 2.5 and sft["lm"][0] > 5
    # some sampled answers now parse into spans and others not: groups with rewards to compare
    grpo = json.loads((tmp_path / "stages" / "grpo" / "history.json").read_text())
    assert max(grpo["reward_format"]) > 0 and min(grpo["zero_variance"]) < 1
    before, after = (load_file(str(tmp_path / run / "trained.safetensors")) for run in ("stages/sft", "model"))
    assert before.keys() == after.keys() and "model.lm_head.weight" in before
    assert torch.equal(before["model.lm_head.weight"], after["model.lm_head.weight"])        # GRPO trains the adapters
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_" in k)       # without weight decay
    # the folder names the checkpoint's weight a stage trained, and puts it back
    assert json.loads((tmp_path / "model" / "vlm.json").read_text())["trained"] == ["model.lm_head.weight"]
    again = VideoLLM.from_pretrained(str(tmp_path / "model"), dtype="float32")
    assert torch.equal(again.model.lm_head.weight, after["model.lm_head.weight"])
