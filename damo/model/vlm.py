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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase,
                          Qwen2_5OmniThinkerForConditionalGeneration, Qwen2_5_VLForConditionalGeneration,
                          Qwen3VLForConditionalGeneration, WhisperFeatureExtractor)

from damo.media import Clip
from damo.model.evidence import EvidenceHead, salient_frames, soft_targets
from damo.model.backbones import resolve_dtype
from damo.model.generation import Generation
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


@dataclass
class VLMBatch:
    """A batch of a :class:`VideoLLM` in the fields the training loop's losses read
    (:mod:`damo.train.losses`: ``lm``, ``grounding_bce``, ``grpo``): the VLM's own inputs, the
    replies' ``labels``, and one evidence query per row (``evi_*``: the query of row ``evi_batch[i]``
    against that row's temporal patches); a rollout batch adds GRPO's fields.

    Prompts are left-padded, so every reply ends the sequence: ``labels`` keep only the last ``K``
    positions (the longest reply and the prompt token before it), and the forward computes logits
    there alone (transformers' ``logits_to_keep``), not over thousands of video tokens."""
    inputs: dict                                  # the VLM's keyword inputs (VLMProcessor.batch)
    labels: torch.Tensor | None                   # (B, K) the last K tokens: the reply, -100 before it; None: generate
    query: torch.Tensor                           # (B,) position of each row's last prompt token (the evidence query)
    evi_batch: torch.Tensor                       # (B,) the row of each evidence query: one per row
    evi_mask: torch.Tensor                        # (B, t) real temporal patches (clips differ in length)
    evi_targets: torch.Tensor                     # (B, t) each patch's grounding target
    coord_pos: None = None                        # no LAPE coordinate tokens in these answers
    advantages: torch.Tensor | None = None        # (B,) GRPO: each completion's group-relative advantage
    old_logp: torch.Tensor | None = None          # (B, L - 1) log-probs under the sampling policy
    evi_actions: None = None                      # no evidence draws: the answer's text holds its span
    rollout_tokens: float | None = None           # completion tokens of the step's rollouts per micro-batch

    def to(self, device, non_blocking: bool = False) -> "VLMBatch":
        return self._map(lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "VLMBatch":
        return self._map(lambda v: v.pin_memory())

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "VLMBatch":
        moved = {f: fn(v) for f in ("labels", "query", "evi_batch", "evi_mask", "evi_targets", "advantages", "old_logp")
                 if isinstance(v := getattr(self, f), torch.Tensor)}
        return replace(self, inputs={k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in self.inputs.items()},
                       **moved)


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

    def reply_ids(self, spans: list[list[float]]) -> list[int]:
        """The answer training teaches for a sample's spans, as the preset writes it, and the end of the turn."""
        if not spans:
            raise ValueError(f"the {self.preset.name} preset answers with spans and this sample has none; train a "
                             "whole VLM on samples with spans (the stage's tasks: [grounding])")
        return self.response_ids(self.preset.answer(spans), last=True)

    def response_ids(self, text: str, last: bool) -> list[int]:
        """An answer's ids followed by the end of the turn (every answer of these presets is the last turn)."""
        return self.encode(text + "<|im_end|>")

    def decode(self, ids: list[int], evidence: list[dict], coords: list, duration: float, times) -> dict:
        """A generated answer -> ``{"answer", "spans"}`` read by the preset's parser (the rollouts'
        contract of :meth:`damo.model.processing.DamoProcessor.decode`; these models write no evidence
        tokens or coordinates)."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return {"answer": text, "spans": self.preset.spans(text)}

    def batch(self, clips: list[VLMClip], queries: list[str], replies: list[list[int]] | None = None) -> dict:
        """Left-padded model inputs for ``model(**batch)`` and ``model.generate(**batch)``; with
        ``replies`` (token ids, the end of the turn included), each prompt is followed by its reply,
        and ``labels`` (-100 outside the replies) train the model to write them."""
        rows = [self.prompt(c, q) for c, q in zip(clips, queries)]
        trained = replies is not None
        replies = replies if trained else [[] for _ in rows]
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
        return out | self.family.extras(clips, types) | ({"labels": labels} if trained else {})

    def training_batch(self, clips: list[VLMClip], queries: list[str], replies: list[list[int]] | None = None,
                       spans: list[list[list[float]]] | None = None) -> "VLMBatch":
        """A :class:`VLMBatch`: the inputs of :meth:`batch`, the replies' ``labels``, and one evidence
        query per row whose targets are each temporal patch's share of the row's ``spans`` (zeros
        decayed 2^-distance, as D²VLM's official code trains them)."""
        inputs = self.batch(clips, queries, replies)
        labels = inputs.pop("labels", None)
        L = inputs["input_ids"].shape[1]
        if replies is not None:
            labels = labels[:, L - 1 - max(len(r) for r in replies):]
        query = L - 1 - torch.tensor([len(r) for r in replies] if replies is not None else [0] * len(clips))
        t = max(c.video.grid_thw[0] for c in clips)
        mask = torch.zeros(len(clips), t, dtype=torch.bool)
        targets = torch.zeros(len(clips), t)
        for b, c in enumerate(clips):
            n = c.video.grid_thw[0]
            mask[b, :n] = True
            if spans is not None:
                targets[b, :n] = torch.from_numpy(soft_targets(patch_targets(c.video, spans[b]), 2.0))
        return VLMBatch(inputs, labels, query, torch.arange(len(clips)), mask, targets)

    def generation_batch(self, clips: list[VLMClip], queries: list[str]) -> "VLMBatch":
        """Left-padded prompts for batched generation (the rollouts' contract)."""
        return self.training_batch(clips, queries)


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
    keeps_logits: bool = True      # its forward takes logits_to_keep (the Omni thinker's computes them all)


FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family(Qwen2_5_VLForConditionalGeneration, CLIP_MEAN, CLIP_STD, _block_positions, _extras_positions),
    "qwen3_vl": Family(Qwen3VLForConditionalGeneration, HALF, HALF, _block_timestamps, _extras_timestamps),
    "qwen2_5_omni_thinker": Family(Qwen2_5OmniThinkerForConditionalGeneration, CLIP_MEAN, CLIP_STD, _block_audio,
                                   _extras_audio, audio=True, keeps_logits=False),
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
    ``damo plan`` builds it with nothing fetched (``damo/resources/configs/qwen2.5-vl-7b.yaml``).
    A recipe trains it with DaMO's parts: ``lora`` adapters on the language model, D²VLM's ``evidence``
    heads, and ``video`` settings over the preset's (frame rate, frame and pixel budgets) for training
    and for the saved model."""
    name_or_path: str
    preset: str
    config: dict
    dtype: str = "auto"
    lora: dict | None = None       # {r, alpha, dropout, targets}: LoRA on the language model, the rest frozen
    evidence: bool = False         # D²VLM's evidence heads on the LLM's hidden states (trained, with LoRA)
    video: dict | None = None      # VideoSpec fields over the preset's video settings
    gradient_checkpointing: bool = False   # recompute each layer in the backward instead of keeping its activations

    @classmethod
    def from_dict(cls, d: dict, where: str = "the config") -> "VLMConfig":
        fields = set(cls.__dataclass_fields__)
        if set(d) - fields or not {"name_or_path", "preset", "config"} <= set(d):
            raise ValueError(f"{where}: vlm takes {', '.join(sorted(fields))} (name_or_path, preset and config "
                             f"required); got {', '.join(sorted(d))}")
        cfg = cls(**d)
        kind = cfg.config.get("model_type")
        try:
            preset = get_preset(cfg.preset)
            check_lora(cfg.lora)
            video_spec(preset, cfg.video)
        except ValueError as e:
            raise ValueError(f"{where}: vlm: {e}") from None
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

    def check(self) -> None:
        """Build the model's skeleton on the meta device (nothing allocated, no weight read) from the
        checkpoint folder's config, or else the one written out here, so that LoRA targets matching no
        module fail before any data or weight is read."""
        kind = self.config["model_type"]
        try:
            hf = (AutoConfig.from_pretrained(self.name_or_path) if Path(self.name_or_path).is_dir()
                  else FAMILIES[kind].model.config_class.from_dict(self.config))
        except OSError as e:
            raise ValueError(f"cannot read name_or_path {self.name_or_path}: {str(e).splitlines()[0]}") from None
        part = PARTS.get(hf.model_type)
        with torch.device("meta"):
            model = FAMILIES[kind].model(getattr(hf, part[0]) if part else hf)
        if self.lora:
            add_lora(model, self.lora)

    def load(self) -> "VideoLLM":
        """The checkpoint under its preset (with ``video`` over the preset's settings), with fresh LoRA
        adapters and evidence heads drawn from the current torch seed."""
        vlm = VideoLLM.from_pretrained(self.name_or_path, self.preset, self.dtype, self.video)
        if self.lora:
            vlm.add_lora(self.lora)
        if self.evidence:
            vlm.add_evidence()
        if self.gradient_checkpointing:
            vlm.checkpoint_layers()
        return vlm


LORA_KEYS = {"r", "alpha", "dropout", "targets"}
# the language model's attention and MLP projections (the vision tower's MLP has the same names: left out)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check_lora(lora: dict | None) -> None:
    """``lora`` settings: a mapping of :data:`LORA_KEYS` (``targets``: names of the language model's modules)."""
    if lora is None:
        return
    if not isinstance(lora, dict) or set(lora) - LORA_KEYS:
        raise ValueError(f"lora takes {', '.join(sorted(LORA_KEYS))}; got {lora!r}")
    targets = lora.get("targets", LORA_TARGETS)
    if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"lora.targets must be a list of module names such as {list(LORA_TARGETS[:2])}, "
                         f"got {targets!r}")


def video_spec(preset: Preset, video: dict | None) -> Preset:
    """``preset`` with the ``video`` settings over its own (checked as the processor will use them)."""
    if not video:
        return preset
    keys = set(VideoSpec.__dataclass_fields__) - {"patch", "merge", "temporal_patch", "mean", "std"}
    if not isinstance(video, dict) or set(video) - keys:
        raise ValueError(f"video takes {', '.join(sorted(keys))}; got {video!r}")
    out = replace(preset, video=preset.video | video)
    VideoSpec(**out.video).check()
    return out


def add_lora(model: nn.Module, lora: dict) -> None:
    """LoRA adapters (peft, in place) on the language model's modules named by ``targets`` (default
    :data:`LORA_TARGETS`), kept in float32 whatever the model's dtype (peft casts their inputs and
    outputs), as DaMO keeps every trained weight; every other weight frozen. A target that names no
    module of the language model is an error listing the ones it has."""
    from peft import LoraConfig, inject_adapter_in_model

    check_lora(lora)
    targets = list(lora.get("targets", LORA_TARGETS))
    llm = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
           if ".language_model." in n and isinstance(m, nn.Linear)}
    unmatched = [t for t in targets if t not in llm]
    if unmatched:
        raise ValueError(f"lora.targets {unmatched} match no linear module of the language model; "
                         f"it has {', '.join(sorted(llm))}")
    r = int(lora.get("r", 16))
    pattern = rf".*\.language_model\..*\.({'|'.join(targets)})"
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=int(lora.get("alpha", 2 * r)),
                                       lora_dropout=float(lora.get("dropout", 0.0)), target_modules=pattern), model)
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
    :meth:`evidence_logits`). It trains in DaMO's training loop as a DaMO model does: ``forward`` on a
    :class:`VLMBatch` returns the ``logits`` (and ``evi_logits``) the loop's losses read, and
    :meth:`generate` samples rollouts; :meth:`save` writes only what trains, and
    :meth:`from_pretrained` on that folder loads the base checkpoint and puts it back."""

    def __init__(self, model: nn.Module, processor: VLMProcessor, source: str, video: dict | None = None):
        super().__init__()
        self.model, self.processor, self.source, self.video = model, processor, source, video
        self.preset = processor.preset
        self.cfg = VLMSettings(fps=processor.spec.fps)
        self.lora: dict | None = None
        self.evidence: EvidenceHead | None = None
        self.trained: set[str] = set()     # parameter names a training stage trained (damo.train.loop.set_trainable)
        self.checkpointing = False

    @property
    def llm(self) -> nn.Module:
        """The module whose every forward is one decoding step (progress bars hook it)."""
        return self.model

    @classmethod
    def from_pretrained(cls, name_or_path: str, preset: str | None = None, dtype: str = "auto",
                        video: dict | None = None) -> "VideoLLM":
        """Load a checkpoint (hub id or folder) under ``preset`` (default: its family's base-model preset)
        with ``video`` settings over the preset's, or a folder :meth:`save` wrote (its base checkpoint
        plus what was trained; its preset and video settings by default)."""
        local = Path(name_or_path).is_dir()
        saved = Path(name_or_path) / SAVED
        if saved.is_file():
            spec = json.loads(saved.read_text())
            vlm = cls.from_pretrained(spec["base"], preset or spec["preset"], dtype, video or spec.get("video"))
            if spec["lora"]:
                vlm.add_lora(spec["lora"])
            if spec["evidence"]:
                vlm.add_evidence()
            vlm.trained = set(spec.get("trained", []))
            if spec.get("gradient_checkpointing"):
                vlm.checkpoint_layers()
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
        chosen = video_spec(get_preset(preset or DEFAULT_PRESET[kind]), video)
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
        return cls(model, VLMProcessor(tok, model.config, chosen, feats), name_or_path, video)

    # ------------------------------------------------------------ DaMO's parts
    def add_lora(self, lora: dict) -> None:
        """LoRA on the language model's projections (``{r, alpha, dropout, targets}``); the VLM's own weights freeze."""
        add_lora(self.model, lora)
        self.lora = dict(lora)

    def add_evidence(self) -> None:
        """D²VLM's evidence heads on the LLM's penultimate hidden states (trainable, float32)."""
        self.evidence = evidence_head(self.model).to(self.model.device)

    def checkpoint_layers(self) -> None:
        """Gradient checkpointing of the VLM's layers while it trains (transformers' own, non-reentrant:
        the frozen embeddings' outputs need no gradient for the adapters behind them to get theirs)."""
        self.model.activation_checkpointing_enable({"use_reentrant": False})
        self.checkpointing = True

    def trainable(self) -> dict[str, torch.Tensor]:
        """What :meth:`save` stores: the LoRA weights, the evidence heads, and any other weight a stage trained."""
        return {k: v for k, v in self.state_dict().items()
                if "lora_" in k or k.startswith("evidence.") or k in self.trained}

    def half_dtype(self) -> torch.dtype | None:
        """The VLM's weights' half-precision dtype (the loop trains under autocast in it), or None for float32."""
        dtype = self.model.get_input_embeddings().weight.dtype
        return dtype if dtype in (torch.bfloat16, torch.float16) else None

    def save(self, path: str | Path) -> None:
        """Write only what DaMO added and trained (``trained.safetensors``) and how to rebuild the rest
        (``vlm.json``: the base checkpoint, the preset and video settings, the LoRA settings, the evidence
        heads, the names of other trained weights, gradient checkpointing for further training), each
        file atomically, ``vlm.json`` last."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.trainable().items()}, str(path / f"{TRAINED}.tmp"))
        (path / f"{TRAINED}.tmp").replace(path / TRAINED)
        others = sorted(k for k in self.trained if "lora_" not in k and not k.startswith("evidence."))
        (path / f"{SAVED}.tmp").write_text(json.dumps({"base": self.source, "family": self.model.config.model_type,
                                                       "preset": self.preset.name, "video": self.video,
                                                       "lora": self.lora, "evidence": self.evidence is not None,
                                                       "trained": others,
                                                       "gradient_checkpointing": self.checkpointing}, indent=2))
        (path / f"{SAVED}.tmp").replace(path / SAVED)

    def load_trainable(self, path: Path) -> None:
        state = load_file(str(path))
        expected = set(self.trainable())
        if set(state) != expected:
            raise ValueError(f"{path} does not match its vlm.json: missing {sorted(expected - set(state))[:3]}, "
                             f"unexpected {sorted(set(state) - expected)[:3]}")
        self.load_state_dict(state, strict=False)

    def evidence_logits(self, hidden: torch.Tensor, batch: VLMBatch) -> torch.Tensor:
        """Each temporal patch's evidence logit for each row's question: the head scores the state at
        the row's last prompt token (where the answer starts) against the mean state of each temporal
        patch's video tokens, both from ``hidden`` ``(B, L, C)`` (penultimate layer). Returns ``(B, t)``
        (patches past a clip's own, ``~batch.evi_mask``, are zeros)."""
        ids, grid = batch.inputs["input_ids"], batch.inputs["video_grid_thw"]
        B, C = hidden.shape[0], hidden.shape[2]
        patches = hidden.new_zeros(B, batch.evi_mask.shape[1], C)
        for b in range(B):
            t = int(grid[b, 0])
            pos = (ids[b] == self.processor.ids["video"]).nonzero().squeeze(1)
            patches[b, :t] = hidden[b, pos].view(t, -1, C).mean(1)       # (t, C): video tokens are patch-major
        h_query = hidden[torch.arange(B, device=hidden.device), batch.query]    # (B, C)
        return self.evidence.logits(h_query[:, None].float(), patches.float())[:, 0]   # (B, t)

    def forward(self, batch: VLMBatch) -> dict[str, torch.Tensor]:
        """The VLM's own forward on a batch: ``logits`` ``(B, K, V)`` at the positions of ``batch.labels``
        (all ``L`` without labels) and, with evidence heads, ``evi_logits`` ``(B, t)`` (one evidence
        query per row, :meth:`evidence_logits`)."""
        keep = 0 if batch.labels is None else batch.labels.shape[1]      # 0: every position; no KV cache: one pass
        out = self.model(**batch.inputs, use_cache=False, output_hidden_states=self.evidence is not None,
                         **({"logits_to_keep": keep} if self.processor.family.keeps_logits else {}))
        logits = out.logits[:, -keep:] if keep else out.logits
        if self.evidence is None:
            return {"logits": logits}
        return {"logits": logits, "evi_logits": self.evidence_logits(out.hidden_states[-2], batch)}

    @torch.no_grad()
    def evidence_spans(self, clips: list[VLMClip], queries: list[str]) -> list[tuple[list[float], np.ndarray]]:
        """Per question: the evidence span ``[start, end, score]`` in seconds (the run of patches scoring
        >= threshold x max with the highest mean) and the score of every frame fed (its patch's)."""
        logits = self(self.inputs(clips, queries))["evi_logits"]
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

    def inputs(self, clips: list[VLMClip], queries: list[str], answers: list[str] | None = None) -> VLMBatch:
        """The batch on the model's device (with ``labels`` when ``answers`` are given)."""
        replies = [self.processor.response_ids(a, last=True) for a in answers] if answers is not None else None
        return self.processor.training_batch(clips, queries, replies).to(self.model.device)

    @torch.no_grad()
    def generate(self, batch: VLMBatch, max_new_tokens: int | None = None, seed: int = 0,
                 policy: Generation | None = None) -> list[dict]:
        """New token ids per row of a :meth:`VLMProcessor.generation_batch` (up to and without the end of
        turn), decoded together by the VLM's own ``generate``: as the preset says, or with ``policy``
        (a :class:`~damo.model.generation.Generation`: a GRPO stage's rollouts) sampling from the whole
        softmax at its temperature within its ``top_p`` (no top-k: the checkpoint's generation config
        does not narrow what the policy's log-probs score), drawn from torch's generator seeded with
        ``seed``. Returns ``{"ids", "evidence": [], "coords": []}`` per row (the contract of
        :meth:`damo.model.modeling_damo.DamoModel.generate`: these answers hold their span as text)."""
        self.eval()
        dev = self.model.device
        batch = batch.to(dev)
        n = max_new_tokens or self.preset.max_new_tokens
        settings = (self.preset.generation if policy is None else
                    {"do_sample": True, "temperature": policy.temperature, "top_p": policy.top_p, "top_k": 0})
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            out = self.model.generate(**batch.inputs, max_new_tokens=n, **settings)
        stop = {self.processor.tokenizer.pad_token_id, *np.atleast_1d(self.model.generation_config.eos_token_id)}
        rows = []
        for seq in out[:, batch.inputs["input_ids"].shape[1]:].tolist():
            cut = next((i for i, t in enumerate(seq) if t in stop), len(seq))
            rows.append({"ids": seq[:cut], "evidence": [], "coords": []})
        return rows

    def answer(self, clips: list[VLMClip], queries: list[str], max_new_tokens: int | None = None) -> list[dict]:
        """Answers with spans parsed by the preset's parser (best first; text answers carry no
        confidence, so each span's score is 1); with evidence heads, also their span and their score
        of every frame (``evidence``, ``scores``)."""
        grounded = self.evidence_spans(clips, queries) if self.evidence is not None else [None] * len(clips)
        rows = self.generate(self.processor.generation_batch(clips, queries), max_new_tokens)
        out = []
        for row, ev, c in zip(rows, grounded, clips):
            text = self.processor.decode(row["ids"], row["evidence"], row["coords"], c.duration, c.times)
            out.append({"answer": text["answer"], "spans": [[s, e, 1.0] for s, e in text["spans"]],
                        "evidence": [ev[0]] if ev else [], "scores": [ev[1]] if ev else [], "tube": None})
        return out
