"""Media decoding, audio alignment, log-mel features and the clip cache.

Fixture videos are written with PyAV in temporary folders: frame i is a flat grey image whose level
encodes i, so a decoded frame tells which source frame it is, and the audio carries a tone that
starts at a known time.
"""
from __future__ import annotations

import math
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from damo.media import SAMPLE_RATE, Clip, MediaError, decode_clip, load_clip, log_mel, probe
from damo.media import decode as decode_mod

RATE = 12  # source frames per second; frame i is shown at i / 12 s
LEVEL0, LEVEL_STEP = 8, 5  # grey level of frame i: 8 + 5 i (48 frames -> 8..243)
ONSET = 1.25  # seconds at which the fixture tone starts


def grey(i: int) -> int:
    return LEVEL0 + LEVEL_STEP * i


def frame_index(image: np.ndarray) -> int:
    """Which source frame a decoded (resized) flat grey frame shows."""
    return int(round((float(image.mean()) - LEVEL0) / LEVEL_STEP))


def tone(n: int, sr: int, onset: float, freq: float = 440.0) -> np.ndarray:
    """A cosine of amplitude 0.5 starting at ``onset`` (full amplitude at its first sample)."""
    t = np.arange(n) / sr
    return np.where(t >= onset, 0.5 * np.cos(2 * np.pi * freq * (t - onset)), 0.0).astype(np.float32)


def mux_grey(out, v, seconds: float) -> None:
    """Encode the 32x32 grey ramp (frame i has level ``grey(i)``) at 12 fps into stream ``v`` and flush it."""
    for i in range(int(seconds * RATE)):
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), grey(i), np.uint8), format="rgb24")
        frame.pts = i
        out.mux(v.encode(frame))
    out.mux(v.encode())


