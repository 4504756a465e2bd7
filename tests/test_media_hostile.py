"""Hostile and broken media: limits checked before decoding, nothing cached for a rejected file,
and a cache that cannot be used never stops decoding."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from damo.media import MediaError, MediaLimits, decode_clip, load_clip
from damo.media import cache as cache_mod

from test_media import frame_index, write_video

REPO = Path(__file__).resolve().parents[1]


class _WriteOnly:
    """A sink without seek: the Matroska muxer then cannot go back to write the duration."""

    def __init__(self, f):
        self.f = f

    def write(self, data: bytes) -> int:
        return self.f.write(data)


def _jpegs(n: int, side: int) -> list[bytes]:
    """n 16x16 JPEG frames whose SOF0 header claims ``side x side`` pixels."""
    enc = av.CodecContext.create("mjpeg", "w")
    enc.width = enc.height = 16
    enc.pix_fmt, enc.time_base = "yuvj420p", Fraction(1, 1)
    out = []
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 60 + 40 * i, np.uint8), format="rgb24")
        frame = frame.reformat(format="yuvj420p")
        frame.pts = i
        out += [bytes(p) for p in enc.encode(frame)]
    out += [bytes(p) for p in enc.encode(None)]
    if side != 16:
        for k, data in enumerate(out):
            b = bytearray(data)
            at = b.index(b"\xff\xc0") + 5  # SOF0: length (2), precision (1), then height, width
            b[at:at + 4] = side.to_bytes(2, "big") * 2
            out[k] = bytes(b)
    return out


def write_packets(path: Path, times_s: list[float], side: int = 16, declare_duration: bool = True) -> Path:
    """A Matroska file of MJPEG packets at the given times, muxed without decoding or re-encoding."""
    with open(path, "wb") as raw:
        out = av.open(raw if declare_duration else _WriteOnly(raw), "w", format="matroska")
        s = out.add_stream("mjpeg", rate=1)
        s.width = s.height = side
        s.pix_fmt = "yuvj420p"
        for t, data in zip(times_s, _jpegs(len(times_s), side)):
            packet = av.Packet(data)
            packet.stream, packet.time_base = s, Fraction(1, 1000)
            packet.pts = packet.dts = round(t * 1000)
            out.mux(packet)
        out.close()
    return path


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def test_small_honest_packet_files_decode(tmp_path):
    clip = decode_clip(write_packets(tmp_path / "ok.mkv", [0.0, 1.0, 2.0]), fps=1.0, size=8)
    assert clip.num_frames == 3 and not clip.has_audio


@pytest.mark.parametrize("declare", [True, False])
def test_a_million_second_timestamp_is_rejected_before_allocating(tmp_path, declare):
    path = write_packets(tmp_path / "gap.mkv", [0.0, 1_000_000.0], declare_duration=declare)
    assert path.stat().st_size < 2000
    cache = tmp_path / "cache"
    for load in (lambda: decode_clip(path), lambda: load_clip(path, cache_dir=cache)):
        with pytest.raises(MediaError, match=r"gap\.mkv: .*MediaLimits\.max_"):
            load()
    assert _entries(cache) == []  # nothing written, not even a temporary file


def test_three_hours_is_rejected_by_the_frame_limit_before_decoding(tmp_path, monkeypatch):
    path = write_packets(tmp_path / "three_hours.mkv", [0.0, 10_800.0])
    pushed = []
    from damo.media import decode as decode_mod
    monkeypatch.setattr(decode_mod._Picker, "push", lambda *a: pushed.append(1))
    with pytest.raises(MediaError, match=r"three_hours\.mkv: 10,801\.0 s at 1 fps gives 10,801 frames.*max_frames"):
        load_clip(path, cache_dir=tmp_path / "cache")
    assert pushed == [] and _entries(tmp_path / "cache") == []
    monkeypatch.undo()
    # a caller that wants it lowers fps (or raises the limit); each window takes the nearer of the two frames
    clip = decode_clip(path, fps=1 / 600, size=8, limits=MediaLimits(max_frames=20))
    centres = (np.arange(19) + 0.5) * 600
    assert clip.num_frames == 19
    np.testing.assert_array_equal(clip.times, np.where(centres <= 5400, 0.0, 10_800.0))


def test_a_header_claiming_15360_pixels_square_is_rejected(tmp_path):
    path = write_packets(tmp_path / "huge.mkv", [0.0, 1.0, 2.0], side=15360)
    assert path.stat().st_size < 200_000
    # the decoder FFmpeg runs while opening refuses the frame unallocated; ours then refuses it too
    with pytest.raises(MediaError, match=r"huge\.mkv: video decoding failed .*larger than 9,437,184 pixels \(MediaLimits\.max_pixels\)"):
        load_clip(path, cache_dir=tmp_path / "cache")
    assert _entries(tmp_path / "cache") == []


def test_limits_are_configurable(tmp_path):
    path = write_video(tmp_path / "three_s.mp4", seconds=3.0)
    with pytest.raises(MediaError, match=r"three_s\.mp4: duration 3\.0 s exceeds the limit of 2 s"):
        decode_clip(path, limits=MediaLimits(max_duration=2.0))
    with pytest.raises(MediaError, match=r"6 frames, over the limit of 5"):
        decode_clip(path, fps=2.0, limits=MediaLimits(max_frames=5))
    with pytest.raises(MediaError, match=r"32x32 exceeds"):
        decode_clip(path, limits=MediaLimits(max_pixels=1000))
    with pytest.raises(MediaError, match=r"max_output_bytes"):
        decode_clip(path, size=64, limits=MediaLimits(max_output_bytes=3 * 64 * 64 * 3 - 1))
    assert decode_clip(path, size=64, limits=MediaLimits(max_output_bytes=3 * 64 * 64 * 3)).num_frames == 3


def test_hostile_files_stay_small_in_memory(tmp_path):
    """Peak resident memory of a fresh process rejecting both files (the unchecked decoder took 11.4 GiB and 5 GB)."""
    gap = write_packets(tmp_path / "gap.mkv", [0.0, 1_000_000.0], declare_duration=False)
    huge = write_packets(tmp_path / "huge.mkv", [0.0, 1.0], side=15360)
    # VmHWM, the peak of this process's own memory: ru_maxrss would also count the pytest process it forked from
    code = ("import json, sys\nfrom damo.media import MediaError, decode_clip\nerrors = []\n"
            "for p in sys.argv[1:]:\n    try:\n        decode_clip(p)\n    except MediaError as e:\n"
            "        errors.append(str(e))\n"
            "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "print(json.dumps({'errors': errors, 'peak_mb': int(hwm.split()[1]) / 1024}))")
    out = subprocess.run([sys.executable, "-c", code, str(gap), str(huge)], cwd=str(REPO), capture_output=True,
                         text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report["errors"]) == 2
    assert report["peak_mb"] < 300, report


# ---------------------------------------------------------------------------------------------
# cache robustness


def test_an_unusable_cache_folder_warns_once_and_decodes(tmp_path):
    video = write_video(tmp_path / "v.mp4", seconds=2.0)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    cache_mod._warned.clear()
    with pytest.warns(UserWarning, match="cannot be written"):
        clip = load_clip(video, fps=1.0, size=8, cache_dir=blocker / "cache")
    assert [frame_index(f) for f in clip.frames] == [6, 18]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second failure in this process stays quiet
        load_clip(video, fps=1.0, size=8, cache_dir=blocker / "cache")


def test_an_unreadable_entry_is_decoded_around(tmp_path):
    video = write_video(tmp_path / "v.mp4", seconds=2.0)
    cache = tmp_path / "cache"
    entry = cache / f"{cache_mod.cache_key(video, 1.0, 8)}.npz"
    (entry / "in_the_way").mkdir(parents=True)  # a folder under the entry's name: neither loads nor is replaced
    cache_mod._warned.clear()
    with pytest.warns(UserWarning, match="media cache"):
        clip = load_clip(video, fps=1.0, size=8, cache_dir=cache)
    assert clip.num_frames == 2


def test_cache_evicts_least_recently_used_entries_over_the_cap(tmp_path, monkeypatch):
    video = write_video(tmp_path / "v.mkv", seconds=3.0, audio="pcm_s16le", audio_rate=16_000)
    cache = tmp_path / "cache"
    a = load_clip(video, fps=1.0, size=16, cache_dir=cache)
    (entry_a,) = cache.glob("*.npz")
    size = entry_a.stat().st_size
    assert a.audio.dtype == np.int16 and size < a.frames.nbytes + a.audio.nbytes + 4096
    monkeypatch.setenv("DAMO_CACHE_MAX_GB", str(2.5 * size / 1e9))  # room for two entries
    time.sleep(0.05)  # file times are coarse: keep the uses apart
    load_clip(video, fps=2.0, size=16, cache_dir=cache)
    time.sleep(0.05)
    load_clip(video, fps=1.0, size=16, cache_dir=cache)  # a hit: entry A is now the most recently used
    time.sleep(0.05)
    load_clip(video, fps=3.0, size=16, cache_dir=cache)  # over the cap: the entry for fps 2 goes
    names = sorted(p.name.split("_")[1] for p in cache.glob("*.npz"))
    assert names == ["fps1", "fps3"]
    assert load_clip(video, fps=1.0, size=16, cache_dir=cache, audio_dtype="float32").audio.dtype == np.float32


@pytest.mark.parametrize("value", ["lots", "-1", "nan", "inf"])
def test_a_cache_cap_that_is_not_a_size_is_named(monkeypatch, tmp_path, value):
    monkeypatch.setenv("DAMO_CACHE_MAX_GB", value)
    with pytest.raises(ValueError, match=f"DAMO_CACHE_MAX_GB='{value}' is not a size in gigabytes"):
        cache_mod.max_cache_bytes()
    decoded = []
    monkeypatch.setattr(cache_mod._decode, "decode_clip", lambda *a, **k: decoded.append(1))
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not decoded")
    with pytest.raises(ValueError, match="DAMO_CACHE_MAX_GB"):
        load_clip(video, cache_dir=tmp_path / "cache")
    assert decoded == [] and not (tmp_path / "cache").exists()
    monkeypatch.setenv("DAMO_CACHE_MAX_GB", "0.5")
    assert cache_mod.max_cache_bytes() == 500_000_000
