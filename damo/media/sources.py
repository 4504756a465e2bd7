"""Where a reference leads: a video file through the decoder and its disk cache, or a URI scheme.

:data:`SCHEMES` is the one registry of URI schemes: each names, as ``module:function`` imported only
when a reference of that scheme arrives, the function rendering one of its videos and the function
listing the samples of one of its dataset specs, so a real file never passes through a procedural
generator. ``synth://`` is DaMO's procedural data (:mod:`damo.data.synthetic`): videos
``synth://standard/0/test/3`` rendered without a codec, datasets ``synth://standard?n=100&seed=0``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from damo.media.clip import Clip, MediaLimits
from damo.media.cache import load_clip
from damo.media.decode import probe


@dataclass(frozen=True)
class Scheme:
    video: str                   # module:function, (uri, fps, size, phase) -> Clip
    dataset: str | None = None   # module:function, (spec) -> list of canonical samples; None: videos only
    spec: str | None = None      # module:function, (uri) -> its video's spec (with ``duration``), nothing rendered


SCHEMES = {"synth": Scheme(video="damo.data.synthetic:render_clip", dataset="damo.data.synthetic:synth_samples",
                           spec="damo.data.synthetic:spec_from_uri")}
# procedural clips are drawn at least this large and area-resized to smaller towers (anti-aliasing)
MIN_RENDER_SIZE = 64


def scheme_of(ref: str) -> str | None:
    """The registered scheme of ``ref`` (``"synth"`` for ``synth://...``), or None for a file path."""
    head, sep, _ = str(ref).partition("://")
    return head if sep and head in SCHEMES else None


def scheme_function(ref: str, part: str) -> Callable:
    """The ``part`` (``"video"`` or ``"dataset"``) function of the registered scheme of ``ref``."""
    target = getattr(SCHEMES[scheme_of(ref)], part)
    if target is None:
        raise ValueError(f"{ref!r}: the {scheme_of(ref)}:// scheme names videos only, not datasets")
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def load_video(ref: str | Path, fps: float, size: int | None, cache_dir: str | Path | None = None,
               limits: MediaLimits | None = None, phase: float = 0.5, cache: str = "content") -> Clip:
    """The clip of a file path (decoded at ``size`` x ``size``, or its own size for ``None``, through the
    cache keyed as ``cache`` says, :func:`~damo.media.cache.load_clip`, within ``limits``) or of a scheme
    URI (rendered at ``size``, at least ``MIN_RENDER_SIZE``); frame ``i`` is sampled nearest ``(i + phase) / fps``."""
    if scheme_of(str(ref)) is None:
        return load_clip(ref, fps, size, cache_dir, limits, phase=phase, key=cache)
    return scheme_function(str(ref), "video")(str(ref), fps, max(size or 0, MIN_RENDER_SIZE), phase)


def video_duration(ref: str | Path) -> float:
    """Seconds of a file (from its header or packets, nothing decoded) or of a scheme URI (its spec):
    what uniform sampling needs before it decodes."""
    if scheme_of(str(ref)) is None:
        return float(probe(ref)["duration"])
    return float(scheme_function(str(ref), "spec")(str(ref)).duration)
