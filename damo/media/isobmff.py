"""Counting the samples an MP4 or MOV file declares, before FFmpeg reads it.

FFmpeg's MP4 demuxer builds its whole index while the file is opened: one entry of a few dozen
bytes per sample the tables declare. The tables are compact (``stts`` says "50 million samples of
duration 1" in 8 bytes, ``stsz`` "all of size 1" in 12), so a file of under a kilobyte can ask for
gigabytes before any limit of ours could run. :func:`declared_samples` reads the box headers only
(ISO/IEC 14496-12: ``moov/trak/mdia/minf/stbl/{stsz,stz2,stts}``, and ``moof/traf/trun`` of
fragmented files) and adds up every track's sample count, so the caller can refuse the file first.
"""
from __future__ import annotations

import struct
from typing import BinaryIO

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"moof", b"traf"}
_TOP_LEVEL = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"moof", b"styp", b"sidx"}
MAX_BOXES = 100_000   # box headers read per file: past it the file is refused as not a sane MP4


def _boxes(f: BinaryIO, start: int, end: int):
    """``(type, payload start, payload end)`` of the boxes in ``[start, end)``."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head[:8])
        body = pos + 8
        if size == 1:
            if len(head) < 16:
                return
            size, body = struct.unpack(">Q", head[8:16])[0], pos + 16
        elif size == 0:
            size = end - pos
        if size < body - pos:
            return
        yield kind, body, min(pos + size, end)
        pos += size


def _count(f: BinaryIO, kind: bytes, body: int, end: int) -> int:
    """Samples one table box declares (0 for boxes that declare none)."""
    f.seek(body)
    data = f.read(min(end - body, 16))
    if kind == b"stsz" and len(data) >= 12:          # version/flags, sample_size, sample_count
        return struct.unpack(">I", data[8:12])[0]
    if kind == b"stz2" and len(data) >= 12:          # version/flags, reserved + field_size, sample_count
        return struct.unpack(">I", data[8:12])[0]
    if kind == b"trun" and len(data) >= 8:           # version/flags, sample_count
        return struct.unpack(">I", data[4:8])[0]
    if kind == b"stts" and len(data) >= 8:           # version/flags, entry_count, then (count, delta) pairs
        n = min(struct.unpack(">I", data[4:8])[0], (end - body - 8) // 8)
        f.seek(body + 8)
        table = f.read(8 * n)
        return sum(struct.unpack(f">{2 * n}I", table)[::2]) if len(table) == 8 * n else 0
    return 0


def looks_like_isobmff(f: BinaryIO) -> bool:
    """Whether the file starts with an MP4/MOV box header."""
    f.seek(0)
    head = f.read(8)
    return len(head) == 8 and head[4:8] in _TOP_LEVEL


def declared_samples(f: BinaryIO, size: int) -> int:
    """Samples declared by every track of an MP4/MOV file (the larger of ``stsz``/``stz2`` and
    ``stts`` per track, plus fragments' ``trun``); ValueError past :data:`MAX_BOXES` box headers."""
    total, seen = 0, 0
    stack = [(0, size)]
    while stack:
        start, end = stack.pop()
        for kind, body, stop in _boxes(f, start, end):
            seen += 1
            if seen > MAX_BOXES:
                raise ValueError(f"more than {MAX_BOXES:,} boxes")
            if kind in _CONTAINERS:
                stack.append((body, stop))
            elif kind == b"stbl":      # the larger of the sizes' and the times' count: FFmpeg reads both
                counts = {k: _count(f, k, b, e) for k, b, e in _boxes(f, body, stop)}
                total += max(counts.get(b"stsz", 0) + counts.get(b"stz2", 0), counts.get(b"stts", 0))
            elif kind == b"trun":
                total += _count(f, kind, body, stop)
    return total
