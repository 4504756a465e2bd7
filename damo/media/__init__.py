"""Media decoding: frames at a target fps, audio as mono 16 kHz float waveform, log-mel features.

The contract every producer of clips follows (the file decoder and the procedural renderer):
:class:`Clip` holds ``T`` frames sampled at the centres of the 1/fps windows of the timeline,
their true timestamps, and the audio waveform on the same timeline starting at t = 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000


class MediaError(RuntimeError):
    """A file could not be decoded; the message names the file and the problem."""


@dataclass
class Clip:
    frames: np.ndarray      # (T, H, W, 3) uint8, frame i represents window [i/fps, (i+1)/fps)
    times: np.ndarray       # (T,) float64 seconds: presentation time of each kept frame
    audio: np.ndarray       # (S,) float32 mono at SAMPLE_RATE, sample 0 is t = 0 (zeros if no audio)
    duration: float         # seconds
    fps: float              # sampling rate of `frames`
    has_audio: bool
    source: str = ""        # file path or synth:// uri

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


from damo.media.audio import log_mel  # noqa: E402  (re-exports after the contract)
from damo.media.cache import load_clip  # noqa: E402
from damo.media.decode import decode_clip, probe  # noqa: E402
