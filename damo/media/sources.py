"""Where a video reference leads: a file through the decoder and its disk cache, or a URI scheme.

Schemes map to the function that renders them, named as ``module:function`` and imported only
when a reference of that scheme arrives, so a real file never passes through a procedural
generator. ``synth://`` renders DaMO's procedural clips (:mod:`damo.data.synthetic`) without a codec.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from damo.media.clip import Clip, MediaLimits
from damo.media.cache import load_clip

SCHEMES = {"synth": "damo.data.synthetic:render_clip"}
# procedural clips are drawn at least this large and area-resized to smaller towers (anti-aliasing)
MIN_RENDER_SIZE = 64


def scheme_of(ref: str) -> str | None:
    """The registered scheme of ``ref`` (``"synth"`` for ``synth://...``), or None for a file path."""
    head, sep, _ = str(ref).partition("://")
    return head if sep and head in SCHEMES else None


def load_video(ref: str | Path, fps: float, size: int, cache_dir: str | Path | None = None,
               limits: MediaLimits | None = None, phase: float = 0.5, cache: str = "content") -> Clip:
    """The clip of a file path (decoded at ``size`` x ``size`` through the cache keyed as ``cache``
    says, :func:`~damo.media.cache.load_clip`, within ``limits``) or of a scheme URI; frame ``i`` is
    sampled nearest ``(i + phase) / fps``."""
    scheme = scheme_of(str(ref))
    if scheme is None:
        return load_clip(ref, fps, size, cache_dir, limits, phase=phase, key=cache)
    module, fn = SCHEMES[scheme].split(":")
    return getattr(importlib.import_module(module), fn)(str(ref), fps, max(size, MIN_RENDER_SIZE), phase)
