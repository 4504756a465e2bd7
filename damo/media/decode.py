"""Decode a video file into a :class:`~damo.media.Clip`: frames at a target fps plus the audio track.

Frame ``i`` stands for the window ``[i/fps, (i+1)/fps)``; we keep the decoded frame whose
presentation time is nearest the window centre (ties go to the earlier frame) and record that
frame's true time, the centre-sampling convention of 1-fps video LLMs (TimeChat, DaMO). Another
``phase`` samples nearest ``(i + phase)/fps`` instead (0: the window start, ``i/fps``, as D²VLM's
loader does). Times are on the file's timeline: ``pts * time_base`` minus the container start time.

One pass over the file: video and audio packets are demuxed together, audio is decoded as it
comes (:class:`~damo.media.audio.AudioTrack`), and video packets are held one GOP (keyframe to
keyframe) at a time so that the decoder only sees what a kept frame needs:

* a GOP none of whose frames can be nearest to a window centre is never decoded (with dense
  keyframes this is what seeking would save, without the seeks);
* inside a GOP, packets after the last one a kept frame needs are dropped, and every frame but the
  one nearest each centre is decoded with ``skip_frame=NONREF``, so a non-reference frame (a B
  frame in H.264) that no window keeps costs nothing; an H.264 picture that is plainly
  unreferenced (:func:`_unreferenced`) is not even sent, which keeps frame threads busy;
* which frames a centre "can pick" is decided from packet timestamps; once decoded, the picks of a
  decode that skipped anything are checked against the timestamps of every packet, and any
  disagreement (a decoder that dropped a frame, say) re-decodes the file sequentially, so the
  frames are always those a full decode would pick.

The file is opened with the demuxer its extension names (probing only files that demuxer
rejects). The decoder runs frame threads on the cores idle when decoding starts
(:func:`media_threads`) if frames are large enough to gain from them (:func:`decoder_threads`);
threads change no pixel. Kept frames go straight from the decoder's YUV to ``size x size`` RGB
through one cached swscale context (area averaging when shrinking); no full-size RGB image is ever
made. The aspect ratio is deliberately not preserved, as square inputs are what the vision encoders
take; ``size=None`` keeps the native resolution. A display matrix (phone videos, the ``rotate`` tag)
is honoured: frames come out upright. Streams nobody reads are discarded by the demuxer.

Limits (:class:`~damo.media.MediaLimits`) are checked on the header before anything is decoded
and again on every packet and frame, so a file that lies about its size or length is rejected
before it can allocate what it claims: an MP4's sample tables are counted before FFmpeg indexes
them, decoders refuse frames over ``max_pixels`` unallocated, packets are counted as they are read,
a GOP is held only up to MAX_HELD_PACKETS, audio is decoded only as far as the video has come
(:class:`_AudioGate`), and frames whose timestamps run backwards are refused.
"""
from __future__ import annotations

import bisect
import errno
import math
import os
import stat
import threading
import warnings
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import av
import av.video.reformatter
import numpy as np

from damo.media import isobmff
from damo.media.audio import AudioTrack
from damo.media.clip import SAMPLE_RATE, Clip, MediaError, MediaLimits, as_float
from damo.threads import threads

MAX_UNKEYED = 10_000          # video packets read without a keyframe before the file is refused
MAX_HELD_PACKETS = 1024       # a GOP is held (to skip what no pick needs) up to this many packets
MAX_HELD_BYTES = 64 << 20     # or bytes; past either it is decoded as it comes
AUDIO_LEAD_S = 30.0           # audio is decoded at most this far past the latest video packet
MAX_HELD_AUDIO = 4096         # audio packets held back for the video to catch up; more stop the audio
MAX_HELD_AUDIO_BYTES = 64 << 20   # or bytes
MIN_THREADED_PIXELS = 400 * 300
MIN_THREADED_BYTES = 3000
Mode = Literal["auto", "sequential"]
AudioDtype = Literal["float32", "int16"]


class _Mismatch(Exception):
    """Skipping decoded a different frame than a full decode would; the caller re-decodes fully."""


MEDIA_SAMPLE_AGE = 10.0     # seconds an idle-core sample serves later files' decoders


def media_threads() -> int:
    """Decoder threads: :func:`damo.threads.threads`, the one rule (``$DAMO_THREADS``, else the cores
    idle now), with an idle sample reused for :data:`MEDIA_SAMPLE_AGE` seconds so that a stream of
    files does not wait for a fresh sample each.

    Frame threads pay only where a core is free: on a busy machine they wait for the slowest
    thread and cost more than they gain.
    """
    return threads(max_age=MEDIA_SAMPLE_AGE)


