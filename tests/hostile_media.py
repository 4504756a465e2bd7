"""Builders of hostile media files, each tiny and made in well under a second (shared by the tests and
``bench/hostile.py``): an MP4 whose sample tables declare millions of samples, a Matroska file of
many one-byte packets without a keyframe, one video frame followed by long high-rate audio in a
file without a duration, frames whose timestamps run backwards."""
from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


class WriteOnly:
    """A sink without seek: the Matroska muxer then cannot go back to write the duration."""

    def __init__(self, f):
        self.f = f

    def write(self, data: bytes) -> int:
        return self.f.write(data)


def _boxes(data: bytes, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, pos, pos + size
        pos += size


def _find(data: bytes, path: list[bytes], start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(start, end) of the box at ``path`` (e.g. [b"moov", b"trak", ...]), header included."""
    end = len(data) if end is None else end
    for kind, s, e in _boxes(data, start, end):
        if kind == path[0]:
            return (s, e) if len(path) == 1 else _find(data, path[1:], s + 8, e)
    raise KeyError(path)


def mp4_sample_table_bomb(path: Path, samples: int = 50_000_000) -> Path:
    """A one-frame 16x16 H.264 MP4 whose tables then claim ``samples`` samples: ``stts`` one entry
    (samples x 1), ``stsz`` all of size 1, ``stsc`` (1, samples, 1), no ``stss``, ``mdhd`` timescale
    and duration both ``samples`` (one second). Under 2 KB."""
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=1)
        s.width = s.height = 16
        s.pix_fmt = "yuv420p"
        s.options = {"threads": "1"}
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        frame.pts, frame.time_base = 0, Fraction(1, 1)
        for p in list(s.encode(frame)) + list(s.encode()):
            out.mux(p)
    data = bytearray(path.read_bytes())
    trak = [b"moov", b"trak"]
    mdhd, _ = _find(data, trak + [b"mdia", b"mdhd"])
    version = data[mdhd + 8]
    assert version == 0
    struct.pack_into(">II", data, mdhd + 20, samples, samples)                 # timescale, duration
    stbl = trak + [b"mdia", b"minf", b"stbl"]
    stts, _ = _find(data, stbl + [b"stts"])
    struct.pack_into(">III", data, stts + 12, 1, samples, 1)                   # entries, (count, delta)
    stsz, _ = _find(data, stbl + [b"stsz"])
    struct.pack_into(">II", data, stsz + 12, 1, samples)                       # sample_size, sample_count
    stsc, _ = _find(data, stbl + [b"stsc"])
    struct.pack_into(">IIII", data, stsc + 12, 1, 1, samples, 1)               # entries, (first, per chunk, sdi)
    try:
        stss, stss_end = _find(data, stbl + [b"stss"])
        data[stss + 4:stss + 8] = b"free"                                       # no sync-sample table
    except KeyError:
        pass
    path.write_bytes(bytes(data))
    return path


def fragmented_mp4_bomb(path: Path, samples: int = 50_000_000) -> Path:
    """A fragmented MP4 (``moof`` after an empty ``moov``) of three 16x16 H.264 frames whose ``trun``
    then claims ``samples`` samples (FFmpeg allocates its index for them before reading one)."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov"}) as out:
        s = out.add_stream("libx264", rate=1)
        s.width = s.height = 16
        s.pix_fmt = "yuv420p"
        s.options = {"threads": "1"}
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 1)
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    data = bytearray(path.read_bytes())
    trun, _ = _find(data, [b"moof", b"traf", b"trun"])
    struct.pack_into(">I", data, trun + 12, samples)                          # version/flags, then sample_count
    path.write_bytes(bytes(data))
    return path


def mkv_many_packets(path: Path, n: int, codec: str = "mpeg4", keyframes: bool = False) -> Path:
    """A Matroska file of ``n`` one-byte packets 1 ms apart, none flagged a keyframe unless
    ``keyframes`` (MPEG-4 part 2 keeps the flags as written; an intra-only codec's are all set)."""
    with open(path, "wb") as raw:
        out = av.open(raw, "w", format="matroska")
        s = out.add_stream(codec, rate=1000)
        s.width = s.height = 16
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(n):
            p = av.Packet(b"\x00")
            p.stream, p.time_base = s, Fraction(1, 1000)
            p.pts = p.dts = i
            p.is_keyframe = keyframes
            out.mux(p)
        out.close()
    return path


