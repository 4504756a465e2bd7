"""DamoProcessor: everything the LLM reads and writes.

In the spirit of transformers' processors, one object owns the text side of the model: the special
tokens, where the question and the video go in the prompt (``layout``), how many frames share one
LLM frame token (``llm_frames``), how frames learn their time (``time_encoding``), what the
response looks like (``response`` and evidence ``level``), the training targets that follow from
it, and turning a generated answer back into text, spans and a tube. Each switch is a small
strategy in a dict below; nothing else in the package branches on these names.

The response follows D²VLM's "grounding then answering with evidence referencing" (section 3.2,
appendix B): one ``<evi>`` per ground-truth event (pure grounding), ``</evi>``, then the answer in
which each event is referred to by another ``<evi>``. Both stages' k-th ``<evi>`` are supervised
with the k-th span (``time_gt`` is shared by the two stages) and their features are tied by the
consistency loss. The ablation baselines of D²VLM (coupled and decomposed responses, Table 4;
frame-level evidence, Table 6) are other entries of :data:`RESPONSES` and :data:`EVIDENCE_LEVELS`.

A processor is saved beside its model as ``processor_config.json`` next to ``tokenizer/``
(:class:`damo.pipeline.DamoPipeline`); the time encodings are classes of :mod:`damo.model.time_encodings`.
"""
from __future__ import annotations

import json
import math
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from damo.media import SAMPLE_RATE, Clip
from damo.media.audio import log_mel, whisper_log_mel_windows

from damo.model import tokenizer as tk
from damo.model.batch import Batch
from damo.model.compressors import STREAM_ORDERS, TokenBudget, slow_steps
from damo.model.coordinates import anchor_pair, box_to_tokens, coordinate_axes
from damo.model.evidence import soft_targets
from damo.model.fields import check_fields
from damo.model.generation import generation_of
from damo.model.time_encodings import TIME_ENCODINGS, TIME_TEXTS, Lape, TimeEncoding, span_text
from damo.model.time_encodings import text_spans  # noqa: F401  (importable from here, as before)
from damo.spans import time_key
from damo.textio import loads

MAX_QUERY_BYTES_PER_TOKEN = 32   # a question longer than this per allowed token is refused untokenised
_COORD_TOKEN = r"<[txy]_\d+>"      # LAPE coordinate tokens: time, width, height


# ----------------------------------------------------------------------------- strategies
# Where the question goes, in order. ``video_first`` is the LLaVA layout D²VLM and LLaVA-ST use;
# ``query_first`` lets the causal LLM's frame states attend to the question (as instruction-aware
# Q-Formers do in InstructBLIP and TimeChat); ``query_both`` also repeats it right before the answer.
LAYOUTS: dict[str, tuple[str, ...]] = {"video_first": ("video", "query"), "query_first": ("query", "video"),
                                       "query_both": ("query", "video", "query")}


@dataclass(frozen=True)
class FrameTimes:
    """Where frame ``i`` is sampled in its ``1/fps`` window (``phase``: at ``(i + phase)/fps``), which
    frames a span covers (``covers``: frame indices, fps, start, end -> mask) and where a run of
    frames ending at frame ``b`` ends (``last``: at ``(b + last)/fps``)."""
    phase: float
    covers: Callable[[np.ndarray, float, float, float], np.ndarray]
    last: float


def _centre_covers(i: np.ndarray, fps: float, s: float, e: float) -> np.ndarray:
    c = (i + 0.5) / fps
    return (c >= s) & (c < e)


def _index_covers(i: np.ndarray, fps: float, s: float, e: float) -> np.ndarray:
    return (i >= round(s * fps)) & (i <= round(e * fps))


# ``centre``: frames at window centres, a span [s, e) covers the frames whose centre it holds, a run
# ends where its last window ends (TimeChat's convention, ours). ``start``: D²VLM's official code
# (d2vlm 756d340): frames at i/fps (d2vlm/utils/io.py, _load_video, frame_idx = arange(0, n, fps_native/fps)),
# a span [s, e] covers frames round(s)..round(e) inclusive (d2vlm/model/d2vlm_arch.py, forward_evi:
# ``[round(x) for x in t]`` then ``start <= idx <= end``), and a decoded run [a, b] is written "a - b" in
# frame indices (d2vlm/utils/tokenization.py, format_intervals), so it ends at frame b's time.
FRAME_TIMES = {"centre": FrameTimes(0.5, _centre_covers, 1.0), "start": FrameTimes(0.0, _index_covers, 0.0)}


@dataclass(frozen=True)
class ChatFormat:
    """An LLM's own chat format, as its ``tokenizer_config.json`` publishes it, with the system turn
    and stop string its authors' prompts use. ``template``: the Jinja chat template (used when the
    tokenizer carries none, so prompts render offline); ``system``: the system turn's text (None:
    none); ``stop``: generation ends at any of these strings, and the first one closes every training
    response (it is learned, as the authors' label masks keep it); ``bos``: the tokenizer puts its bos
    token in front (Phi-3 and Mistral's sentencepiece tokenizers do; a template that writes
    ``{{ bos_token }}`` itself needs false); ``bos_token``/``eos_token``: the strings the template
    writes for ``{{ bos_token }}``/``{{ eos_token }}``."""
    template: str
    stop: tuple[str, ...]
    system: str | None = None
    bos: bool = False
    bos_token: str | None = None
    eos_token: str | None = None


@dataclass(frozen=True)
class ResponseFormat:
    """D²VLM Table 4: ``grounding_stage`` opens the response with one ``<evi>`` per event and
    ``</evi>``; ``evidence_refs`` makes the answer refer to events by ``<evi>`` (else by text
    timestamps, as TimeChat and VTimeLLM answer)."""
    grounding_stage: bool
    evidence_refs: bool


RESPONSES = {"coupled": ResponseFormat(False, False), "decomposed": ResponseFormat(True, False),
             "interleaved": ResponseFormat(True, True)}


@dataclass(frozen=True)
class EvidenceLevel:
    """D²VLM Table 6: an event is ``tokens`` ``<evi>`` (1: the token grounds the interval; 2: a start
    and an end token, each grounding one frame, as timestamp-token designs do)."""
    tokens: int


EVIDENCE_LEVELS = {"event": EvidenceLevel(1), "frame": EvidenceLevel(2)}


def _hard_targets(y: np.ndarray, alpha: float) -> np.ndarray:
    return y