def decoder_threads(width: int, height: int, frame_bytes: float) -> int:
    """Decoder threads for frames of this size and mean coded size: :func:`media_threads` for frames
    of at least 400x300 pixels or 3 KB, else one, as a smaller frame decodes in about the time frame
    threads take to hand it over (``python bench/decode.py --threads-sweep`` measures both)."""
    if width * height >= MIN_THREADED_PIXELS or frame_bytes >= MIN_THREADED_BYTES:
        return media_threads()
    return 1


# Demuxers that check their own header, by file extension: naming one skips format probing; a
# file that is not what its name says is rejected by the named demuxer (or opens with no stream)
# and is then probed.
_DEMUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".webm": "webm", ".mkv": "matroska"}


def _check_tables(p: Path, size: int, limits: MediaLimits) -> None:
    """Refuse an MP4/MOV whose sample tables declare more than ``max_packets`` samples, before
    FFmpeg builds an index entry for each (:mod:`damo.media.isobmff`)."""
    with open(p, "rb") as f:
        if not isobmff.looks_like_isobmff(f):
            return
        try:
            n = isobmff.declared_samples(f, size)
        except ValueError as e:
            raise MediaError(f"{p}: its MP4 structure holds {e}; not a video this reader accepts") from None
    if n > limits.max_packets:
        raise MediaError(f"{p}: its MP4 sample tables declare {n:,} samples, over the limit of "
                         f"{limits.max_packets:,} (MediaLimits.max_packets)")


def _open(path: str | Path, limits: MediaLimits) -> av.container.InputContainer:
    """Open a file with a video stream, or raise MediaError naming the file and the problem.

    An MP4 whose tables declare more than ``limits.max_packets`` samples is refused before FFmpeg
    reads it, and the decoders FFmpeg runs while opening (to learn a stream's parameters) refuse a
    frame larger than ``limits.max_pixels`` before allocating it: an 8192 x 8192 H.264 stream costs
    57 MB to open instead of 321 MB (``python bench/hostile.py``). A stream whose size only such a decode would tell then reports
    0 x 0, and our own decoder refuses its frames the same way."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MediaError(f"{p}: no such file") from None
    except OSError as e:
        raise MediaError(f"{p}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(f"{p}: not a regular file")
    if st.st_size == 0:
        raise MediaError(f"{p}: file is empty (0 bytes)")
    _check_tables(p, st.st_size, limits)
    options = {"max_pixels": str(limits.max_pixels)}
    container = None
    hint = _DEMUXERS.get(p.suffix.lower())
    if hint is not None:
        try:
            container = av.open(str(p), format=hint, options=options)
        except av.FFmpegError:
            pass  # named for another container: probe it as any other file
        if container is not None and not container.streams:
            container.close()
            container = None
    try:
        container = container or av.open(str(p), options=options)
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


def _declared_duration(container: av.container.InputContainer) -> float | None:
    """Container duration, else the video stream's; None when the header says neither."""
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    stream = container.streams.video[0]
    if stream.duration is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    return None


def num_clip_frames(duration: float, fps: float) -> int:
    """T = max(1, ceil(duration * fps)), with a small tolerance for float noise."""
    return max(1, math.ceil(duration * fps - 1e-6))


def _check_header(name: str, limits: MediaLimits, width: int, height: int, duration: float | None,
                  fps: float, size: int | None) -> None:
    """Reject, before decoding, a file whose header claims more than ``limits`` admit."""
    if width * height > limits.max_pixels:
        raise MediaError(f"{name}: frame size {width}x{height} exceeds the limit of {limits.max_pixels:,} pixels "
                         "(MediaLimits.max_pixels)")
    if duration is None:
        return
    if duration > limits.max_duration:
        raise MediaError(f"{name}: duration {duration:,.1f} s exceeds the limit of {limits.max_duration:,.0f} s "
                         "(MediaLimits.max_duration)")
    T = num_clip_frames(duration, fps)
    if T > limits.max_frames:
        raise MediaError(f"{name}: {duration:,.1f} s at {fps:g} fps gives {T:,} frames, over the limit of "
                         f"{limits.max_frames:,} (MediaLimits.max_frames); lower fps or cut the video")
    per_frame = 3 * (size * size if size is not None else width * height)
    if T * per_frame > limits.max_output_bytes:
        raise MediaError(f"{name}: {T:,} frames of {per_frame:,} bytes need {T * per_frame / 2**30:.1f} GiB, over the "
                         f"limit of {limits.max_output_bytes / 2**30:.1f} GiB (MediaLimits.max_output_bytes); "
                         "lower size or fps")


