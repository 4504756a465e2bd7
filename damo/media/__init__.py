"""Media decoding: frames at a target fps, audio as a mono 16 kHz waveform, log-mel features.

The contract every producer of clips follows (the file decoder and the procedural renderer):
:class:`Clip` holds ``T`` frames sampled at the centres of the 1/fps windows of the timeline,
their true timestamps, and the audio waveform on the same timeline starting at t = 0.

The package imports only numpy and PyAV (no torch, scipy or pillow), so a process that only
decodes stays small.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000


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
        from damo.media.audio import fit_length

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
      are 1.8 GB, at a native 1080p 25 GB).
    """

    max_duration: float = 4 * 3600.0
    max_frames: int = 4096
    max_pixels: int = 4096 * 2304
    max_output_bytes: int = 4 << 30


from damo.media.audio import log_mel  # noqa: E402  (re-exports after the contract)
from damo.media.cache import load_clip  # noqa: E402
from damo.media.decode import decode_clip, probe  # noqa: E402
