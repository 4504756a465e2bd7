"""Rendering a spec without a codec: frames at any rate and size, and the mono 16 kHz audio."""
from __future__ import annotations

import math

import numpy as np

from damo.media import SAMPLE_RATE, Clip
from .events import (AMPLITUDE, BACKGROUND, BEEP_HZ, BEEP_ON, BEEP_PERIOD, CANVAS, COLOURS, FILE_FPS, PITCHES, STREAMS,
                     VideoSpec, spec_from_uri)

def num_frames(duration: float, fps: float) -> int:
    """``T = max(1, ceil(duration * fps))``: one frame per 1/fps window, as the decoder counts them."""
    return max(1, math.ceil(duration * fps - 1e-6))


def sample_times(duration: float, fps: float, phase: float = 0.5) -> np.ndarray:
    """When each of the ``T`` frames is shown: the picture of the encoded file (8 fps) nearest the
    window centre ``(i + 0.5) / fps`` (or ``(i + phase) / fps``), ties to the earlier one, as a decoder returns it.

    At fps 1, 2 and 4 every centre is a multiple of 1/8 s, so frame ``i`` is exactly the scene at
    ``(i + 0.5) / fps``; a centre past the last picture (``duration - 1/8``) shows that picture.
    """
    centres = (np.arange(num_frames(duration, fps), dtype=np.float64) + phase) / fps
    picture = np.ceil(centres * FILE_FPS - 0.5 - 1e-9)  # nearest picture index, ties to the earlier
    return np.clip(picture, 0, math.ceil(duration * FILE_FPS) - 1) / FILE_FPS


