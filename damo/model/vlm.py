"""Whole vision-language models from transformers as DaMO models: Qwen2.5-VL, Qwen3-VL, Qwen2.5-Omni.

The video goes through the VLM's own vision tower and merger; DaMO decodes it (no torchvision),
sizes and patches the frames as the model expects (:mod:`damo.model.vlm_video`), writes the prompt
and parses the answer as a preset says (:mod:`damo.model.presets`). Each family gives the LLM the
clip's time its own way, one entry of :data:`FAMILIES`:

- ``qwen2_5_vl``: the frame rate enters the temporal rotary positions (``second_per_grid_ts``:
  seconds per temporal patch, times the vision config's ``tokens_per_second``);
- ``qwen3_vl``: a timestamp text ``<t seconds>`` before each temporal patch's tokens (t: the mean
  time of its two frames), each patch wrapped in its own vision start and end tokens;
- ``qwen2_5_omni_thinker`` (the text half of Qwen2.5-Omni: sound and picture of the same clip):
  the clip's audio track, as Whisper log-mel features, interleaved with the video tokens in 2 s
  chunks of rotary time (``position_id_per_seconds`` x ``seconds_per_chunk`` positions), inside
  ``vision_start audio_start ... audio_end vision_end``.

:class:`VideoLLM` answers batches of (clip, question) with left-padded prompts through the VLM's
own ``generate``, so a Grounder, ``damo ground`` and ``damo eval`` run it as they run a DaMO model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase,
                          Qwen2_5OmniThinkerForConditionalGeneration, Qwen2_5_VLForConditionalGeneration,
                          Qwen3VLForConditionalGeneration, WhisperFeatureExtractor)

from damo.media import Clip
from damo.model.evidence import EvidenceHead, salient_frames, soft_targets
from damo.model.backbones import resolve_dtype
from damo.model.processing import FRAME_TIMES, check_query_size
from damo.model.presets import DEFAULT_PRESET, FAMILY_OF, Preset, checkpoint_type, get_preset
from damo.model.vlm_video import CLIP_MEAN, CLIP_STD, HALF, VideoPixels, VideoSpec, video_pixels

VIDEO, AUDIO = 2, 3          # mm_token_type_ids of video and audio placeholders (text 0, image 1)
DECODE_FRAMES = 4096         # frames decoded at the preset's fps before the preset's own frame limit applies
MAX_QUERY_TOKENS = 1024       # a question past 32 bytes for each of these is refused before tokenising


@dataclass
class VLMClip:
    """One decoded clip as a VLM reads it."""
    video: VideoPixels
    features: torch.Tensor | None = None     # (M, N) Whisper log-mel of the audio window (Omni), else None
    feature_frames: int = 0                  # mel frames of real audio in ``features``

    @property
    def duration(self) -> float:
        return self.video.duration

    @property
    def times(self) -> torch.Tensor:
        return torch.from_numpy(self.video.times)


@dataclass(frozen=True)
class ClipSettings:
    """What the clip loader decodes: frames at ``fps`` at their native size, at most ``max_frames``."""
    fps: float
    max_frames: int = DECODE_FRAMES
    image_size: None = None
    uniform_frames: int = 0          # frames at fps, never a fixed count (ClipLoader)


def audio_tokens(mel_frames: int) -> int:
    """LLM tokens of ``mel_frames`` Whisper frames in Qwen2.5-Omni's audio tower (two stride-2 steps)."""
    return ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1


def chunk_bounds(values: list[float], size: float) -> list[tuple[int, int]]:
    """``[start, end)`` runs of the non-decreasing ``values``, a new run each time a value reaches the
    next multiple of ``size`` (one multiple per value: a value that jumps several keeps opening runs
    while it repeats). Qwen2.5-Omni's processor and its rotary positions cut audio and video this way."""
    out, start, edge = [], 0, size
    for i, v in enumerate(values):
        if v >= edge:
            out.append((start, i))
            start, edge = i, edge + size
    out.append((start, len(values)))
    return out


