"""A disk cache of decoded clips, keyed by file content, so each video is decoded once.

One uncompressed ``.npz`` per (content, fps, size) under the cache directory (``cache_dir``, else
``$DAMO_CACHE``, else ``~/.cache/damo/media``). The key hashes the whole file (SHA-256, streamed in
1 MiB chunks), so renamed or copied files share an entry and an edited file gets a new one.
Entries are written to a temporary file and moved into place with ``os.replace``, so a crash never
leaves a half-written entry under the final name; an entry that fails to load is rebuilt. Deleting
the directory (or any entry) at any time is safe.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from damo.media import Clip, MediaError
from damo.media import decode as _decode

CACHE_VERSION = 1  # bump when decoding changes what a clip contains
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$DAMO_CACHE`` if set, else ``~/.cache/damo/media``."""
    env = os.environ.get("DAMO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "damo" / "media"


def file_digest(path: str | Path) -> str:
    """SHA-256 of the file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise MediaError(f"{path}: cannot read file ({e.strerror or e})") from None
    return h.hexdigest()


def cache_key(path: str | Path, fps: float, size: int | None) -> str:
    """Entry name: content hash + sampling parameters + cache format version."""
    return f"{file_digest(path)}_fps{float(fps):g}_size{size if size is not None else 'native'}_v{CACHE_VERSION}"


def _read(entry: Path, source: str) -> Clip | None:
    """Load an entry, or None when it is missing, truncated or otherwise unreadable."""
    try:
        with np.load(entry, allow_pickle=False) as z:
            clip = Clip(frames=z["frames"], times=z["times"], audio=z["audio"], duration=float(z["duration"]),
                        fps=float(z["fps"]), has_audio=bool(z["has_audio"]), source=source)
            notes = [str(m) for m in z["warnings"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    for note in notes:  # a dropped audio track is reported on every load, not only the first
        warnings.warn(note, stacklevel=3)
    return clip


def _write(entry: Path, clip: Clip, notes: list[str]) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=entry.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, frames=clip.frames, times=clip.times, audio=clip.audio,
                     duration=np.float64(clip.duration), fps=np.float64(clip.fps),
                     has_audio=np.bool_(clip.has_audio), warnings=np.array(notes, dtype=np.str_))
        os.replace(tmp, entry)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_clip(path: str | Path, fps: float = 1.0, size: int | None = 64,
              cache_dir: str | Path | None = None) -> Clip:
    """:func:`~damo.media.decode.decode_clip` through the disk cache."""
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"{p}: no such file")
    entry = Path(cache_dir or default_cache_dir()) / f"{cache_key(p, fps, size)}.npz"
    clip = _read(entry, str(p))
    if clip is not None:
        return clip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip = _decode.decode_clip(p, fps=fps, size=size)
    notes = [str(w.message) for w in caught]
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    _write(entry, clip, notes)
    return clip
