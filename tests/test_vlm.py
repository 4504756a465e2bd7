"""Whole VLMs as DaMO models: tiny random stand-ins of Qwen2.5-VL, Qwen3-VL and the Qwen2.5-Omni thinker,
built from their real transformers classes, saved, loaded back, and run on real videos."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.video_utils import VideoMetadata

import vlm_tiny
from damo.cli import main
from damo.media.decode import decode_clip
from damo.model.vlm import FAMILIES, VideoLLM, VLMProcessor, audio_tokens, chunk_bounds
from damo.train.losses import LOSSES, LossInputs

NAMES = ["qwen2.5-vl", "qwen3-vl", "qwen2.5-omni"]
QUERY = "when does the man open the door?"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {name: vlm_tiny.save(name, root / name) for name in NAMES}


def small(vlm: VideoLLM) -> VideoLLM:
    """The same model with a small frame and pixel budget (1 fps, at most 6 frames of 4-16 tokens)."""
    p = vlm.processor
    f = p.spec.factor
    preset = dataclasses.replace(p.preset, video={"fps": 1.0, "max_frames": 6, "min_pixels": 4 * f * f,
                                                  "max_pixels": 16 * f * f})
    out = VideoLLM(vlm.model, VLMProcessor(p.tokenizer, vlm.model.config, preset, p.features), vlm.source)
    out.lora, out.evidence = vlm.lora, vlm.evidence
    return out


@pytest.fixture(scope="module")
def clips(shared_data):
    """Two real clips of different lengths and shapes, one with sound (chaplin) and one without (carphone)."""
    return [decode_clip(shared_data / "videos" / name, fps=1.0, size=None) for name in ("chaplin.mp4",
                                                                                        "carphone_pristine.mp4")]


def ours_and_reference(folder, clips) -> tuple:
    """The shrunk VLM of a saved folder, transformers' own model of the same folder, both clips as its
    inputs and a question about each."""
    vlm = small(VideoLLM.from_pretrained(str(folder), dtype="float32"))
    reference = FAMILIES[vlm.model.config.model_type].model.from_pretrained(folder).eval()
    return vlm, reference, [vlm.processor.video_inputs(c) for c in clips], [QUERY, "when is the phone call?"]


@pytest.mark.parametrize("name", NAMES)
def test_batched_logits_equal_transformers_forward_on_each_clip(folders, clips, name):
    vlm, reference, inputs, queries = ours_and_reference(folders[name], clips)
    batch = vlm.inputs(inputs, queries)
    assert batch.inputs["video_grid_thw"][0].tolist() != batch.inputs["video_grid_thw"][1].tolist()
    with torch.no_grad():
        logits = vlm(batch)["logits"]
        for b, (c, q) in enumerate(zip(inputs, queries)):
            alone = vlm.processor.batch([c], [q])
            ref = reference(**alone).logits[0]
            n = ref.shape[0]
            assert batch.inputs["attention_mask"][b].sum() == n
            torch.testing.assert_close(logits[b, -n:], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_batched_greedy_answers_equal_model_generate_alone(folders, clips, name):
    vlm, reference, inputs, queries = ours_and_reference(folders[name], clips)
    ours = [r["ids"] for r in vlm.generate(vlm.processor.generation_batch(inputs, queries), max_new_tokens=8)]
    eos = reference.generation_config.eos_token_id
    for row, c, q in zip(ours, inputs, queries):
        alone = vlm.processor.batch([c], [q])
        with torch.no_grad():
            out = reference.generate(**alone, max_new_tokens=8, do_sample=False)[0, alone["input_ids"].shape[1]:]
        new = out.tolist()
        assert row == new[:new.index(eos)] if eos in new else row == new
    assert any(ours)


def test_qwen3_timestamps_and_tokens_equal_transformers_processor(folders, clips):
    vlm = small(VideoLLM.from_pretrained(str(folders["qwen3-vl"]), dtype="float32"))
    proc, clip = vlm.processor, vlm.processor.video_inputs(clips[0])
    ids, types = FAMILIES["qwen3_vl"].block(proc, clip)
    # transformers' own placeholder text, from frame indices on a 1 kHz timeline (ms-exact frame times)
    ref = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
                          video_token="<|video_pad|>", vision_start_token="<|vision_start|>",
                          vision_end_token="<|vision_end|>")
    ref._calculate_timestamps = lambda *a: Qwen3VLProcessor._calculate_timestamps(ref, *a)
    meta = VideoMetadata(total_num_frames=100000, fps=1000.0, frames_indices=np.round(clip.video.times * 1000).astype(int))
    text = Qwen3VLProcessor.replace_video_token(ref, {"video_grid_thw": torch.tensor([clip.video.grid_thw]),
                                                      "video_metadata": [meta]}, 0)
    assert ids == proc.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert text.count(" seconds>") == clip.video.grid_thw[0] == 3      # one timestamp per temporal patch
    assert sum(t == 2 for t in types) == clip.video.tokens(2)


def test_omni_interleaving_equals_transformers_processor(folders, clips):
    vlm = small(VideoLLM.from_pretrained(str(folders["qwen2.5-omni"]), dtype="float32"))
    proc, clip = vlm.processor, vlm.processor.video_inputs(clips[0])
    ids, types = FAMILIES["qwen2_5_omni_thinker"].block(proc, clip)
    ref = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2), audio_bos_token="<|audio_bos|>",
                          audio_eos_token="<|audio_eos|>", video_token="<|video_pad|>", audio_token="<|AUDIO|>")
    ref.get_chunked_index = lambda *a: Qwen2_5OmniProcessor.get_chunked_index(ref, *a)
    text = Qwen2_5OmniProcessor.replace_video_with_audio_token(
        ref, {"video_grid_thw": [np.array(clip.video.grid_thw)], "video_second_per_grid": [clip.video.second_per_grid]},
        0, {"num_audio_tokens": [audio_tokens(clip.feature_frames)]}, 0, position_id_per_seconds=25,
        seconds_per_chunk=2.0)
    assert ids == proc.tokenizer("<|vision_start|>" + text + "<|vision_end|>", add_special_tokens=False)["input_ids"]
    # 9.64 s of sound: 964 mel frames of 10 ms, 241 audio tokens; each 2 s chunk's video tokens come first
    assert clip.feature_frames == 964 and sum(t == 3 for t in types) == audio_tokens(964) == 241
    assert types.index(3) > types.index(2)


def test_chunks_cut_at_each_multiple():
    assert chunk_bounds([0, 0, 25, 25, 50, 50, 75], 50) == [(0, 4), (4, 7)]
    assert chunk_bounds(list(range(120)), 50) == [(0, 50), (50, 100), (100, 120)]
    # a jump over two multiples opens one run per multiple while the value repeats
    assert chunk_bounds([0, 120, 120, 120], 50) == [(0, 1), (1, 2), (2, 4)]


def test_qwen25_time_rides_on_the_positions(folders, clips):
    vlm = small(VideoLLM.from_pretrained(str(folders["qwen2.5-vl"]), dtype="float32"))
    c = vlm.processor.video_inputs(clips[0])
    batch = vlm.processor.batch([c], [QUERY])
    assert batch["second_per_grid_ts"].tolist() == pytest.approx([2 * clips[0].duration / len(c.video.times)])
    pos, _ = vlm.model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                            video_grid_thw=batch["video_grid_thw"],
                                            second_per_grid_ts=batch["second_per_grid_ts"])
    video = batch["mm_token_type_ids"][0] == 2
    t = pos[0, 0][video].unique()
    # 6 of the 10 frames span 9.64 s: 3.21 s per temporal patch, at the tiny config's 2 rotary steps a second
    assert t.diff().tolist() == [6, 6]


@pytest.mark.parametrize("name,preset", [("qwen2.5-vl", "time-r1"), ("qwen3-vl", "timelens"),
                                         ("qwen2.5-omni", None)])
def test_damo_ground_runs_the_checkpoint_under_its_preset(folders, shared_data, capsys, name, preset):
    video = shared_data / "videos" / "chaplin.mp4"
    args = ["ground", str(video), QUERY, "--model", str(folders[name]), "--quiet", "--device", "cpu", "--json"]
    assert main(args + (["--preset", preset] if preset else [])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["duration"] == pytest.approx(9.64, abs=0.05)
    assert out["model"]["preset"] == (preset or "qwen2.5-omni")
    assert isinstance(out["answer"], str) and isinstance(out["spans"], list)


def test_damo_ground_prints_the_checkpoint_and_preset_in_its_short_form(folders, shared_data, capsys):
    video = shared_data / "videos" / "carphone_pristine.mp4"
    assert main(["ground", str(video), QUERY, "--model", str(folders["qwen3-vl"]), "--preset", "timelens",
                 "--quiet", "--device", "cpu"]) == 0
    assert "TencentARC/TimeLens-8B run as its authors run it: preset timelens" in capsys.readouterr().out


@pytest.mark.parametrize("name,preset", [("qwen2.5-vl", "qwen2.5-vl"), ("qwen3-vl", "qwen3-vl"),
                                         ("qwen2.5-omni", "qwen2.5-omni")])
def test_damo_eval_scores_a_checkpoint_in_batches(folders, shared_data, tmp_path, capsys, name, preset):
    data = tmp_path / "test.jsonl"
    rows = [{"id": "a", "video": str(shared_data / "videos" / "chaplin.mp4"), "duration": 9.64, "task": "grounding",
             "query": QUERY, "spans": [[1.0, 4.0]]},
            {"id": "b", "video": str(shared_data / "videos" / "bikes.mp4"), "duration": 10.0, "task": "grounding",
             "query": "when does the bike pass?", "spans": [[2.0, 6.0]]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "--data", str(data), "--model", str(folders[name]), "--preset", preset,
                 "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 2
    preds = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in preds) == ["a", "b"]


def test_a_preset_of_another_family_is_one_clear_line(folders, shared_data, capsys):
    video = shared_data / "videos" / "chaplin.mp4"
    assert main(["ground", str(video), QUERY, "--model", str(folders["qwen3-vl"]), "--preset", "time-r1",
                 "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: preset 'time-r1' runs qwen2_5_vl checkpoints but {folders['qwen3-vl']} is qwen3_vl; "
                   "choose a preset of its family, e.g. --preset qwen3-vl")


@pytest.mark.parametrize("config,total", [("qwen2.5-vl-7b", 8_292_166_656), ("qwen3-vl-8b", 8_767_123_696)])
def test_plan_counts_the_published_models(capsys, config, total):
    assert main(["plan", "--config", config, "--json"]) == 0
    stage = json.loads(capsys.readouterr().out)["stages"]["all"]
    assert stage["total"] == total == sum(m["total"] for m in stage["modules"].values())
    assert set(stage["modules"]) == {"visual", "language_model", "lm_head"}


def test_plan_refuses_a_preset_of_another_family(tmp_path, capsys):
    from damo.config import find, read_yaml
    import yaml

    raw = read_yaml(find("configs", "qwen3-vl-8b"))
    raw["vlm"]["preset"] = "time-r1"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as e:
        main(["plan", "--config", str(bad)])
    assert str(e.value) == (f"{bad}: preset 'time-r1' runs qwen2_5_vl checkpoints, but vlm.config is qwen3_vl; "
                            "set vlm.preset: qwen3-vl")


@pytest.mark.parametrize("name", NAMES)
def test_lora_and_evidence_heads_train_and_only_they_are_saved(folders, clips, tmp_path, name):
    torch.manual_seed(0)
    vlm = small(VideoLLM.from_pretrained(str(folders[name]), dtype="float32"))
    vlm.add_lora({"r": 4, "alpha": 8})
    vlm.add_evidence()
    vlm = small(vlm)
    inputs = [vlm.processor.video_inputs(c) for c in clips]
    queries = [QUERY, "when is the phone call?"]
    answers = ["The event happens in 3 - 7 seconds.", "The event happens in 0 - 2 seconds."]
    spans = [[[3.0, 7.0]], [[0.0, 2.0]]]
    before = {k: v.clone() for k, v in vlm.state_dict().items()}
    opt = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-2)
    replies = [vlm.processor.response_ids(a, last=True) for a in answers]
    batch = vlm.processor.training_batch(inputs, queries, replies, spans)
    # the forward scores only the replies' positions: the last prompt token's and the replies' own
    K = max(map(len, replies)) + 1
    assert batch.labels.shape[1] == K and (batch.labels[:, 1:] != -100).sum() == sum(map(len, replies))
    with torch.no_grad():
        torch.testing.assert_close(vlm(batch)["logits"], vlm.model(**batch.inputs).logits[:, -K:])
    totals = []
    for _ in range(4):
        x = LossInputs(vlm(batch), batch, vlm)
        total = LOSSES["lm"].fn(x) + LOSSES["grounding_bce"].fn(x)
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert totals[-1] < totals[0]
    changed = {k for k, v in vlm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(vlm.trainable()) and any(k.startswith("evidence.") for k in changed)
    assert any("language_model" in k and "lora_B" in k for k in changed)
    vlm.eval().save(tmp_path / "trained")
    assert sorted(f.name for f in (tmp_path / "trained").iterdir()) == ["trained.safetensors", "vlm.json"]
    again = small(VideoLLM.from_pretrained(str(tmp_path / "trained"), dtype="float32")).eval()
    with torch.no_grad():
        batch = vlm.inputs(inputs, queries)
        torch.testing.assert_close(again(batch)["logits"], vlm(batch)["logits"], rtol=0, atol=0)
        ours, theirs = vlm.evidence_spans(inputs, queries), again.evidence_spans(inputs, queries)
    assert [s for s, _ in ours] == [s for s, _ in theirs]
    assert all(len(curve) == len(c.video.times) for (_, curve), c in zip(ours, inputs))


def test_a_saved_vlm_folder_grounds_with_its_evidence_span(folders, shared_data, tmp_path, capsys):
    vlm = VideoLLM.from_pretrained(str(folders["qwen3-vl"]), "timelens", dtype="float32")
    vlm.add_lora({"r": 2})
    vlm.add_evidence()
    vlm.save(tmp_path / "trained")
    video = shared_data / "videos" / "carphone_pristine.mp4"
    assert main(["ground", str(video), QUERY, "--model", str(tmp_path / "trained"), "--quiet", "--device", "cpu",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["preset"] == "timelens" and len(out["evidence"]) == 1
    start, end, _ = out["evidence"][0]
    assert 0 <= start < end <= out["duration"]


def test_plan_lists_evidence_heads_and_trains_only_lora_and_heads(tmp_path, capsys):
    from damo.config import find, read_yaml
    from damo.model.evidence import EvidenceHead
    import yaml

    raw = read_yaml(find("configs", "qwen2.5-vl-7b"))
    raw["vlm"] |= {"lora": {"r": 16}, "evidence": True}
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["plan", "--config", str(path), "--json"]) == 0
    stage = json.loads(capsys.readouterr().out)["stages"]["all"]
    heads = sum(p.numel() for p in EvidenceHead(3584).parameters())
    assert stage["modules"]["evidence"] == {"total": heads, "trainable": heads}
    assert stage["modules"]["visual"]["trainable"] == stage["modules"]["lm_head"]["trainable"] == 0
    # r-16 LoRA on 28 layers' q, k, v, o (3584 wide; k and v 512) and gate, up, down (18944)
    lora = 28 * 16 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + (3584 + 18944) * 2 + (18944 + 3584))
    assert stage["modules"]["language_model"]["trainable"] == lora
    assert stage["total"] == 8_292_166_656 + lora + heads


def test_a_whole_omni_checkpoint_runs_its_thinker(folders, clips, tmp_path):
    whole = small(VideoLLM.from_pretrained(str(vlm_tiny.save_whole_omni(tmp_path / "omni")), dtype="float32"))
    thinker = small(VideoLLM.from_pretrained(str(folders["qwen2.5-omni"]), dtype="float32"))
    assert whole.model.config.model_type == "qwen2_5_omni_thinker" and whole.preset.name == "qwen2.5-omni"
    batch = thinker.inputs([thinker.processor.video_inputs(clips[0])], [QUERY])
    with torch.no_grad():
        torch.testing.assert_close(whole(batch)["logits"], thinker(batch)["logits"], rtol=0, atol=0)


def test_a_preset_on_a_damo_model_folder_is_one_line(tmp_path, shared_data, capsys):
    (tmp_path / "config.json").write_text('{"vision": {}, "llm": {}}')
    video = shared_data / "videos" / "carphone_pristine.mp4"
    assert main(["ground", str(video), QUERY, "--model", str(tmp_path), "--preset", "timelens", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path} holds no qwen2_5_vl, qwen3_vl, "
                                               "qwen2_5_omni_thinker, qwen2_5_omni checkpoint (see its config.json); "
                                               "--preset runs only those")


def test_hub_ids_need_a_preset_and_fail_offline_in_one_line():
    with pytest.raises(ValueError, match="^Org/Missing is no local folder; to load it from the hub name its --preset$"):
        VideoLLM.from_pretrained("Org/Missing")
    with pytest.raises(ValueError, match="^cannot load Org/Missing: ") as e:
        VideoLLM.from_pretrained("Org/Missing", "timelens")
    assert "\n" not in str(e.value)


def test_prompts_follow_each_presets_order_system_turn_and_prefix(folders, clips):
    base = VideoLLM.from_pretrained(str(folders["qwen2.5-vl"]), dtype="float32")
    tok = base.processor.tokenizer
    for name in ("videochat-r1", "time-r1"):
        p = small(VideoLLM.from_pretrained(str(folders["qwen2.5-vl"]), name, dtype="float32")).processor
        ids, types = p.prompt(p.video_inputs(clips[1]), QUERY)
        text = tok.decode(ids)
        video = text.index("<|vision_start|>")
        question = text.index(QUERY)
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
        assert (question < video) == (name == "videochat-r1")       # VideoChat-R1 puts its text before the video
        assert text.endswith("<|im_start|>assistant\n" + ("<think>\n</think>\n" if name == "time-r1" else ""))
        assert len(ids) == len(types) and types.count(2) == text.count("<|video_pad|>")


def test_serve_takes_a_preset(tmp_path):
    (tmp_path / "config.json").write_text('{"vision": {}, "llm": {}}')
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", str(tmp_path), "--preset", "timelens"])
    assert str(e.value).startswith(f"error: {tmp_path} holds no qwen2_5_vl, qwen3_vl")


def test_a_bf16_model_trains_float32_adapters_and_heads(folders, clips):
    vlm = small(VideoLLM.from_pretrained(str(folders["qwen3-vl"]), dtype="bfloat16"))
    vlm.add_lora({"r": 2})
    vlm.add_evidence()
    assert {p.dtype for p in vlm.parameters() if p.requires_grad} == {torch.float32}
    assert vlm.model.lm_head.weight.dtype == torch.bfloat16
    c = vlm.processor.video_inputs(clips[1])
    batch = vlm.processor.training_batch([c], [QUERY], [vlm.processor.reply_ids([[1.0, 2.0]])], [[[1.0, 2.0]]])
    x = LossInputs(vlm(batch), batch, vlm)
    (LOSSES["lm"].fn(x) + LOSSES["grounding_bce"].fn(x)).backward()
    grads = [p.grad for p in vlm.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_a_vlm_config_names_the_checkpoint_and_preset_to_run(folders, shared_data, tmp_path, capsys):
    from damo.api import vlm_source

    assert vlm_source("qwen3-vl-8b", None, None) == ("Qwen/Qwen3-VL-8B-Instruct", "qwen3-vl", "auto")
    assert vlm_source("qwen2.5-vl-7b", "time-r1", "float32") == ("Qwen/Qwen2.5-VL-7B-Instruct", "time-r1", "float32")
    assert vlm_source("tiny", None, None) is None and vlm_source(tmp_path / "missing", None, None) is None
    config = tmp_path / "my-vlm.yaml"
    config.write_text(f"vlm: {{name_or_path: {folders['qwen3-vl']}, preset: timelens, dtype: float32, "
                      "config: {model_type: qwen3_vl}}\n")
    video = shared_data / "videos" / "carphone_pristine.mp4"
    assert main(["ground", str(video), QUERY, "--model", str(config), "--quiet", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["preset"] == "timelens"