_local = threading.local()
_inherited: list[threading.local] = []


def _fresh_after_fork() -> None:
    """swscale contexts can run worker threads; a forked child (a data-loader worker) inherits the
    contexts but not their threads, so using or even freeing one waits forever. The child starts with
    its own contexts and keeps the inherited ones alive, never freed."""
    global _local
    _inherited.append(_local)
    _local = threading.local()


os.register_at_fork(after_in_child=_fresh_after_fork)


def _reformatter() -> av.video.reformatter.VideoReformatter:
    """One swscale context per thread, reused across files: creating one costs 1-3 ms, using it 0.1 ms."""
    local = _local
    if "reformatter" not in local.__dict__:
        local.reformatter = av.video.reformatter.VideoReformatter()
    return local.reformatter


class _Picker:
    """Receives decoded frames in presentation order and keeps, per window, the one nearest its centre."""

    def __init__(self, fps: float, n_max: int, exact: bool, size: int | None, name: str, limits: MediaLimits,
                 phase: float = 0.5):
        self.fps, self.n_max, self.exact, self.size, self.name, self.limits = fps, n_max, exact, size, name, limits
        self.phase = phase                                   # sample point inside a window, in windows
        self.j = 0                                           # next window to fill
        self.prev: tuple[float, av.VideoFrame] | None = None
        self.times = np.zeros(n_max, np.float64)
        self.frames: np.ndarray | None = None
        self.last: tuple[av.VideoFrame, np.ndarray] | None = None  # consecutive windows may share a frame
        self.reformatter = _reformatter()
        self.next_centre = self.centre(0)                    # of window j (inf past the last)

    def centre(self, j: int) -> float:
        return (j + self.phase) / self.fps if j < self.n_max else math.inf

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        if self.last is not None and self.last[0] is frame:
            return self.last[1]
        # one scaling thread: a frame takes 0.1-0.2 ms, and a helper thread on a busy machine waits
        # milliseconds for a core
        if self.size is None:
            rgb = self.reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        else:
            shrink = frame.width >= self.size and frame.height >= self.size
            rgb = self.reformatter.reformat(frame, self.size, self.size, "rgb24",
                                            interpolation="AREA" if shrink else "BILINEAR", threads=1).to_ndarray()
        turns = round(frame.rotation / 90) % 4 if frame.rotation else 0
        if turns:
            rgb = np.rot90(rgb, turns)                       # the display matrix turns counter-clockwise
        self.last = (frame, rgb)
        return rgb

    def _keep(self, j: int, t: float, frame: av.VideoFrame) -> None:
        rgb = self._rgb(frame)
        if self.frames is None:
            # T is known from the header; without one, start small and double up to max_frames
            first = self.n_max if self.exact else min(self.n_max, 256)
            self.frames = np.empty((first, *rgb.shape), np.uint8)
        elif j >= self.frames.shape[0]:
            grown = np.empty((min(self.n_max, 2 * self.frames.shape[0]), *self.frames.shape[1:]), np.uint8)
            grown[:self.frames.shape[0]] = self.frames
            self.frames = grown
        if rgb.shape != self.frames.shape[1:]:
            raise MediaError(f"{self.name}: frame size changes mid-stream ({self.frames.shape[2]}x{self.frames.shape[1]} "
                             f"-> {rgb.shape[1]}x{rgb.shape[0]}); re-encode the file")
        self.frames[j], self.times[j] = rgb, t

    def push(self, t: float, frame: av.VideoFrame) -> None:
        if frame.width * frame.height > self.limits.max_pixels:
            raise MediaError(f"{self.name}: a {frame.width}x{frame.height} frame exceeds the limit of "
                             f"{self.limits.max_pixels:,} pixels (MediaLimits.max_pixels)")
        if self.prev is not None and t < self.prev[0] - 1e-3:
            raise MediaError(f"{self.name}: frame timestamps go backwards ({self.prev[0]:.3f} s, then {t:.3f} s), so "
                             "no frame can be placed in time; re-encode the file (e.g. ffmpeg -i IN -fps_mode cfr OUT)")
        c = self.next_centre
        while c <= t:
            # nearest of (previous frame, this frame) to the window centre; ties (to 1 us, so float
            # noise in pts * time_base cannot break them either way) -> the earlier frame
            if self.prev is not None and c - self.prev[0] <= t - c + 1e-6:
                self._keep(self.j, *self.prev)
            else:
                self._keep(self.j, t, frame)
            self.j += 1
            c = self.next_centre = self.centre(self.j)
        self.prev = (t, frame)

    def finish(self, T: int) -> tuple[np.ndarray, np.ndarray]:
        """The first T windows; windows past the last frame see the last frame."""
        if self.prev is None:
            raise MediaError(f"{self.name}: no video frame could be decoded")
        while self.j < T:
            self._keep(self.j, *self.prev)
            self.j += 1
        assert self.frames is not None
        return self.frames[:T], self.times[:T]