# ---------------------------------------------------------------- the three families
class VLMProcessor:
    """Everything the VLM reads and writes: clip -> pixels (+ audio), prompt ids, batches, answers."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig, preset: Preset,
                 features: WhisperFeatureExtractor | None = None):
        self.tokenizer, self.hf, self.preset, self.features = tokenizer, config, preset, features
        self.family = FAMILIES[config.model_type]
        vision = config.vision_config
        self.spec = VideoSpec(patch=vision.patch_size, merge=vision.spatial_merge_size,
                              temporal_patch=vision.temporal_patch_size, mean=self.family.mean, std=self.family.std,
                              **preset.video)
        self.spec.check()
        self.config = ClipSettings(fps=self.spec.fps)
        # frame i at i / fps: qwen-vl-utils' first frame is the video's first (its frames spread from 0 to the end)
        self.frame_times = FRAME_TIMES["start"]
        self.ids = {name: getattr(config, f"{name}_token_id") for name in ("video", "vision_start", "vision_end")}

    def sampling(self, duration: float) -> tuple[float, float]:
        """``(fps, phase)`` the clip loader decodes at, whatever the duration (the ClipLoader contract)."""
        return self.config.fps, self.frame_times.phase

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def query_ids(self, query: str) -> list[int]:
        """The question's tokens inside the preset's prompt, which holds no special token: the string
        of one in the question (``<|im_end|>``, ``<|video_pad|>``) is read as plain characters, and a
        question past :func:`~damo.model.processing.check_query_size` is refused untokenised."""
        check_query_size(query, MAX_QUERY_TOKENS)
        return self.tokenizer(self.preset.prompt.format(query=query), add_special_tokens=False,
                              split_special_tokens=True)["input_ids"]

    def video_inputs(self, clip: Clip) -> VLMClip:
        """Pixels of the frames the preset feeds (and, for Omni, the audio track's features)."""
        video = video_pixels(clip.frames, clip.times, clip.duration, self.spec)
        if self.features is None:
            return VLMClip(video)
        f = self.features(clip.waveform(), sampling_rate=self.features.sampling_rate, padding="max_length",
                          return_attention_mask=True, return_tensors="pt")
        return VLMClip(video, f["input_features"][0], int(f["attention_mask"][0].sum()))

    def prompt(self, clip: VLMClip, query: str) -> tuple[list[int], list[int]]:
        """Token ids of the whole chat prompt up to the answer, and each token's modality type."""
        head = (f"<|im_start|>system\n{self.preset.system}<|im_end|>\n" if self.preset.system is not None else "")
        video, vtypes = self.family.block(self, clip)
        text = self.query_ids(query)
        user = video + text if self.preset.video_first else text + video
        types = vtypes + [0] * len(text) if self.preset.video_first else [0] * len(text) + vtypes
        pre = self.encode(head + "<|im_start|>user\n")
        post = self.encode("<|im_end|>\n<|im_start|>assistant\n" + self.preset.answer_prefix)
        return pre + user + post, [0] * len(pre) + types + [0] * len(post)

    def batch(self, clips: list[VLMClip], queries: list[str], answers: list[str] | None = None) -> dict:
        """Left-padded model inputs for ``model(**batch)`` and ``model.generate(**batch)``; with
        ``answers``, each prompt is followed by its answer and the end of the turn, and ``labels``
        (-100 outside the answers) train the model to write them."""
        rows = [self.prompt(c, q) for c, q in zip(clips, queries)]
        replies = [self.encode(a + "<|im_end|>") for a in answers] if answers is not None else [[] for _ in rows]
        B, L = len(rows), max(len(ids) + len(r) for (ids, _), r in zip(rows, replies))
        ids = torch.full((B, L), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.long)
        types = torch.zeros(B, L, dtype=torch.int)
        labels = torch.full((B, L), -100, dtype=torch.long)
        for b, ((row, kinds), reply) in enumerate(zip(rows, replies)):
            n = len(row) + len(reply)
            ids[b, L - n:] = torch.tensor(row + reply)
            mask[b, L - n:] = 1
            types[b, L - n:L - len(reply)] = torch.tensor(kinds, dtype=torch.int)
            labels[b, L - len(reply):] = ids[b, L - len(reply):]
        out = {"input_ids": ids, "attention_mask": mask,
               "pixel_values_videos": torch.cat([c.video.pixel_values for c in clips]),
               "video_grid_thw": torch.tensor([c.video.grid_thw for c in clips])}
        return out | self.family.extras(clips, types) | ({"labels": labels} if answers is not None else {})


def _block_positions(proc: VLMProcessor, clip: VLMClip) -> tuple[list[int], list[int]]:
    """Qwen2.5-VL: all the clip's tokens in one block; its time rides on the rotary positions."""
    n = clip.video.tokens(proc.spec.merge)
    return ([proc.ids["vision_start"]] + [proc.ids["video"]] * n + [proc.ids["vision_end"]], [0] + [VIDEO] * n + [0])


def _block_timestamps(proc: VLMProcessor, clip: VLMClip) -> tuple[list[int], list[int]]:
    """Qwen3-VL: ``<t seconds>`` then the temporal patch's tokens in their own start/end pair, per patch."""
    _, gh, gw = clip.video.grid_thw
    n = gh * gw // proc.spec.merge ** 2
    ids: list[int] = []
    types: list[int] = []
    for t in clip.video.patch_times():
        stamp = proc.encode(f"<{t:.1f} seconds>")
        ids += stamp + [proc.ids["vision_start"]] + [proc.ids["video"]] * n + [proc.ids["vision_end"]]
        types += [0] * (len(stamp) + 1) + [VIDEO] * n + [0]
    return ids, types


def _block_audio(proc: VLMProcessor, clip: VLMClip) -> tuple[list[int], list[int]]:
    """Qwen2.5-Omni: video and audio tokens interleaved per chunk of rotary time."""
    hf = proc.hf
    t, gh, gw = clip.video.grid_thw
    per_patch = gh * gw // proc.spec.merge ** 2
    step = clip.video.second_per_grid * hf.position_id_per_seconds
    video_pos = [k * step for k in range(t) for _ in range(per_patch)]
    audio_pos = list(range(audio_tokens(clip.feature_frames)))
    size = int(hf.position_id_per_seconds * hf.seconds_per_chunk)
    vc, ac = chunk_bounds(video_pos, size), chunk_bounds(audio_pos, size)
    ids = [proc.ids["vision_start"], hf.audio_start_token_id]
    types = [0, 0]
    for j in range(max(len(vc), len(ac))):
        for chunks, token, kind in ((vc, proc.ids["video"], VIDEO), (ac, hf.audio_token_id, AUDIO)):
            if j < len(chunks):
                n = chunks[j][1] - chunks[j][0]
                ids += [token] * n
                types += [kind] * n
    return ids + [hf.audio_end_token_id, proc.ids["vision_end"]], types + [0, 0]


def _extras_positions(clips: list[VLMClip], types: torch.Tensor) -> dict:
    return {"mm_token_type_ids": types,
            "second_per_grid_ts": torch.tensor([c.video.second_per_grid for c in clips], dtype=torch.float)}


def _extras_timestamps(clips: list[VLMClip], types: torch.Tensor) -> dict:
    return {"mm_token_type_ids": types}


def _extras_audio(clips: list[VLMClip], types: torch.Tensor) -> dict:
    feats = torch.stack([c.features for c in clips])                          # (B, M, N)
    mask = torch.zeros(feats.shape[0], feats.shape[2], dtype=torch.long)
    for b, c in enumerate(clips):
        mask[b, :c.feature_frames] = 1
    return {"input_features": feats, "feature_attention_mask": mask, "use_audio_in_video": True,
            "video_second_per_grid": torch.tensor([c.video.second_per_grid for c in clips], dtype=torch.float)}


@dataclass(frozen=True)
class Family:
    model: type
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    block: Callable[[VLMProcessor, VLMClip], tuple[list[int], list[int]]]   # the clip's tokens in the prompt
    extras: Callable[[list[VLMClip], torch.Tensor], dict]                    # inputs beyond ids, mask and pixels
    audio: bool = False


FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family(Qwen2_5_VLForConditionalGeneration, CLIP_MEAN, CLIP_STD, _block_positions, _extras_positions),
    "qwen3_vl": Family(Qwen3VLForConditionalGeneration, HALF, HALF, _block_timestamps, _extras_timestamps),
    "qwen2_5_omni_thinker": Family(Qwen2_5OmniThinkerForConditionalGeneration, CLIP_MEAN, CLIP_STD, _block_audio,
                                   _extras_audio, audio=True),
}


