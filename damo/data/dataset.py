"""Datasets on disk: resolving videos, streaming clips through workers, batches per training step.

- :func:`resolve_videos` maps each sample's ``video`` (an id such as Charades' ``0F7LW``, a
  relative or absolute path, or a ``synth://`` URI) to a file under ``video_root``, trying the
  usual extensions, and lists every missing or unreadable video before any work starts.
- :class:`ClipLoader` turns a video reference into model inputs (media decoder + disk cache +
  the model's processor); it keeps nothing in memory unless asked (``memory=True``, the tiny
  demo's procedural clips), so memory stays flat however many videos a dataset holds.
- :class:`ClipDataset` + :func:`loader` stream ``(record, clip)`` pairs through a
  ``torch.utils.data.DataLoader`` with worker processes; :class:`StepBatches` yields the exact
  micro-batches of every training step (epoch permutations laid end to end, a pure function of
  the seed and the step number, so a resumed run sees the same data).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from torch.utils.data import DataLoader, Dataset, Sampler

from damo.data.preflight import Unusable
from damo.data.schema import Sample, load_samples
from damo.media import Clip, MediaError, MediaLimits
from damo.media.cache import cache_key, default_cache_dir
from damo.media.sources import load_video, scheme_function, scheme_of, video_duration
from damo.model.processing import ClipTensors, DamoProcessor

# Tried in order when a sample names a video by id (``0F7LW`` -> ``0F7LW.mp4``).
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".ogv",
                  ".3gp")
ON_MISSING = ("error", "skip")


@dataclass
class MissingVideos:
    """Videos a dataset names that are not on disk (or not readable), and the samples that need them."""
    videos: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.videos)

    def summary(self, first: int = 5) -> str:
        names = ", ".join(self.videos[:first]) + (", ..." if len(self.videos) > first else "")
        return f"{len(self.videos)} videos ({len(self.samples)} samples) not found or unreadable: {names}"

    def to_dict(self) -> dict:
        return {"videos": self.videos, "samples": self.samples}


def find_video(video: str, root: str | Path | None) -> str | None:
    """The readable file (or scheme URI) a sample's ``video`` names, or None.

    Tried in order: a scheme URI as is; the path itself (absolute, or relative to the current
    folder when there is no root); under ``root``: the path, then the path plus each of
    :data:`VIDEO_SUFFIXES` (ids without an extension).
    """
    if scheme_of(video):
        return video
    p = Path(video)
    cands = [p] if root is None or p.is_absolute() else []
    if root is not None and not p.is_absolute():
        r = Path(root)
        cands += [r / p] + [r / (video + s) for s in VIDEO_SUFFIXES]
    for c in cands:
        if c.is_file() and os.access(c, os.R_OK):
            return str(c)
    return None


def sample_video(s: Sample) -> str:
    return s.video


def with_sample_video(s: Sample, video: str) -> Sample:
    return replace(s, video=video)


def resolve_videos(samples: Sequence, video_root: str | Path | None = None, on_missing: str = "error",
                   video_of: Callable[[object], str] = sample_video,
                   with_video: Callable[[object, str], object] = with_sample_video,
                   name_of: Callable[[object], str] = lambda s: s.id) -> tuple[list, MissingVideos]:
    """Samples with ``video`` replaced by the file it names, and what is missing.

    ``on_missing="error"`` raises ``FileNotFoundError`` listing the count and the first names
    (before anything is trained or scored); ``"skip"`` drops those samples and returns them in
    the :class:`MissingVideos` record for the run's report. Other records than samples (preference
    pairs) say how to read and set their video and how they are named (``video_of``, ``with_video``,
    ``name_of``).
    """
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
    if video_root is not None and not Path(video_root).is_dir():
        raise FileNotFoundError(f"video root {video_root} is not a folder")
    found: dict[str, str | None] = {}
    kept, missing = [], MissingVideos()
    for s in samples:
        v = video_of(s)
        if v not in found:
            found[v] = find_video(v, video_root)
            if found[v] is None:
                missing.videos.append(v)
        if found[v] is None:
            missing.samples.append(name_of(s))
        else:
            kept.append(s if found[v] == v else with_video(s, found[v]))
    if missing and on_missing == "error":
        where = f" under {video_root}" if video_root is not None else ""
        raise FileNotFoundError(f"{missing.summary()}{where}; point --video-root at the folder holding them, "
                                "or pass --on-missing skip to leave those samples out (they are listed in the report)")
    return kept, missing


class ClipLoader:
    """A video reference -> :class:`ClipTensors` at the processor's input size.

    Files go through the media decoder and its disk cache (keyed by size, so models with different
    input sizes share a cache folder safely; ``cache``: how entries are keyed, or ``off``, see
    :func:`~damo.media.cache.load_clip`). ``memory=True`` also keeps every clip in this process's
    memory: only for small procedural datasets, where rendering dominates.
    """

    def __init__(self, processor: DamoProcessor, cache_dir: str | Path | None = None, memory: bool = False,
                 cache: str = "content"):
        self.processor, self.cache_dir, self.memory, self.cache = processor, cache_dir, memory, cache
        self._mem: dict[str, ClipTensors] = {}

    def _sampling(self, video: str) -> tuple[float, float]:
        c = self.processor.config
        return self.processor.sampling(video_duration(video) if c.uniform_frames else 0.0)

    def raw(self, video: str) -> Clip:
        """The decoded clip; a file with more frames than the model takes is refused before decoding."""
        c = self.processor.config
        fps, phase = self._sampling(video)
        return load_video(video, fps, c.image_size, self.cache_dir, MediaLimits(max_frames=c.max_frames), phase,
                          self.cache)

    def cache_file(self, video: str) -> Path | None:
        """The disk-cache entry :meth:`raw` reads and writes for the file ``video`` (None: no cache)."""
        if self.cache == "off":
            return None
        fps, phase = self._sampling(video)
        name = cache_key(video, fps, self.processor.config.image_size, phase, self.cache)
        return Path(self.cache_dir or default_cache_dir()) / f"{name}.npz"

    def __call__(self, video: str) -> ClipTensors:
        if video in self._mem:
            return self._mem[video]
        clip = self.processor.video_inputs(self.raw(video))
        if self.memory:
            self._mem[video] = clip
        return clip


class ClipDataset(Dataset):
    """``records[i]`` with its clip. A record is a :class:`Sample` or anything ``video_of`` maps to a
    video reference (preference pairs; ``name_of`` gives its name); ``with_clips=False`` yields
    ``None`` clips (text only). Indices may be ``(index, tag)`` tuples: the tag is passed through
    (the training step).

    A clip that cannot be made (:class:`~damo.media.MediaError`, or a ``ValueError`` from the
    processor or from ``check(record, clip)``, e.g. the token length) comes back as an
    :class:`~damo.data.preflight.Unusable` naming the reason, as do the indices of ``known_bad``
    (index -> reason) without being read again; the caller decides what replaces them."""

    def __init__(self, records: Sequence, clips: Callable[[str], ClipTensors], with_clips: bool = True,
                 video_of: Callable[[object], str] = lambda r: r.video, name_of: Callable[[object], str] = lambda r: r.id,
                 check: Callable[[object, ClipTensors], None] | None = None, known_bad: dict[int, str] | None = None):
        self.records, self.clips, self.with_clips, self.video_of = records, clips, with_clips, video_of
        self.name_of, self.check, self.known_bad = name_of, check, known_bad or {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        i, tag = key if isinstance(key, tuple) else (key, None)
        r = self.records[i]
        if not self.with_clips:
            return tag, r, None
        video = self.video_of(r)
        if i in self.known_bad:
            return tag, r, Unusable(i, self.name_of(r), video, self.known_bad[i])
        try:
            clip = self.clips(video)
            if self.check is not None:
                self.check(r, clip)
        except (MediaError, ValueError) as e:
            return tag, r, Unusable(i, self.name_of(r), video, str(e))
        return tag, r, clip


class StepBatches(Sampler):
    """Index lists of every micro-batch this process trains on, step by step from ``start``.

    The global batches walk through the dataset epoch by epoch: epoch ``e`` is a permutation of
    all ``n`` indices drawn by an RNG seeded with ``(seed, e)``, and step ``k`` takes positions
    ``k * batch`` to ``(k + 1) * batch - 1`` of the epochs laid end to end, so every sample is seen
    once per epoch (i.i.d. draws per step would leave about ``e^-epochs`` of them unseen) and a
    resumed run sees the same data. A global batch is split into ``parts`` micro-batches
    (processes x gradient accumulation); this process takes ``mine``. Each index carries its
    ``(step, micro-batch)`` tag, which seeds the collator's own draws.
    """

    def __init__(self, n: int, batch: int, steps: int, start: int, seed: int, parts: int, mine: range,
                 split: Callable[[list, int], list[list]]):
        self.n, self.batch, self.steps, self.start, self.seed = n, min(batch, n), steps, start, seed
        self.parts, self.mine, self.split = parts, mine, split
        self._epoch: tuple[int, list[int]] = (-1, [])

    def __len__(self) -> int:
        return (self.steps - self.start) * len(self.mine)

    def permutation(self, epoch: int) -> list[int]:
        if self._epoch[0] != epoch:
            order = list(range(self.n))
            random.Random(f"{self.seed}:epoch:{epoch}").shuffle(order)
            self._epoch = (epoch, order)
        return self._epoch[1]

    def global_batch(self, step: int) -> list[int]:
        """The dataset indices of step ``step``, over all processes."""
        return [self.permutation(p // self.n)[p % self.n] for p in range(step * self.batch, (step + 1) * self.batch)]

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, int]]]]:
        for step in range(self.start, self.steps):
            mbs = self.split(self.global_batch(step), self.parts)
            for m in self.mine:
                yield [(i, (step, m)) for i in mbs[m]]


def loader(dataset: Dataset, collate: Callable, num_workers: int = 0, batch_sampler: Sampler | None = None,
           batch_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``dataset``: worker processes decode and collate ahead of the model.
    ``pin_memory`` (for a CUDA model): batches arrive page-locked, so their copy to the GPU
    (``Batch.to(device, non_blocking=True)``) overlaps with compute."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    kw = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": batch_size, "shuffle": False}
    return DataLoader(dataset, collate_fn=collate, num_workers=num_workers, persistent_workers=False,
                      prefetch_factor=2 if num_workers else None, pin_memory=pin_memory, **kw)


def load_dataset(spec: str) -> list[Sample]:
    """A dataset spec: a URI of a registered scheme (:data:`damo.media.sources.SCHEMES`, e.g.
    ``synth://DIFFICULTY?n=..&seed=..&split=..``) or a canonical JSONL path."""
    if scheme_of(spec):
        return scheme_function(spec, "dataset")(spec)
    if not Path(spec).is_file():
        raise FileNotFoundError(f"dataset {spec!r} is neither a synth:// spec nor an existing JSONL file")
    return load_samples(spec)
