"""Audio: decode a file's first audio track onto the video timeline, and per-frame log-mel features.

Alignment follows the decoded frames' presentation times, not their count: FFmpeg's decoders
already drop encoder priming (AAC's 1024 samples, MP3/Vorbis skips) and report the pts of the
first audible sample, so placing every frame at its pts keeps a tone that starts at 1.000 s at
sample 16000 whatever the codec.
"""
from __future__ import annotations

import math
import warnings
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import torch
from scipy.signal import resample_poly

from damo.media import SAMPLE_RATE, MediaError


def _frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Average all channels of a decoded frame into one float32 channel in [-1, 1]."""
    x = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        x = x.reshape(-1, channels).T  # packed (1, n*C) -> (C, n)
    name = frame.format.name.rstrip("p")
    if name == "s16":
        x = x.astype(np.float32) / 32768.0
    elif name == "s32":
        x = x.astype(np.float32) / 2147483648.0
    elif name == "s64":
        x = x.astype(np.float32) / 9.223372036854775808e18
    elif name == "u8":
        x = (x.astype(np.float32) - 128.0) / 128.0
    return x.astype(np.float32).mean(axis=0)


def decode_audio(container: av.container.InputContainer, origin: float, duration: float,
                 name: str = "") -> np.ndarray:
    """Decode the first audio stream of an open container to mono float32 at 16 kHz.

    ``origin`` is the video timeline's t = 0 in seconds (the container start time); the result
    has exactly ``ceil(duration * 16000)`` samples, zero where the track is silent, missing or
    cut. Frames are laid end to end and re-anchored to their pts only when the pts disagrees with
    the running position by more than one time-base tick, so coarse (1 ms) Matroska timestamps do
    not punch gaps into continuous audio. Individual undecodable packets become silence; if
    nothing at all decodes, :class:`MediaError` is raised so the caller can drop the track.
    """
    stream = container.streams.audio[0]
    sr = stream.codec_context.sample_rate or stream.rate
    if not sr:
        raise MediaError(f"{name}: audio stream has no sample rate")
    tb = stream.time_base
    tol = math.ceil(float(tb) * sr) + 1 if tb else 1
    chunks: list[tuple[int, np.ndarray]] = []
    pos: int | None = None
    bad = 0
    last_error = ""

    def place(frame: av.AudioFrame) -> None:
        nonlocal pos
        x = _frame_to_mono(frame)
        if frame.sample_rate != sr:
            raise MediaError(f"{name}: audio sample rate changes mid-stream ({sr} -> {frame.sample_rate} Hz)")
        at = round((float(frame.pts * tb) - origin) * sr) if frame.pts is not None else pos
        if pos is None or (at is not None and abs(at - pos) > tol):
            pos = at if at is not None else 0
        chunks.append((pos, x))
        pos += x.shape[0]

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            bad += 1
            last_error = str(e)
            continue
        for frame in frames:
            place(frame)
    if not chunks:
        why = f"{bad} packets failed, last error: {last_error}" if bad else "no audio samples decoded"
        raise MediaError(f"{name}: audio track could not be decoded ({why})")
    if bad:
        warnings.warn(f"{name}: {bad} audio packets could not be decoded ({last_error}); "
                      "their time is filled with silence", stacklevel=3)

    n_native = max(p + x.shape[0] for p, x in chunks)
    wave = np.zeros(max(n_native, 1), np.float32)
    for p, x in chunks:
        if p + x.shape[0] <= 0:
            continue
        if p < 0:  # audio before the video timeline's origin is cut
            x, p = x[-p:], 0
        wave[p:p + x.shape[0]] = x
    ratio = Fraction(SAMPLE_RATE, int(sr))
    if ratio != 1:
        # polyphase FIR with a symmetric kernel: zero phase, so onsets keep their time
        wave = resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)
    return fit_length(wave, math.ceil(duration * SAMPLE_RATE - 1e-6))


def fit_length(wave: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad a waveform to exactly ``n`` samples."""
    if wave.shape[0] >= n:
        return np.ascontiguousarray(wave[:n], dtype=np.float32)
    return np.concatenate([wave.astype(np.float32), np.zeros(n - wave.shape[0], np.float32)])


@lru_cache(maxsize=8)
def _mel_filters(n_fft: int, n_mels: int, sr: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                         max_frequency=sr / 2, sampling_rate=sr, norm="slaney", mel_scale="slaney")
    return torch.from_numpy(fb.astype(np.float32))  # (n_fft//2+1, n_mels)


def log_mel(audio: np.ndarray, sr: int = SAMPLE_RATE, fps: float = 1.0, num_frames: int | None = None,
            n_mels: int = 32, hop: int = 160, win: int = 400, eps: float = 1e-6) -> np.ndarray:
    """Log-mel features cut into the clip's frame windows: ``(num_frames, F, n_mels)`` float32.

    Window ``i`` covers samples ``[i*sr/fps, (i+1)*sr/fps)`` and holds ``F = floor(sr/fps/hop)``
    STFT frames (100 at 1 fps with the 10 ms hop), so the audio tokens of frame ``i`` hear
    exactly the second that frame ``i`` shows. STFT frame ``k`` is centred on sample ``k*hop``
    (Whisper's convention: Radford et al. 2022, 25 ms Hann window, 10 ms hop) with zero padding
    at both ends. The filterbank is Slaney-style (slaney mel scale, area-normalised triangles,
    as in librosa and Whisper) from ``transformers.audio_utils.mel_filter_bank``; values are
    ``ln(power + eps)`` of the mel power spectrum of a [-1, 1] waveform. One STFT runs over the
    whole waveform, which is first zero-padded or cut to ``num_frames`` windows (default: as
    many as the waveform needs).
    """
    if fps <= 0 or sr <= 0 or hop <= 0 or win <= 0:
        raise ValueError(f"log_mel needs positive sr, fps, hop and win, got sr={sr} fps={fps} hop={hop} win={win}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be at least 1 (or None to cover the waveform), got {num_frames}")
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"log_mel expects a mono waveform of shape (S,), got {x.shape}; average the channels first")
    samples_per_window = sr / fps
    per_window = int(samples_per_window // hop)
    if per_window < 1:
        raise ValueError(f"a 1/fps window ({samples_per_window:g} samples) is shorter than one hop ({hop}); "
                         "lower fps or hop")
    if num_frames is None:
        num_frames = max(1, math.ceil(x.shape[0] / samples_per_window - 1e-6))
    total = math.ceil(num_frames * samples_per_window - 1e-6)
    x = fit_length(x, total)
    n_fft = win  # the FFT size is the window: 400 -> 201 bins, as in Whisper
    spec = torch.stft(torch.from_numpy(x), n_fft=n_fft, hop_length=hop, win_length=win,
                      window=torch.hann_window(win), center=True, pad_mode="constant", return_complex=True)
    power = spec.abs().pow(2)  # (n_fft//2+1, total//hop + 1)
    mel = _mel_filters(n_fft, n_mels, sr).T @ power  # (n_mels, K)
    # STFT frame k is centred on sample k*hop; window i starts at sample round(i*sr/fps)
    starts = torch.round(torch.arange(num_frames, dtype=torch.float64) * samples_per_window / hop).long()
    idx = starts[:, None] + torch.arange(per_window)[None, :]  # (T, F)
    idx = idx.clamp(max=mel.shape[1] - 1)
    feats = mel.T[idx]  # (T, F, n_mels)
    return torch.log(feats + eps).numpy().astype(np.float32)