def write_video(path: Path, seconds: float = 3.0, gop: int = 12, audio: str | None = None,
                audio_rate: int = 48_000, codec: str = "libx264", garbage_audio: bool = False) -> Path:
    """Write a 32x32 grey-ramp video at 12 fps with an optional tone track (``audio`` = codec name)."""
    out = av.open(str(path), "w")
    v = out.add_stream(codec, rate=RATE)
    v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
    v.codec_context.gop_size = gop
    if codec == "libx264":
        v.options = {"keyint": str(gop), "min-keyint": str(gop), "scenecut": "0", "bframes": "2"}
    a = None
    if audio is not None:
        a = out.add_stream(audio, rate=audio_rate)
        a.layout = "mono"
    mux_grey(out, v, seconds)
    if a is not None and garbage_audio:
        rng = np.random.default_rng(0)
        for k in range(int(seconds * audio_rate / 1152)):
            packet = av.Packet(rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
            packet.stream = a
            packet.pts = packet.dts = int(Fraction(k * 1152, audio_rate) / a.time_base)
            out.mux(packet)
    elif a is not None:
        x = tone(int(seconds * audio_rate), audio_rate, ONSET)
        fmt = a.codec_context.format.name  # fltp for aac, s16 for pcm_s16le
        step = a.codec_context.frame_size or 1024
        for s in range(0, x.shape[0], step):
            chunk = x[s:s + step][None]  # (1, n)
            if fmt.startswith("s16"):
                chunk = np.round(chunk * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="mono")
            frame.sample_rate, frame.pts = audio_rate, s
            out.mux(a.encode(frame))
        out.mux(a.encode())
    out.close()
    return path


def onset_sample(x: np.ndarray, sr: int = SAMPLE_RATE) -> int:
    """First sample of the first 1 ms block whose RMS reaches half the tone's RMS (0.5/sqrt 2)."""
    block = sr // 1000
    rms = np.sqrt((x[: x.shape[0] // block * block].reshape(-1, block) ** 2).mean(axis=1))
    first = int(np.argmax(rms > 0.5 * 0.5 / math.sqrt(2)))
    # refine inside the block: first sample whose magnitude exceeds a tenth of the amplitude
    seg = np.abs(x[max(0, (first - 1) * block):(first + 1) * block])
    return max(0, (first - 1) * block) + int(np.argmax(seg > 0.05))


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def pcm16k(media_dir) -> Path:
    return write_video(media_dir / "pcm16k.mkv", audio="pcm_s16le", audio_rate=16_000)


@pytest.fixture(scope="module")
def pcm48k(media_dir) -> Path:
    return write_video(media_dir / "pcm48k.mkv", audio="pcm_s16le", audio_rate=48_000)


# ---------------------------------------------------------------------------------------------
# frame sampling


@pytest.mark.parametrize("fps", [1.0, 2.0, 5.0])
def test_kept_frames_are_nearest_to_window_centres(pcm16k, fps):
    clip = decode_clip(pcm16k, fps=fps, size=16)
    T = math.ceil(3.0 * fps)
    assert clip.frames.shape == (T, 16, 16, 3) and clip.frames.dtype == np.uint8
    # centres (k + 0.5) / fps fall on 12 * c source frames; none of these lie half-way between two
    expected = [round(RATE * (k + 0.5) / fps) for k in range(T)]
    assert [frame_index(f) for f in clip.frames] == expected
    np.testing.assert_allclose(clip.times, np.array(expected) / RATE, atol=1e-3)
    assert clip.fps == fps and clip.duration == pytest.approx(3.0, abs=0.05)


def test_frames_past_the_last_source_frame_repeat_it(pcm16k):
    clip = decode_clip(pcm16k, fps=1 / 0.7, size=8)  # T = ceil(3 / 0.7) = 5, last centre 3.15 s
    assert clip.num_frames == 5
    assert frame_index(clip.frames[-1]) == 35 and clip.times[-1] == pytest.approx(35 / RATE, abs=1e-3)


def test_probe_describes_the_fixture(pcm16k):
    info = probe(pcm16k)
    assert info["duration"] == pytest.approx(3.0, abs=0.01) and info["fps"] == RATE
    assert (info["width"], info["height"], info["num_frames"]) == (32, 32, 36)
    assert (info["video_codec"], info["audio_codec"], info["has_audio"]) == ("h264", "pcm_s16le", True)
    # x264 with keyint = min-keyint = 12 puts IDR frames 11 apart: frames 0, 11, 22, 33
    assert info["num_keyframes"] == 4 and info["keyframe_interval"] == pytest.approx(11 / RATE, abs=1e-3)  # Matroska keeps ms


def test_native_size_and_square_resize(pcm16k):
    native = decode_clip(pcm16k, fps=1.0, size=None)
    assert native.frames.shape == (3, 32, 32, 3)
    assert decode_clip(pcm16k, fps=1.0, size=7).frames.shape == (3, 7, 7, 3)


def _counting(monkeypatch) -> dict:
    """Count frames reaching the picker and decoding passes (a second pass is the sequential fallback)."""
    seen = {"frames": 0, "passes": 0}
    push, run = decode_mod._Picker.push, decode_mod._decode

    def counted_push(self, t, frame):
        seen["frames"] += 1
        return push(self, t, frame)

    def counted_run(*args, **kwargs):
        seen["passes"] += 1
        return run(*args, **kwargs)

    monkeypatch.setattr(decode_mod._Picker, "push", counted_push)
    monkeypatch.setattr(decode_mod, "_decode", counted_run)
    return seen


def test_skipping_decodes_less_and_keeps_the_frames_a_full_decode_keeps(media_dir, monkeypatch):
    # with keyint = min-keyint = g, x264 places IDR frames g - 1 frames apart
    dense = write_video(media_dir / "dense.mp4", seconds=4.0, gop=4)  # keyframe every 3/12 = 0.25 s
    sparse = write_video(media_dir / "sparse.mp4", seconds=4.0, gop=48)  # keyframes at 0 and 47/12 s
    assert probe(dense)["keyframe_interval"] == pytest.approx(0.25, abs=1e-6)
    assert probe(sparse)["keyframe_interval"] > 3.0
    seen = _counting(monkeypatch)
    for path in (dense, sparse):
        for fps in (1.0, 3.0, 0.4):
            seen.update(frames=0, passes=0)
            full = decode_clip(path, fps=fps, size=8, mode="sequential")
            assert seen == {"frames": 48, "passes": 1}
            seen.update(frames=0, passes=0)
            fast = decode_clip(path, fps=fps, size=8)
            assert seen["passes"] == 1  # the picks agreed with the packet timestamps: no fallback
            assert seen["frames"] < 48 if fps < 3 else seen["frames"] <= 48
            np.testing.assert_array_equal(fast.frames, full.frames)
            np.testing.assert_array_equal(fast.times, full.times)
            np.testing.assert_array_equal(fast.audio, full.audio)
            assert [frame_index(f) for f in fast.frames] == [min(47, round(RATE * (k + 0.5) / fps))
                                                             for k in range(fast.num_frames)]
    # dense keyframes at 1 fps: the GOPs away from the centres are never decoded
    seen.update(frames=0, passes=0)
    decode_clip(dense, fps=1.0, size=8)
    assert seen["frames"] <= 24


def _nal(ref_idc: int, kind: int, body: bytes = b"\x88\x84") -> bytes:
    """One NAL unit with a 4-byte length prefix, as H.264 is stored in MP4."""
    unit = bytes([ref_idc << 5 | kind]) + body
    return len(unit).to_bytes(4, "big") + unit


def test_only_plainly_unreferenced_h264_pictures_are_left_out():
    unref = decode_mod._unreferenced
    assert unref(_nal(0, 9) + _nal(0, 6) + _nal(0, 1) + _nal(0, 1), 4)   # AUD, SEI, two slices of a B picture
    assert not unref(_nal(2, 1), 4)                                      # a reference slice
    assert not unref(_nal(0, 1) + _nal(2, 1), 4)                         # any reference slice keeps it
    assert not unref(_nal(3, 5), 4)                                      # IDR
    assert not unref(_nal(3, 8) + _nal(0, 1), 4)                         # carries a parameter set
    assert not unref(_nal(0, 6) + _nal(0, 9), 4)                         # no picture at all
    assert not unref(_nal(0, 1)[:-1], 4)                                 # truncated
    assert not unref(b"\x00\x00\x00\x00" + _nal(0, 1), 4)              # an empty unit: not what it claims
    assert unref(_nal(0, 1)[2:], 2)                                      # 2-byte length prefixes
    assert unref(memoryview(_nal(0, 9) + _nal(0, 1)), 4)                 # read in place, as from a packet
    many = _nal(0, 9) * (decode_mod._MAX_NALS - 1)
    assert unref(many + _nal(0, 1), 4) and not unref(_nal(0, 9) + many + _nal(0, 1), 4)  # no long scans


class _Recorder:
    """Stands in for a codec context and records the packets handed to its decoder."""

    def __init__(self, cc):
        object.__setattr__(self, "cc", cc)
        object.__setattr__(self, "packets", [])

    def decode(self, packet):
        self.packets.append(packet)
        return self.cc.decode(packet)

    def __getattr__(self, name):
        return getattr(self.cc, name)

    def __setattr__(self, name, value):
        setattr(self.cc, name, value)


def write_panning(path: Path, frames: int = 48) -> Path:
    """A textured 64x48 picture panning sideways at 12 fps, which x264 codes with B frames, some of
    them references (its default B pyramid) and some not; the grey ramp gets P frames alone."""
    rng = np.random.default_rng(0)
    texture = np.repeat(np.repeat(rng.integers(0, 256, (12, 16 + frames, 3), dtype=np.uint8), 4, 0), 4, 1)
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=RATE)
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, 2 * i:2 * i + 64]), format="rgb24")
        frame.pts = i
        out.mux(v.encode(frame))
    out.mux(v.encode())
    out.close()
    return path


