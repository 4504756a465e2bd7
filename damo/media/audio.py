"""Audio: decode a file's first audio track onto the video timeline, and log-mel features.

Everything here is numpy (plus PyAV for decoding): the media path loads neither torch nor scipy,
so a process that only decodes stays small and starts fast.

Decoding: alignment follows the decoded frames' presentation times, not their count. FFmpeg's
decoders already drop encoder priming (AAC's 1024 samples, MP3/Vorbis skips) and report the pts
of the first audible sample, so placing every frame at its pts keeps a tone that starts at 1.000 s
at sample 16000 whatever the codec. Frames go through FFmpeg's resampler (libswresample via
``av.AudioResampler``) straight to 16 kHz mono int16 as they are decoded, into a timeline allocated
once: no native-rate copy of the track is ever held (an hour at 48 kHz float32 would be 691 MB;
the int16 16 kHz timeline is 115 MB, 1.92 MB per minute). The resampler's filter is centred, so
onsets keep their time (tested to the sample for PCM, to 1 ms for AAC).

Features: :func:`log_mel` (the tiny encoder's fast features) and :func:`whisper_log_mel` /
:func:`whisper_log_mel_windows` (exactly ``transformers.WhisperFeatureExtractor``'s input) both run
their STFT block by block, so their working memory is a constant (a few MB) plus the output.
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache

import av
import numpy as np

from damo.media.clip import SAMPLE_RATE, MediaError, as_float

# Whisper's input (Radford et al. 2022; transformers' WhisperFeatureExtractor): 25 ms Hann window,
# 10 ms hop, log10 mel power floored at (max - 8), mapped by (x + 4) / 4, on 30 s inputs
WHISPER_N_FFT, WHISPER_HOP, WHISPER_CHUNK_S = 400, 160, 30
WHISPER_CHUNK = WHISPER_CHUNK_S * SAMPLE_RATE          # 480,000 samples per encoder input
WHISPER_FRAMES = WHISPER_CHUNK // WHISPER_HOP          # 3,000 mel frames per encoder input


def _segment(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)`` of ``x`` as float32, zeros outside ``x`` (start may be negative)."""
    out = np.zeros(stop - start, np.float32)
    lo, hi = max(start, 0), min(stop, x.shape[0])
    if hi > lo:
        out[lo - start:hi - start] = as_float(x[lo:hi])
    return out


# ---------------------------------------------------------------------------------------------
# decoding


_SAMPLE_TYPES = {"u8": (np.uint8, 128.0, 128.0), "s16": (np.int16, 0.0, 32768.0), "s32": (np.int32, 0.0, 2147483648.0),
                 "s64": (np.int64, 0.0, 9.223372036854775808e18), "flt": (np.float32, 0.0, 1.0),
                 "dbl": (np.float64, 0.0, 1.0)}


def _frames_to_mono(frames: list[av.AudioFrame]) -> np.ndarray:
    """Average all channels of consecutive decoded frames (one sample format and channel count) into
    one float32 channel in [-1, 1].

    Reads the planes' buffers directly (``to_ndarray`` stacks a copy per frame) and does the
    arithmetic once for all frames: per-frame numpy calls are most of the audio time on codecs
    with many small frames.
    """
    first = frames[0]
    dtype, offset, scale = _SAMPLE_TYPES[first.format.name.rstrip("p")]
    channels = first.layout.nb_channels
    if first.format.is_planar:
        per_frame = [(f.planes, f.samples) for f in frames]  # each .planes call builds its tuple anew
        planes = [np.concatenate([np.frombuffer(ps[c], dtype, count=n) for ps, n in per_frame])
                  for c in range(channels)]
    else:
        packed = np.concatenate([np.frombuffer(f.planes[0], dtype, count=f.samples * channels) for f in frames])
        planes = [packed[c::channels] for c in range(channels)]
    x = planes[0].astype(np.float32, copy=False)  # a fresh array or a view no other plane shares
    for plane in planes[1:]:
        x += plane
    if channels > 1:
        x *= np.float32(1.0 / channels)
    if offset or scale != 1.0:
        x = (x - np.float32(offset)) * np.float32(1.0 / scale)
    return x


