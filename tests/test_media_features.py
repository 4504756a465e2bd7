"""Audio features: Whisper's exact input (against transformers' extractor) and the fast log-mel."""
from __future__ import annotations

import math

import numpy as np
import pytest

from damo.media import SAMPLE_RATE, decode_clip
from damo.media.audio import (WHISPER_FRAMES, log_mel, mel_filters, whisper_log_mel,
                              whisper_log_mel_windows)


@pytest.fixture(scope="module")
def charades_audio(shared_data) -> np.ndarray:
    """The real 30.7 s Charades clip's AAC track, decoded to 16 kHz mono float32."""
    clip = decode_clip(shared_data / "videos" / "charades_0F7LW.mp4", fps=1.0, size=8)
    assert clip.has_audio and np.abs(clip.audio).max() > 0.05
    return clip.audio


@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_features_equal_the_feature_extractor(charades_audio, n_mels):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)   # built from its constructor: nothing downloads
    for audio in (charades_audio[: 30 * SAMPLE_RATE], charades_audio[: 7 * SAMPLE_RATE + 13]):
        ref = extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"][0]
        ours = whisper_log_mel(audio, n_mels=n_mels)
        assert ref.shape == ours.shape == (n_mels, 3000) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_whisper_features_of_long_audio_are_per_30s_chunk(charades_audio):
    """Past 30 s every chunk is what the extractor gives for that chunk alone (its own max floor)."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80)
    head = charades_audio[: 30 * SAMPLE_RATE]
    quiet_then_loud = np.concatenate([0.01 * head, head])   # 40 dB quieter, then the same 30 s
    ours = whisper_log_mel(quiet_then_loud)
    assert ours.shape == (80, 6000)
    for c in range(2):
        chunk = quiet_then_loud[c * 30 * SAMPLE_RATE:(c + 1) * 30 * SAMPLE_RATE]
        ref = extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"][0]
        np.testing.assert_allclose(ours[:, c * 3000:(c + 1) * 3000], ref, atol=1e-4, rtol=0)
    # each chunk is floored at its own max - 8 (2 after the / 4): the quiet one's top is 1 lower
    quiet, loud = ours[:, :3000], ours[:, 3000:]
    assert quiet.max() == pytest.approx(loud.max() - 1.0, abs=1e-3)
    for chunk in (quiet, loud):   # digital silence sits at log10(1e-10) = -10 -> -1.5 unless max - 8 is higher
        assert chunk.min() == pytest.approx(max(chunk.max() - 2.0, -1.5), abs=1e-3)


@pytest.mark.parametrize("fps", [1.0, 2.0, 0.7])
def test_whisper_windows_cut_the_stream_like_log_mel(charades_audio, fps):
    T = math.ceil(30.7 * fps - 1e-6)
    windows = whisper_log_mel_windows(charades_audio, fps=fps, num_frames=T, n_mels=80)
    F = int(100 / fps)
    assert windows.shape == (T, F, 80)
    stream = whisper_log_mel(charades_audio, n_mels=80)           # (80, 6000): two 30 s chunks
    for i in range(T):
        start = round(i * 100 / fps)
        k = np.minimum(start + np.arange(F), stream.shape[1] - 1)
        np.testing.assert_array_equal(windows[i], stream[:, k].T)
    assert whisper_log_mel_windows(charades_audio, fps=1.0).shape == (31, 100, 80)   # default: the whole audio


def test_features_of_int16_and_missing_audio():
    rng = np.random.default_rng(0)
    wave = (0.3 * rng.standard_normal(3 * SAMPLE_RATE)).clip(-1, 1).astype(np.float32)
    as16 = np.round(wave * 32767).astype(np.int16)
    np.testing.assert_allclose(log_mel(as16, num_frames=3), log_mel(wave, num_frames=3), atol=1e-2)
    np.testing.assert_allclose(whisper_log_mel(as16), whisper_log_mel(wave), atol=1e-3)
    # a video without sound: silence features of the right shape, from None or an empty waveform
    for silent in (None, np.zeros(0, np.int16)):
        feats = log_mel(silent, fps=1.0, num_frames=4)
        assert feats.shape == (4, 100, 32)
        np.testing.assert_allclose(feats, math.log(1e-6), atol=1e-6)
        w = whisper_log_mel_windows(silent, fps=1.0, num_frames=4)
        assert w.shape == (4, 100, 80)
        np.testing.assert_allclose(w, -1.5, atol=1e-6)  # log10(1e-10) = -10 -> (-10 + 4) / 4
    assert whisper_log_mel(None).shape == (80, WHISPER_FRAMES)


def test_log_mel_of_a_long_waveform_equals_one_stft():
    """Blocked STFT (bounded memory) equals one STFT over the whole waveform, across block edges."""
    rng = np.random.default_rng(1)
    x = (0.1 * rng.standard_normal(200 * SAMPLE_RATE)).astype(np.float32)
    blocked = log_mel(x, num_frames=200)
    win, hop = 400, 160
    padded = np.pad(x, win // 2)
    k = np.arange(x.shape[0] // hop + 1)
    frames = padded[k[:, None] * hop + np.arange(win)[None, :]]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    power = np.abs(np.fft.rfft(frames * hann, axis=1)) ** 2
    whole = np.log(power @ mel_filters(win, 32).astype(np.float64) + 1e-6)   # (K, 32)
    np.testing.assert_allclose(blocked.reshape(-1, 32), whole[:20000], atol=2e-3)


def test_mel_filters_equal_transformers():
    from transformers.audio_utils import mel_filter_bank

    for n_fft, n_mels in [(400, 80), (400, 128), (512, 32)]:
        ref = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                              max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
        np.testing.assert_allclose(mel_filters(n_fft, n_mels), ref, atol=1e-7)


def test_media_imports_neither_torch_nor_scipy():
    import subprocess
    import sys

    code = ("import sys, damo.media, damo.media.audio, damo.media.decode, damo.media.cache; "
            "print(sorted(m for m in ('torch', 'scipy', 'transformers', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__('pathlib').Path(__file__).resolve().parents[1]))
    assert out.stdout.strip() == "[]"
