"""Robustness matrix: real and broken files, odd names and odd annotations through the API and CLI.

Every case ends in one of two clear outcomes: the video is decoded and grounded (with a duration,
frames on the right timeline, spans inside the video), or a MediaError/ValueError whose message
names the file and the problem. The CLI turns those into one ``error:`` line and exit code 2,
never a traceback.
"""
from __future__ import annotations

import json
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import damo
from damo.cli import main
from damo.media import MediaError
from test_ground import grounder, model_dir  # noqa: F401 (fixtures shared with the grounding tests)

Q = "what happens in the video?"

# Every shared real video decodes; `audio` is whether its sound track survives decoding.
SHARED = {
    "big_buck_bunny_0_30.webm": {"duration": 30.0, "audio": True},     # VP8 + Vorbis
    "bikes.mp4": {"duration": 10.0, "audio": False},                   # no audio stream
    "carphone_pristine.mp4": {"duration": 4.0, "audio": False},
    "chaplin.mp4": {"duration": 9.6, "audio": True},                   # MP3 audio
    "charades_0F7LW.mp4": {"duration": 30.7, "audio": True},           # real Charades-STA test video
    "test_video.mp4": {"duration": 5.0, "audio": False},               # 1x1 pixels, 1 fps
    "transparent.webm": {"duration": 5.0, "audio": True},              # VP9 with alpha, silent Vorbis
    "video_with_failing_audio.mp4": {"duration": 11.2, "audio": True},  # MP3 that some readers fail on
}


def check_grounded(r: dict, duration: float) -> None:
    assert r["duration"] == pytest.approx(duration, abs=0.1)
    assert r["answer"] == "red" and r["spans"]
    for sp in r["spans"]:
        assert 0 <= sp["start"] <= sp["end"] <= r["duration"] + 1e-6


def write_video(path, pts_ms, fmt: str, options: dict | None = None, size: int = 32):
    """An H.264 file (a path or a writable object) whose frame ``j`` is shown at ``pts_ms[j]`` ms."""
    with av.open(str(path) if isinstance(path, Path) else path, "w", format=fmt, options=options or {}) as out:
        s = out.add_stream("libx264", rate=25)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"threads": "1"}
        for j, t in enumerate(pts_ms):
            f = av.VideoFrame.from_ndarray(np.full((size, size, 3), 8 * j % 256, np.uint8), format="rgb24")
            f.pts, f.time_base = int(t), Fraction(1, 1000)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


# ------------------------------------------------------------------------ real files

@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_videos_are_grounded(grounder, shared_data, name):
    path = shared_data / "videos" / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # a dropped audio track is warned about, and tested in media
        r = grounder.ground(path, Q)
        clip = grounder.clips.raw(str(path))
    check_grounded(r, SHARED[name]["duration"])
    assert clip.has_audio == SHARED[name]["audio"]
    S = grounder.model.cfg.vision.image_size
    assert clip.frames.shape[1:] == (S, S, 3)   # decoded at the tower's size; even the 1x1 video


def test_every_shared_video_is_in_the_matrix(shared_data):
    assert {p.name for p in (shared_data / "videos").iterdir()} == set(SHARED)


# ------------------------------------------------------------------- broken files

