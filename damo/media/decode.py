"""Decode a video file into a :class:`~damo.media.Clip`: frames at a target fps plus the audio track.

Frame ``i`` stands for the window ``[i/fps, (i+1)/fps)``; we keep the decoded frame whose
presentation time is nearest the window centre (ties go to the earlier frame) and record that
frame's true time, the centre-sampling convention of 1-fps video LLMs (TimeChat, DaMO). Times are
on the file's timeline: ``pts * time_base`` minus the container start time.

Two decoding strategies give identical frames; one is chosen per file from its keyframe spacing,
measured by a demux pass that reads packets without decoding them:

* ``seek``: jump to the last keyframe at or before each window centre and decode forward from
  there; a jump is skipped when no newer keyframe lies ahead of the current position. Wins when
  keyframes are dense relative to the 1/fps sampling step (short GOPs, all-intra files).
* ``sequential``: decode every frame once. Wins for long GOPs, where each seek would re-decode most
  of a GOP for a single kept frame.

Only kept frames are converted to RGB and resized (pillow bilinear, antialiased when shrinking) to a
square ``size x size``: the aspect ratio is deliberately not preserved, as square inputs are what
the vision encoders take. ``size=None`` keeps the native resolution.
"""
from __future__ import annotations

import bisect
import math
import warnings
from pathlib import Path
from typing import Iterator, Literal

import av
import numpy as np
from PIL import Image

from damo.media import SAMPLE_RATE, Clip, MediaError
from damo.media.audio import as_float, decode_audio

Mode = Literal["auto", "seek", "sequential"]

# seek when the median keyframe spacing is at most this many sampling steps (1/fps)
SEEK_MAX_KEYFRAME_STEPS = 2.0


class _SeekMissed(Exception):
    """A seek landed after the keyframe it aimed at; the caller falls back to sequential decoding."""


def _open(path: str | Path) -> av.container.InputContainer:
    """Open a file with a video stream, or raise MediaError naming the file and the problem."""
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: no such file")
    if not p.is_file():
        raise MediaError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(f"{p}: file is empty (0 bytes)")
    try:
        container = av.open(str(p))
    except av.FFmpegError as e:
        raise MediaError(f"{p}: not a readable media file ({e.strerror or e})") from None
    if not container.streams.video and not container.streams.audio:
        container.close()
        raise MediaError(f"{p}: no audio or video stream found (truncated file, or not a media file)")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise MediaError(f"{p}: has no video stream (streams: {', '.join(kinds)}); "
                         "an audio-only file cannot be decoded into frames")
    return container


def _origin(container: av.container.InputContainer) -> float:
    """The timeline's t = 0 in seconds: the container start time (0 when unknown)."""
    return container.start_time / av.time_base if container.start_time is not None else 0.0


def _scan(container: av.container.InputContainer, name: str) -> dict:
    """Demux the video packets once (no decoding): keyframe pts, packet count and end time."""
    stream = container.streams.video[0]
    tb = stream.time_base
    keyframes: list[int] = []
    count = 0
    end = None
    try:
        for packet in container.demux(stream):
            if packet.pts is None:
                continue  # the flush packet at the end of demuxing
            count += 1
            if packet.is_keyframe:
                keyframes.append(packet.pts)
            stop = packet.pts + (packet.duration or 0)
            end = stop if end is None else max(end, stop)
    except av.FFmpegError as e:
        raise MediaError(f"{name}: video stream is unreadable after {count} packets ({e.strerror or e})") from None
    if count == 0:
        raise MediaError(f"{name}: video stream holds no packets (empty or truncated file)")
    keyframes.sort()
    return {"keyframes": keyframes, "packets": count, "end": None if end is None else float(end * tb)}


def _duration(container: av.container.InputContainer, scan: dict, origin: float) -> float:
    """Container duration, else the video stream's, else the end of the last video packet."""
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    stream = container.streams.video[0]
    if stream.duration is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if scan["end"] is not None and scan["end"] - origin > 0:
        return scan["end"] - origin
    raise MediaError(f"{container.name}: cannot tell the video's duration")