def _avc_length_size(cc: av.codec.context.CodecContext) -> int | None:
    """Bytes in each NAL unit's length prefix for H.264 stored as in MP4 and Matroska (the ``avcC``
    record, ISO/IEC 14496-15 5.3.3.1), or None: another codec, or start codes (Annex B)."""
    extra = cc.extradata if cc.name == "h264" else None
    if not extra or len(extra) < 7 or extra[0] != 1:
        return None
    return (extra[4] & 3) + 1


_PASSIVE_NALS = frozenset({6, 9, 12})  # SEI, access unit delimiter, filler: describe only their own picture
_MAX_NALS = 64  # an access unit with more NAL units is sent as it is: a hostile one costs no long scan


def _unreferenced(data: bytes | memoryview, length_size: int) -> bool:
    """Whether an H.264 access unit holds a non-reference picture and nothing later pictures use.

    Every slice is a non-IDR slice with ``nal_ref_idc`` 0 (H.264 7.4.1: no later picture predicts
    from it, and it leaves frame numbering alone) and every other NAL unit is one of
    ``_PASSIVE_NALS``; a parameter set, more than ``_MAX_NALS`` units or anything unparsable
    answers False.
    """
    i, end, slices = 0, len(data), 0
    for _ in range(_MAX_NALS):
        size = int.from_bytes(data[i:i + length_size], "big")
        if size == 0 or i + length_size + size > end:
            return False
        header = data[i + length_size]
        kind = header & 0x1F
        if kind == 1 and not header & 0x60:
            slices += 1
        elif kind not in _PASSIVE_NALS:
            return False
        i += length_size + size
        if i == end:
            return slices > 0
    return False


def _nearest(order: list[float], centres: Iterable[float]) -> list[float]:
    """For each centre, the time in ``order`` (sorted, not empty) nearest to it; ties (to 1 us) go to the earlier."""
    picks = []
    for c in centres:
        after = bisect.bisect_right(order, c + 1e-9)   # first time past the centre
        if after == 0 or after == len(order):
            picks.append(order[min(after, len(order) - 1)])
        else:
            before, nxt = order[after - 1], order[after]
            picks.append(before if c - before <= nxt - c + 1e-6 else nxt)
    return picks


def _no_keyframe(name: str) -> MediaError:
    return MediaError(f"{name}: none of its first {MAX_UNKEYED:,} video packets is a keyframe, so nothing can be "
                      "decoded; re-encode the file")