FLAC_BLOCK = 4608   # samples per FLAC packet the builders write
LAYOUTS = {1: "mono", 2: "stereo", 8: "7.1"}


def flac_block(rate: int, channels: int) -> bytes:
    """One FLAC packet of FLAC_BLOCK silent samples at ``rate`` Hz in ``channels`` channels."""
    return _flac(rate, channels)[0]


def _flac(rate: int, channels: int) -> tuple[bytes, bytes]:
    """The packet of :func:`flac_block` and the codec's extradata."""
    enc = av.CodecContext.create("flac", "w")
    enc.sample_rate, enc.layout, enc.format = rate, LAYOUTS[channels], "s16"
    frame = av.AudioFrame.from_ndarray(np.zeros((1, FLAC_BLOCK * channels), np.int16), format="s16",
                                       layout=enc.layout)
    frame.sample_rate, frame.pts = rate, 0
    coded = [bytes(p) for p in enc.encode(frame)] + [bytes(p) for p in enc.encode(None)]
    return coded[0], bytes(enc.extradata)


def one_frame_then_audio(path: Path, seconds: float, rate: int = 192_000, channels: int = 8) -> Path:
    """One 16x16 MJPEG frame at t = 0, then ``seconds`` of silent FLAC at ``rate`` Hz in ``channels``
    channels (one encoded block muxed again and again), in a Matroska file without a duration."""
    block, extradata = _flac(rate, channels)
    jpeg = av.CodecContext.create("mjpeg", "w")
    jpeg.width = jpeg.height = 16
    jpeg.pix_fmt, jpeg.time_base = "yuvj420p", Fraction(1, 1)
    picture = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 90, np.uint8), format="rgb24").reformat(format="yuvj420p")
    picture.pts = 0
    image = [bytes(p) for p in jpeg.encode(picture)] + [bytes(p) for p in jpeg.encode(None)]
    with open(path, "wb") as raw:
        out = av.open(WriteOnly(raw), "w", format="matroska")
        v = out.add_stream("mjpeg", rate=1)
        v.width = v.height = 16
        v.pix_fmt = "yuvj420p"
        a = out.add_stream("flac", rate=rate)
        a.layout = LAYOUTS[channels]
        a.codec_context.extradata = extradata
        p = av.Packet(image[0])
        p.stream, p.time_base, p.pts, p.dts, p.duration = v, Fraction(1, 1000), 0, 0, 1000
        out.mux(p)
        for k in range(int(seconds * rate / FLAC_BLOCK)):
            p = av.Packet(block)
            p.stream, p.time_base = a, Fraction(1, rate)
            p.pts = p.dts = k * FLAC_BLOCK
            out.mux(p)
        out.close()
    return path


def mjpeg_at(path: Path, times_s: list[float]) -> Path:
    """A Matroska file of 16x16 MJPEG frames (frame ``i`` grey level ``20 i``) shown at ``times_s``,
    in that order, whatever it is."""
    jpeg = av.CodecContext.create("mjpeg", "w")
    jpeg.width = jpeg.height = 16
    jpeg.pix_fmt, jpeg.time_base = "yuvj420p", Fraction(1, 1)
    with open(path, "wb") as raw:
        out = av.open(raw, "w", format="matroska")
        s = out.add_stream("mjpeg", rate=1)
        s.width = s.height = 16
        s.pix_fmt = "yuvj420p"
        for i, t in enumerate(times_s):
            picture = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 20 * i, np.uint8), format="rgb24")
            picture = picture.reformat(format="yuvj420p")
            picture.pts = i
            for data in [bytes(p) for p in jpeg.encode(picture)]:
                p = av.Packet(data)
                p.stream, p.time_base = s, Fraction(1, 1000)
                p.pts, p.dts = round(t * 1000), i      # decoding order stays monotonic, as muxers require
                out.mux(p)
        out.close()
    return path


def h264_frames(path: Path, side: int, frames: int = 2, fps: int = 1, keyint: int | None = None) -> Path:
    """A real H.264 Matroska file of ``side x side`` grey frames (``keyint``: frames per keyframe)."""
    with av.open(str(path), "w", format="matroska") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width = s.height = side
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast", "threads": "1"} | (
            {"keyint": str(keyint), "min-keyint": str(keyint), "scenecut": "0"} if keyint else {})
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.full((side, side, 3), (7 * i) % 256, np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path