def _check_complete(container: av.container.InputContainer, scan: dict, origin: float, duration: float,
                    name: str) -> None:
    """Reject files whose video packets stop well short of the duration the header declares.

    That is what a cut-off download looks like once the index survived (Matroska, WebM, and MP4
    with the index in front). The slack, max(1 s, 10 %), tolerates streams that legitimately end a
    little before the longest stream.
    """
    stream = container.streams.video[0]
    declared = float(stream.duration * stream.time_base) if stream.duration else duration
    covered = (scan["end"] or 0.0) - origin
    if covered < declared - max(1.0, 0.1 * declared):
        raise MediaError(f"{name}: truncated file: video data ends at {covered:.2f} s but the header declares "
                         f"{declared:.2f} s; re-download or re-encode the file")


def _keyframe_interval(keyframes_s: list[float], duration: float) -> float:
    """Median spacing of keyframes in seconds; a single keyframe spans the whole file."""
    if len(keyframes_s) < 2:
        return duration
    return float(np.median(np.diff(keyframes_s)))


def probe(path: str | Path) -> dict:
    """Describe a file without decoding it: duration, fps, size, audio, keyframe spacing, codecs."""
    container = _open(path)
    try:
        v = container.streams.video[0]
        origin = _origin(container)
        scan = _scan(container, str(path))
        duration = _duration(container, scan, origin)
        keyframes_s = [float(k * v.time_base) - origin for k in scan["keyframes"]]
        audio = container.streams.audio[0] if container.streams.audio else None
        return {
            "path": str(path),
            "duration": duration,
            "fps": float(v.average_rate) if v.average_rate else scan["packets"] / duration,
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "num_frames": scan["packets"],
            "has_audio": audio is not None,
            "video_codec": v.codec_context.name,
            "audio_codec": audio.codec_context.name if audio is not None else None,
            "num_keyframes": len(keyframes_s),
            "keyframe_interval": _keyframe_interval(keyframes_s, duration),
            "start_time": origin,
        }
    finally:
        container.close()


def num_clip_frames(duration: float, fps: float) -> int:
    """T = max(1, ceil(duration * fps)), with a small tolerance for float noise."""
    return max(1, math.ceil(duration * fps - 1e-6))