class _Video:
    """Buffers one GOP of video packets at a time and sends the decoder only what the picks need."""

    def __init__(self, stream: av.video.stream.VideoStream, origin: float, picker: _Picker, skip: bool, name: str,
                 limits: MediaLimits):
        self.stream, self.cc, self.origin, self.picker, self.skip, self.name = stream, stream.codec_context, origin, \
            picker, skip, name
        self.limits = limits
        # past this time a packet would need a frame beyond max_frames (1 s of slack for the last packet)
        self.max_frames_t = (limits.max_frames + 1) / picker.fps + 1.0
        self.tb = float(stream.time_base)  # float: Fraction arithmetic per packet is slow
        self.gop: list[tuple[float | None, av.Packet]] = []
        self.skipped_gop: list[tuple[float | None, av.Packet]] = []
        self.prev_max = -math.inf        # latest packet time of all earlier GOPs
        self.times: list[float] = []     # every packet's time (checks the picks)
        self.end: float | None = None    # end of the last packet (duration when the header has none)
        self.count = 0
        self.untimed = False             # a packet without pts: nothing can be skipped safely
        self.skipped = False             # some packet was held back, dropped or decoded NONREF
        self.last_t: float | None = None
        self.skip_mode = "DEFAULT"
        self.nal_length = _avc_length_size(self.cc)
        self.threads_chosen = False
        self.keyed = False               # a keyframe was seen
        self.size_unknown = not (self.cc.width and self.cc.height)   # e.g. hidden by max_pixels while opening
        self.gop_bytes = 0

    def packet(self, packet: av.Packet) -> None:
        if packet.size == 0:
            return  # demux's end-of-stream marker: finish() drains the decoder
        self.count += 1
        self.keyed |= packet.is_keyframe
        if not self.keyed and self.count > MAX_UNKEYED:
            raise _no_keyframe(self.name)
        t = None
        if packet.pts is not None:
            t = packet.pts * self.tb - self.origin
            if t > self.limits.max_duration:
                raise MediaError(f"{self.name}: a video packet at {t:,.1f} s lies past the limit of "
                                 f"{self.limits.max_duration:,.0f} s (MediaLimits.max_duration)")
            if t > self.max_frames_t:
                raise MediaError(f"{self.name}: a video packet at {t:,.1f} s gives more than {self.limits.max_frames:,} "
                                 f"frames at {self.picker.fps:g} fps (MediaLimits.max_frames); lower fps or cut the video")
            self.times.append(t)
            stop = t + (packet.duration or 0) * self.tb
            if self.end is None or stop > self.end:
                self.end = stop
        else:
            self.untimed = True
        if packet.is_keyframe and self.gop:
            self._flush_gop(t if t is not None else math.inf)
        self.gop.append((t, packet))
        self.gop_bytes += packet.size
        if len(self.gop) >= MAX_HELD_PACKETS or self.gop_bytes >= MAX_HELD_BYTES:
            self._send_held()

    def _send_held(self) -> None:
        """Decode the GOP held so far: one longer than MAX_HELD_PACKETS (or MAX_HELD_BYTES) is
        decoded as it comes rather than held whole, so a stream without keyframes costs no memory."""
        if not self.threads_chosen:
            self._choose_threads(self.gop)
        known = [t for t, _ in self.gop if t is not None]
        if known:
            self.prev_max = max(self.prev_max, max(known))
        self._send_all(self.skipped_gop + self.gop)
        self.skipped_gop, self.gop, self.gop_bytes = [], [], 0

    def _left_out(self, packet: av.Packet) -> bool:
        """An unreferenced picture is left out rather than sent with NONREF: frame threads take
        packets in turn, and a skipped packet would leave its thread idle for a frame's time."""
        return self.nal_length is not None and _unreferenced(memoryview(packet), self.nal_length)

    def _send(self, packet: av.Packet, skip: bool) -> None:
        self.skipped |= skip
        if skip and self._left_out(packet):
            return
        mode = "NONREF" if skip else "DEFAULT"
        if mode != self.skip_mode:
            self.cc.skip_frame = self.skip_mode = mode
        try:
            frames = self.cc.decode(packet)
        except av.FFmpegError as e:
            hint = (f"; a frame larger than {self.limits.max_pixels:,} pixels (MediaLimits.max_pixels) is refused "
                    "this way" if e.errno == errno.EINVAL or self.size_unknown else "")
            raise MediaError(f"{self.name}: video decoding failed ({e.strerror or e}){hint}") from None
        for frame in frames:
            if frame.pts is not None:
                t = frame.pts * self.tb - self.origin
            else:  # rare (raw streams): one frame period after its predecessor
                rate = self.stream.average_rate
                t = (self.last_t if self.last_t is not None else 0.0) + (1.0 / float(rate) if rate else 0.0)
            self.last_t = t
            self.picker.push(t, frame)

    def _choose_threads(self, gop: list[tuple[float | None, av.Packet]]) -> None:
        """The decoder's threads, from the frame size and the first GOP's mean packet size: the
        decoder opens on its first packet, and its threads cannot change after that."""
        threads = decoder_threads(self.cc.width or 0, self.cc.height or 0, sum(p.size for _, p in gop) / len(gop))
        self.stream.thread_count = threads
        if threads > 1:
            self.stream.thread_type = "AUTO"
        self.threads_chosen = True

    def _flush_gop(self, next_key: float) -> None:
        gop, self.gop, self.gop_bytes = self.gop, [], 0
        if not self.threads_chosen:
            self._choose_threads(gop)
        times = [t for t, _ in gop]
        known = [t for t in times if t is not None]
        lo, hi = self.prev_max, next_key
        if known:
            self.prev_max = max(self.prev_max, max(known))
        fps, n, ph = self.picker.fps, self.picker.n_max, self.picker.phase
        # windows whose centre c satisfies lo <= c < hi: this GOP may hold their nearest frame
        j0 = max(self.picker.j, math.ceil(lo * fps - ph - 1e-9) if lo > -math.inf else 0)
        j1 = min(n, math.ceil(hi * fps - ph - 1e-9) if hi < math.inf else n)
        if not self.skip or self.untimed or len(known) < len(gop):
            self._send_all(self.skipped_gop + gop)
            self.skipped_gop = []
            return
        if j0 >= j1:
            self.skipped_gop = gop   # kept: the next GOP's leading frames may refer to it
            self.skipped = True
            return
        if self.skipped_gop and min(known) < times[0] - 1e-9:
            self._send_all(self.skipped_gop)  # open GOP: its leading frames need the one before
        self.skipped_gop = []
        # the frame nearest each centre among this GOP's: a nearer one in another GOP only means this
        # one is decoded in vain, and a skipped neighbour cannot change which decoded frame is nearest
        wanted = set(_nearest(sorted(known), ((j + ph) / fps for j in range(j0, j1))))
        last_needed = max(wanted) if wanted else -math.inf
        cut = max(i for i, t in enumerate(times) if t <= last_needed + 1e-9) if wanted else len(gop) - 1
        self.skipped |= cut < len(gop) - 1
        for t, p in gop[:cut + 1]:
            self._send(p, t not in wanted)

    def _send_all(self, gop: list[tuple[float | None, av.Packet]]) -> None:
        for _, p in gop:
            self._send(p, False)

    def finish(self) -> None:
        if self.gop:
            self._flush_gop(math.inf)
        self._send(None, False)  # drain the decoder

    def check_picks(self, times: np.ndarray) -> None:
        """Raise _Mismatch unless every pick is the packet nearest its centre (ties to the earlier).

        A decode that skipped nothing saw every frame, as the sequential mode does: nothing to check."""
        if self.untimed or not self.skipped:
            return
        fps, ph = self.picker.fps, self.picker.phase
        expected = _nearest(sorted(set(self.times)), ((j + ph) / fps for j in range(len(times))))
        if any(abs(e - t) > 1e-6 for e, t in zip(expected, times.tolist())):
            raise _Mismatch


