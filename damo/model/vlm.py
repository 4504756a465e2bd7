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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from transformers import (AutoTokenizer, PreTrainedTokenizerBase, Qwen2_5OmniThinkerForConditionalGeneration,
                          Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration, WhisperFeatureExtractor)

from damo.media import Clip
from damo.model.backbones import resolve_dtype
from damo.model.presets import DEFAULT_PRESET, Preset, checkpoint_type, get_preset
from damo.model.vlm_video import CLIP_MEAN, CLIP_STD, HALF, VideoPixels, VideoSpec, video_pixels

VIDEO, AUDIO = 2, 3          # mm_token_type_ids of video and audio placeholders (text 0, image 1)
DECODE_FRAMES = 4096         # frames decoded at the preset's fps before the preset's own frame limit applies


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

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config, preset: Preset,
                 features: WhisperFeatureExtractor | None = None):
        self.tokenizer, self.hf, self.preset, self.features = tokenizer, config, preset, features
        self.family = FAMILIES[config.model_type]
        vision = config.vision_config
        self.spec = VideoSpec(patch=vision.patch_size, merge=vision.spatial_merge_size,
                              temporal_patch=vision.temporal_patch_size, mean=self.family.mean, std=self.family.std,
                              **preset.video)
        self.spec.check()
        self.config = ClipSettings(fps=self.spec.fps)
        self.ids = {name: getattr(config, f"{name}_token_id") for name in ("video", "vision_start", "vision_end")}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def query_ids(self, query: str) -> list[int]:
        """The question's tokens inside the preset's prompt."""
        return self.encode(self.preset.prompt.format(query=query))

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

    def batch(self, clips: list[VLMClip], queries: list[str]) -> dict:
        """Left-padded model inputs for ``model(**batch)`` and ``model.generate(**batch)``."""
        rows = [self.prompt(c, q) for c, q in zip(clips, queries)]
        B, L = len(rows), max(len(ids) for ids, _ in rows)
        ids = torch.full((B, L), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.long)
        types = torch.zeros(B, L, dtype=torch.int)
        for b, (row, kinds) in enumerate(rows):
            ids[b, L - len(row):] = torch.tensor(row)
            mask[b, L - len(row):] = 1
            types[b, L - len(row):] = torch.tensor(kinds, dtype=torch.int)
        out = {"input_ids": ids, "attention_mask": mask,
               "pixel_values_videos": torch.cat([c.video.pixel_values for c in clips]),
               "video_grid_thw": torch.tensor([c.video.grid_thw for c in clips])}
        return out | self.family.extras(clips, types)


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


# ---------------------------------------------------------------- the model
@dataclass
class VLMConfig:
    """A model config naming a whole VLM (a YAML whose top-level key is ``vlm``): the checkpoint, the
    preset it runs under, the weights' dtype, and its transformers config written out in full so that
    ``damo plan`` builds it with nothing fetched (``damo/resources/configs/qwen2.5-vl-7b.yaml``)."""
    name_or_path: str
    preset: str
    config: dict
    dtype: str = "auto"

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

    def build(self) -> nn.Module:
        """The VLM with random weights from ``config`` (on the current default device: meta for ``damo plan``)."""
        family = FAMILIES[self.config["model_type"]]
        return family.model(family.model.config_class.from_dict(self.config))


@dataclass
class VLMEvidence:
    threshold: float = 0.6


@dataclass
class VLMSettings:
    """The fields a Grounder reads from a model's config."""
    fps: float
    max_frames: int = DECODE_FRAMES
    evidence: VLMEvidence = field(default_factory=VLMEvidence)


class VideoLLM(nn.Module):
    """A transformers VLM with the preset it runs under: ``answer`` as :class:`DamoModel` answers."""

    def __init__(self, model: nn.Module, processor: VLMProcessor):
        super().__init__()
        self.model, self.processor = model, processor
        self.preset = processor.preset
        self.cfg = VLMSettings(fps=processor.spec.fps)

    @property
    def llm(self) -> nn.Module:
        """The module whose every forward is one decoding step (progress bars hook it)."""
        return self.model

    @classmethod
    def from_pretrained(cls, name_or_path: str, preset: str | None = None, dtype: str = "auto") -> "VideoLLM":
        """Load a checkpoint (hub id or folder) under ``preset`` (default: its family's base-model preset)."""
        local = Path(name_or_path).is_dir()
        kind = checkpoint_type(name_or_path) if local else get_preset(preset).family if preset else None
        if kind is None:
            raise ValueError(f"{name_or_path} is not a folder of a {', '.join(FAMILIES)} checkpoint" if local else
                             f"{name_or_path} is no local folder; to load it from the hub name its --preset")
        chosen = get_preset(preset or DEFAULT_PRESET[kind])
        if chosen.family != kind:
            raise ValueError(f"preset {chosen.name!r} runs {chosen.family} checkpoints but {name_or_path} is {kind}; "
                             f"choose a preset of its family, e.g. --preset {DEFAULT_PRESET[kind]}")
        family = FAMILIES[kind]
        try:
            model = family.model.from_pretrained(name_or_path, dtype=resolve_dtype(dtype)).eval()
            tok = AutoTokenizer.from_pretrained(name_or_path)
            feats = WhisperFeatureExtractor.from_pretrained(name_or_path) if family.audio else None
        except OSError as e:
            raise ValueError(f"cannot load {name_or_path}: {str(e).splitlines()[0]}") from None
        return cls(model, VLMProcessor(tok, model.config, chosen, feats))

    def card(self) -> dict:
        """What this model is, for answers' ``"model"`` field."""
        p = self.preset
        return {"trained_on": "real", "preset": p.name, "checkpoint": p.checkpoint,
                "model_type": self.model.config.model_type, "settings_from": p.source}

    def inputs(self, clips: list[VLMClip], queries: list[str]) -> dict:
        """The batch on the model's device."""
        dev = self.model.device
        return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in self.processor.batch(clips, queries).items()}

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
        confidence, so each span's score is 1). No evidence curves: the VLM has no evidence heads."""
        out = []
        for ids in self.generate(clips, queries, max_new_tokens):
            text = self.processor.tokenizer.decode(ids, skip_special_tokens=True)
            out.append({"answer": text, "spans": [[s, e, 1.0] for s, e in self.preset.spans(text)],
                        "evidence": [], "scores": [], "tube": None})
        return out