# Grounding targets per frame token ``(y, alpha) -> targets``: the span's frames (hard, D²VLM eq. 3)
# or, as the official code trains them, also alpha^-distance outside it.
EVIDENCE_TARGETS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {"soft": soft_targets, "hard": _hard_targets}


def _tiny_log_mel(clip: Clip, n_mels: int, mel_frames: int) -> np.ndarray:
    hop = int(round(SAMPLE_RATE / clip.fps / mel_frames))
    win = 1 << (hop.bit_length() - 1)   # power-of-two FFT <= hop (512 for a 40 ms hop): fast, barely any gap
    mel = log_mel(clip.audio, SAMPLE_RATE, clip.fps, clip.num_frames, n_mels=n_mels, hop=hop, win=win)[:, :mel_frames]
    # a window that is not a whole number of hops (frames sampled uniformly, at any rate) may hold one fewer
    return np.pad(mel, ((0, 0), (0, mel_frames - mel.shape[1]), (0, 0)), mode="edge")


def _whisper_log_mel(clip: Clip, n_mels: int, mel_frames: int) -> np.ndarray:
    # exactly WhisperFeatureExtractor's features of each 30 s chunk, cut into the frame windows
    return whisper_log_mel_windows(clip.audio, clip.fps, clip.num_frames, n_mels)[:, :mel_frames]


# Per-frame audio features ``(T, mel_frames, n_mels)`` for each audio encoder family.
AUDIO_FEATURES: dict[str, Callable[[Clip, int, int], np.ndarray]] = {"log_mel": _tiny_log_mel,
                                                                     "whisper": _whisper_log_mel}


def check_query_size(query: str, max_tokens: int) -> None:
    """Refuse, before the tokenizer sees it, a question of more than ``MAX_QUERY_BYTES_PER_TOKEN``
    bytes per token the model reads (a 55 MB question makes a Rust tokenizer abort the process)."""
    size = len(query.encode("utf-8", errors="surrogatepass"))
    if size > MAX_QUERY_BYTES_PER_TOKEN * max_tokens:
        raise ValueError(f"the query is {size:,} bytes long, more than this model reads ({max_tokens} tokens); "
                         "ask a shorter question")


def check_choice(key: str, value: str, valid: dict) -> None:
    if value not in valid:
        raise ValueError(f"model.{key} must be one of {tuple(valid)}, got {value!r}")


def chat_format(fields: dict) -> ChatFormat:
    """``model.chat`` as a :class:`ChatFormat`, or one line saying what is wrong."""
    names = set(ChatFormat.__dataclass_fields__)
    if set(fields) - names or not {"template", "stop"} <= set(fields):
        raise ValueError(f"model.chat needs template and stop and takes only {sorted(names)}; got {sorted(fields)}")
    if not fields["stop"]:
        raise ValueError("model.chat.stop must name at least one stop string (the end-of-turn token, e.g. <|end|>)")
    return ChatFormat(**{**fields, "stop": tuple(fields["stop"])})