class _AudioGate:
    """Sends audio packets to their :class:`AudioTrack` only as far as the video has come.

    Audio more than AUDIO_LEAD_S past the latest video packet is held until the video catches up
    (demuxers interleave streams within seconds); past the declared duration it is never decoded,
    and a track still running ahead after MAX_HELD_AUDIO packets (or MAX_HELD_AUDIO_BYTES) is
    decoded no further (with a warning; what was decoded stays). One video frame followed by ten
    hours of 192 kHz audio thus costs 30 s of audio and a few thousand held packets, not hours of
    decoding. A packet past the media limits ends the track (MediaError, which the caller turns
    into a warning).
    """

    def __init__(self, track: AudioTrack, origin: float, declared: float | None, video: "_Video"):
        self.track, self.origin, self.declared, self.video = track, origin, declared, video
        self.tb = float(track.stream.time_base) if track.stream.time_base else 0.0
        self.held: deque[tuple[float | None, av.Packet]] = deque()
        self.held_bytes = 0
        self.stopped = False

    def _lead(self) -> float:
        return (self.video.end or 0.0) + AUDIO_LEAD_S

    def packet(self, packet: av.Packet) -> None:
        if self.stopped:
            return
        if packet.size == 0:              # end of stream: what the clip can use, then drain the decoder
            end = max(self.video.end or 0.0, self.declared or 0.0) + 1.0
            while self.held:
                t, p = self.held.popleft()
                if t is None or t <= end:
                    self.track.packet(p)
            self.track.packet(packet)
            return
        t = packet.pts * self.tb - self.origin if packet.pts is not None else None
        if t is not None:
            limits = self.video.limits
            if t > min(limits.max_duration, self.video.max_frames_t):
                raise MediaError(f"an audio packet at {t:,.1f} s lies past what the limits admit "
                                 "(MediaLimits.max_duration, max_frames)")
            if self.declared is not None and t > self.declared + 1.0:
                return                    # past the declared end: cut from the clip anyway
        if self.held or (t is not None and t > self._lead()):
            self.held.append((t, packet))
            self.held_bytes += packet.size
            if len(self.held) > MAX_HELD_AUDIO or self.held_bytes > MAX_HELD_AUDIO_BYTES:
                warnings.warn(f"{self.track.name}: audio after {self._lead():.1f} s not decoded: it runs more than "
                              f"{AUDIO_LEAD_S:g} s ahead of the video for {len(self.held):,} packets (the video has "
                              "ended, or the file is not interleaved)", stacklevel=4)
                self.held.clear()
                self.stopped = True
                self.track.stream.discard = av.stream.Discard.all
            return
        self.track.packet(packet)

    def release(self) -> None:
        """Decode the held packets the video has now caught up with."""
        lead = self._lead()
        while self.held and (self.held[0][0] is None or self.held[0][0] <= lead):
            packet = self.held.popleft()[1]
            self.held_bytes -= packet.size
            self.track.packet(packet)


