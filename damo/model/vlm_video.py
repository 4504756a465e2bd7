"""Video inputs of the Qwen vision-language models, without torchvision.

Qwen2.5-VL, Qwen3-VL and Qwen2.5-Omni read a video as a grid of patches: frames are resized so
both sides are multiples of ``patch x merge`` (28 px for patch 14, 32 px for patch 16), every two
consecutive frames form one temporal patch, and each ``merge x merge`` block of patches becomes
one LLM token. transformers' video processors that do this need torchvision, which cannot be
installed beside our CPU torch, so this module does it from our decoder's frames with pillow and
numpy, giving the tensors transformers' PIL image processor (``Qwen2VLImageProcessorPil``) gives
for the same frames (a test checks it on real videos).

The sizing rule is qwen-vl-utils' (``qwen_vl_utils/vision_process.py``, QwenLM/Qwen3-VL at
96588727e44c78b25ba03ea03b8e12f7e64fd0da, ``smart_nframes`` and ``fetch_video``), the video path
the Qwen models and the leaders' checkpoints built on them are run with:

- frames: ``duration x fps``, at least ``min_frames`` and at most ``max_frames``, an even number, spread
  evenly from the first decoded frame to the last;
- pixels per frame: ``smart_resize`` within ``[min_pixels, max_pixels]``, where ``max_pixels`` is
  also capped by the clip's budget ``total_pixels / frames x 2`` (never below 1.05 x ``min_pixels``);
- bicubic resize, scale to [0, 1], normalise with the model's mean and std.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)     # Qwen2.5-VL, Qwen2.5-Omni (OpenAI CLIP statistics)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)                               # Qwen3-VL


@dataclass(frozen=True)
class VideoSpec:
    """How one model family wants its video: patch geometry, statistics, frame rate and pixel budget.

    Defaults are qwen-vl-utils' for patch 14 (``VIDEO_MIN_TOKEN_NUM`` 128 and ``VIDEO_MAX_TOKEN_NUM``
    768 tokens a frame, ``FPS`` 2, ``FPS_MIN_FRAMES`` 4, ``FPS_MAX_FRAMES`` 768, ``total_pixels`` 90 %
    of a 128,000-token sequence)."""
    patch: int = 14
    merge: int = 2
    temporal_patch: int = 2
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    total_pixels: int = int(128000 * 28 * 28 * 0.9)

    @property
    def factor(self) -> int:
        """Side lengths are multiples of this: one merged token covers ``factor x factor`` pixels."""
        return self.patch * self.merge

    def check(self) -> None:
        if self.fps <= 0 or self.min_frames < 1 or self.max_frames < self.min_frames:
            raise ValueError(f"video settings need fps > 0 and 1 <= min_frames <= max_frames; got fps {self.fps}, "
                             f"frames {self.min_frames}-{self.max_frames}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"video settings need 0 < min_pixels <= max_pixels; got {self.min_pixels}, {self.max_pixels}")


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's sizing rule: sides rounded to multiples of ``factor``, area within ``[min_pixels,
    max_pixels]``, aspect ratio kept as closely as those allow."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"a {width}x{height} frame is too elongated for the Qwen models (aspect ratio over 200)")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def frame_count(duration: float, spec: VideoSpec) -> int:
    """Frames fed for a clip of ``duration`` seconds (qwen-vl-utils ``smart_nframes``): ``duration x fps``
    within the frame limits (the lower one rounded up, the upper one down, to whole temporal patches),
    rounded down to whole temporal patches (two frames each)."""
    t = spec.temporal_patch
    lo, hi = math.ceil(spec.min_frames / t) * t, max(t, spec.max_frames // t * t)
    return max(t, int(min(max(duration * spec.fps, lo), hi)) // t * t)


def pixel_bounds(frames: int, spec: VideoSpec) -> tuple[int, int]:
    """Per-frame ``(min_pixels, max_pixels)`` for a clip of ``frames`` frames: the clip's
    ``total_pixels`` shared by its temporal patches caps each frame (qwen-vl-utils ``fetch_video``)."""
    cap = max(min(spec.max_pixels, spec.total_pixels / frames * spec.temporal_patch), int(spec.min_pixels * 1.05))
    return spec.min_pixels, int(min(spec.max_pixels, cap))


def frame_size(height: int, width: int, frames: int, spec: VideoSpec) -> tuple[int, int]:
    """The ``(height, width)`` every frame of the clip is resized to."""
    lo, hi = pixel_bounds(frames, spec)
    return smart_resize(height, width, spec.factor, lo, hi)


def pick_frames(available: int, n: int) -> np.ndarray:
    """Indices of ``n`` frames spread evenly over the ``available`` decoded ones, first to last (a frame
    repeats when fewer were decoded, as for a clip shorter than ``min_frames / fps``)."""
    return np.linspace(0, available - 1, n).round().astype(np.int64)


def normalise(frames: np.ndarray, size: tuple[int, int], spec: VideoSpec) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 -> ``(T, 3, h, w)`` float32: pillow bicubic resize, ``x / 255``
    (computed in float64, as transformers rescales), then ``(x - mean) / std`` in float32."""
    from PIL import Image

    h, w = size
    out = np.empty((frames.shape[0], 3, h, w), np.float32)
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    for i, f in enumerate(frames):
        x = np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BICUBIC))
        x = (x.astype(np.float64) * (1 / 255)).astype(np.float32)
        out[i] = ((x - mean) / std).transpose(2, 0, 1)
    return out


