"""Media decoding: frames at a target fps, audio as a mono 16 kHz waveform, log-mel features.

The contract every producer of clips follows (the file decoder and the procedural renderer), in
:mod:`damo.media.clip`: :class:`Clip` holds ``T`` frames sampled at the centres of the 1/fps windows of the timeline,
their true timestamps, and the audio waveform on the same timeline starting at t = 0.

The package imports only numpy and PyAV (no torch, scipy or pillow), so a process that only
decodes stays small.
"""
from __future__ import annotations

from damo.media.audio import log_mel
from damo.media.cache import load_clip
from damo.media.clip import SAMPLE_RATE, Clip, MediaError, MediaLimits
from damo.media.decode import decode_clip, probe

__all__ = ["SAMPLE_RATE", "Clip", "MediaError", "MediaLimits", "decode_clip", "load_clip", "log_mel", "probe"]