# a whole Qwen2.5-Omni checkpoint: DaMO runs its thinker (text out), never builds the talker (speech out)
PARTS = {"qwen2_5_omni": ("thinker_config", r"^thinker\.")}

# ---------------------------------------------------------------- the model
SAVED, TRAINED = "vlm.json", "trained.safetensors"     # a trained VLM folder: how to rebuild it, what was trained


def patch_targets(video: VideoPixels, spans: list[list[float]]) -> np.ndarray:
    """``(t,)`` share of each temporal patch's time ``[k, k + 1) x second_per_grid`` inside ``spans``."""
    step = video.second_per_grid
    lo = np.arange(video.grid_thw[0]) * step
    inside = sum(np.clip(np.minimum(lo + step, e) - np.maximum(lo, s), 0, None) for s, e in spans)
    return np.clip(inside / step, 0, 1).astype(np.float32)


@dataclass
class VLMConfig:
    """A model config naming a whole VLM (a YAML whose top-level key is ``vlm``): the checkpoint, the
    preset it runs under, the weights' dtype, and its transformers config written out in full so that
    ``damo plan`` builds it with nothing fetched (``damo/resources/configs/qwen2.5-vl-7b.yaml``)."""
    name_or_path: str
    preset: str
    config: dict
    dtype: str = "auto"
    lora: dict | None = None       # {r, alpha, dropout}: LoRA on the language model's projections, the rest frozen
    evidence: bool = False         # D²VLM's evidence heads on the LLM's hidden states (trained, with LoRA)

    @classmethod
    def from_dict(cls, d: dict, where: str = "the config") -> "VLMConfig":
        fields = set(cls.__dataclass_fields__)
        if set(d) - fields or not {"name_or_path", "preset", "config"} <= set(d):
            raise ValueError(f"{where}: vlm takes {', '.join(sorted(fields))} (name_or_path, preset and config "
                             f"required); got {', '.join(sorted(d))}")
        cfg = cls(**d)
        kind, preset = cfg.config.get("model_type"), get_preset(cfg.preset)
        if kind not in FAMILIES:
            raise ValueError(f"{where}: vlm.config.model_type must be one of {', '.join(FAMILIES)}, got {kind!r}")
        if preset.family != kind:
            raise ValueError(f"{where}: preset {cfg.preset!r} runs {preset.family} checkpoints, but vlm.config is "
                             f"{kind}; set vlm.preset: {DEFAULT_PRESET[kind]}")
        return cfg

    def build(self) -> tuple[nn.Module, EvidenceHead | None]:
        """The VLM with random weights from ``config`` (on the current default device: meta for ``damo plan``),
        with its LoRA adapters, and its evidence heads if any."""
        family = FAMILIES[self.config["model_type"]]
        model = family.model(family.model.config_class.from_dict(self.config))
        if self.lora:
            add_lora(model, self.lora)
        return model, evidence_head(model) if self.evidence else None