def _to_rgb(frame: av.VideoFrame, size: int | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")  # (H, W, 3)
    image = frame.to_image()
    return np.asarray(image.resize((size, size), Image.BILINEAR))  # (size, size, 3)


def _frames_with_times(container: av.container.InputContainer, origin: float,
                       name: str) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decoded video frames in presentation order with their times on the clip timeline."""
    stream = container.streams.video[0]
    tb = stream.time_base
    step = 1.0 / float(stream.average_rate) if stream.average_rate else 0.0
    last = None
    try:
        for frame in container.decode(stream):
            # a frame without pts (rare, raw streams) follows its predecessor by one frame period
            t = float(frame.pts * tb) - origin if frame.pts is not None else (last or 0.0) + step
            last = t
            yield t, frame
    except av.FFmpegError as e:
        raise MediaError(f"{name}: video decoding failed ({e.strerror or e})") from None


def _sample_frames(container: av.container.InputContainer, targets: np.ndarray, origin: float,
                   keyframes: list[int], seek: bool, size: int | None, name: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Pick, for every window centre in ``targets``, the decoded frame nearest to it."""
    stream = container.streams.video[0]
    tb = stream.time_base
    key_s = [float(k * tb) - origin for k in keyframes]
    n = len(targets)
    frames: list[np.ndarray | None] = [None] * n
    times = np.zeros(n, np.float64)
    kept: tuple[av.VideoFrame | None, np.ndarray | None] = (None, None)

    def keep(j: int, t: float, frame: av.VideoFrame) -> None:
        nonlocal kept
        if kept[0] is not frame:  # consecutive windows may share one frame: convert it once
            kept = (frame, _to_rgb(frame, size))
        frames[j], times[j] = kept[1], t

    def keyframe_for(c: float) -> int:
        """Index of the last keyframe at or before time c (the first one if none is)."""
        return max(0, bisect.bisect_right(key_s, c + 1e-9) - 1)

    j = 0
    prev: tuple[float, av.VideoFrame] | None = None
    decoded: Iterator[tuple[float, av.VideoFrame]] | None = None  # the current decoding run
    run_key = 0  # keyframe index the current run started from
    floor = -math.inf  # frames before the run's keyframe belong to an earlier GOP
    position = -math.inf  # time of the last decoded frame
    while j < n:
        k = keyframe_for(targets[j]) if seek else 0
        if decoded is None or (k > run_key and key_s[k] > position + 1e-9):
            if k > 0:
                container.seek(keyframes[k], stream=stream, backward=True, any_frame=False)
            decoded = _frames_with_times(container, origin, name)
            run_key, prev, floor = k, None, (key_s[k] if k > 0 else -math.inf)
        for t, frame in decoded:
            if t < floor - 1e-6:
                continue  # leading frames of an open GOP, decoded from before the keyframe
            if prev is None and floor > -math.inf and t > floor + 1e-6:
                raise _SeekMissed  # the demuxer landed past the keyframe we asked for
            position = t
            while j < n and targets[j] <= t:
                # nearest of (previous frame, this frame) to the window centre; ties (to 1 us,
                # so float noise in pts * time_base cannot break them either way) -> earlier
                if prev is not None and targets[j] - prev[0] <= t - targets[j] + 1e-6:
                    keep(j, *prev)
                else:
                    keep(j, t, frame)
                j += 1
            prev = (t, frame)
            if j >= n:
                break
            if seek:
                nk = keyframe_for(targets[j])
                if nk > run_key and key_s[nk] > t + 1e-9:
                    break  # a keyframe closer to the next centre lies ahead: jump to it
        else:  # the stream ended: the remaining windows see the last frame
            if prev is None and floor > -math.inf:
                raise _SeekMissed  # a seek that yields nothing: retry from the start
            if prev is None:
                raise MediaError(f"{name}: no video frame could be decoded")
            while j < n:
                keep(j, *prev)
                j += 1
    return np.stack(frames), times  # (T, H, W, 3), (T,)


def _decode_frames(name: str, targets: np.ndarray, origin: float, keyframes: list[int], seek: bool,
                   size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One decoding pass on a freshly opened container (the probe pass has consumed its own)."""
    container = _open(name)
    try:
        container.streams.video[0].thread_type = "AUTO"
        return _sample_frames(container, targets, origin, keyframes, seek, size, name)
    finally:
        container.close()


def decode_clip(path: str | Path, fps: float = 1.0, size: int | None = 64, mode: Mode = "auto") -> Clip:
    """Decode ``path`` into a :class:`Clip` of ``T = ceil(duration * fps)`` frames and its audio.

    ``mode`` forces a decoding strategy ("seek" or "sequential"); "auto" picks seeking when the
    median keyframe spacing is at most ``SEEK_MAX_KEYFRAME_STEPS / fps``. Undecodable files raise
    :class:`MediaError`; an audio track that cannot be decoded is dropped with a warning
    (``has_audio=False``), never silently.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive number of pixels or None for native size, got {size}")
    if mode not in ("auto", "seek", "sequential"):
        raise ValueError(f"mode must be 'auto', 'seek' or 'sequential', got {mode!r}")
    name = str(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        origin = _origin(container)
        scan = _scan(container, name)
        duration = _duration(container, scan, origin)
        _check_complete(container, scan, origin, duration, name)
        keyframes = scan["keyframes"] or [stream.start_time or 0]
        if mode == "auto":
            spacing = _keyframe_interval([float(k * stream.time_base) for k in keyframes], duration)
            seek = spacing <= SEEK_MAX_KEYFRAME_STEPS / fps
        else:
            seek = mode == "seek"
        has_audio_stream = bool(container.streams.audio)
    finally:
        container.close()
    T = num_clip_frames(duration, fps)
    targets = (np.arange(T) + 0.5) / fps
    try:
        frames, times = _decode_frames(name, targets, origin, keyframes, seek, size)
    except _SeekMissed:
        frames, times = _decode_frames(name, targets, origin, keyframes, False, size)

    n_audio = math.ceil(duration * SAMPLE_RATE - 1e-6)
    audio = np.zeros(n_audio, np.float32)
    has_audio = False
    if has_audio_stream:
        try:
            with av.open(name) as audio_container:
                audio = as_float(decode_audio(audio_container, origin, duration, name))
            has_audio = True
        except (MediaError, av.FFmpegError) as e:
            warnings.warn(f"{name}: audio dropped, returning the video without sound: {e}", stacklevel=2)
    return Clip(frames=frames, times=times, audio=audio, duration=duration, fps=float(fps),
                has_audio=has_audio, source=name)