def _decode(path: Path, fps: float, size: int | None, skip: bool, limits: MediaLimits,
            audio_dtype: AudioDtype, with_audio: bool, phase: float) -> Clip:
    name = str(path)
    container = _open(path, limits)
    try:
        stream = container.streams.video[0]
        cc = stream.codec_context
        # the header may understate the frames (an H.264 parameter set can say otherwise): the decoder
        # itself refuses a larger frame before allocating it
        cc.options = {"max_pixels": str(limits.max_pixels)}
        origin = _origin(container)
        declared = _declared_duration(container)
        _check_header(name, limits, cc.width or 0, cc.height or 0, declared, fps, size)
        n_max = num_clip_frames(declared, fps) if declared is not None else limits.max_frames
        picker = _Picker(fps, n_max, declared is not None, size, name, limits, phase)
        video = _Video(stream, origin, picker, skip, name, limits)
        audio = None
        if container.streams.audio and with_audio:
            try:
                n_samples = math.ceil(declared * SAMPLE_RATE - 1e-6) if declared is not None else None
                horizon = min(limits.max_duration, video.max_frames_t)
                audio = _AudioGate(AudioTrack(container.streams.audio[0], origin, n_samples, name,
                                              max_samples=math.ceil(horizon * SAMPLE_RATE)), origin, declared, video)
            except MediaError as e:
                warnings.warn(f"{name}: audio dropped, returning the video without sound: {e}", stacklevel=3)
        streams = [stream] + ([audio.track.stream] if audio is not None else [])
        video_index = stream.index
        for other in container.streams:
            if other not in streams:
                other.discard = av.stream.Discard.all  # the demuxer skips its packets instead of reading them
        packets = 0
        try:
            for packet in container.demux(streams):
                packets += 1
                if packets > limits.max_packets:
                    raise MediaError(f"{name}: holds more than {limits.max_packets:,} packets "
                                     "(MediaLimits.max_packets)")
                if packet.stream_index == video_index:
                    video.packet(packet)
                if audio is not None:
                    try:
                        if packet.stream_index != video_index:
                            audio.packet(packet)
                        elif audio.held:
                            audio.release()
                    except (MediaError, av.FFmpegError, ValueError) as e:
                        warnings.warn(f"{name}: audio dropped, returning the video without sound: {e}", stacklevel=3)
                        audio.track.stream.discard = av.stream.Discard.all
                        audio = None
        except av.FFmpegError as e:
            if video.count == 0:
                raise MediaError(f"{name}: video stream is unreadable ({e.strerror or e})") from None
            # a damaged tail: keep what was read; the completeness check below judges it
        if video.count == 0:
            raise MediaError(f"{name}: video stream holds no packets (empty or truncated file)")
        video.finish()
    finally:
        container.close()

    duration = declared
    if duration is None:
        if video.end is None or video.end <= 0:
            raise MediaError(f"{name}: cannot tell the video's duration")
        duration = video.end
        _check_header(name, limits, 0, 0, duration, fps, size)
    declared_video = stream.duration * video.tb if stream.duration else duration
    covered = video.end or 0.0
    # a cut-off download keeps its header: video data ends well short of the declared length.
    # The slack, max(1 s, 10 %), tolerates streams that legitimately end a little early.
    if covered < declared_video - max(1.0, 0.1 * declared_video):
        raise MediaError(f"{name}: truncated file: video data ends at {covered:.2f} s but the header declares "
                         f"{declared_video:.2f} s; re-download or re-encode the file")
    T = num_clip_frames(duration, fps)
    frames, times = picker.finish(T)
    video.check_picks(times)

    n_audio = math.ceil(duration * SAMPLE_RATE - 1e-6)
    wave = np.zeros(0, np.float32 if audio_dtype == "float32" else np.int16)
    has_audio = False
    if audio is not None:
        try:
            wave = audio.track.finish()
            has_audio = True
        except MediaError as e:
            warnings.warn(f"{name}: audio dropped, returning the video without sound: {e}", stacklevel=3)
    if has_audio:
        if wave.shape[0] != n_audio:
            wave = np.concatenate([wave[:n_audio], np.zeros(max(0, n_audio - wave.shape[0]), np.int16)])
        if audio_dtype == "float32":
            wave = as_float(wave)
    return Clip(frames=frames, times=times, audio=wave, duration=duration, fps=float(fps), has_audio=has_audio,
                source=name)