LORA_KEYS = {"r", "alpha", "dropout"}
# the language model's attention and MLP projections (the vision tower's MLP has the same names: left out)
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def add_lora(model: nn.Module, lora: dict) -> None:
    """LoRA adapters (peft, in place) on the language model's projections, kept in float32 whatever the
    model's dtype (peft casts their inputs and outputs), as DaMO keeps every trained weight; every
    other weight frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    if set(lora) - LORA_KEYS:
        raise ValueError(f"unknown lora keys {sorted(set(lora) - LORA_KEYS)}; valid: {sorted(LORA_KEYS)}")
    r = int(lora.get("r", 16))
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=int(lora.get("alpha", 2 * r)),
                                       lora_dropout=float(lora.get("dropout", 0.0)), target_modules=LORA_TARGETS),
                            model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
        if p.requires_grad:
            p.data = p.data.float()


def evidence_head(model: nn.Module) -> EvidenceHead:
    """D²VLM's evidence heads (official widths: LayerNorm, C -> C/2 -> C) at the LLM's width ``C``."""
    return EvidenceHead(model.config.text_config.hidden_size)


@dataclass
class VLMEvidence:
    threshold: float = 0.6     # evidence spans keep patches scoring >= threshold x max (D²VLM appendix C.4)


@dataclass
class VLMSettings:
    """The fields a Grounder reads from a model's config."""
    fps: float
    max_frames: int = DECODE_FRAMES
    evidence: VLMEvidence = field(default_factory=VLMEvidence)


