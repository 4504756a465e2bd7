"""Samples that cannot train, found before training (the pre-flight) and while it runs.

Before training, :func:`preflight` reads every sample's video header and packets (``damo.media.probe``,
no decoding: an unreadable or truncated container, or a duration beyond the model's ``max_frames``)
and encodes its prompt and response at the frame count its duration gives, against ``max_len``. A run
with ``on_missing: error`` then stops before any step and names every such sample; with ``skip`` they
are left out and listed in the run's report. Under torchrun each process checks its share of the
videos and the shares are gathered, so every process keeps the same samples.

What only decoding reveals (a broken packet in the middle of a file, a frame size that changes) is
caught while training: :class:`~damo.data.dataset.ClipDataset` hands back an :class:`Unusable` in
place of the clip, and the training loop replaces it with a record drawn deterministically
(:mod:`damo.train.loop`), logs it and keeps it in its checkpoints, so a resumed run does not read it
again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from damo.data.collate import COLLATORS
from damo.data.schema import Sample
from damo.media import MediaError
from damo.media.decode import num_clip_frames, probe
from damo.media.sources import scheme_of
from damo.model.processing import DamoProcessor
from damo.model.vlm import VLMProcessor


class BadSampleError(ValueError):
    """The pre-flight found samples that cannot train, and the run stops (``on_missing: error``)."""


@dataclass(frozen=True)
class Unusable:
    """Stands in for the clip of record ``index`` (named ``name``, video ``video``) that could not be made."""
    index: int
    name: str
    video: str
    reason: str

    def to_dict(self) -> dict:
        return {"id": self.name, "video": self.video, "reason": self.reason}


@dataclass
class BadSamples:
    """Samples that cannot train: ``{"id", "video", "reason"}`` each."""
    rows: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def summary(self, first: int = 5) -> str:
        names = "; ".join(f"{r['id']} ({r['video']}): {r['reason']}" for r in self.rows[:first])
        return f"{len(self.rows)} samples cannot train: {names}{'; ...' if len(self.rows) > first else ''}"


def check_tokens(processor: DamoProcessor | VLMProcessor, sample: Sample, times: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``sample`` alone, at frame times ``times``, cannot train: more than
    ``max_len`` tokens, or (a whole VLM) an answer its preset cannot write (:meth:`VLMCollator.check`)."""
    COLLATORS[type(processor)](processor).check(sample, times)


def video_problem(video: str, fps: float, max_frames: int) -> str | None:
    """Why ``video`` cannot be read for training (header, packets, length), or None."""
    if scheme_of(video):                 # rendered, not decoded
        return None
    try:
        duration = probe(video)["duration"]
    except (MediaError, OSError) as e:
        return str(e)
    if num_clip_frames(duration, fps) > max_frames:
        return (f"{duration:.0f} s gives {num_clip_frames(duration, fps)} frames at {fps:g} fps, more than the "
                f"model's max_frames {max_frames}")
    return None


def sample_problem(sample: Sample, processor: DamoProcessor) -> str | None:
    """Why ``sample``'s prompt and response cannot train at the frame count of its duration, or None."""
    c = processor.config
    n = num_clip_frames(float(sample.duration), c.fps)
    try:
        check_tokens(processor, sample, (torch.arange(n) + 0.5) / c.fps)
    except ValueError as e:
        return str(e)
    return None


def preflight(samples: list[Sample], processor: DamoProcessor) -> tuple[list[Sample], BadSamples]:
    """``samples`` without those that cannot train, and those (see the module docstring). Under
    torchrun every process must call it: each probes its share of the videos."""
    c = processor.config
    videos = sorted({s.video for s in samples})
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    found = {v: p for v in videos[rank::world] if (p := video_problem(v, c.fps, c.max_frames))}
    if world > 1:
        parts: list[dict] = [{} for _ in range(world)]
        dist.all_gather_object(parts, found)
        found = {k: v for p in parts for k, v in p.items()}
    kept, bad = [], BadSamples()
    for s in samples:
        reason = found.get(s.video) or sample_problem(s, processor)
        if reason:
            bad.rows.append({"id": s.id, "video": s.video, "reason": reason})
        else:
            kept.append(s)
    return kept, bad
