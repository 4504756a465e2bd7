"""DamoConfig and its parts: plain dataclasses that a saved model's ``config.json`` holds, checked
where they enter (:meth:`DamoConfig.from_dict`). The model (:mod:`damo.model.modeling_damo`) and the
backbone builders (:mod:`damo.model.backbones`) read them; nothing here builds a module."""
from __future__ import annotations

from dataclasses import dataclass, field

from damo.model.attention import VIDEO_ATTENTION
from damo.model.compressors import PLACEMENTS, STP_FAST_SIDE, STP_STRIDE
from damo.model.evidence import DECODERS
from damo.model.fields import check_fields
from damo.model.processing import ProcessorConfig


@dataclass
class VisionConfig:
    kind: str = "tiny_vit"
    image_size: int = 32
    patch: int = 8
    width: int = 64
    layers: int = 2
    heads: int = 2
    # kind "hf_vision": a pretrained tower (see damo.model.backbones)
    name_or_path: str | None = None
    family: str | None = None          # clip | siglip
    pretrained: bool = True            # false: random weights from `config` (tests, rebuilding a saved model)
    config: dict = field(default_factory=dict)   # transformers config fields (overrides when pretrained)
    allow_pickle: bool = False         # accept .bin/.pt weights (pickles can run code when loaded)
    dtype: str = "float32"             # tower weights: float32 | bfloat16 | float16 | auto (bf16 on GPU: for frozen towers)


@dataclass
class AudioConfig:
    kind: str = "tiny_mel"
    n_mels: int = 32
    frames: int = 25          # mel frames per frame window (40 ms hop at 1 fps)
    patch: int = 5
    width: int = 64
    layers: int = 1
    heads: int = 2
    # kind "hf_whisper": the Whisper encoder (n_mels 80 or 128, frames 100 per second)
    name_or_path: str | None = None
    family: str | None = None          # whisper
    pretrained: bool = True
    config: dict = field(default_factory=dict)
    allow_pickle: bool = False
    dtype: str = "float32"             # as VisionConfig.dtype


@dataclass
class FuserConfig:
    width: int = 96
    blocks: int = 2
    heads: int = 4
    visual_tokens: int = 4     # L' of the visual global residual (square)
    audio_tokens: int = 2      # L' of the audio global residual
    visual_queries: int = 16
    audio_queries: int = 8
    fusion_tokens: int = 8
    frame_tokens: int = 1      # K fused tokens per frame given to the LLM
    conv_kernel: int = 3
    window: int = 8            # stream self-attention window in frames (local context; linear cost on long videos)


@dataclass
class LLMConfig:
    kind: str = "tiny_qwen2"   # or "hf": load `name_or_path` with AutoModelForCausalLM
    name_or_path: str | None = None
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    vocab_size: int = 600      # tokenizer training target for the tiny LLM
    family: str | None = None  # transformers model type (llama, mistral, qwen2, phi3): LoRA defaults, from-config builds
    pretrained: bool = True    # kind "hf", false: random weights from `config` (tests, rebuilding a saved model)
    config: dict = field(default_factory=dict)   # transformers config fields (overrides when pretrained)
    lora: dict | None = None   # {r, alpha, dropout, targets}; None: no LoRA
    gradient_checkpointing: bool = False
    allow_pickle: bool = False # accept .bin/.pt weights (pickles can run code when loaded)
    # the LLM inside a VLM checkpoint folder (LLaVA-NeXT, LLaVA-OneVision): the decoder's module path in
    # the AutoModelForImageTextToText it loads as, e.g. model.language_model (backbones.causal_lm_from_vlm)
    submodule: str | None = None
    dtype: str = "float32"     # weights' dtype: float32 | bfloat16 | float16 | auto (bf16 on a bf16 GPU, else fp32)