def test_truncated_matroska(grounder, clip_mkv, tmp_path):
    bad = tmp_path / "cut.mkv"
    bad.write_bytes(clip_mkv.read_bytes()[: clip_mkv.stat().st_size // 3])
    with pytest.raises(MediaError, match=r"cut\.mkv.*truncated"):
        grounder.ground(bad, Q)


def test_truncated_mp4_without_index(grounder, tmp_path):
    full = write_video(tmp_path / "full.mp4", np.arange(0, 4000, 40), "mp4")   # index written at the end
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(MediaError, match=r"cut\.mp4: not a readable media file"):
        grounder.ground(bad, Q)


def test_zero_byte_file(grounder, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match=r"empty\.mp4: file is empty \(0 bytes\)"):
        grounder.ground(tmp_path / "empty.mp4", Q)


def test_text_file_renamed_mp4(grounder, tmp_path):
    (tmp_path / "notes.mp4").write_text("meeting notes\nnot a video at all\n")
    with pytest.raises(MediaError, match=r"notes\.mp4: not a readable media file"):
        grounder.ground(tmp_path / "notes.mp4", Q)


def test_audio_only_file(grounder, tmp_path):
    path = tmp_path / "song.m4a"
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("aac", rate=16000, layout="mono")
        t = np.arange(16000 * 2) / 16000
        frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32),
                                           format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in list(s.encode(frame)) + list(s.encode()):
            out.mux(p)
    with pytest.raises(MediaError, match=r"song\.m4a: has no video stream.*audio-only"):
        grounder.ground(path, Q)


def test_missing_file_and_folder(grounder, tmp_path):
    with pytest.raises(MediaError, match=r"nope\.mp4: no such file"):
        grounder.ground(tmp_path / "nope.mp4", Q)
    with pytest.raises(MediaError, match="no such file"):
        grounder.ground(tmp_path, Q)


def test_raw_h264_stream_without_timestamps_is_refused_clearly(grounder, tmp_path):
    """An elementary H.264 stream carries no timestamps; it is refused with a message naming it."""
    path = write_video(tmp_path / "raw.h264", np.arange(0, 3000, 40), "h264")
    with pytest.raises(MediaError, match=r"raw\.h264: "):
        grounder.ground(path, Q)


# ----------------------------------------------------------------- timing quirks

def test_variable_frame_rate(grounder, tmp_path):
    """Frames 20 ms to 1 s apart: every 1-fps sample is the frame shown nearest its window centre."""
    rng = np.random.default_rng(0)
    pts = np.cumsum(np.r_[0, rng.choice([20, 40, 100, 250, 1000], 40)])
    path = write_video(tmp_path / "vfr.mp4", pts, "mp4")
    r = grounder.ground(path, Q)
    clip = grounder.clips.raw(str(path))
    T = clip.num_frames
    assert T == int(np.ceil(r["duration"]))
    centres = np.arange(T) + 0.5
    nearest = pts[np.abs(pts[None, :] / 1000 - centres[:, None]).argmin(1)] / 1000
    assert np.allclose(clip.times, nearest, atol=1e-3)
    check_grounded(r, r["duration"])


@pytest.mark.parametrize("how", ["live", "pipe"])
def test_missing_container_duration(grounder, tmp_path, how):
    """Matroska written live or to a pipe has no duration in its header; the packets tell it."""
    path = tmp_path / f"{how}.mkv"
    pts = np.arange(0, 5000, 40)
    if how == "live":
        write_video(path, pts, "matroska", {"live": "1"})
    else:
        class Pipe:   # a write-only stream: the muxer cannot seek back to fill in the duration
            def __init__(self):
                self.data = bytearray()

            def write(self, b) -> int:
                self.data += b
                return len(b)
        pipe = Pipe()
        write_video(pipe, pts, "matroska")
        path.write_bytes(pipe.data)
    with av.open(str(path)) as c:
        assert c.duration is None and c.streams.video[0].duration is None
    r = grounder.ground(path, Q)
    check_grounded(r, 5.0)
    assert np.allclose(grounder.clips.raw(str(path)).times, np.arange(5) + 0.48, atol=1e-3)


# --------------------------------------------------------------------- odd names

def test_name_with_leading_dash_and_spaces(grounder, model_dir, clip_mkv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAMO_CACHE", str(tmp_path / "cache"))
    name = "-weird name (v2).mkv"
    Path(name).write_bytes(clip_mkv.read_bytes())
    check_grounded(grounder.ground(name, Q), 13.0)
    assert main(["ground", "--model", str(model_dir), "--quiet", "--json", "--", name, Q]) == 0
    check_grounded(json.loads(capsys.readouterr().out), 13.0)
    # a dash name without spaces looks like an option: "--" is needed, and argparse says so without it
    Path("-clip.mkv").write_bytes(clip_mkv.read_bytes())
    assert main(["ground", "--model", str(model_dir), "--quiet", "--json", "--", "-clip.mkv", Q]) == 0
    check_grounded(json.loads(capsys.readouterr().out), 13.0)
    with pytest.raises(SystemExit) as e:
        main(["ground", "--model", str(model_dir), "-clip.mkv", Q])
    assert e.value.code == 2 and "unrecognized arguments: -clip.mkv" in capsys.readouterr().err


def test_cli_reports_bad_files_in_one_line(model_dir, tmp_path, capsys):
    cases = {"empty.mp4": b"", "notes.mp4": b"not a video\n", "cut.webm": b"\x1aE\xdf\xa3" + bytes(100)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert main(["ground", str(tmp_path / name), Q, "--model", str(model_dir), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / name}: ") and err.count("\n") == 1, err


# ------------------------------------------------------------------ annotation quirks

def test_empty_query(grounder, clip_mkv, model_dir, capsys):
    with pytest.raises(ValueError, match="query is empty; ask a question"):
        grounder.ground(clip_mkv, "  ")
    assert main(["ground", str(clip_mkv), "", "--model", str(model_dir), "--quiet"]) == 2
    assert "query is empty" in capsys.readouterr().err


def test_batch_non_utf8_query_is_a_recorded_failure(model_dir, clip_mkv, tmp_path, capsys):
    src = tmp_path / "requests.jsonl"
    good = json.dumps({"video": str(clip_mkv), "query": "when does the café sign light up?"},
                      ensure_ascii=False).encode()
    latin1 = json.dumps({"video": str(clip_mkv), "query": "when does the café open?"},
                        ensure_ascii=False).encode("utf-8").replace("é".encode(), b"\xe9")
    src.write_bytes(good + b"\n" + latin1 + b"\n" + good + b"\n")
    out = tmp_path / "results.jsonl"
    assert main(["ground", "--batch", str(src), "--out", str(out), "--model", str(model_dir), "--quiet"]) == 1
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [("error" in r) for r in rows] == [False, True, False]
    assert rows[0]["query"] == "when does the café sign light up?"
    assert rows[1]["video"] == str(clip_mkv) and rows[1]["line"] == 2
    assert "not valid UTF-8 (byte 0xe9" in rows[1]["error"]
    assert "line 2: " in capsys.readouterr().err


def test_truth_past_duration_and_reversed_through_cli(model_dir, clip_mkv, capsys):
    assert main(["ground", str(clip_mkv), Q, "--model", str(model_dir), "--quiet", "--json",
                 "--truth", "11-30,8-2,14-20"]) == 0
    r = json.loads(capsys.readouterr().out)
    # 11-30 clipped to 13 s, 8-2 swapped, 14-20 starts after the end and is dropped
    assert r["truth"] == [[11.0, 13.0], [2.0, 8.0]]
    assert r["truth_fixed"] == {"end_past_duration": 1, "reversed": 1, "start_past_duration": 1}


def test_video_longer_than_the_model_takes(model_dir, tmp_path):
    g = damo.load(model_dir, cache_dir=tmp_path / "cache")
    g.model.cfg.max_frames = 4
    path = write_video(tmp_path / "long.mp4", np.arange(0, 6000, 200), "mp4")
    with pytest.raises(ValueError, match=r"long\.mp4: 6 s gives 6 frames .* cut the video"):
        g.ground(path, Q)


# ------------------------------------------------------------------------ long videos

@pytest.mark.slow
def test_ten_minute_video_decodes_with_bounded_memory(tmp_path):
    """600 s at 1 fps, 320x240 native: memory holds the 64x64 samples and the audio timeline only.

    Keeping decoded native frames would cost 138 MB; the bound below is the output arrays plus
    16 MB of working room. Time and memory at 10, 30 and 60 minutes are in bench/long_video.py.
    """
    import tracemalloc

    from damo.media import decode_clip

    path = tmp_path / "ten_minutes.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=1)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        s.options = {"g": "10", "preset": "ultrafast", "threads": "1"}
        img = np.zeros((240, 320, 3), np.uint8)
        for t in range(600):
            img[:] = t % 200
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = t, Fraction(1, 1)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    tracemalloc.start()
    try:
        clip = decode_clip(path, fps=1.0, size=64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert clip.frames.shape == (600, 64, 64, 3) and clip.duration == pytest.approx(600.0)
    assert np.allclose(clip.times, np.arange(600), atol=1e-6)   # one frame per second, pts t
    assert (np.abs(clip.frames[:, 0, 0, 0].astype(int) - np.arange(600) % 200) <= 3).all()
    assert peak < clip.frames.nbytes + clip.audio.nbytes + 16 * 2**20