def decode_clip(path: str | Path, fps: float = 1.0, size: int | None = 64, mode: Mode = "auto",
                limits: MediaLimits | None = None, audio_dtype: AudioDtype = "float32", audio: bool = True,
                phase: float = 0.5) -> Clip:
    """Decode ``path`` into a :class:`Clip` of ``T = ceil(duration * fps)`` frames and its audio.

    ``mode="auto"`` decodes only what the kept frames need (see the module doc); "sequential"
    decodes every frame (the reference the skipping is checked against). ``limits`` bound what
    the file may claim (default :class:`MediaLimits`). The audio is ``ceil(duration * 16000)``
    samples of ``audio_dtype`` ("float32" in [-1, 1], or "int16" at half the memory), and empty
    when the file has no audio track or ``audio=False`` (video only, ``has_audio=False``). ``phase`` is where in
    its window frame ``i`` is sampled: nearest ``(i + phase) / fps`` (0.5 the centre, 0 the start). Undecodable files raise :class:`MediaError`; an audio track
    that cannot be decoded is dropped with a warning (``has_audio=False``), never silently.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive number of pixels or None for native size, got {size}")
    if mode not in ("auto", "sequential"):
        raise ValueError(f"mode must be 'auto' or 'sequential', got {mode!r}")
    if audio_dtype not in ("float32", "int16"):
        raise ValueError(f"audio_dtype must be 'float32' or 'int16', got {audio_dtype!r}")
    if not 0 <= phase < 1:
        raise ValueError(f"phase must be in [0, 1) (a point inside the 1/fps window), got {phase}")
    limits = limits or MediaLimits()
    try:
        return _decode(Path(path), fps, size, mode == "auto", limits, audio_dtype, audio, phase)
    except _Mismatch:
        return _decode(Path(path), fps, size, False, limits, audio_dtype, audio, phase)


def _scan(container: av.container.InputContainer, name: str, limits: MediaLimits) -> dict:
    """Demux the video packets once (no decoding): keyframe times, packet count and end time."""
    stream = container.streams.video[0]
    tb = stream.time_base
    keyframes: list[int] = []
    count = 0
    end = None
    for other in container.streams:
        if other is not stream:
            other.discard = av.stream.Discard.all   # the demuxer skips their packets instead of reading them
    try:
        for packet in container.demux(stream):
            if packet.pts is None:
                continue  # the flush packet at the end of demuxing
            count += 1
            if count > limits.max_packets:
                raise MediaError(f"{name}: holds more than {limits.max_packets:,} video packets "
                                 "(MediaLimits.max_packets)")
            if packet.is_keyframe:
                keyframes.append(packet.pts)
            elif not keyframes and count > MAX_UNKEYED:
                raise _no_keyframe(name)
            stop = packet.pts + (packet.duration or 0)
            end = stop if end is None else max(end, stop)
    except av.FFmpegError as e:
        raise MediaError(f"{name}: video stream is unreadable after {count} packets ({e.strerror or e})") from None
    if count == 0:
        raise MediaError(f"{name}: video stream holds no packets (empty or truncated file)")
    keyframes.sort()
    return {"keyframes": keyframes, "packets": count, "end": None if end is None else float(end * tb)}


def probe(path: str | Path, limits: MediaLimits | None = None) -> dict:
    """Describe a file without decoding it: duration, fps, size, rotation, audio, keyframe spacing,
    codecs; within ``limits`` (default :class:`MediaLimits`) of packets and frame size."""
    limits = limits or MediaLimits()
    container = _open(path, limits)
    try:
        v = container.streams.video[0]
        origin = _origin(container)
        scan = _scan(container, str(path), limits)
        duration = _declared_duration(container)
        if duration is None:
            if scan["end"] is None or scan["end"] - origin <= 0:
                raise MediaError(f"{path}: cannot tell the video's duration")
            duration = scan["end"] - origin
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
            "keyframe_interval": float(np.median(np.diff(keyframes_s))) if len(keyframes_s) > 1 else duration,
            "start_time": origin,
        }
    finally:
        container.close()