# ----------------------------------------------------------------------------- helpers
def llm_group(num_frames: int, llm_frames: int) -> int:
    """Frames per LLM video token: 1, or ``ceil(T / llm_frames)`` when a video has more frames than
    the LLM budget (``llm_frames`` 0 = no budget). A budget of 32 gives a 30-s and a 10-min video
    at 1 fps 30 and 32 frame tokens."""
    return 1 if llm_frames <= 0 or num_frames <= llm_frames else -(-num_frames // llm_frames)


def frame_targets(spans: Sequence[Sequence[float]], num_frames: int, fps: float, times: str = "centre") -> np.ndarray:
    """1 for frames any span covers (:data:`FRAME_TIMES`; ``centre``: the window centre (i + 0.5) / fps
    lies inside [s, e); ``start``: frames round(s * fps) .. round(e * fps))."""
    i = np.arange(num_frames)
    y = np.zeros(num_frames, dtype=np.float32)
    for s, e in spans:
        y[FRAME_TIMES[times].covers(i, fps, s, e)] = 1.0
    if num_frames and not y.any() and spans:  # span shorter than a frame window: mark its nearest frame
        s, e = spans[0]
        y[min(num_frames - 1, int((s + e) / 2 * fps))] = 1.0
    return y


def _join(refs: list[str]) -> str:
    return refs[0] if len(refs) == 1 else ", ".join(refs[:-1]) + " and " + refs[-1]


def box_text(boxes: list, box_bins: int) -> str:
    """A tube's first and last box as LAPE width/height tokens (LLaVA-ST section 3.2):
    ``"from <x_a> <y_b> <x_c> <y_d> to <x_e> ..."``; the boxes in between follow by linear
    interpolation (the procedural shapes move in straight lines)."""
    first, last = (" ".join(box_to_tokens(b, box_bins)) for b in (boxes[0], boxes[-1]))
    return f"from {first} to {last}"


def response_text(task: str, answer: str, spans: list, captions: list[str], *, response: str = "interleaved",
                  level: str = "event", duration: float | None = None, time_bins: int = 0,
                  boxes: list | None = None, box_bins: int = 0, time_text: str = "seconds",
                  encoding: TimeEncoding | None = None) -> str:
    """The target response for one turn (see :data:`RESPONSES` and :data:`EVIDENCE_LEVELS`).

    Text timestamps are written by the time ``encoding`` (:meth:`TimeEncoding.write_span`; default:
    LAPE's time tokens with ``time_bins``, else seconds), ``time_text`` in which form; ``boxes`` (a
    spatio-temporal grounding tube's boxes in time order) with ``box_bins`` ends the answer with
    the tube's boxes as LAPE width/height tokens (:func:`box_text`).
    """
    check_choice("response", response, RESPONSES)
    check_choice("evidence.level", level, EVIDENCE_LEVELS)
    fmt = RESPONSES[response]
    n = len(spans)
    evi = " ".join([tk.EVI] * EVIDENCE_LEVELS[level].tokens)
    encoding = encoding or (Lape(time_bins) if time_bins else TimeEncoding(0))
    refs = [evi] * n if fmt.evidence_refs else [encoding.write_span(sp, duration, time_text) for sp in spans]
    ans = answer.strip().rstrip(".")
    written = ans.count(tk.EVI)
    if written and written != n:
        raise ValueError(f"the answer refers to {written} events with {tk.EVI} but the sample has {n} spans")
    if written:
        # the answer already refers to its events (D²VLM's interleaved annotations): fill in the references
        parts = ans.split(tk.EVI)
        body = "".join(p + r for p, r in zip(parts, refs)) + parts[-1] + "."
    elif task == "dense_caption" and captions:
        body = " ".join(f"{r}, {c.strip().rstrip('.')}." for r, c in zip(refs, captions))
    elif n == 0:
        body = f"{ans}."
    elif task in ("grounding", "multi_grounding"):
        # restating the event right before its reference ("the red square is on screen in <evi>")
        # puts what to ground next to the token that grounds it
        body = f"{ans or 'It happens'} in {_join(refs)}."
    else:
        where = f", {box_text(boxes, box_bins)}" if boxes and box_bins else ""
        body = f"{ans}. The relevant event happens in {_join(refs)}{where}."
    if not fmt.grounding_stage:
        return body
    return " ".join([evi] * n + [tk.EVI_END, body])


def evidence_targets(spans: list, num_evi: int, num_frames: int, fps: float, level: str = "event",
                     times: str = "centre") -> list[np.ndarray]:
    """Frame targets ``(num_frames,)`` for each of a turn's ``num_evi`` ``<evi>`` tokens, in order.

    Event level: the k-th token of each stage grounds the k-th span (D²VLM: ``time_gt`` is shared
    by the two stages), salient frames = the span's frames. Frame level: tokens come in
    (start, end) pairs, each marking the one frame that holds the span's start or end.
    """
    out = []
    for k in range(num_evi):
        y = np.zeros(num_frames, np.float32)
        if spans and num_frames:
            s, e = spans[evi_span_index(k, len(spans), level)]
            if level == "frame" and times == "start":
                t = round((s if k % 2 == 0 else e) * fps)
            elif level == "frame":
                t = s * fps if k % 2 == 0 else math.ceil(e * fps) - 1
                y[min(num_frames - 1, max(0, int(t)))] = 1.0
            else:
                y = frame_targets([[s, e]], num_frames, fps, times)
        out.append(y)
    return out


def evi_span_index(k: int, num_spans: int, level: str = "event") -> int:
    """The span the ``k``-th ``<evi>`` of a turn grounds: the grounding stage and the answer each
    refer to the spans in order (one token per span at event level, a start/end pair at frame level)."""
    return (k // EVIDENCE_LEVELS[level].tokens) % num_spans


def group_targets(y: np.ndarray, g: int) -> np.ndarray:
    """Per-frame targets ``(n,)`` -> per LLM frame token ``(ceil(n/g),)``: the fraction of each
    group's frames inside the span."""
    if g == 1:
        return y
    n = len(y)
    nl = -(-n // g)
    return np.pad(y, (0, nl * g - n)).reshape(nl, g).sum(1) / np.clip(np.minimum(g, n - g * np.arange(nl)), 1, None)


def tube(span: list[float], boxes: list[list[float]], times: list[float]) -> dict:
    """A spatio-temporal tube from a span and the boxes at its start and end: a box at every
    frame time inside ``[start, end)``, linearly interpolated between the first and last box
    (LLaVA-ST's tube format; the metric matches frames by time)."""
    inside = [t for t in times if span[0] <= t < span[1]]
    a, b = boxes[0], boxes[-1]
    out = {}
    for t in inside:
        w = (t - inside[0]) / (inside[-1] - inside[0]) if len(inside) > 1 else 0.0
        x0, y0, x1, y1 = (p + (q - p) * w for p, q in zip(a, b))
        out[time_key(t)] = [round(v, 4) for v in (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))]
    return {"span": [float(span[0]), float(span[1])], "boxes": out}


def pair_frames(evidence: list[dict]) -> list[dict]:
    """Frame-level evidence: each stage's ``<evi>`` come as (start, end) pairs -> one span per pair.

    The span runs from the start frame to the end of the end frame (swapped if the end comes
    first); its score is the mean of the two peaks; a trailing unpaired token stands alone.
    """
    out = []
    for st in (1, 2):
        ev = [e for e in evidence if e["stage"] == st]
        for a, b in zip(ev[::2], ev[1::2] + [None] * (len(ev) % 2)):
            if b is None:
                out.append(a)
                continue
            lo, hi = sorted([a["span"], b["span"]])
            out.append({"stage": st, "scores": np.maximum(a["scores"], b["scores"]),
                        "span": [lo[0], max(lo[1], hi[1]), (a["span"][2] + b["span"][2]) / 2]})
    return out


# ----------------------------------------------------------------------------- batches
def pad_rows(rows: list[list], value, left: bool = False) -> torch.Tensor:
    L = max(map(len, rows))
    return torch.tensor([[value] * (L - len(r)) + r if left else r + [value] * (L - len(r)) for r in rows])


def stack_clips(clips: list[ClipTensors | None]) -> Batch:
    """Frames, audio features and times of a batch, zero-padded to its longest clip (``None``
    clips: a text-only batch with zero frames)."""
    B = len(clips)
    text = any(c is None for c in clips)
    if text and not all(c is None for c in clips):
        raise ValueError("a batch is either all text-only (clip None) or all with clips")
    T = 0 if text else max(c.frames.shape[0] for c in clips)
    c0 = clips[0]
    frames = torch.zeros(B, T, *(c0.frames.shape[1:] if c0 else (1, 1, 3)), dtype=torch.uint8)
    mel = torch.zeros(B, T, *(c0.mel.shape[1:] if c0 else (1, 1)))
    times = torch.zeros(B, T)
    fmask = torch.zeros(B, T, dtype=torch.bool)
    stored = c0 is not None and c0.vision is not None        # precomputed tower outputs (damo.data.features)
    if stored:
        vis = torch.zeros(B, T, *c0.vision.shape[1:], dtype=c0.vision.dtype)
        aud = torch.zeros(B, T, *c0.audio.shape[1:], dtype=c0.audio.dtype)
    for b, c in enumerate(clips):
        if c is not None:
            n = c.frames.shape[0]
            frames[b, :n], mel[b, :n], times[b, :n], fmask[b, :n] = c.frames, c.mel, c.times, True
            if stored:
                vis[b, :n], aud[b, :n] = c.vision, c.audio
    return Batch(frames=frames.permute(0, 1, 4, 2, 3).contiguous(),      # (B, T, 3, H, W) uint8
                 mel=mel, times=times, frame_mask=fmask,
                 frame_counts=[0 if c is None else c.frames.shape[0] for c in clips],
                 vision_features=vis if stored else None, audio_features=aud if stored else None)


@dataclass(frozen=True)
class VideoLayout:
    """How a batch's video reaches the LLM: ``group`` frames per frame token, ``per_frame``
    placeholders per frame token, and a slow stream (LLaVA-ST's packer) of ``slow_side^2`` tokens
    per ``stride`` frame tokens, written in front of the frames."""
    group: int
    per_frame: int
    slow_side: int = 0
    stride: int = 1

    def slow_tokens(self, frame_tokens: int) -> int:
        """Slow-stream placeholders of a clip with ``frame_tokens`` frame tokens."""
        return slow_steps(frame_tokens, self.stride) * self.slow_side ** 2


def frame_positions(positions: list[list[int]], Tl: int, K: int, shift: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Placeholder positions ``(B, T', K)`` (shifted by each row's left padding) and the valid mask ``(B, T')``."""
    pos = torch.zeros(len(positions), Tl, K, dtype=torch.long)
    valid = torch.zeros(len(positions), Tl, dtype=torch.bool)
    for b, (p, s) in enumerate(zip(positions, shift)):
        nl = len(p) // K
        if nl:
            pos[b, :nl] = torch.tensor(p).view(nl, K) + s
            valid[b, :nl] = True
    return pos, valid


# ----------------------------------------------------------------------------- the processor
@dataclass
class ClipTensors:
    """A decoded clip as the model reads it: frames at the vision tower's size, per-frame audio
    features, each frame's time and the clip's duration."""
    frames: torch.Tensor   # (T, H, W, 3) uint8
    mel: torch.Tensor      # (T, F, M) float32
    times: torch.Tensor    # (T,) float32 seconds
    duration: float
    vision: torch.Tensor | None = None   # (T, 1+P, Dv) stored frozen-tower outputs instead of frames
    audio: torch.Tensor | None = None    # (T, 1+A, Da) stored frozen-tower outputs instead of audio features


@dataclass
class Encoded:
    """One sample's token sequence and targets (positions index ``ids``)."""
    ids: list[int]
    labels: list[int]
    frame_pos: list[int]                   # the frame tokens' placeholders, T' x K in order
    evi_pos: list[int] = field(default_factory=list)
    evi_targets: list[np.ndarray] = field(default_factory=list)     # (T',) per <evi>
    cons_pairs: list[tuple[int, int]] = field(default_factory=list)  # indices into evi_pos
    coord_pos: list[int] = field(default_factory=list)
    coord_ids: list[tuple[int, int]] = field(default_factory=list)
    coord_w: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class ProcessorConfig:
    video_tokens: int = 8          # fusion tokens in front of the frames (DamoConfig.bridge_tokens)
    frame_tokens: int = 1          # K placeholders per LLM frame token (without `budget`)
    budget: dict | None = None     # compressor at the LLM: TokenBudget fields; K and the frame cap follow it
    fps: float = 1.0
    layout: str = "query_both"
    frame_times: str = "centre"    # centre | start: where frames sit in their window (FRAME_TIMES)
    chat: dict | None = None       # ChatFormat fields: the LLM's chat template; None: our plain layout
    generation: dict | None = None  # Generation fields: how answers are decoded; None: greedy
    time_text: str = "seconds"     # seconds | braces: how a text answer writes a span (TIME_TEXTS)
    stream_order: str = "slow_first"  # slow_first | fast_first: the packer's streams in the prompt (STREAM_ORDERS)
    uniform_frames: int = 0        # 0: frames at fps; N > 1: exactly N frames spread from the first picture to the last
    response: str = "interleaved"
    evidence_level: str = "event"
    evidence_targets: str = "soft"  # soft: alpha^-distance outside the span (D²VLM official code) | hard: 0/1
    evidence_alpha: float = 2.0
    llm_frames: int = 64
    time_encoding: str = "sinusoid"
    time_bins: int = 32
    box_bins: int = 0
    max_len: int = 1024            # tokens per training sequence
    image_size: int = 32           # frames reach the vision tower at this size (decoded at it)
    audio_features: str = "log_mel"   # log_mel (the tiny encoder's fast mel) | whisper (Whisper's own features)
    n_mels: int = 32
    mel_frames: int = 25           # audio feature frames per 1/fps window
    max_query_tokens: int = 256    # a longer question is refused (memory grows with its square)
    max_frames: int = 4096         # a longer video is refused before it is decoded (DamoConfig.max_frames)

    def __post_init__(self) -> None:
        check_fields(self, "processor")
        check_choice("layout", self.layout, LAYOUTS)
        check_choice("frame_times", self.frame_times, FRAME_TIMES)
        if self.chat is not None:
            chat_format(self.chat)
        generation_of(self.generation)
        check_choice("time_text", self.time_text, TIME_TEXTS)
        check_choice("stream_order", self.stream_order, STREAM_ORDERS)
        if self.uniform_frames == 1 or self.uniform_frames < 0:
            raise ValueError(f"model.uniform_frames must be 0 (frames at fps) or >= 2, got {self.uniform_frames}")
        check_choice("response", self.response, RESPONSES)
        check_choice("evidence.level", self.evidence_level, EVIDENCE_LEVELS)
        check_choice("evidence.targets", self.evidence_targets, EVIDENCE_TARGETS)
        if self.evidence_alpha <= 1:
            raise ValueError(f"model.evidence.alpha must be > 1 (targets decay as alpha^-distance), "
                             f"got {self.evidence_alpha}")
        check_choice("time_encoding", self.time_encoding, TIME_ENCODINGS)
        check_choice("audio_features", self.audio_features, AUDIO_FEATURES)
        TIME_ENCODINGS[self.time_encoding](self.time_bins)        # checks the encoding's own settings
        if self.box_bins == 1 or self.box_bins < 0:
            raise ValueError(f"model.box_bins must be 0 (no box tokens) or >= 2, got {self.box_bins}")


class DamoProcessor:
    """Prompts, responses, targets and answer decoding for one model's tokenizer and settings.

    It sits above the model, as transformers' processors do: it turns clips and text into the
    model's tensors (:meth:`generation_batch`, :meth:`encode_turns`) and the model's generated rows
    back into text and spans (:meth:`decode`); the model never sees it. LAPE coordinate tokens
    (``time_encoding: lape``, ``box_bins``) are added to ``tokenizer`` in place, the same ids the
    model adds (:func:`~damo.model.coordinates.coordinate_axes`).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, config: ProcessorConfig | None = None, **kw):
        self.tokenizer = tok = tokenizer
        self.config = c = config or ProcessorConfig(**kw)
        self.time = TIME_ENCODINGS[c.time_encoding](c.time_bins)
        self.frame_times = FRAME_TIMES[c.frame_times]
        self.chat = chat_format(c.chat) if c.chat is not None else None
        self.level = EVIDENCE_LEVELS[c.evidence_level]
        self.format = RESPONSES[c.response]
        self.budget = TokenBudget(**c.budget) if c.budget else None
        self.coord_axes = coordinate_axes(tok, self.time.anchors, c.box_bins)     # LAPE (LLaVA-ST eq. 4)
        tok.add_tokens(self.time.vocabulary, special_tokens=True)              # the time encoding's own tokens
        self.single = tk.SPECIAL_TOKENS + self.time.vocabulary                  # tokens text never splits
        self.special = re.compile("(" + "|".join([re.escape(t) for t in self.single] + [_COORD_TOKEN]) + ")")
        self.axis_of = {i: a for a, ids in self.coord_axes.items() for i in ids}     # token id -> axis
        ids = tok.convert_tokens_to_ids
        self.video_id, self.evi_id, self.evi_end_id = ids(tk.VIDEO), ids(tk.EVI), ids(tk.EVI_END)

    @classmethod
    def from_model_config(cls, cfg, tokenizer: PreTrainedTokenizerFast, **kw) -> "DamoProcessor":
        """The processor of a :class:`~damo.model.modeling_damo.DamoConfig`."""
        return cls(tokenizer, ProcessorConfig(budget=cfg.token_budget(),
            video_tokens=cfg.bridge_tokens, frame_tokens=cfg.fuser.frame_tokens, fps=cfg.fps, layout=cfg.layout,
            frame_times=cfg.frame_times, chat=cfg.chat, generation=cfg.generation, time_text=cfg.time_text,
            stream_order=cfg.stream_order, uniform_frames=cfg.uniform_frames,
            response=cfg.response, evidence_level=cfg.evidence.level, evidence_targets=cfg.evidence.targets,
            evidence_alpha=cfg.evidence.alpha, llm_frames=cfg.llm_frames, time_encoding=cfg.time_encoding, time_bins=cfg.time_bins, box_bins=cfg.box_bins,
            image_size=cfg.vision.image_size, audio_features="whisper" if cfg.audio.kind == "hf_whisper" else "log_mel",
            n_mels=cfg.audio.n_mels, mel_frames=cfg.audio.frames, max_frames=cfg.max_frames, max_len=cfg.max_len, **kw))

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path / "processor_config.json.tmp"
        tmp.write_text(json.dumps(asdict(self.config), indent=2))
        tmp.replace(path / "processor_config.json")

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer: PreTrainedTokenizerFast) -> "DamoProcessor":
        """The processor saved in ``path``; a file with unknown keys or values of the wrong type is a
        ValueError naming it and the key."""
        file = Path(path) / "processor_config.json"
        try:
            saved = loads(file.read_text(encoding="utf-8"), "processor_config.json")
            if not isinstance(saved, dict):
                raise ValueError("not an object of processor settings")
            unknown = sorted(set(saved) - set(ProcessorConfig.__dataclass_fields__))
            if unknown:
                raise ValueError(f"unknown keys {unknown}")
            config = ProcessorConfig(**saved)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{file}: {e}; save the model again or restore the file") from None
        return cls(tokenizer, config)

    # ------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        """Tokenise text whose special tokens must stay single ids, without stray spaces around them."""
        tok, out = self.tokenizer, []
        for piece in self.special.split(text):
            if not piece.strip():
                continue
            if piece in self.single:
                out.append(tok.convert_tokens_to_ids(piece))
            elif re.fullmatch(_COORD_TOKEN, piece):
                i = tok.convert_tokens_to_ids(piece)
                if i is None or i == tok.unk_token_id:
                    raise ValueError(f"{piece} is not in the tokenizer: the model has no such LAPE coordinate tokens")
                out.append(i)
            else:
                out.extend(tok(" " + piece.strip(), add_special_tokens=False)["input_ids"])
        return out

    def encode_user(self, text: str) -> list[int]:
        """Tokenise a user's text: the string of a special token in it (``<video>``, ``<eos>``, a
        time token) is read as plain characters, never as that token, so a question cannot inject
        placeholders or end its own turn."""
        return self.tokenizer(" " + text.strip(), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def query_ids(self, query: str) -> list[int]:
        """The question's token ids, refused past ``max_query_tokens`` (attention memory grows with
        the square of the prompt, so an unbounded question is an unbounded allocation) and, before
        tokenising, past :func:`check_query_size`."""
        check_query_size(query, self.config.max_query_tokens)
        ids = self.encode_user(query)
        if len(ids) > self.config.max_query_tokens:
            raise ValueError(f"the query is {len(ids)} tokens long, more than this model's limit of "
                             f"{self.config.max_query_tokens}; ask a shorter question")
        return ids

    def layout(self, num_frames: int) -> VideoLayout:
        """The video layout of a clip (or batch) of ``num_frames`` frames: frames are grouped to at
        most ``llm_frames`` frame tokens (and at most the compressor budget's :meth:`TokenBudget.frame_cap`),
        and each frame token gets the budget's K tokens (else ``frame_tokens``)."""
        c, b = self.config, self.budget
        caps = [x for x in (c.llm_frames, b.frame_cap() if b else 0) if x > 0]
        g = llm_group(num_frames, min(caps, default=0))
        if b is None or num_frames == 0:
            return VideoLayout(g, c.frame_tokens)
        k, s = b.split(-(-num_frames // g))
        return VideoLayout(g, k, s, b.stride)

    def group(self, num_frames: int) -> int:
        """Frames per LLM frame token for a clip (or batch) of ``num_frames`` frames."""
        return self.layout(num_frames).group

    def video_pieces(self, times: Sequence[float] | torch.Tensor | None,
                     layout: VideoLayout | None = None) -> list[str]:
        """The video's part of a prompt as text pieces (each ``<video>`` one placeholder): the fusion
        placeholders, then the slow stream's, then each frame token's, after the time encoding's text for
        it (:meth:`~damo.model.time_encodings.TimeEncoding.frame_prefixes`: Dynamic-VLM's timestamps).
        Empty without ``times``."""
        if times is None or not len(times):
            return []
        lay = layout or self.layout(len(times))
        first = [float(t) for t in list(times)[::lay.group]]       # each token's first frame
        frames: list[str] = []
        for prefix in self.time.frame_prefixes(first):
            frames += ([prefix] if prefix else []) + [tk.VIDEO] * lay.per_frame
        slow = [tk.VIDEO] * lay.slow_tokens(len(first))
        return [tk.VIDEO] * self.config.video_tokens + STREAM_ORDERS[self.config.stream_order](frames, slow)

    def video_ids(self, pieces: list[str]) -> list[int]:
        return [i for x in pieces for i in ([self.video_id] if x == tk.VIDEO else self.encode(x))]

    def chat_segments(self, queries: list[str], responses: int, video: bool) -> list[tuple[str, str]]:
        """A conversation of ``queries`` (the first ``responses`` of them answered) rendered by the LLM's
        chat template (the tokenizer's own, else the one the config carries) with the authors' system
        turn, as ``(kind, text)`` segments in order: ``template`` text, each ``user`` question, the
        ``video`` marker (in the first question, placed per ``layout``) and each ``response``'s place.
        The template renders markers, so a question's text never passes through it."""
        ch = self.chat
        asks = [f"\x1equery {k}\x1e" for k in range(len(queries))]
        answers = [f"\x1eresponse {k}\x1e" for k in range(responses)]
        parts = {"video": tk.VIDEO, "query": asks[0]}
        msgs = [{"role": "system", "content": ch.system}] if ch.system is not None else []
        for i, q in enumerate(asks):
            first = "\n".join(parts[x] for x in LAYOUTS[self.config.layout] if video or x != "video")
            msgs.append({"role": "user", "content": first if i == 0 else q})
            if i < responses:
                msgs.append({"role": "assistant", "content": answers[i]})
        named = {k: v for k, v in (("bos_token", ch.bos_token), ("eos_token", ch.eos_token)) if v is not None}
        text = self.tokenizer.apply_chat_template(msgs, chat_template=self.tokenizer.chat_template or ch.template,
                                                  add_generation_prompt=responses < len(queries),
                                                  tokenize=False, **named)
        kind = {tk.VIDEO: ("video", tk.VIDEO)} | {a: ("user", q) for a, q in zip(asks, queries)} | {
            a: ("response", a) for a in answers}
        return [kind.get(x, ("template", x)) for x in re.split("(" + "|".join(map(re.escape, kind)) + ")", text) if x]

    def chat_tokens(self, segments: list[tuple[str, str]]) -> list[int]:
        """The ids of consecutive template and question segments: the tokenizer's ids of their text as
        one string, as the authors' code tokenises its prompts (our special tokens stay single ids). A
        question holding a special token's string (``<video>``, ``<|end|>``) is tokenised on its own
        with that string read as plain characters, so it cannot inject placeholders or end its turn."""
        tok = self.tokenizer
        special = [t for t in tok.all_special_tokens + list(tok.get_added_vocab()) if t]
        if not any(k == "user" and any(t in x for t in special) for k, x in segments):
            return tok("".join(x for _, x in segments), add_special_tokens=False)["input_ids"]
        return [i for k, x in segments
                for i in tok(x, add_special_tokens=False, split_special_tokens=k == "user")["input_ids"]]

    def prompt_pieces(self, query: str, times: Sequence[float] | torch.Tensor | None,
                      layout: VideoLayout | None = None) -> tuple[list[str], list[int]]:
        """The prompt generation starts from as text pieces and its token ids (see :meth:`prompt`)."""
        video = self.video_pieces(times, layout)
        if self.chat is None:
            parts = {"video": (video, self.video_ids(video)),
                     "query": ([tk.USER, " " + query.strip()], self.encode(tk.USER) + self.encode_user(query))}
            order = LAYOUTS[self.config.layout]
            pieces = [tk.BOS] + [x for part in order for x in parts[part][0]] + [tk.ASSISTANT]
            ids = [self.tokenizer.bos_token_id] + [i for part in order for i in parts[part][1]]
            return pieces, ids + self.encode(tk.ASSISTANT)
        segments = self.chat_segments([query], 0, bool(video))
        cut = next((i for i, (k, _) in enumerate(segments) if k == "video"), len(segments))
        head, tail = segments[:cut], segments[cut + 1:]      # tokenised apart, as the authors split at <image>
        ids = ([self.tokenizer.bos_token_id] if self.chat.bos else []) + self.chat_tokens(head)
        if video:
            ids += self.video_ids(video) + self.chat_tokens(tail)
        return [x for _, x in head] + video + [x for _, x in tail], ids

    def prompt(self, query: str, times: Sequence[float] | torch.Tensor | None,
               layout: VideoLayout | None = None) -> list[int]:
        """The prefix generation starts from, for a question about a clip with frame ``times``
        (seconds; ``None``: no video). ``layout`` (default: this clip's alone; a batch uses its
        longest clip's) says how many frames share a frame token and how many placeholders each
        gets. Without ``chat`` the prompt is ``<bos>`` and the question and video in ``layout``'s
        order, then ``<|assistant|>``; with it, the LLM's chat template around the question (with the
        authors' system turn) and the video placeholders where the template has ``<video>``."""
        return self.prompt_pieces(query, times, layout)[1]

    def response_ids(self, text: str, last: bool) -> list[int]:
        """A response's ids, ended by the stop string (chat) or, for the last turn, the eos token."""
        if self.chat is None:
            return self.encode(text) + ([self.tokenizer.eos_token_id] if last else [])
        return self.tokenizer(text + self.chat.stop[0], add_special_tokens=False)["input_ids"]

    def sampling(self, duration: float) -> tuple[float, float]:
        """``(fps, phase)`` a video of ``duration`` seconds is sampled at (frame i nearest ``(i + phase) /
        fps``): the config's fps and :data:`FRAME_TIMES` phase; with ``uniform_frames`` N, frame i nearest
        ``i (duration - 1 ms) / (N - 1)``, so exactly N frames run from the first picture to the last, as
        LLaVA-ST samples (llava/utils.py ``process_video_with_decord``: frame indices
        ``round(i (F - 1) / (N - 1))``, N = 100)."""
        c = self.config
        if not c.uniform_frames:
            return c.fps, self.frame_times.phase
        return (c.uniform_frames - 1) / max(duration - 1e-3, 1e-3), 0.0

    def run_span(self, first: int, last: int, group: int, duration: float) -> list[float]:
        """Seconds ``[start, end]`` of the frame tokens ``first..last`` (each ``group`` frames) under
        :data:`FRAME_TIMES`: ``centre`` ends at the last window's end, ``start`` at the last frame's time."""
        fps = self.sampling(duration)[0]
        end = (last * group + group - 1 + self.frame_times.last) / fps
        return [first * group / fps, min(duration, end)]

    def response(self, turn: dict, duration: float | None) -> str:
        c = self.config
        return response_text(turn["task"], turn["answer"], turn["spans"], turn["captions"], response=c.response,
                             level=c.evidence_level, duration=duration, boxes=turn.get("boxes"), box_bins=c.box_bins,
                             time_text=c.time_text, encoding=self.time)

    # ------------------------------------------------------------------ video
    def video_inputs(self, clip: Clip) -> ClipTensors:
        """A decoded clip as model inputs: frames at ``image_size`` (decoders already deliver that
        size; anything else is area-resized) and per-frame audio features of ``audio_features``."""
        c = self.config
        fr = torch.from_numpy(np.ascontiguousarray(clip.frames))                        # (T, H, W, 3)
        if fr.shape[1:3] != (c.image_size, c.image_size):
            fr = F.interpolate(fr.permute(0, 3, 1, 2).float(), size=(c.image_size, c.image_size), mode="area")
            fr = fr.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)         # (T, S, S, 3)
        mel = AUDIO_FEATURES[c.audio_features](clip, c.n_mels, c.mel_frames)
        return ClipTensors(frames=fr, mel=torch.from_numpy(np.ascontiguousarray(mel, np.float32)),
                           times=torch.from_numpy(clip.times).float(), duration=clip.duration)

    def generation_batch(self, clips: list[ClipTensors], queries: list[str]) -> Batch:
        """Left-padded prompts for batched generation, with the clips stacked: every row's prompt
        ends at the last position, so one step decodes the next token of every row."""
        batch = stack_clips(clips)
        T = batch.frames.shape[1]
        lay = self.layout(T)
        g = lay.group
        q = [self.query_ids(x) for x in queries]
        prompts = [self.prompt(x, cl.times, lay) for x, cl in zip(queries, clips)]
        L = max(map(len, prompts))
        shift = [L - len(p) for p in prompts]
        pos = [self.frame_placeholders(p, len(cl.times), lay) for p, cl in zip(prompts, clips)]
        frame_pos, valid = frame_positions(pos, -(-T // g), lay.per_frame, shift)
        pad = self.tokenizer.pad_token_id
        return replace(batch, group=g, input_ids=pad_rows(prompts, pad, left=True),
                       attention_mask=pad_rows([[1] * len(p) for p in prompts], 0, left=True),
                       frame_pos=frame_pos, evi_mask=valid, num_frames=[int(x) for x in valid.sum(1)],
                       query_ids=pad_rows([x or [pad] for x in q], pad),
                       query_mask=pad_rows([[True] * len(x) if x else [False] for x in q], False),
                       duration=torch.tensor([float(cl.duration) for cl in clips]))

    # ------------------------------------------------------------------ training
    def frame_placeholders(self, ids: list[int], num_frames: int, layout: VideoLayout) -> list[int]:
        """Positions of the frame tokens' placeholders in a prompt (after the fusion ones, and the slow
        stream's when it comes first)."""
        n = -(-num_frames // layout.group)
        skip = self.config.video_tokens + (layout.slow_tokens(n) if self.config.stream_order == "slow_first" else 0)
        return [i for i, t in enumerate(ids) if t == self.video_id][skip:skip + n * layout.per_frame]

    def encode_turns(self, turns: list[dict], times: torch.Tensor | None, duration: float, layout: VideoLayout,
                     name: str = "sample") -> Encoded:
        """Token ids, labels and every target of a (possibly multi-turn) sample about a clip.

        ``times`` ``None`` encodes text only (no video, no evidence targets). ``layout`` is the
        batch's (:meth:`layout`). Raises ``ValueError`` past ``max_len`` tokens.
        """
        c = self.config
        n = 0 if times is None else len(times)
        group = layout.group
        ids = self.prompt(turns[0]["query"], times, layout)
        enc = Encoded(ids=ids, labels=[-100] * len(ids), frame_pos=self.frame_placeholders(ids, n, layout))
        between = self.follow_ups([t["query"] for t in turns], n > 0)
        for ti, turn in enumerate(turns):
            if ti:
                enc.ids, enc.labels = enc.ids + between[ti - 1], enc.labels + [-100] * len(between[ti - 1])
            r = self.response_ids(self.response(turn, duration), last=ti == len(turns) - 1)
            off = len(enc.ids)
            enc.ids, enc.labels = enc.ids + r, enc.labels + r
            spans = turn["spans"]
            self._coordinate_targets(enc, r, off, turn, duration, name)
            evis = [off + i for i, t in enumerate(r) if t == self.evi_id] if n else []
            first = len(enc.evi_pos)
            fps = self.sampling(duration)[0]
            for p, y in zip(evis, evidence_targets(spans, len(evis), n, fps, c.evidence_level, c.frame_times)):
                enc.evi_pos.append(p)
                enc.evi_targets.append(EVIDENCE_TARGETS[c.evidence_targets](group_targets(y, group), c.evidence_alpha))
            m = len(spans) * self.level.tokens                     # <evi> tokens per stage
            enc.cons_pairs += [(first + k, first + m + k) for k in range(m) if m + k < len(evis)]
        if len(enc.ids) > c.max_len:
            raise ValueError(f"{name} needs {len(enc.ids)} tokens > max_len {c.max_len}; "
                             "lower the fps or use a token-budget compressor")
        return enc

    def follow_ups(self, queries: list[str], video: bool) -> list[list[int]]:
        """The ids between consecutive responses of a conversation (each follow-up question with its
        turn markers): ``<|user|> q <|assistant|>`` without ``chat``; with it, what the chat template
        writes between two answers, less the stop string that already ends the previous answer."""
        if self.chat is None:
            return [self.encode(tk.USER) + self.encode_user(q) + self.encode(tk.ASSISTANT) for q in queries[1:]]
        between: list[list[tuple[str, str]]] = []
        stop, after = self.chat.stop[0], False
        for kind, x in self.chat_segments(queries, len(queries), video):
            if kind == "response":
                between.append([])
            elif between:
                # right after an answer, its stop string: learned with the answer already
                between[-1].append((kind, x[len(stop):] if after and x.startswith(stop) else x))
            after = kind == "response"
        return [self.chat_tokens(b) for b in between[:-1]]

    def encode_completion(self, query: str, times: torch.Tensor, layout: VideoLayout, completion: list[int],
                          runs: list[tuple[int, int] | None]) -> Encoded:
        """A sampled response as a training sequence: the prompt, then the generated ids, trained on
        the latter; the ``k``-th generated ``<evi>`` targets the frame tokens ``runs[k]`` (first, last)
        it grounded when sampled, none for ``None`` (so semantic capture pools the same frames)."""
        ids = self.prompt(query, times, layout)
        enc = Encoded(ids=ids + completion, labels=[-100] * len(ids) + completion,
                      frame_pos=self.frame_placeholders(ids, len(times), layout))
        n = -(-len(times) // layout.group)
        evis = [len(ids) + i for i, t in enumerate(completion) if t == self.evi_id]
        for p, run in zip(evis, runs):
            y = np.zeros(n, dtype=np.float32)
            if run:
                y[run[0]:run[1] + 1] = 1.0
            enc.evi_pos.append(p)
            enc.evi_targets.append(y)
        return enc

    def _coordinate_targets(self, enc: Encoded, r: list[int], off: int, turn: dict, duration: float,
                            name: str) -> None:
        """LAPE coordinate tokens: soft targets on the two anchors around the exact value (span
        bounds for time tokens, box corners for width/height tokens, in order)."""
        if not self.axis_of:
            return
        boxes = turn.get("boxes") or []
        ends = boxes[:1] + boxes[-1:]                       # the tube's first and last box
        values = {"t": [t / duration for sp in turn["spans"] for t in sp[:2]],
                  "x": [v for bx in ends for v in bx[0::2]], "y": [v for bx in ends for v in bx[1::2]]}
        for i, t in enumerate(r):
            axis = self.axis_of.get(t)
            if axis is None:
                continue
            if not values[axis]:
                raise ValueError(f"{name}: more {axis} coordinate tokens than values to supervise")
            anchors = self.coord_axes[axis]
            lo, w = anchor_pair(values[axis].pop(0), len(anchors))
            enc.coord_pos.append(off + i)
            enc.coord_ids.append((anchors[lo], anchors[lo + 1]))
            enc.coord_w.append((1 - w, w))

    @staticmethod
    def alignment_pair(spans: list, captions: list[str], query: str, duration: float, rng: random.Random):
        """One (span, caption, hard negative span or None) for contrastive alignment (DaMO stage 1):
        the negative is another event of the same video with a different caption (the same shape
        in another colour, the same tone at another pitch)."""
        cands = list(zip(spans, captions)) or [(sp, query) for sp in spans]
        pos = rng.choice(cands) if cands else ([0.0, duration], query)
        negs = [sp for sp, cap in cands if cap != pos[1] and sp != pos[0]]
        return pos[0], pos[1], rng.choice(negs) if negs else None

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: list[int], evidence: list[dict], coords: list, duration: float,
               times: Sequence[float]) -> dict:
        """A generated answer -> ``{"answer", "spans" (best first), "evidence" (grounding stage),
        "scores" (one frame curve per answer span), "tube"}``.

        ``evidence`` holds ``{"stage", "scores", "grounded"}`` per generated ``<evi>`` (``grounded``: the
        first and last frame it grounds and their mean score, None for none) and ``coords`` ``(axis,
        value)`` per LAPE coordinate token, as :meth:`DamoModel.generate` returns them; each ``<evi>``'s
        frames become its ``span`` in seconds (:meth:`run_span`).
        """
        evidence = [e | {"span": self.run_span(*e["grounded"][:2], 1, duration) + [e["grounded"][2]]
                         if e["grounded"] else [0.0] * 3} for e in evidence]
        if self.level.tokens == 2:
            evidence = pair_frames(evidence)
        answer = self.render(ids, evidence, coords)
        answer_ev = [e for e in evidence if e["stage"] == 2] or [e for e in evidence if e["stage"] == 1]
        if self.format.evidence_refs:
            spans = sorted((e["span"] for e in answer_ev), key=lambda s: -s[2])
        else:   # the answer writes its timestamps as text (coupled / decomposed baselines)
            spans = self.time.read_spans(answer, duration)
            answer_ev = [e for e in evidence if e["stage"] == 1]
        xy = [v for a, v in coords if a in "xy"]
        boxes = [xy[i:i + 4] for i in range(0, len(xy) - 3, 4)]
        return {"answer": answer, "spans": spans, "evidence": [e["span"] for e in evidence if e["stage"] == 1],
                "scores": [e["scores"] for e in answer_ev],
                "tube": tube(spans[0], boxes, [float(t) for t in times]) if spans and boxes else None}

    def render(self, ids: list[int], evidence: list[dict], coords: Sequence = ()) -> str:
        """Answer-stage text with each ``<evi>`` written as "s - e seconds" (at frame level, each
        (start, end) pair of ``<evi>`` as one span, ``evidence`` already paired) and each LAPE
        coordinate token as its decoded value: seconds, or a fraction of the frame for boxes."""
        toks = self.tokenizer.convert_ids_to_tokens(ids)
        answer_ev = iter(e for e in evidence if e["stage"] == 2)
        values = iter(coords)
        text, piece, after, odd = [], [], self.evi_end_id not in ids, False
        for i, t in zip(ids, toks):
            coord = next(values, ("t", float("nan"))) if i in self.axis_of else None
            if i == self.evi_end_id:
                after = True
                continue
            if not after:
                continue
            if i == self.evi_id:
                text.append(self.tokenizer.convert_tokens_to_string(piece))
                piece = []
                if self.level.tokens == 2:
                    odd = not odd
                    if not odd:      # the end of a pair: its start token wrote the pair's span
                        continue
                ev = next(answer_ev, None)
                text.append(span_text(ev["span"]) if ev else "")
            elif coord is not None:
                text.append(self.tokenizer.convert_tokens_to_string(piece))
                piece = []
                text.append(f"{coord[1]:.1f}" if coord[0] == "t" else f"{coord[1]:.2f}")
            else:
                piece.append(t)
        text.append(self.tokenizer.convert_tokens_to_string(piece))
        return re.sub(r"\s+([.,?!])", r"\1", " ".join(x.strip() for x in text if x.strip()))