@dataclass
class EvidenceConfig:
    """D²VLM's evidence tokens (section 3.2, appendix A); the defaults follow the official code
    (d2vlm/model/d2vlm_arch.py) where it differs from the paper's text."""
    dim: int = 0               # output width of the heads (0: the LLM width C, official)
    hidden: int = 0            # hidden width of the heads (0: C/2, official)
    norm: bool = True          # LayerNorm first (official frm_head / evi_head); false: plain MLPs
    threshold: float = 0.6     # salient frames: score >= threshold x max (D²VLM appendix C.4)
    decode: str = "mean"       # the run with the highest mean (official find_and_merge) | sum (favours long runs)
    targets: str = "soft"      # soft: alpha^-distance outside the span (official) | hard: 0/1 (paper eq. 3)
    alpha: float = 2.0         # decay base of soft targets (official --alpha 2.0)
    semantic_capture: bool = True
    capture_layer: int = -2    # hidden_states index whose frame states are captured (official: 6 of Phi-3's 32 layers)
    capture_grad: bool = True  # training: the capture pass keeps gradients, as the official first pass does
    level: str = "event"       # event: one <evi> grounds an interval; frame: a (start, end) pair of single frames (D²VLM Table 6)


@dataclass
class CompressorConfig:
    """Visual token compression per frame under a global budget (Dynamic-VLM §3, LLaVA-ST STP §3.3).

    ``placement: llm`` compresses the fused per-frame grid into the tokens the LLM reads (budget =
    visual tokens per video in the prompt); ``fuser`` compresses the visual residual tokens in front
    of the T-Fuseformer. See :mod:`damo.model.compressors`. The default, pooling to one token per
    frame, is the fused frame summary the model has always read.
    """
    kind: str = "pool"         # identity | pool | tome | prune | stp
    placement: str = "llm"     # llm | fuser
    budget: int = 4096         # visual tokens per video
    k_min: int = 1
    k_max: int = 1
    seed: int = 0
    options: dict = field(default_factory=dict)