class AudioTrack:
    """Decodes one audio stream, packet by packet, into a 16 kHz mono int16 timeline of fixed length.

    ``origin`` is the video timeline's t = 0 in seconds (the container start time); the timeline
    has exactly ``n_samples`` samples (when the length is unknown, ``None``, it grows up to
    ``max_samples`` and the caller cuts it), zero where the track is silent, missing or cut.
    Frames are laid end to end and re-anchored to their pts only when the pts disagrees with the
    running position by more than one time-base tick and the next frame continues from that pts,
    so neither coarse (1 ms) Matroska timestamps nor a lone mistimed frame (Vorbis in WebM after a
    block-size switch, off by 10 ms) punch gaps into continuous audio. Continuous audio is mixed
    down to one channel in numpy and goes to the resampler in blocks of about a second (its filter
    state carries across blocks, so this equals resampling frame by frame at a fraction of the
    calls). Individual undecodable packets become silence; if nothing at all decodes,
    :meth:`finish` raises :class:`MediaError` so the caller can drop the track.
    """

    def __init__(self, stream: av.audio.stream.AudioStream, origin: float, n_samples: int | None, name: str = "",
                 max_samples: int = 0):
        self.stream, self.origin, self.name = stream, origin, name
        self.sr = stream.codec_context.sample_rate or stream.rate
        if not self.sr:
            raise MediaError(f"{name}: audio stream has no sample rate")
        self.tb = float(stream.time_base) if stream.time_base else 0.0   # float: Fraction math per frame is slow
        self.tol = math.ceil(self.tb * self.sr) + 1 if self.tb else 1
        # an unknown length (no declared duration) grows by doubling, up to max_samples
        self.growable, self.max_samples = n_samples is None, max_samples
        self.out = np.zeros(n_samples if n_samples is not None else min(max_samples, 60 * SAMPLE_RATE), np.int16)
        self.pos: int | None = None       # running position in native samples
        self.opos = 0                     # running position in 16 kHz output samples
        self.resampler: av.AudioResampler | None = None
        self.block: list[av.AudioFrame] = []  # continuous decoded frames not yet resampled
        self.block_n = 0
        self.pending: tuple[av.AudioFrame, int] | None = None  # a frame whose pts jumps, and that pts
        self.frames = 0
        self.bad = 0
        self.last_error = ""

    def _write(self, frames: list[av.AudioFrame]) -> None:
        for f in frames:
            x = np.frombuffer(f.planes[0], np.int16, count=f.samples)  # s16 mono
            at, self.opos = self.opos, self.opos + x.shape[0]
            if self.growable and self.opos > self.out.shape[0] and self.out.shape[0] < self.max_samples:
                grown = np.zeros(min(self.max_samples, max(2 * self.out.shape[0], self.opos)), np.int16)
                grown[:self.out.shape[0]] = self.out
                self.out = grown
            lo, hi = max(at, 0), min(self.opos, self.out.shape[0])
            if hi > lo:
                self.out[lo:hi] = x[lo - at:hi - at]

    def _resample_block(self) -> None:
        if not self.block_n:
            return
        x = _frames_to_mono(self.block)
        self.block, self.block_n = [], 0
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = self.sr
        if self.resampler is None:
            self.resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._write(self.resampler.resample(frame))

    def _flush(self) -> None:
        self._resample_block()
        if self.resampler is not None:
            self._write(self.resampler.resample(None))
            self.resampler = None

    def _place(self, frame: av.AudioFrame) -> None:
        if frame.sample_rate != self.sr:
            raise MediaError(f"{self.name}: audio sample rate changes mid-stream ({self.sr} -> {frame.sample_rate} Hz)")
        at = round((frame.pts * self.tb - self.origin) * self.sr) if frame.pts is not None else None
        if self.pending is not None:
            # the frame after a jump tells a mistimed frame from a real jump: it continues either the
            # running position or the jumped-to pts
            held, held_at = self.pending
            self.pending = None
            mistimed = at is None or abs(at - (self.pos + held.samples)) <= self.tol
            self._append(held, None if mistimed else held_at)
        if self.pos is not None and at is not None and abs(at - self.pos) > self.tol:
            self.pending = (frame, at)
            return
        self._append(frame, at if self.pos is None else None)

    def _append(self, frame: av.AudioFrame, anchor: int | None) -> None:
        """Lay ``frame`` at the running position, or restart the timeline at sample ``anchor``."""
        if self.pos is None or anchor is not None:
            # a discontinuity (or the first frame): finish the running resampler, restart at the pts
            self._flush()
            self.pos = anchor if anchor is not None else 0
            self.opos = round(self.pos * SAMPLE_RATE / self.sr)
        if self.block and (frame.format.name, frame.layout.nb_channels) != (self.block[0].format.name,
                                                                             self.block[0].layout.nb_channels):
            self._resample_block()  # a block is mixed down in one go, so it holds one sample layout
        self.block.append(frame)
        self.block_n += frame.samples
        if self.block_n >= self.sr:
            self._resample_block()
        self.pos += frame.samples
        self.frames += 1

    def packet(self, packet: av.Packet) -> None:
        """Decode one demuxed packet of this stream (the empty flush packet drains the decoder)."""
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            self.bad += 1
            self.last_error = str(e)
            return
        for frame in frames:
            self._place(frame)

    def finish(self) -> np.ndarray:
        """The int16 timeline; raises MediaError when no audio frame decoded at all."""
        if self.pending is not None:
            self._append(*self.pending)  # nothing follows to say otherwise: believe its pts
            self.pending = None
        self._flush()
        if not self.frames:
            why = f"{self.bad} packets failed, last error: {self.last_error}" if self.bad else "no audio samples decoded"
            raise MediaError(f"{self.name}: audio track could not be decoded ({why})")
        if self.bad:
            warnings.warn(f"{self.name}: {self.bad} audio packets could not be decoded ({self.last_error}); "
                          "their time is filled with silence", stacklevel=3)
        return self.out