@pytest.mark.parametrize("threads", ["1", "2"])
def test_unreferenced_b_frames_are_never_sent_and_the_frames_stay_those_of_a_full_decode(
        media_dir, monkeypatch, threads):
    path = media_dir / "panning.mp4"
    if not path.exists():
        write_panning(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        kinds = {f.pts: int(f.pict_type) for p in container.demux(stream) for f in stream.codec_context.decode(p)}
    monkeypatch.setenv("DAMO_THREADS", threads)
    monkeypatch.setattr(decode_mod, "MIN_THREADED_PIXELS", 0)  # frame threads even on 64x48
    decoders, init = [], decode_mod._Video.__init__

    def recording(self, *args):
        init(self, *args)
        self.cc = _Recorder(self.cc)
        decoders.append(self.cc)

    monkeypatch.setattr(decode_mod._Video, "__init__", recording)
    full = decode_clip(path, fps=1.0, size=8, mode="sequential")
    fast = decode_clip(path, fps=1.0, size=8)
    np.testing.assert_array_equal(fast.frames, full.frames)
    np.testing.assert_array_equal(fast.times, full.times)
    every, sent = ([p.pts for p in d.packets if p is not None] for d in decoders)
    assert len(every) == 48
    needed = every[:every.index(sent[-1]) + 1]   # packets past the last one a kept frame needs are cut
    left_out = [pts for pts in needed if pts not in sent]
    b_frames = [pts for pts in needed if kinds[pts] == int(av.video.frame.PictureType.B)]
    assert left_out and set(left_out) < set(b_frames)   # some B frames are references: those are sent


def test_a_wrong_skip_falls_back_to_a_full_decode(pcm16k, monkeypatch):
    """If the decoder's picks disagree with the packet timestamps, the file is decoded again in full."""
    seen = _counting(monkeypatch)
    monkeypatch.setattr(decode_mod._Video, "check_picks",
                        lambda self, times: (_ for _ in ()).throw(decode_mod._Mismatch()) if self.skip else None)
    clip = decode_clip(pcm16k, fps=1.0, size=8)
    assert seen["passes"] == 2 and [frame_index(f) for f in clip.frames] == [6, 18, 30]


# ---------------------------------------------------------------------------------------------
# audio


def test_pcm_tone_onset_lands_on_its_sample(pcm16k, pcm48k):
    for path in (pcm16k, pcm48k):
        clip = decode_clip(path, fps=1.0, size=8)
        assert clip.has_audio and clip.audio.dtype == np.float32
        assert clip.audio.shape == (3 * SAMPLE_RATE,)
        assert abs(onset_sample(clip.audio) - ONSET * SAMPLE_RATE) <= 16  # 1 ms
        assert np.abs(clip.audio[: int(1.2 * SAMPLE_RATE)]).max() < 0.01  # silence before the tone
    exact = decode_clip(pcm16k, fps=1.0, size=8).audio  # no resampling: sample-exact
    np.testing.assert_allclose(exact, tone(3 * SAMPLE_RATE, SAMPLE_RATE, ONSET), atol=2e-4)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_aac_priming_does_not_shift_the_timeline(media_dir, pcm48k, suffix):
    aac = write_video(media_dir / f"aac{suffix}", audio="aac", audio_rate=48_000)
    a = decode_clip(aac, fps=1.0, size=8).audio
    ref = decode_clip(pcm48k, fps=1.0, size=8).audio
    # AAC priming is 1024 samples = 21 ms at 48 kHz: an unaligned decoder would be that late
    assert abs(onset_sample(a) - onset_sample(ref)) <= 0.003 * SAMPLE_RATE
    steady = slice(int(1.5 * SAMPLE_RATE), int(2.5 * SAMPLE_RATE))
    assert np.corrcoef(a[steady], ref[steady])[0, 1] > 0.99  # same phase, not just same onset


def write_shifted_pcm(path: Path, shifts: dict[int, int], frames: int = 20, step: int = 1600) -> np.ndarray:
    """A 2-s grey video with a 16 kHz PCM track of ``frames`` frames of noise, frame k stamped
    ``shifts.get(k, 0)`` samples late; returns the noise as [-1, 1] floats."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=RATE)
    v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
    a = out.add_stream("pcm_s16le", rate=SAMPLE_RATE)
    a.layout = "mono"
    mux_grey(out, v, 2.0)
    noise = np.random.default_rng(0).integers(-8000, 8000, (1, frames * step), dtype=np.int16)
    for k in range(frames):
        frame = av.AudioFrame.from_ndarray(noise[:, k * step:(k + 1) * step], format="s16", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, k * step + shifts.get(k, 0)
        out.mux(a.encode(frame))
    out.mux(a.encode())
    out.close()
    return noise[0] / np.float32(32768)


def test_a_lone_mistimed_audio_frame_is_laid_end_to_end_but_a_real_jump_is_kept(media_dir):
    # frame 5 stamped 10 ms late, as Vorbis frames in WebM are after a block-size switch: no gap
    noise = write_shifted_pcm(media_dir / "mistimed.mkv", {5: 160})
    clip = decode_clip(media_dir / "mistimed.mkv", fps=1.0, size=8)
    np.testing.assert_array_equal(clip.audio[:noise.shape[0]], noise)
    # frames 10 on stamped half a second late: that much silence, then the sound resumes
    noise = write_shifted_pcm(media_dir / "jump.mkv", {k: 8000 for k in range(10, 20)})
    clip = decode_clip(media_dir / "jump.mkv", fps=1.0, size=8)
    np.testing.assert_array_equal(clip.audio[:16000], noise[:16000])
    assert not clip.audio[16000:24000].any()
    np.testing.assert_array_equal(clip.audio[24000:40000], noise[16000:32000])


def test_missing_audio_stores_no_samples_and_features_are_silence(media_dir, tmp_path):
    path = write_video(media_dir / "silent.mp4", seconds=2.0)
    clip = decode_clip(path, fps=1.0, size=8)
    assert not clip.has_audio and clip.audio.shape == (0,)
    wave = clip.waveform()  # callers that want a timeline get zeros of the clip's length
    assert wave.shape == (2 * SAMPLE_RATE,) and wave.dtype == np.float32 and not wave.any()
    feats = log_mel(clip.audio, SAMPLE_RATE, clip.fps, clip.num_frames)
    assert feats.shape == (2, 100, 32)
    np.testing.assert_allclose(feats, math.log(1e-6), atol=1e-6)
    cached = load_clip(path, fps=1.0, size=8, cache_dir=tmp_path)
    assert not cached.has_audio and cached.audio.shape == (0,)
    (entry,) = tmp_path.glob("*.npz")
    assert entry.stat().st_size < cached.frames.nbytes + 4096  # frames, times and a few scalars


def test_undecodable_audio_is_dropped_with_a_warning(media_dir):
    path = write_video(media_dir / "badaudio.mkv", audio="libmp3lame", audio_rate=44_100, garbage_audio=True)
    with pytest.warns(UserWarning, match="badaudio.mkv.*audio"):
        clip = decode_clip(path, fps=1.0, size=8)
    assert not clip.has_audio and not clip.audio.any()
    assert [frame_index(f) for f in clip.frames[:3]] == [6, 18, 30]


# ---------------------------------------------------------------------------------------------
# real files


# duration (s), has an audio track, per the shared data README (charades from its container)
SHARED = {
    "charades_0F7LW.mp4": (30.7, True),
    "big_buck_bunny_0_30.webm": (30.0, True),
    "chaplin.mp4": (9.6, True),
    "video_with_failing_audio.mp4": (11.3, True),
    "transparent.webm": (5.0, True),
    "test_video.mp4": (5.0, False),
    "bikes.mp4": (10.0, False),
    "carphone_pristine.mp4": (4.0, False),
}


def test_every_shared_video_decodes(shared_data):
    videos = sorted((shared_data / "videos").iterdir())
    assert {p.name for p in videos} == set(SHARED), "update SHARED with the new shared videos"
    for path in videos:
        duration, has_audio = SHARED[path.name]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # none of these should need to drop a track
            clip = decode_clip(path, fps=1.0, size=16)
        assert clip.duration == pytest.approx(duration, abs=0.1), path.name
        assert clip.num_frames == math.ceil(clip.duration - 1e-6), path.name
        assert clip.frames.shape[1:] == (16, 16, 3)
        assert clip.has_audio == has_audio, path.name
        n_audio = math.ceil(clip.duration * SAMPLE_RATE - 1e-6) if has_audio else 0
        assert clip.audio.shape == (n_audio,)
        assert np.all(np.diff(clip.times) > 0) or clip.num_frames == 1, path.name
        # a kept frame lies in or next to its own window (nearest to the centre, sparse sources aside)
        window = np.arange(clip.num_frames)
        assert np.all(clip.times < (window + 1) / clip.fps + 0.25), path.name
    # the WebM's video starts 3 ms into the timeline (Vorbis audio starts at 0): frames sit at
    # 0.003 + k / 24 s and those times are kept, not shifted to 0
    bunny = decode_clip(shared_data / "videos" / "big_buck_bunny_0_30.webm", fps=1.0, size=8)
    np.testing.assert_allclose(bunny.times[:3], [0.503, 1.503, 2.503], atol=1e-9)
    info = probe(shared_data / "videos" / "charades_0F7LW.mp4")
    assert (info["width"], info["height"], info["video_codec"], info["audio_codec"]) == (320, 480, "h264", "aac")
    assert info["fps"] == pytest.approx(6.1, abs=0.05)


def test_shared_audio_is_aligned_and_real(shared_data):
    chaplin = decode_clip(shared_data / "videos" / "chaplin.mp4", fps=1.0, size=8)
    assert chaplin.has_audio and np.abs(chaplin.audio).max() > 0.1
    silent = decode_clip(shared_data / "videos" / "transparent.webm", fps=1.0, size=8)
    assert silent.has_audio and np.abs(silent.audio).max() < 1e-3  # the README's "silent Vorbis"


def test_degenerate_one_pixel_video(shared_data):
    clip = decode_clip(shared_data / "videos" / "test_video.mp4", fps=2.0, size=None)
    assert clip.frames.shape == (10, 1, 1, 3)
    # 1 fps source frames at 0..4 s; centres 0.25, 0.75, 1.25 ... -> frames 0, 1 (0.75 is nearer 1), 1, 2 ...
    np.testing.assert_allclose(clip.times, [0, 1, 1, 2, 2, 3, 3, 4, 4, 4], atol=1e-6)
    # at 1 fps every centre k + 0.5 is equally far from frames k and k + 1: ties go to the earlier
    np.testing.assert_allclose(decode_clip(clip.source, fps=1.0, size=None).times, [0, 1, 2, 3, 4], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_files_raise_media_error_naming_them(tmp_path, pcm16k):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    good = pcm16k.read_bytes()
    truncated_mkv = tmp_path / "cut.mkv"
    truncated_mkv.write_bytes(good[: len(good) // 2])
    mp4 = write_video(tmp_path / "whole.mp4", seconds=2.0).read_bytes()
    truncated_mp4 = tmp_path / "cut.mp4"
    truncated_mp4.write_bytes(mp4[: len(mp4) * 2 // 3])
    audio_only = tmp_path / "voice.wav"
    with av.open(str(audio_only), "w") as out:
        a = out.add_stream("pcm_s16le", rate=16_000)
        a.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16_000), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16_000, 0
        out.mux(a.encode(frame))
        out.mux(a.encode())
    cases = {
        tmp_path / "missing.mp4": "no such file",
        empty: "empty",
        text: "not a readable media file",
        truncated_mkv: "truncated",
        truncated_mp4: "no audio or video stream",  # the index (moov) at the end is gone
        audio_only: "no video stream",
    }
    for path, problem in cases.items():
        with pytest.raises(MediaError, match=problem) as err:
            decode_clip(path)
        assert str(path) in str(err.value)
        assert "Traceback" not in str(err.value)
    with pytest.raises(MediaError, match="missing.mp4"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="missing.mp4"):
        load_clip(tmp_path / "missing.mp4", cache_dir=tmp_path / "cache")


def test_a_file_named_for_another_container_decodes_as_what_it_is(tmp_path):
    # the extension only names the demuxer tried first; a file it rejects is probed like any other
    mkv = write_video(tmp_path / "real.mkv", seconds=2.0, audio="aac")
    mp4 = write_video(tmp_path / "real.mp4", seconds=2.0)
    for real, liar in ((mkv, tmp_path / "liar.mp4"), (mp4, tmp_path / "liar.webm"), (mp4, tmp_path / "liar.mov")):
        liar.write_bytes(real.read_bytes())
        want, got = decode_clip(real), decode_clip(liar)
        assert np.array_equal(got.frames, want.frames) and np.array_equal(got.times, want.times)
        assert np.array_equal(got.audio, want.audio) and got.has_audio == want.has_audio


def test_bad_arguments_say_what_to_pass(pcm16k):
    with pytest.raises(ValueError, match="fps"):
        decode_clip(pcm16k, fps=0)
    with pytest.raises(ValueError, match="size"):
        decode_clip(pcm16k, size=0)


# ---------------------------------------------------------------------------------------------
# cache


def _fail(*args, **kwargs):
    raise AssertionError("decoded although the clip was cached")


def test_cache_returns_identical_clip_without_decoding(pcm16k, tmp_path, monkeypatch):
    first = load_clip(pcm16k, fps=2.0, size=16, cache_dir=tmp_path)
    entries = list(tmp_path.glob("*.npz"))
    assert len(entries) == 1 and not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(decode_mod, "decode_clip", _fail)
    copy = tmp_path / "renamed.mkv"  # same content under another name shares the entry
    copy.write_bytes(pcm16k.read_bytes())
    for path in (pcm16k, copy):
        again = load_clip(path, fps=2.0, size=16, cache_dir=tmp_path)
        assert isinstance(again, Clip) and again.source == str(path)
        for field in ("frames", "times", "audio"):
            np.testing.assert_array_equal(getattr(again, field), getattr(first, field))
        assert (again.duration, again.fps, again.has_audio) == (first.duration, first.fps, first.has_audio)
    with pytest.raises(AssertionError, match="decoded"):
        load_clip(pcm16k, fps=1.0, size=16, cache_dir=tmp_path)  # other parameters: a new entry


def test_cache_rebuilds_corrupt_entry_and_uses_env_dir(pcm16k, tmp_path, monkeypatch):
    monkeypatch.setenv("DAMO_CACHE", str(tmp_path / "env"))
    first = load_clip(pcm16k, fps=1.0, size=8)
    (entry,) = (tmp_path / "env").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])  # a torn write
    calls = []
    real = decode_mod.decode_clip
    monkeypatch.setattr(decode_mod, "decode_clip", lambda *a, **k: calls.append(1) or real(*a, **k))
    rebuilt = load_clip(pcm16k, fps=1.0, size=8)
    assert calls == [1]
    np.testing.assert_array_equal(rebuilt.frames, first.frames)
    load_clip(pcm16k, fps=1.0, size=8)
    assert calls == [1]  # the rebuilt entry is good


def test_cache_repeats_the_dropped_audio_warning(media_dir, tmp_path):
    path = write_video(media_dir / "badaudio2.mkv", audio="libmp3lame", audio_rate=44_100, garbage_audio=True)
    for _ in range(2):
        with pytest.warns(UserWarning, match="audio"):
            clip = load_clip(path, fps=1.0, size=8, cache_dir=tmp_path)
        assert not clip.has_audio


# ---------------------------------------------------------------------------------------------
# log-mel


def test_log_mel_shape_and_window_alignment():
    audio = np.zeros(int(2.5 * SAMPLE_RATE), np.float32)
    feats = log_mel(audio, num_frames=4)
    assert feats.shape == (4, 100, 32) and feats.dtype == np.float32
    assert log_mel(audio).shape == (3, 100, 32)  # default: as many windows as the audio needs
    assert log_mel(audio, fps=2.0, num_frames=3, n_mels=16).shape == (3, 50, 16)
    np.testing.assert_allclose(feats, math.log(1e-6), atol=1e-5)  # silence is the floor
    # a click at 1.5 s (sample 24000) lies inside the 400-sample windows centred 0 and +-160
    # samples away, i.e. global STFT frames 149..151 = frames 49..51 of window 1, and nowhere else
    click = audio.copy()
    click[int(1.5 * SAMPLE_RATE)] = 1.0
    energy = log_mel(click, num_frames=4).max(axis=2)  # (T, F)
    loud = np.argwhere(energy > math.log(1e-6) + 1)
    assert sorted(map(tuple, loud.tolist())) == [(1, 49), (1, 50), (1, 51)]


def test_log_mel_puts_a_1khz_tone_in_its_mel_bin():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    feats = log_mel(np.sin(2 * np.pi * 1000 * t).astype(np.float32), num_frames=1)
    # Slaney mel: 1 kHz is 15 mel; 32 filters spread to mel(8 kHz) = 15 + 27 ln 8 / ln 6.4 = 45.245,
    # centres at (k + 1) * 45.245 / 33 -> filter k = 10 (centre 15.08 mel, about 1005 Hz)
    assert np.bincount(feats[0, 5:95].argmax(axis=1)).argmax() == 10
    assert (feats[0, 50].max() - np.median(feats[0, 50])) > 5  # the tone stands far above the rest


def test_log_mel_rejects_stereo():
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, 16_000), np.float32))


# ---------------------------------------------------------------------------------------------
# display rotation


def write_rotated(path: Path, degrees: int | None) -> Path:
    """A 48x32 H.264 clip whose top-left corner is white, with a display matrix of ``degrees``.

    The coded pictures are identical whatever ``degrees`` is; only the container's display matrix
    (what a phone writes when held sideways or upside down) differs.
    """
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=RATE)
    v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
    v.options = {"qp": "0"}
    if degrees is not None:
        v.set_display_rotation(degrees)  # counter-clockwise, as VideoFrame.rotation reads it back
    image = np.full((32, 48, 3), 40, np.uint8)
    image[:8, :16] = 250
    for i in range(RATE * 2):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = i
        out.mux(v.encode(frame))
    out.mux(v.encode())
    out.close()
    return path


@pytest.mark.parametrize("degrees", [180, 90, -90])
def test_display_rotation_decodes_upright(tmp_path, degrees):
    plain = write_rotated(tmp_path / "plain.mp4", None)
    turned = write_rotated(tmp_path / f"turned{degrees}.mp4", degrees)
    for size in (None, 16):
        source = decode_clip(plain, fps=1.0, size=size).frames
        shown = decode_clip(turned, fps=1.0, size=size).frames
        # upright = the coded picture turned by the display matrix (counter-clockwise degrees)
        np.testing.assert_array_equal(shown, np.rot90(source, degrees // 90, axes=(1, 2)))
    native = decode_clip(turned, fps=1.0, size=None).frames[0]
    assert native.shape == ((32, 48, 3) if degrees == 180 else (48, 32, 3))
    bright = np.argwhere(native[..., 0] > 200)
    corner = {180: "bottom-right", 90: "bottom-left", -90: "top-right"}[degrees]
    rows, cols = native.shape[:2]
    r, c = bright.mean(axis=0)
    assert corner == f"{'top' if r < rows / 2 else 'bottom'}-{'left' if c < cols / 2 else 'right'}"


@pytest.mark.parametrize("codec, fmt", [("pcm_s16le", "s16"), ("flac", "s16"), ("aac", "fltp"), ("pcm_f32le", "flt")])
def test_stereo_is_averaged_to_mono(tmp_path, codec, fmt):
    """Left carries the tone, right its negative times 0.5: mono is a quarter-amplitude tone."""
    path = tmp_path / f"stereo_{codec}.mkv"
    sr = 48_000
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=RATE)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        a = out.add_stream(codec, rate=sr)
        a.layout = "stereo"
        mux_grey(out, v, 2.0)
        x = tone(2 * sr, sr, ONSET) * 1.6  # amplitude 0.8
        both = np.stack([x, -0.5 * x])     # (2, n)
        step = a.codec_context.frame_size or 1024
        for s in range(0, both.shape[1], step):
            chunk = both[:, s:s + step]
            data = np.round(chunk * 32767).astype(np.int16) if fmt == "s16" else chunk
            if not fmt.endswith("p"):   # packed: the channels interleaved in one plane
                data = data.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout="stereo")
            frame.sample_rate, frame.pts = sr, s
            out.mux(a.encode(frame))
        out.mux(a.encode())
    audio = decode_clip(path, fps=1.0, size=8).audio
    steady = audio[int(1.5 * SAMPLE_RATE):int(1.9 * SAMPLE_RATE)]
    assert np.abs(steady).max() == pytest.approx(0.2, abs=0.01)  # (0.8 - 0.4) / 2
    assert abs(onset_sample(audio * 2.5) - ONSET * SAMPLE_RATE) <= 0.003 * SAMPLE_RATE
