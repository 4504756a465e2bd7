"""The media contract: :class:`Clip`, :class:`MediaLimits`, :class:`MediaError`, the sample rate,
and the waveform helpers a clip needs; every module of the package builds on it."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
INT16_SCALE = 32768.0  # an int16 waveform w stands for w / 32768 in [-1, 1)


class MediaError(RuntimeError):
    """A file could not be decoded; the message names the file and the problem."""


@dataclass
class Clip:
    frames: np.ndarray      # (T, H, W, 3) uint8, frame i represents window [i/fps, (i+1)/fps)
    times: np.ndarray       # (T,) float64 seconds: presentation time of each kept frame
    # (S,) mono at SAMPLE_RATE, sample 0 is t = 0: float32 in [-1, 1], or int16 (w / 32768) as the
    # disk cache keeps it; empty (S = 0) when the video has no sound (``has_audio`` False)
    audio: np.ndarray
    duration: float         # seconds
    fps: float              # sampling rate of `frames`
    has_audio: bool
    source: str = ""        # file path or synth:// uri

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def waveform(self) -> np.ndarray:
        """The audio as float32 in [-1, 1], ``ceil(duration * 16000)`` samples (zeros without sound)."""
        return fit_length(self.audio, math.ceil(self.duration * SAMPLE_RATE - 1e-6))


@dataclass(frozen=True)
class MediaLimits:
    """What a file may claim before it is decoded; checked on the header, then as packets arrive.

    A hostile or broken file can declare an enormous duration (one timestamp a million seconds on),
    frame size or frame count, and an unchecked decoder allocates whatever it claims. The defaults
    admit every real video we know of (4K UHD, a 1-hour 1080p file at 1 fps and 384 px) and reject
    the rest with :class:`MediaError` before any frame buffer or cache entry exists.

    * ``max_duration``: seconds of timeline (declared, or reached by a packet);
    * ``max_frames``: sampled frames ``ceil(duration * fps)``; 4096 is the default model's frame
      limit (68 minutes at 1 fps), so nothing is decoded and cached that could not be grounded;
    * ``max_pixels``: width x height of the coded frames (4096 x 2304 admits 3840 x 2160);
    * ``max_output_bytes``: the sampled frame array ``T x H x W x 3`` (4 GiB; 4096 frames at 384 px
      are 1.8 GB, at a native 1080p 25 GB);
    * ``max_packets``: packets of all streams, as an MP4's sample tables declare them (FFmpeg indexes
      each while opening the file, some 80 bytes apiece) and as they are read: 1,000,000 is 244 a
      second for the 68 minutes ``max_frames`` admits (60 fps video with 48 kHz AAC needs 107).
    """

    max_duration: float = 4 * 3600.0
    max_frames: int = 4096
    max_pixels: int = 4096 * 2304
    max_output_bytes: int = 4 << 30
    max_packets: int = 1_000_000


def as_float(audio: np.ndarray | None) -> np.ndarray:
    """A waveform as float32 in [-1, 1]: int16 is scaled by 1/32768, float passes through."""
    if audio is None:
        return np.zeros(0, np.float32)
    a = np.asarray(audio)
    if a.dtype == np.int16:
        return a.astype(np.float32) / np.float32(INT16_SCALE)
    return a.astype(np.float32, copy=False)


def fit_length(wave: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad a waveform to exactly ``n`` samples (float32)."""
    wave = as_float(wave)
    if wave.shape[0] >= n:
        return np.ascontiguousarray(wave[:n])
    return np.concatenate([wave, np.zeros(n - wave.shape[0], np.float32)])