class VideoLLM(nn.Module):
    """A transformers VLM with the preset it runs under: ``answer`` as :class:`DamoModel` answers.

    DaMO's parts attach to it: LoRA on the language model (:meth:`add_lora`) and D²VLM's evidence
    heads (:meth:`add_evidence`), which score each temporal patch for the question (see
    :meth:`evidence_logits`); :meth:`loss` trains both; :meth:`save` writes only what trains, and
    :meth:`from_pretrained` on that folder loads the base checkpoint and puts it back."""

    def __init__(self, model: nn.Module, processor: VLMProcessor, source: str):
        super().__init__()
        self.model, self.processor, self.source = model, processor, source
        self.preset = processor.preset
        self.cfg = VLMSettings(fps=processor.spec.fps)
        self.lora: dict | None = None
        self.evidence: EvidenceHead | None = None

    @property
    def llm(self) -> nn.Module:
        """The module whose every forward is one decoding step (progress bars hook it)."""
        return self.model

    @classmethod
    def from_pretrained(cls, name_or_path: str, preset: str | None = None, dtype: str = "auto") -> "VideoLLM":
        """Load a checkpoint (hub id or folder) under ``preset`` (default: its family's base-model preset),
        or a folder :meth:`save` wrote (its base checkpoint plus what was trained; its preset by default)."""
        local = Path(name_or_path).is_dir()
        saved = Path(name_or_path) / SAVED
        if saved.is_file():
            spec = json.loads(saved.read_text())
            vlm = cls.from_pretrained(spec["base"], preset or spec["preset"], dtype)
            if spec["lora"]:
                vlm.add_lora(spec["lora"])
            if spec["evidence"]:
                vlm.add_evidence()
            vlm.load_trainable(Path(name_or_path) / TRAINED)
            return vlm
        if not local and not preset:
            raise ValueError(f"{name_or_path} is no local folder; to load it from the hub name its --preset")
        if local and checkpoint_type(name_or_path) is None:
            raise ValueError(f"{name_or_path} holds no {', '.join(FAMILY_OF)} checkpoint (see its config.json); "
                             "--preset runs only those")
        try:
            config = AutoConfig.from_pretrained(name_or_path)
        except OSError as e:
            raise ValueError(f"cannot load {name_or_path}: {str(e).splitlines()[0]}") from None
        kind = FAMILY_OF.get(config.model_type)
        if kind is None:
            raise ValueError(f"{name_or_path} is a {config.model_type} checkpoint; DaMO runs "
                             f"{', '.join(FAMILY_OF)} checkpoints")
        chosen = get_preset(preset or DEFAULT_PRESET[kind])
        if chosen.family != kind:
            raise ValueError(f"preset {chosen.name!r} runs {chosen.family} checkpoints but {name_or_path} is {kind}; "
                             f"choose a preset of its family, e.g. --preset {DEFAULT_PRESET[kind]}")
        family = FAMILIES[kind]
        # a whole checkpoint whose part DaMO runs: that part's config, its weights' names without the prefix
        part, prefix = PARTS.get(config.model_type, (None, None))
        try:
            model = family.model.from_pretrained(name_or_path, config=getattr(config, part) if part else config,
                                                 key_mapping={prefix: ""} if prefix else None,
                                                 dtype=resolve_dtype(dtype)).eval()
            tok = AutoTokenizer.from_pretrained(name_or_path)
            feats = WhisperFeatureExtractor.from_pretrained(name_or_path) if family.audio else None
        except OSError as e:
            raise ValueError(f"cannot load {name_or_path}: {str(e).splitlines()[0]}") from None
        return cls(model, VLMProcessor(tok, model.config, chosen, feats), name_or_path)

    # ------------------------------------------------------------ DaMO's parts
    def add_lora(self, lora: dict) -> None:
        """LoRA on the language model's projections (``{r, alpha, dropout}``); the VLM's own weights freeze."""
        add_lora(self.model, lora)
        self.lora = dict(lora)

    def add_evidence(self) -> None:
        """D²VLM's evidence heads on the LLM's penultimate hidden states (trainable, float32)."""
        self.evidence = evidence_head(self.model).to(self.model.device)

    def trainable(self) -> dict[str, torch.Tensor]:
        """What :meth:`save` stores: the LoRA weights and the evidence heads."""
        return {k: v for k, v in self.state_dict().items() if "lora_" in k or k.startswith("evidence.")}

    def save(self, path: str | Path) -> None:
        """Write only what DaMO added and trained (``trained.safetensors``) and how to rebuild the rest
        (``vlm.json``: the base checkpoint, the preset, the LoRA settings, the evidence heads)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.trainable().items()}, str(path / TRAINED))
        (path / SAVED).write_text(json.dumps({"base": self.source, "family": self.model.config.model_type,
                                              "preset": self.preset.name, "lora": self.lora,
                                              "evidence": self.evidence is not None}, indent=2))

    def load_trainable(self, path: Path) -> None:
        state = load_file(str(path))
        expected = set(self.trainable())
        if set(state) != expected:
            raise ValueError(f"{path} does not match its vlm.json: missing {sorted(expected - set(state))[:3]}, "
                             f"unexpected {sorted(set(state) - expected)[:3]}")
        self.load_state_dict(state, strict=False)

    def evidence_logits(self, hidden: torch.Tensor, batch: dict, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each temporal patch's evidence logit for each row's question: the head scores the state at
        ``query`` (per row: the last prompt token, where the answer starts) against the mean state of
        each temporal patch's video tokens, both from ``hidden`` ``(B, L, C)`` (penultimate layer).
        Returns ``(B, t)`` logits and the ``(B, t)`` mask of real patches (clips differ in length)."""
        grid = batch["video_grid_thw"]
        B, C = hidden.shape[0], hidden.shape[2]
        t_max = int(grid[:, 0].max())
        patches = hidden.new_zeros(B, t_max, C)
        mask = torch.zeros(B, t_max, dtype=torch.bool, device=hidden.device)
        for b in range(B):
            t = int(grid[b, 0])
            pos = (batch["input_ids"][b] == self.processor.ids["video"]).nonzero().squeeze(1)
            patches[b, :t] = hidden[b, pos].view(t, -1, C).mean(1)       # (t, C): video tokens are patch-major
            mask[b, :t] = True
        h_query = hidden[torch.arange(B, device=hidden.device), query]    # (B, C)
        logits = self.evidence.logits(h_query[:, None].float(), patches.float())[:, 0]   # (B, t_max)
        return logits, mask

    def loss(self, clips: list[VLMClip], queries: list[str], answers: list[str],
             spans: list[list[list[float]]]) -> dict[str, torch.Tensor]:
        """Training losses of a batch: ``lm`` (the answers' tokens) and, with evidence heads,
        ``grounding`` (binary cross-entropy of each temporal patch against the share of it inside the
        ground-truth spans, zeros decayed 2^-distance as D²VLM's official code trains them)."""
        batch = self.inputs(clips, queries, answers)
        out = self.model(**batch, output_hidden_states=self.evidence is not None)
        losses = {"lm": out.loss}
        if self.evidence is not None:
            query = (batch["labels"] != -100).int().argmax(1) - 1          # the last prompt token of each row
            logits, mask = self.evidence_logits(out.hidden_states[-2], batch, query)
            y = torch.zeros_like(logits)
            for b, (c, sp) in enumerate(zip(clips, spans)):
                y[b, :c.video.grid_thw[0]] = torch.from_numpy(soft_targets(patch_targets(c.video, sp), 2.0))
            losses["grounding"] = F.binary_cross_entropy_with_logits(logits[mask], y[mask])
        return losses

    @torch.no_grad()
    def evidence_spans(self, clips: list[VLMClip], queries: list[str]) -> list[tuple[list[float], np.ndarray]]:
        """Per question: the evidence span ``[start, end, score]`` in seconds (the run of patches scoring
        >= threshold x max with the highest mean) and the score of every frame fed (its patch's)."""
        batch = self.inputs(clips, queries)
        hidden = self.model(**batch, output_hidden_states=True).hidden_states[-2]
        query = torch.full((len(clips),), batch["input_ids"].shape[1] - 1, device=hidden.device)
        logits, _ = self.evidence_logits(hidden, batch, query)
        out = []
        for b, c in enumerate(clips):
            t = c.video.grid_thw[0]
            scores = torch.sigmoid(logits[b, :t]).cpu().numpy()
            first, last = salient_frames(scores, self.cfg.evidence.threshold)
            step = c.video.second_per_grid
            span = [first * step, min(c.duration, (last + 1) * step), float(scores[first:last + 1].mean())]
            out.append((span, np.repeat(scores, len(c.video.times) // t)))
        return out

    def card(self) -> dict:
        """What this model is, for answers' ``"model"`` field."""
        p = self.preset
        return {"trained_on": "real", "preset": p.name, "checkpoint": p.checkpoint,
                "model_type": self.model.config.model_type, "settings_from": p.source}

    def inputs(self, clips: list[VLMClip], queries: list[str], answers: list[str] | None = None) -> dict:
        """The batch on the model's device (with ``labels`` when ``answers`` are given)."""
        dev = self.model.device
        batch = self.processor.batch(clips, queries, answers)
        return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits ``(B, L, V)`` of the VLM's own forward on a batch from :meth:`inputs`."""
        return self.model(**batch).logits

    @torch.no_grad()
    def generate(self, clips: list[VLMClip], queries: list[str], max_new_tokens: int | None = None) -> list[list[int]]:
        """New token ids per question (up to and without the end of turn), decoded together."""
        batch = self.inputs(clips, queries)
        n = max_new_tokens or self.preset.max_new_tokens
        out = self.model.generate(**batch, max_new_tokens=n, **self.preset.generation)
        stop = {self.processor.tokenizer.pad_token_id, *np.atleast_1d(self.model.generation_config.eos_token_id)}
        rows = []
        for seq in out[:, batch["input_ids"].shape[1]:].tolist():
            cut = next((i for i, t in enumerate(seq) if t in stop), len(seq))
            rows.append(seq[:cut])
        return rows

    def answer(self, clips: list[VLMClip], queries: list[str], max_new_tokens: int | None = None) -> list[dict]:
        """Answers with spans parsed by the preset's parser (best first; text answers carry no
        confidence, so each span's score is 1); with evidence heads, also their span and their score
        of every frame (``evidence``, ``scores``)."""
        grounded = self.evidence_spans(clips, queries) if self.evidence is not None else [None] * len(clips)
        out = []
        for ids, ev in zip(self.generate(clips, queries, max_new_tokens), grounded):
            text = self.processor.tokenizer.decode(ids, skip_special_tokens=True)
            out.append({"answer": text, "spans": [[s, e, 1.0] for s, e in self.preset.spans(text)],
                        "evidence": [ev[0]] if ev else [], "scores": [ev[1]] if ev else [], "tube": None})
        return out