def render(spec: VideoSpec, fps: float, size: int = 64, phase: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(T, size, size, 3)`` uint8 (frame i = the scene at ``(i + phase) / fps``) and audio.

    ``T = ceil(duration * fps)``; see :func:`sample_times` for rates whose centres fall between the
    encoded file's pictures. The audio is float32 mono at 16 kHz, ``ceil(duration * 16000)`` samples.
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if size < 8:
        raise ValueError(f"frame size must be >= 8 pixels, got {size}")
    return render_frames(spec, sample_times(spec.duration, fps, phase), size), render_audio(spec)


def render_frames(spec: VideoSpec, times: np.ndarray, size: int = 64) -> np.ndarray:
    """The scene at each of ``times`` (seconds), ``(T, size, size, 3)`` uint8.

    Shapes are drawn with boolean masks on a coordinate grid at ``k = ceil(64 / size)`` times
    the output resolution and block-averaged, so small outputs are anti-aliased like a
    decoder's area downscale of the 64x64 original.
    """
    k = max(1, math.ceil(CANVAS / size))
    hi = size * k
    T = len(times)
    frames = np.empty((T, hi, hi, 3), np.float32)
    frames[:] = np.asarray(BACKGROUND, np.float32)
    # Pixel centres in canvas units.
    coords = (np.arange(hi, dtype=np.float32) + 0.5) * (CANVAS / hi)
    yy, xx = coords[:, None], coords[None, :]  # (hi, 1), (1, hi)
    for ev in spec.events:
        if "visual" not in STREAMS[ev.kind]:
            continue
        idx = np.nonzero((times >= ev.start) & (times < ev.end))[0]
        if idx.size == 0:
            continue
        t = times[idx]
        frac = ((t - ev.start) / (ev.end - ev.start)).astype(np.float32)
        cx = (ev.x0 + frac * (ev.x1 - ev.x0))[:, None, None]  # (Ta, 1, 1)
        cy = (ev.y0 + frac * (ev.y1 - ev.y0))[:, None, None]
        dx, dy = xx[None] - cx, yy[None] - cy                  # (Ta, hi, hi) by broadcasting
        r = ev.size / 2
        if ev.shape == "square":
            mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        elif ev.shape == "circle":
            mask = dx * dx + dy * dy <= r * r
        else:  # triangle, apex up: half-width grows linearly from 0 at the top to r at the base
            mask = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
        colour = np.tile(np.asarray(COLOURS[ev.colour], np.float32), (idx.size, 1))  # (Ta, 3)
        if ev.change_at >= 0:
            colour[t >= ev.change_at] = COLOURS[ev.colour2]
        frames[idx] = np.where(mask[..., None], colour[:, None, None, :], frames[idx])
    if k > 1:
        # k x k block mean as a sum of k^2 strided views (much faster than a 6-d reshape + mean)
        frames = sum(frames[:, a::k, b::k] for a in range(k) for b in range(k)) / (k * k)  # (T, size, size, 3)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


RAMP = int(0.005 * SAMPLE_RATE)  # 5 ms fades keep onsets click-free (clean spectra)


def _second_template(kind: str, pitch: str = "") -> np.ndarray:
    """One second of a tone or beep train starting on a whole second, float32.

    Every pitch (300/700/1500 Hz, beep carrier 1000 Hz) makes a whole number of cycles per
    second and the beep period (0.3 s = 4800 samples) divides 3 s, so a sound that starts on a
    whole second is these samples tiled (a 3 s template for beeps): exact and cheap.
    """
    if kind == "tone":
        t = np.arange(SAMPLE_RATE, dtype=np.float64) / SAMPLE_RATE
        return (AMPLITUDE["tone"] * np.sin(2 * np.pi * PITCHES[pitch] * t)).astype(np.float32)
    t = np.arange(3 * SAMPLE_RATE, dtype=np.float64) / SAMPLE_RATE
    phase = t % BEEP_PERIOD
    pulse = np.clip(np.minimum(phase, BEEP_ON - phase) * SAMPLE_RATE / RAMP, 0.0, 1.0)
    return (AMPLITUDE["beep"] * pulse * np.sin(2 * np.pi * BEEP_HZ * t)).astype(np.float32)


_TEMPLATES = {("tone", p): _second_template("tone", p) for p in PITCHES} | {("beep", ""): _second_template("beep")}


def render_audio(spec: VideoSpec) -> np.ndarray:
    """The mixed mono waveform, float32 in [-1, 1], ``ceil(duration * 16000)`` samples."""
    n = math.ceil(spec.duration * SAMPLE_RATE)
    audio = np.zeros(n, np.float32)
    fade = (np.arange(RAMP, dtype=np.float32) + 1) / RAMP  # (RAMP,) linear fade-in
    for ev in spec.events:
        if "audio" not in STREAMS[ev.kind]:
            continue
        n0, n1 = ev.start * SAMPLE_RATE, min(n, ev.end * SAMPLE_RATE)
        if ev.kind == "noise":
            rng = np.random.default_rng(ev.noise_seed)
            wave = (2 * AMPLITUDE["noise"]) * rng.random(n1 - n0, dtype=np.float32) - AMPLITUDE["noise"]
        else:  # a tone, or a beep train (plain or with a flash) starting "on" at the event start
            template = _TEMPLATES[("tone", ev.pitch) if ev.kind == "tone" else ("beep", "")]
            wave = np.resize(template, n1 - n0)  # tiles the template
        wave[:RAMP] *= fade
        wave[-RAMP:] *= fade[::-1]
        audio[n0:n1] += wave
    return np.clip(audio, -1.0, 1.0)


def render_clip(uri_or_spec: str | VideoSpec, fps: float = 1.0, size: int = 64, phase: float = 0.5) -> Clip:
    """The clip a decoder would return for the encoded video (sampled at ``phase``), rendered without any codec."""
    spec = spec_from_uri(uri_or_spec) if isinstance(uri_or_spec, str) else uri_or_spec
    frames, audio = render(spec, fps, size, phase)
    times = sample_times(spec.duration, fps, phase)
    return Clip(frames=frames, times=times, audio=audio, duration=float(spec.duration), fps=float(fps),
                has_audio=True, source=spec.uri)