# ---------------------------------------------------------------------------------------------
# features


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (Auditory Toolbox; librosa's default): linear below 1 kHz, log above."""
    f = np.asarray(f, np.float64)
    return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) * 27.0 / np.log(6.4))


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))


@lru_cache(maxsize=8)
def mel_filters(n_fft: int, n_mels: int, sr: int = SAMPLE_RATE, fmax: float | None = None) -> np.ndarray:
    """Slaney mel filterbank ``(n_fft // 2 + 1, n_mels)`` float32: triangles in Hz, area-normalised.

    The same bank as librosa's ``filters.mel(norm="slaney")`` and transformers'
    ``mel_filter_bank(norm="slaney", mel_scale="slaney")`` (the one Whisper uses), from 0 Hz to
    ``fmax`` (default sr / 2).
    """
    fmax = sr / 2 if fmax is None else fmax
    edges = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(np.array(fmax))), n_mels + 2))  # (n_mels + 2,)
    bins = np.linspace(0.0, sr / 2, n_fft // 2 + 1)                                        # (B,)
    rise = (bins[:, None] - edges[None, :-2]) / np.diff(edges)[None, :-1]
    fall = (edges[None, 2:] - bins[:, None]) / np.diff(edges)[None, 1:]
    tri = np.maximum(0.0, np.minimum(rise, fall))                                          # (B, n_mels)
    tri *= 2.0 / (edges[2:] - edges[:-2])[None, :]
    fb = tri.astype(np.float32)
    fb.setflags(write=False)
    return fb


@lru_cache(maxsize=8)
def _hann(win: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window's and Whisper's default)."""
    w = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)).astype(np.float32)
    w.setflags(write=False)
    return w


def _mel_power(padded: np.ndarray, n_frames: int, hop: int, win: int, fb: np.ndarray) -> np.ndarray:
    """Mel power ``(n_frames, n_mels)`` of frames ``k`` covering ``padded[k*hop : k*hop + win]``."""
    frames = np.lib.stride_tricks.as_strided(padded, (n_frames, win), (padded.strides[0] * hop, padded.strides[0]))
    spec = np.fft.rfft(frames * _hann(win), axis=1)                                        # (K, win//2 + 1)
    power = spec.real ** 2 + spec.imag ** 2
    return power.astype(np.float32, copy=False) @ fb


def _frame_windows(audio: np.ndarray | None, sr: int, fps: float, hop: int, num_frames: int | None
                   ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The waveform cut to the clip's 1/fps windows (``num_frames`` of them; default: as many as it
    needs) -> ``(x, starts (T,), per_window, total)``: window ``i``'s first STFT frame is
    ``round(i * sr / fps / hop)`` and it holds ``per_window`` frames; ``total`` samples in all."""
    x = np.zeros(0, np.float32) if audio is None else np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"expects a mono waveform of shape (S,), got {x.shape}; average the channels first")
    samples_per_window = sr / fps
    per_window = int(samples_per_window // hop)
    if per_window < 1:
        raise ValueError(f"a 1/fps window ({samples_per_window:g} samples) is shorter than one hop ({hop}); "
                         "lower fps or hop")
    if num_frames is None:
        num_frames = max(1, math.ceil(x.shape[0] / samples_per_window - 1e-6))
    total = math.ceil(num_frames * samples_per_window - 1e-6)
    starts = np.round(np.arange(num_frames, dtype=np.float64) * samples_per_window / hop).astype(np.int64)
    return x[:total], starts, per_window, total


def log_mel(audio: np.ndarray | None, sr: int = SAMPLE_RATE, fps: float = 1.0, num_frames: int | None = None,
            n_mels: int = 32, hop: int = 160, win: int = 400, eps: float = 1e-6) -> np.ndarray:
    """Log-mel features cut into the clip's frame windows: ``(num_frames, F, n_mels)`` float32.

    Window ``i`` covers samples ``[i*sr/fps, (i+1)*sr/fps)`` and holds ``F = floor(sr/fps/hop)``
    STFT frames (100 at 1 fps with the 10 ms hop), so the audio tokens of frame ``i`` hear
    exactly the second that frame ``i`` shows. STFT frame ``k`` is centred on sample ``k*hop``
    (Whisper's convention: 25 ms Hann window, 10 ms hop) with zero padding at both ends; the FFT
    size is the window. The filterbank is Slaney-style (:func:`mel_filters`); values are
    ``ln(power + eps)`` of the mel power spectrum of a [-1, 1] waveform (int16 audio is scaled by
    1/32768). The waveform is treated as zero-padded or cut to ``num_frames`` windows (default:
    as many as it needs); ``None`` or an empty array (a video without sound) gives silence.
    The STFT runs over blocks of windows, so memory beyond the output stays a few MB however
    long the audio.
    """
    if fps <= 0 or sr <= 0 or hop <= 0 or win <= 0:
        raise ValueError(f"log_mel needs positive sr, fps, hop and win, got sr={sr} fps={fps} hop={hop} win={win}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be at least 1 (or None to cover the waveform), got {num_frames}")
    x, starts, per_window, total = _frame_windows(audio, sr, fps, hop, num_frames)
    num_frames = len(starts)
    last = total // hop                             # frames 0..last exist (centre padding)
    idx = np.minimum(starts[:, None] + np.arange(per_window)[None, :], last)              # (T, F)
    fb = mel_filters(win, n_mels, sr)
    out = np.empty((num_frames, per_window, n_mels), np.float32)
    floor = np.float32(math.log(eps))
    block = max(1, 2048 // per_window)              # windows per STFT block (~2k frames, ~25 MB of work arrays)
    for i0 in range(0, num_frames, block):
        i1 = min(num_frames, i0 + block)
        k0, k1 = int(idx[i0, 0]), int(idx[i1 - 1, -1]) + 1
        if k0 * hop - win // 2 >= x.shape[0]:       # past the end of the sound: silence
            out[i0:i1] = floor
            continue
        padded = _segment(x, k0 * hop - win // 2, (k1 - 1) * hop - win // 2 + win)
        mel = _mel_power(padded, k1 - k0, hop, win, fb)                                   # (k1 - k0, M)
        out[i0:i1] = np.log(mel[idx[i0:i1] - k0] + np.float32(eps))
    return out


def _whisper_chunk(x: np.ndarray, c: int, fb: np.ndarray) -> np.ndarray:
    """Whisper's features ``(WHISPER_FRAMES, n_mels)`` of the 30 s chunk ``c`` of ``x``."""
    seg = _segment(x, c * WHISPER_CHUNK, (c + 1) * WHISPER_CHUNK)                         # zero-padded to 30 s
    half = WHISPER_N_FFT // 2
    padded = np.pad(seg, half, mode="reflect")                                            # torch.stft(center=True)
    mel = _mel_power(padded, WHISPER_FRAMES, WHISPER_HOP, WHISPER_N_FFT, fb)               # the last frame dropped
    logm = np.log10(np.maximum(mel, np.float32(1e-10)))
    logm = np.maximum(logm, logm.max() - np.float32(8.0))
    return (logm + np.float32(4.0)) / np.float32(4.0)


def whisper_log_mel(audio: np.ndarray | None, n_mels: int = 80) -> np.ndarray:
    """Whisper's input features ``(n_mels, 3000 * chunks)`` float32 for a 16 kHz mono waveform.

    Equal to ``WhisperFeatureExtractor(feature_size=n_mels)(chunk, sampling_rate=16000)`` on each
    30 s chunk of the audio (the last one zero-padded to 30 s, as the extractor pads): n_fft 400,
    hop 160, Slaney mel filters to 8 kHz, ``log10(max(power, 1e-10))``, floored at the chunk's
    maximum - 8, then ``(x + 4) / 4``. The floor uses the maximum over each 30 s chunk, not over
    the whole recording, because that is what the encoder sees: Whisper encodes 30 s inputs, each
    normalised on its own, so a loud minute elsewhere in the video does not push this chunk's
    quiet parts to the floor. Audio shorter than 30 s gives exactly the extractor's output.
    """
    x = np.zeros(0, np.float32) if audio is None else np.asarray(audio)
    chunks = max(1, math.ceil(x.shape[0] / WHISPER_CHUNK))
    fb = mel_filters(WHISPER_N_FFT, n_mels, SAMPLE_RATE, 8000.0)
    return np.concatenate([_whisper_chunk(x, c, fb).T for c in range(chunks)], axis=1)


def whisper_log_mel_windows(audio: np.ndarray | None, fps: float = 1.0, num_frames: int | None = None,
                            n_mels: int = 80) -> np.ndarray:
    """:func:`whisper_log_mel` cut into the clip's 1/fps windows: ``(T, floor(100 / fps), n_mels)``.

    Window ``i`` holds the Whisper frames ``round(i * 100 / fps) + [0, F)``, the layout of
    :func:`log_mel` with its 10 ms hop, so frame ``i``'s audio tokens hear frame ``i``'s window.
    Mel frame ``k`` of the whole recording is frame ``k mod 3000`` of 30 s chunk ``k // 3000``,
    normalised by that chunk's maximum (see :func:`whisper_log_mel`). Chunks are computed one at a
    time, so memory is the output plus one chunk (about 10 MB).
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    x, starts, per_window, total = _frame_windows(audio, SAMPLE_RATE, fps, WHISPER_HOP, num_frames)
    num_frames = len(starts)
    chunks = max(1, math.ceil(total / WHISPER_CHUNK))
    idx = np.minimum(starts[:, None] + np.arange(per_window)[None, :], chunks * WHISPER_FRAMES - 1)  # (T, F)
    fb = mel_filters(WHISPER_N_FFT, n_mels, SAMPLE_RATE, 8000.0)
    out = np.empty((num_frames, per_window, n_mels), np.float32)
    held: dict[int, np.ndarray] = {}
    for i in range(num_frames):
        for c in range(int(idx[i, 0]) // WHISPER_FRAMES, int(idx[i, -1]) // WHISPER_FRAMES + 1):
            if c not in held:
                held = {k: v for k, v in held.items() if k >= c - 1}  # windows move forward: keep at most two
                held[c] = _whisper_chunk(x, c, fb)
        for c in {int(k) // WHISPER_FRAMES for k in (idx[i, 0], idx[i, -1])}:
            sel = idx[i] // WHISPER_FRAMES == c
            out[i, sel] = held[c][idx[i, sel] - c * WHISPER_FRAMES]
    return out
