"""Procedural audio-visual videos with exact ground truth: the embedded default training set.

A video is a dark 64x64 canvas on which coloured shapes (square, circle, triangle in red,
green, blue, yellow) are visible on known intervals, possibly moving or changing colour,
while a mono 16 kHz track plays steady tones (300/700/1500 Hz), beep trains (1000 Hz,
0.15 s on / 0.15 s off) and white-noise bursts. A "flash" is a shape visible exactly while a
beep train plays. From the event list we write the canonical samples (:mod:`damo.data.schema`):
grounding, multi-moment grounding, dense captions and grounded QA. The task mix mirrors the
temporally grounded QA of DaMO (arXiv 2506.11558) and the evidence-then-answer samples of
D2VLM (Zeng et al., "Factorized Learning for Temporally Grounded
Video-Language Models"); rendering the videos from a known event list, so every answer is
exact, is the approach of diagnostic synthetic video sets such as CLEVRER (Yi et al., ICLR 2020).

Time conventions (so that 1-fps grounding is exact):

- every event boundary is a whole second and an event covers ``[start, end)``;
- frame ``i`` at sampling rate ``fps`` shows the scene at time ``(i + 0.5) / fps`` (the
  centre of its window, the :class:`damo.media.Clip` contract), so at 1 fps frame ``i`` shows
  an event iff ``start <= i < end`` and the span ``[start, end]`` is exactly its frames;
- the audio has ``ceil(duration * 16000)`` samples, sample 0 at t = 0.

A video is named by a URI ``synth://{difficulty}/{seed}/{split}/{index}``; the URI alone
regenerates the spec (a per-video RNG is derived from ``(seed, split, index, difficulty)``
with :class:`numpy.random.SeedSequence`, so video ``k`` never depends on how many videos
are drawn). Training renders clips in memory with :func:`render_clip`; only the test split
of :func:`synthesize` is encoded to real files, whose decoded frames agree with the
in-memory render within codec tolerance.

The package, by job: :mod:`.events` (constants, specs, drawing a spec from its seed), :mod:`.render`
(frames and audio without a codec), :mod:`.encode` (real Matroska files), :mod:`.queries` (a video's
questions and answers), :mod:`.stvg` (where-and-when questions with box tubes) and :mod:`.splits`
(datasets in memory, ``synth://`` specs, the splits on disk).
"""
from .encode import write_video
from .events import (AMPLITUDE, BACKGROUND, BEEP_HZ, CANVAS, COLOURS, DIFFICULTIES, FILE_FPS, GENERATOR_VERSION,
                     PITCHES, SHAPES, SPLITS, Event, VideoSpec, generate_spec, is_synth_uri, make_uri, spec_from_uri,
                     vocabulary)
from .queries import caption, video_samples
from .render import num_frames, render, render_audio, render_clip, render_frames, sample_times
from .splits import generate_samples, synth_samples, synthesize
from .stvg import shape_boxes, stvg_samples

__all__ = ["AMPLITUDE", "BACKGROUND", "BEEP_HZ", "CANVAS", "COLOURS", "DIFFICULTIES", "FILE_FPS", "GENERATOR_VERSION",
           "PITCHES", "SHAPES", "SPLITS", "Event", "VideoSpec", "caption", "generate_samples", "generate_spec",
           "is_synth_uri", "make_uri", "num_frames", "render", "render_audio", "render_clip", "render_frames",
           "sample_times", "shape_boxes", "spec_from_uri", "stvg_samples", "synth_samples", "synthesize",
           "video_samples", "vocabulary", "write_video"]
