"""Encoding a spec to a real file: H.264 + PCM in Matroska, as the test split is stored, or VP8 + Opus in
WebM, which browsers play (the web demo's examples)."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from damo.card import PROCEDURAL_TAG
from damo.media import SAMPLE_RATE
from .events import FILE_FPS, VideoSpec
from .render import render_audio, render_frames


@dataclass(frozen=True)
class Layout:
    """A container with its video encoder and options, and its audio encoder at ``audio_rate``."""
    container: str
    video: str
    video_options: dict[str, str]
    audio: str
    audio_rate: int


LAYOUTS = {
    # keyframe every 8 frames, no B-frames; PCM keeps audio sample-exact (AAC would add 48 ms of priming)
    ".mkv": Layout("matroska", "libx264", {"crf": "18", "g": str(FILE_FPS), "keyint_min": str(FILE_FPS),
                                           "sc_threshold": "0", "bf": "0", "threads": "1"}, "pcm_s16le", SAMPLE_RATE),
    ".webm": Layout("webm", "libvpx", {"crf": "10", "b:v": "1M", "threads": "1"}, "libopus", 48_000),
}


def write_video(spec: VideoSpec, path: str | Path, size: int = 64) -> Path:
    """Encode a real file, yuv420p at 8 fps with the mono track, tagged as procedural: ``.mkv`` is H.264
    (crf 18) + PCM s16le 16 kHz, ``.webm`` VP8 + Opus 48 kHz.

    File frame ``j`` (pts ``j / 8``) shows the scene at ``j / 8``, so the frame on screen at
    ``i + 0.5`` is the scene at ``i + 0.5``, exactly what :func:`render` gives at 1 fps.
    """
    import av

    path = Path(path)
    if path.suffix not in LAYOUTS:
        raise ValueError(f"write_video writes {' or '.join(LAYOUTS)} files; got {path.name!r}")
    layout = LAYOUTS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    n_frames = int(spec.duration * FILE_FPS)
    frames = render_frames(spec, np.arange(n_frames) / FILE_FPS, size)
    pcm = np.clip(np.rint(render_audio(spec) * 32767.0), -32768, 32767).astype(np.int16)
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    with av.open(str(tmp), mode="w", format=layout.container) as out:
        out.metadata["comment"] = f"{PROCEDURAL_TAG} {spec.uri}"     # tells a procedural file from a real one
        vs = out.add_stream(layout.video, rate=FILE_FPS)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.time_base = Fraction(1, FILE_FPS)
        vs.codec_context.time_base = Fraction(1, FILE_FPS)
        vs.options = layout.video_options
        aus = out.add_stream(layout.audio, rate=layout.audio_rate, layout="mono")
        _encode_all(out, vs, (_video_frame(frames[j], j) for j in range(n_frames)))
        _encode_all(out, aus, _audio_frames(pcm, layout.audio_rate))
    tmp.replace(path)
    return path


def _audio_frames(pcm: np.ndarray, rate: int):
    """The 16 kHz track as frames of 4096 samples, resampled to ``rate`` where the encoder needs another."""
    import av

    frames = (_audio_frame(pcm[a:a + 4096], a) for a in range(0, pcm.size, 4096))
    if rate == SAMPLE_RATE:
        return frames
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    return [out for f in [*frames, None] for out in resampler.resample(f)]


def _encode_all(out, stream, frames) -> None:
    """Encode every frame into ``stream``, flush the encoder, and write all packets to ``out``."""
    for frame in frames:
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def _video_frame(rgb: np.ndarray, j: int):
    import av

    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts, frame.time_base = j, Fraction(1, FILE_FPS)
    return frame


def _audio_frame(pcm: np.ndarray, start: int):
    import av

    frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")   # (1, n)
    frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
    return frame