def patchify(x: np.ndarray, spec: VideoSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(T, 3, h, w)`` -> ``(t * gh * gw, 3 * tp * p * p)`` rows in the vision tower's order, and the
    grid ``(t, gh, gw)`` in patches: temporal patches, then merge blocks row-major, then the patches
    inside a block row-major; each row is channel, frame of the pair, patch row, patch column."""
    T, C, h, w = x.shape
    p, m, tp = spec.patch, spec.merge, spec.temporal_patch
    gt, gh, gw = T // tp, h // p, w // p
    x = x.reshape(gt, tp, C, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)             # (gt, gh/m, gw/m, m, m, C, tp, p, p)
    return np.ascontiguousarray(x).reshape(gt * gh * gw, C * tp * p * p), (gt, gh, gw)


@dataclass
class VideoPixels:
    """One clip as the vision tower reads it."""
    pixel_values: torch.Tensor       # (t * gh * gw, 3 * tp * p * p) float32
    grid_thw: tuple[int, int, int]   # temporal patches, patch rows, patch columns
    times: np.ndarray                # (T,) seconds of each frame fed (T = tp * t)
    duration: float

    @property
    def second_per_grid(self) -> float:
        """Seconds one temporal patch spans: ``temporal_patch / sample fps`` (Qwen2.5-VL's
        ``second_per_grid_ts``, Qwen2.5-Omni's ``video_second_per_grid``)."""
        tp = len(self.times) // self.grid_thw[0]
        return tp * self.duration / len(self.times)

    def patch_times(self) -> list[float]:
        """Seconds of each temporal patch: the mean of its first and last frame's time (the
        timestamps Qwen3-VL writes before each patch's tokens)."""
        tp = len(self.times) // self.grid_thw[0]
        return [float(self.times[i] + self.times[i + tp - 1]) / 2 for i in range(0, len(self.times), tp)]

    def tokens(self, merge: int) -> int:
        """LLM tokens of the whole clip."""
        t, h, w = self.grid_thw
        return t * h * w // merge ** 2


def video_pixels(frames: np.ndarray, times: np.ndarray, duration: float, spec: VideoSpec) -> VideoPixels:
    """Decoded frames ``(T, H, W, 3)`` uint8 at ``spec.fps`` with their times -> the model's pixels."""
    idx = pick_frames(frames.shape[0], frame_count(duration, spec))
    h, w = frame_size(frames.shape[1], frames.shape[2], len(idx), spec)
    rows, grid = patchify(normalise(frames[idx], (h, w), spec), spec)
    return VideoPixels(torch.from_numpy(rows), grid, np.asarray(times, np.float64)[idx], float(duration))