@dataclass
class DamoConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    fuser: FuserConfig = field(default_factory=FuserConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    fps: float = 1.0
    bridge_tokens: int = 8     # fusion tokens after the Q-Former bridge
    align_dim: int = 64        # contrastive (stage 1) embedding width
    max_frames: int = 4096
    llm_frames: int = 64       # at most this many frame tokens reach the LLM: longer videos pool consecutive frames (0: no cap)
    max_len: int = 1024        # tokens per training sequence (prompt with video placeholders + response); longer is an error
    layout: str = "query_both"      # video_first | query_first | query_both: where the question goes (processing.LAYOUTS)
    frame_times: str = "centre"     # centre | start: frames at window centres or starts, and the spans they cover (processing.FRAME_TIMES)
    chat: dict | None = None        # the LLM's chat format (processing.ChatFormat: template, stop, system, ...); None: our plain prompt
    generation: dict | None = None  # how answers are decoded (generation.Generation: do_sample, temperature, top_p, repetition_penalty, tasks); None: greedy
    response: str = "interleaved"   # coupled | decomposed | interleaved (D²VLM Table 4; processing.RESPONSES)
    query_aware: bool = True   # frame tokens carry their match with the question in the stage-1 alignment space
    video_attention: str = "causal"  # causal | bidirectional: video placeholders attend each other both ways (VIDEO_ATTENTION)
    coordinate_decode: str = "interpolate"  # interpolate (two anchors) | argmax (the chosen anchor): a generated LAPE token's value
    lape_at: str = "tokens"         # tokens: LAPE on the tokens the LLM reads | grid: on each frame's grid before the packer (LLaVA-ST)
    time_text: str = "seconds"      # seconds | braces: a span in a text answer, "3.0 - 5.0 seconds" or "{<t_3><t_5>}" (time_encodings.TIME_TEXTS)
    stream_order: str = "slow_first"  # slow_first | fast_first: the packer's streams in the prompt (compressors.STREAM_ORDERS)
    uniform_frames: int = 0         # 0: frames at fps; N >= 2: exactly N frames, uniformly from the first picture to the last
    time_encoding: str = "sinusoid"  # sinusoid | timestamp | lape | none (time_encodings.TIME_ENCODINGS)
    time_bins: int = 32        # lape: time tokens <t_0> .. <t_{n-1}> spread evenly over the video
    box_bins: int = 0          # > 0: LAPE width/height tokens <x_i>, <y_i> for boxes (spatio-temporal grounding answers)

    def token_budget(self) -> dict | None:
        """The :class:`~damo.model.compressors.TokenBudget` fields of a compressor at the LLM, which sets
        the tokens per frame token and the packer's slow stream; None with the compressor in front of the fuser."""
        cc = self.compressor
        if cc.placement != "llm":
            return None
        return dict(kind=cc.kind, tokens_in=self.fuser.visual_tokens, budget=cc.budget, k_min=cc.k_min, k_max=cc.k_max,
                    fast_side=cc.options.get("fast_side", STP_FAST_SIDE), stride=cc.options.get("stride", STP_STRIDE))

    @classmethod
    def from_dict(cls, d: dict) -> "DamoConfig":
        subs = {"vision": VisionConfig, "compressor": CompressorConfig, "audio": AudioConfig, "fuser": FuserConfig, "llm": LLMConfig,
                "evidence": EvidenceConfig}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}")
        kw = {}
        for k, v in d.items():
            if k in subs:
                if not isinstance(v, dict):
                    raise ValueError(f"model.{k} must be a mapping of its settings, got {v!r}")
                bad = set(v) - set(subs[k].__dataclass_fields__)
                if bad:
                    raise ValueError(f"unknown keys {sorted(bad)} in model.{k}; valid: {sorted(subs[k].__dataclass_fields__)}")
                kw[k] = subs[k](**v)
            else:
                kw[k] = v
        cfg = cls(**kw)
        check_fields(cfg, "model")
        for k in subs:
            check_fields(getattr(cfg, k), f"model.{k}")
        if cfg.compressor.placement not in PLACEMENTS:
            raise ValueError(f"model.compressor.placement must be one of {PLACEMENTS}, got {cfg.compressor.placement!r}")
        if cfg.evidence.decode not in DECODERS:
            raise ValueError(f"model.evidence.decode must be one of {DECODERS}, got {cfg.evidence.decode!r}")
        if cfg.lape_at not in ("tokens", "grid"):
            raise ValueError(f"model.lape_at must be tokens or grid, got {cfg.lape_at!r}")
        if cfg.lape_at == "grid" and not (cfg.time_encoding == "lape" and cfg.compressor.placement == "llm"
                                          and not cfg.query_aware):
            raise ValueError("model.lape_at grid adds LAPE to the frames' grids before a compressor at the LLM: it needs "
                             "time_encoding lape, compressor.placement llm and query_aware false")
        if cfg.coordinate_decode not in ("interpolate", "argmax"):
            raise ValueError(f"model.coordinate_decode must be interpolate or argmax, got {cfg.coordinate_decode!r}")
        if cfg.video_attention not in VIDEO_ATTENTION:
            raise ValueError(f"model.video_attention must be one of {tuple(VIDEO_ATTENTION)}, got {cfg.video_attention!r}")
        ProcessorConfig(layout=cfg.layout, frame_times=cfg.frame_times, chat=cfg.chat, generation=cfg.generation,
                        time_text=cfg.time_text, stream_order=cfg.stream_order, uniform_frames=cfg.uniform_frames,
                        response=cfg.response,
                        evidence_level=cfg.evidence.level,
                        max_len=cfg.max_len, evidence_targets=cfg.evidence.targets, evidence_alpha=cfg.evidence.alpha,
                        time_encoding=cfg.time_encoding, time_bins=cfg.time_bins, box_bins=cfg.box_bins)  # validates
        return cfg
