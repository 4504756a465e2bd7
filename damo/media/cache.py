"""A disk cache of decoded clips, keyed by file content, so each video is decoded once.

One uncompressed ``.npz`` per (content, fps, size) under the cache directory (``cache_dir``, else
``$DAMO_CACHE``, else ``~/.cache/damo/media``). The key hashes the whole file (SHA-256, streamed in
1 MiB chunks), so renamed or copied files share an entry and an edited file gets a new one.
Audio is stored as 16 kHz int16 (1.92 MB per minute) and not at all for a video without sound.

The cache only ever saves time: an entry that fails to load is rebuilt, and a cache directory that
cannot be created, read or written (read-only, full disk, permissions) gives one warning and the
decoded clip, never an error. Entries are written to a temporary file and moved into place with
``os.replace``, so a crash never leaves a half-written entry under the final name. A loaded entry's
modification time is refreshed, and after each write the least recently used entries are deleted
until the directory holds at most ``$DAMO_CACHE_MAX_GB`` (default 20) gigabytes. Deleting the
directory (or any entry) at any time is safe. A file replaced or rewritten between hashing and
decoding (its device, inode, size or modification time differ afterwards) is returned but not
cached, so the entry of one file's bytes never holds another file's clip. A file rejected by :class:`~damo.media.MediaLimits`
or undecodable leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from damo.media import decode as _decode
from damo.media.clip import Clip, MediaError, MediaLimits, as_float

CACHE_VERSION = 3  # bump when decoding changes what a clip contains (2: int16 audio, rotation, no audio stored;
#                   3: a lone mistimed audio frame no longer leaves a gap)
DEFAULT_MAX_GB = 20.0
_CHUNK = 1 << 20
_warned: set[str] = set()  # cache directories already reported unusable in this process


def default_cache_dir() -> Path:
    """``$DAMO_CACHE`` if set, else ``~/.cache/damo/media``."""
    env = os.environ.get("DAMO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "damo" / "media"


def max_cache_bytes() -> int:
    """The size cap: ``$DAMO_CACHE_MAX_GB`` gigabytes (default 20); anything but a number >= 0 is a
    ValueError naming the variable."""
    value = os.environ.get("DAMO_CACHE_MAX_GB", str(DEFAULT_MAX_GB))
    try:
        gb = float(value)
    except ValueError:
        gb = math.nan
    if not 0 <= gb < math.inf:
        raise ValueError(f"DAMO_CACHE_MAX_GB={value!r} is not a size in gigabytes; set a number >= 0 such as "
                         f"DAMO_CACHE_MAX_GB=20, or unset it for the default {DEFAULT_MAX_GB}")
    return int(gb * 1e9)


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


KEYS = ("content", "stat", "off")


def stat_digest(path: str | Path) -> str:
    """SHA-256 of the file's resolved path, size and modification time: no byte of it is read."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise MediaError(f"{path}: cannot read file ({e.strerror or e})") from None
    return hashlib.sha256(f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


def cache_key(path: str | Path, fps: float, size: int | None, phase: float = 0.5, key: str = "content") -> str:
    """Entry name: the file's digest (its bytes, ``key="content"``, or its path, size and time,
    ``"stat"``) + sampling parameters + cache format version (the phase only when it is not the
    window centre, so centre-sampled entries keep their names)."""
    digest = file_digest(path) if key == "content" else f"stat-{stat_digest(path)}"
    at = "" if phase == 0.5 else f"_phase{float(phase):g}"
    return f"{digest}_fps{float(fps):g}{at}_size{size if size is not None else 'native'}_v{CACHE_VERSION}"


def _warn_once(folder: Path, what: str, error: BaseException) -> None:
    key = f"{folder}:{what}"
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"media cache {folder} cannot be {what} ({error}); decoding without the cache", stacklevel=4)


def _read(entry: Path, source: str) -> Clip | None:
    """Load an entry, or None when it is missing, truncated or otherwise unreadable."""
    try:
        with np.load(entry, allow_pickle=False) as z:
            clip = Clip(frames=z["frames"], times=z["times"], audio=z["audio"], duration=float(z["duration"]),
                        fps=float(z["fps"]), has_audio=bool(z["has_audio"]), source=source)
            notes = [str(m) for m in z["warnings"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    try:
        os.utime(entry)  # last use, for eviction
    except OSError:
        pass
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


def evict(folder: Path, keep: Path | None = None, limit: int | None = None) -> int:
    """Delete least recently used entries until ``folder`` holds at most ``limit`` bytes; returns bytes freed.

    ``keep`` (the entry just written) is never deleted, so one clip larger than the cap still
    caches. Entries another process deletes meanwhile are skipped.
    """
    limit = max_cache_bytes() if limit is None else limit
    entries = []
    for p in folder.glob("*.npz"):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    freed = 0
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total - freed <= limit:
            break
        if keep is not None and p == keep:
            continue
        try:
            p.unlink()
            freed += size
        except FileNotFoundError:
            freed += size
        except OSError:
            continue
    return freed


def load_clip(path: str | Path, fps: float = 1.0, size: int | None = 64, cache_dir: str | Path | None = None,
              limits: MediaLimits | None = None, audio_dtype: _decode.AudioDtype = "int16", phase: float = 0.5,
              key: str = "content") -> Clip:
    """:func:`~damo.media.decode.decode_clip` through the disk cache (``phase``: see there).

    The audio comes back as the cache keeps it, int16 (``audio_dtype="float32"`` converts); every
    feature function takes either. ``key``: entries named by the file's bytes (``content``), by its
    path, size and modification time (``stat``: nothing read twice, for a training run's own
    node-local cache), or no cache at all (``off``: decode, read and write nothing).
    """
    if audio_dtype not in ("float32", "int16"):
        raise ValueError(f"audio_dtype must be 'float32' or 'int16', got {audio_dtype!r}")
    if key not in KEYS:
        raise ValueError(f"the media cache key must be one of {KEYS}, got {key!r}")
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"{p}: no such file")
    if key == "off":
        return _decode.decode_clip(p, fps=fps, size=size, limits=limits, audio_dtype=audio_dtype, phase=phase)
    folder = Path(cache_dir or default_cache_dir())
    cap = max_cache_bytes()  # a bad setting fails here, before any decoding
    before = _identity(p)
    entry = folder / f"{cache_key(p, fps, size, phase, key)}.npz"
    clip = _read(entry, str(p))
    if clip is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clip = _decode.decode_clip(p, fps=fps, size=size, limits=limits, audio_dtype="int16", phase=phase)
        notes = [str(w.message) for w in caught]
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if _identity(p) != before:
            # replaced or rewritten between hashing and decoding: the clip may be another file's
            warnings.warn(f"{p}: the file changed while it was read; its clip is not cached", stacklevel=2)
            return _as(clip, audio_dtype)
        try:
            _write(entry, clip, notes)
            evict(folder, keep=entry, limit=cap)
        except OSError as e:
            _warn_once(folder, "written", e)
    return _as(clip, audio_dtype)


def _as(clip: Clip, audio_dtype: _decode.AudioDtype) -> Clip:
    if audio_dtype == "float32":
        clip.audio = as_float(clip.audio)
    return clip


def _identity(path: Path) -> tuple[int, ...]:
    """What changes when a file is replaced (``mv``) or rewritten: device, inode, size, modification time."""
    try:
        st = path.stat()
    except OSError as e:
        raise MediaError(f"{path}: cannot read file ({e.strerror or e})") from None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
