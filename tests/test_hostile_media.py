"""Hostile media that passed the header limits: sample-table bombs, streams of tiny packets without
a keyframe, hours of audio behind one frame, timestamps running backwards, a file replaced while it
is read. Each ends in a clear MediaError before memory is committed, or grounds correctly; a refused
file leaves nothing in the cache."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from damo.media import MediaError, MediaLimits, decode_clip, load_clip
from damo.media import cache as cache_mod
from damo.media import decode as decode_mod

import hostile_media as H

REPO = Path(__file__).resolve().parents[1]


def entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def test_mp4_sample_table_bomb_is_refused_before_ffmpeg_reads_it(tmp_path, monkeypatch):
    path = H.mp4_sample_table_bomb(tmp_path / "bomb.mp4")
    assert path.stat().st_size < 2000
    opened = []
    monkeypatch.setattr(decode_mod.av, "open", lambda *a, **k: opened.append(a))
    with pytest.raises(MediaError, match=r"bomb\.mp4: its MP4 sample tables declare 50,000,000 samples, over the "
                                         r"limit of 1,000,000 \(MediaLimits\.max_packets\)"):
        load_clip(path, cache_dir=tmp_path / "cache")
    assert opened == [] and entries(tmp_path / "cache") == []


def test_a_fragment_claiming_millions_of_samples_is_refused_too(tmp_path):
    path = H.fragmented_mp4_bomb(tmp_path / "frag.mp4")
    assert path.stat().st_size < 2000
    with pytest.raises(MediaError, match=r"frag\.mp4: its MP4 sample tables declare 50,000,00\d samples"):
        decode_clip(path)
    assert decode_clip(H.fragmented_mp4_bomb(tmp_path / "ok.mp4", samples=3), size=8).num_frames == 3


def test_sample_tables_within_the_limit_still_open(tmp_path):
    """The same file claiming 1,000 samples is no longer refused by the count (FFmpeg then finds the
    sizes wrong): the count, not the structure, is what refuses the bomb."""
    path = H.mp4_sample_table_bomb(tmp_path / "small.mp4", samples=1000)
    try:
        decode_clip(path, size=8)
    except MediaError as e:
        assert "sample tables" not in str(e)


def test_the_bomb_costs_no_memory(tmp_path):
    """Refused in a process limited to 1 GB of address space (FFmpeg's index alone would need about 4 GB)."""
    path = H.mp4_sample_table_bomb(tmp_path / "bomb.mp4")
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from damo.media import MediaError, decode_clip\n"
            "try:\n    decode_clip(sys.argv[1])\nexcept MediaError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=str(REPO), capture_output=True, text=True,
                         timeout=120, env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    assert out.returncode == 0 and "MediaLimits.max_packets" in out.stdout, out.stderr


def test_packets_past_the_limit_are_refused_as_they_are_read(tmp_path):
    path = H.h264_frames(tmp_path / "v.mkv", 16, frames=120, fps=25)
    assert decode_clip(path, size=8, limits=MediaLimits(max_packets=200)).num_frames == 5
    with pytest.raises(MediaError, match=r"v\.mkv: holds more than 100 packets \(MediaLimits\.max_packets\)"):
        decode_clip(path, size=8, limits=MediaLimits(max_packets=100))


def test_many_tiny_packets_without_a_keyframe_are_refused_early(tmp_path, monkeypatch):
    path = H.mkv_many_packets(tmp_path / "tiny.mkv", 30_000)
    sent, seen = [], []
    send, packet = decode_mod._Video._send, decode_mod._Video.packet
    monkeypatch.setattr(decode_mod._Video, "_send", lambda self, p, skip: (sent.append(1), send(self, p, skip)))
    monkeypatch.setattr(decode_mod._Video, "packet", lambda self, p: (seen.append(1), packet(self, p)))
    with pytest.raises(MediaError, match=r"tiny\.mkv: video decoding failed"):
        load_clip(path, cache_dir=tmp_path / "cache")
    # the keyframe-less GOP is held only up to MAX_HELD_PACKETS, then sent: the decoder refuses the first
    assert len(seen) == decode_mod.MAX_HELD_PACKETS and len(sent) == 1 and entries(tmp_path / "cache") == []


def test_a_stream_that_never_flags_a_keyframe_is_refused(tmp_path, monkeypatch):
    """Packets the decoder takes without complaint but that are never keyframes: refused after
    MAX_UNKEYED packets instead of read to the end."""
    path = H.mkv_many_packets(tmp_path / "tiny.mkv", 30_000)
    monkeypatch.setattr(decode_mod._Video, "_send", lambda self, p, skip: None)
    seen = []
    packet = decode_mod._Video.packet
    monkeypatch.setattr(decode_mod._Video, "packet", lambda self, p: (seen.append(1), packet(self, p)))
    with pytest.raises(MediaError, match=r"none of its first 10,000 video packets is a keyframe"):
        decode_clip(path)
    assert len(seen) == decode_mod.MAX_UNKEYED + 1


def test_a_gop_longer_than_the_hold_is_decoded_as_it_comes(tmp_path):
    path = H.h264_frames(tmp_path / "long_gop.mkv", 16, frames=1300, fps=25, keyint=2000)
    auto = decode_clip(path, size=8)
    full = decode_clip(path, size=8, mode="sequential")
    assert auto.num_frames == 52
    np.testing.assert_array_equal(auto.times, full.times)
    np.testing.assert_array_equal(auto.frames, full.frames)


def test_one_frame_then_hours_of_audio_grounds_the_frame(tmp_path):
    path = H.one_frame_then_audio(tmp_path / "audio.mkv", seconds=600)
    decoded = []
    place = decode_mod.AudioTrack._place
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decode_mod.AudioTrack, "_place", lambda self, f: (decoded.append(f.samples), place(self, f)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clip = load_clip(path, size=8, cache_dir=tmp_path / "cache")
    assert clip.num_frames == 1 and clip.duration == 1.0 and clip.has_audio and clip.audio.shape == (16_000,)
    assert sum(decoded) / 192_000 < decode_mod.AUDIO_LEAD_S + 2      # 600 s in the file, about 31 s decoded
    assert any("audio after 31.0 s not decoded: it runs more than 30 s ahead of the video" in str(w.message)
               for w in caught)


def test_audio_past_the_frame_limit_is_not_decoded(tmp_path):
    path = H.one_frame_then_audio(tmp_path / "audio.mkv", seconds=20, rate=48_000, channels=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip = decode_clip(path, size=8, limits=MediaLimits(max_frames=4))
    assert clip.has_audio is False and clip.num_frames == 1
    assert any("an audio packet at" in str(w.message) and "MediaLimits" in str(w.message) for w in caught)


@pytest.mark.parametrize("mode", ["auto", "sequential"])
def test_timestamps_out_of_order_are_refused_naming_them(tmp_path, mode):
    path = H.mjpeg_at(tmp_path / "ooo.mkv", [0, 20, 5, 25, 1, 29])
    with pytest.raises(MediaError, match=r"ooo\.mkv: frame timestamps go backwards \(20\.000 s, then 5\.000 s\)"):
        decode_clip(path, size=8, mode=mode)
    with pytest.raises(MediaError):
        load_clip(path, size=8, cache_dir=tmp_path / "cache")
    assert entries(tmp_path / "cache") == []
    ordered = decode_clip(H.mjpeg_at(tmp_path / "ok.mkv", [0, 1, 5, 20, 25, 29]), size=8, mode=mode)
    assert ordered.times[:3].tolist() == [0.0, 1.0, 1.0]


def test_a_file_replaced_while_it_is_read_never_poisons_the_cache(tmp_path, monkeypatch):
    first = H.h264_frames(tmp_path / "first.mkv", 16, frames=3)
    other = H.h264_frames(tmp_path / "other.mkv", 32, frames=5)
    kept = tmp_path / "first_copy.mkv"
    kept.write_bytes(first.read_bytes())
    cache = tmp_path / "cache"
    digest = cache_mod.file_digest

    def replaced_after_hashing(path):
        d = digest(path)
        os.replace(other, path)           # `mv other.mkv first.mkv` while the first file was being hashed
        return d

    monkeypatch.setattr(cache_mod, "file_digest", replaced_after_hashing)
    with pytest.warns(UserWarning, match=r"first\.mkv: the file changed while it was read; its clip is not cached"):
        clip = load_clip(first, size=8, cache_dir=cache)
    assert clip.num_frames == 5 and entries(cache) == []
    monkeypatch.undo()
    assert load_clip(kept, size=8, cache_dir=cache).num_frames == 3     # the first file's own clip


def test_probe_refuses_a_stream_without_keyframes_early(tmp_path):
    from damo.media import probe

    path = H.mkv_many_packets(tmp_path / "tiny.mkv", 30_000)
    with pytest.raises(MediaError, match=r"tiny\.mkv: none of its first 10,000 video packets is a keyframe"):
        probe(path)
    with pytest.raises(MediaError, match=r"holds more than 100 video packets \(MediaLimits\.max_packets\)"):
        probe(H.h264_frames(tmp_path / "v.mkv", 16, frames=120, fps=25), MediaLimits(max_packets=100))


def test_held_audio_is_bounded_in_bytes_too(tmp_path, monkeypatch):
    path = H.one_frame_then_audio(tmp_path / "audio.mkv", seconds=120)
    monkeypatch.setattr(decode_mod, "MAX_HELD_AUDIO_BYTES", 20_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip = decode_clip(path, size=8)
    held = [str(w.message) for w in caught if "not decoded" in str(w.message)]
    assert clip.has_audio and len(held) == 1
    count = int(held[0].split(" ahead of the video for ")[1].split(" packets")[0].replace(",", ""))
    assert count < decode_mod.MAX_HELD_AUDIO and count * len(H.flac_block(192_000, 8)) > 20_000
