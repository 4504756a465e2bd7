"""Datasets of procedural videos: samples in memory, ``synth://`` dataset specs, and the train /
val / test splits written to disk."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from damo.data.schema import Sample, save_samples
from .encode import write_video
from .events import DIFFICULTIES, GENERATOR_VERSION, _check_args, generate_spec
from .queries import video_samples
from .stvg import stvg_samples

def generate_samples(n: int, seed: int, difficulty: str = "standard", split: str = "train",
                     start: int = 0, stvg: bool = False) -> list[Sample]:
    """Samples of videos ``start .. start + n - 1`` of one split, in memory (videos as URIs);
    ``stvg`` adds each video's spatio-temporal grounding queries (:func:`stvg_samples`)."""
    if n < 0:
        raise ValueError(f"number of videos must be >= 0, got {n}")
    _check_args(difficulty, split, start)
    out = []
    for i in range(start, start + n):
        spec = generate_spec(difficulty, seed, split, i)
        out += video_samples(spec) + (stvg_samples(spec) if stvg else [])
    return out


def synth_samples(spec: str) -> list[Sample]:
    """Samples from a dataset spec ``synth://DIFFICULTY?n=N&seed=S&split=SPLIT[&tasks=a,b][&stvg=1]``.

    Defaults: n=1000, seed=0, split=train, all tasks, no spatio-temporal grounding queries
    (``stvg=1`` adds them). Used by training recipes; no files.
    """
    if not spec.startswith("synth://"):
        raise ValueError(f"{spec!r} is not a synthetic dataset spec; write e.g. synth://standard?n=4000&seed=0")
    body = spec[len("synth://"):]
    difficulty, _, query = body.partition("?")
    difficulty = difficulty.rstrip("/")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"{spec!r}: unknown difficulty {difficulty!r}; choose one of {DIFFICULTIES}")
    params = {"n": "1000", "seed": "0", "split": "train", "tasks": "", "stvg": "0"}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or key not in params:
            raise ValueError(f"{spec!r}: bad parameter {item!r}; allowed: n=INT, seed=INT, split=train|val|test, "
                             f"tasks=TASK[,TASK], stvg=0|1")
        params[key] = value
    try:
        n, seed = int(params["n"]), int(params["seed"])
    except ValueError:
        raise ValueError(f"{spec!r}: n and seed must be integers") from None
    if params["stvg"] not in ("0", "1"):
        raise ValueError(f"{spec!r}: stvg must be 0 or 1, got {params['stvg']!r}")
    stvg = params["stvg"] == "1"
    samples = generate_samples(n, seed, difficulty, params["split"], stvg=stvg)
    if params["tasks"]:
        tasks = set(params["tasks"].split(","))
        known = {"grounding", "multi_grounding", "dense_caption", "grounded_qa"} | ({"stvg"} if stvg else set())
        if not tasks <= known:
            raise ValueError(f"{spec!r}: unknown tasks {sorted(tasks - known)}; synthetic data has {sorted(known)}")
        samples = [s for s in samples if s.task in tasks]
    return samples


def _counts(samples: list[Sample], n_videos: int) -> dict:
    return {"videos": n_videos, "samples": len(samples),
            "tasks": dict(sorted(Counter(s.task for s in samples).items())),
            "kinds": dict(sorted(Counter(s.meta["kind"] for s in samples).items())),
            "modalities": dict(sorted(Counter(s.meta["modality"] for s in samples).items()))}


def synthesize(out_dir: str | Path, n: int, seed: int, difficulty: str = "standard", val_n: int | None = None,
               test_n: int | None = None, stvg: bool = False) -> dict:
    """Write a dataset: ``train.jsonl`` and ``val.jsonl`` (videos as synth:// URIs), ``test.jsonl``
    whose videos are encoded files ``videos/test/NNNNN.mkv`` (stored as absolute paths, so the
    JSONL works from any working directory), and ``meta.json``. Returns counts per split.
    ``stvg`` adds the spatio-temporal grounding queries (:func:`stvg_samples`).

    Defaults: ``val_n = max(1, n // 10)``, ``test_n = 120``.
    """
    if n < 1:
        raise ValueError(f"n (training videos) must be >= 1, got {n}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {DIFFICULTIES}")
    out = Path(out_dir).resolve()
    sizes = {"train": n, "val": max(1, n // 10) if val_n is None else val_n, "test": 120 if test_n is None else test_n}
    counts = {}
    for split, k in sizes.items():
        samples = []
        for i in range(k):
            spec = generate_spec(difficulty, seed, split, i)
            video = None
            if split == "test":
                video = str(write_video(spec, out / "videos" / "test" / f"{i:05d}.mkv"))
            samples.extend(video_samples(spec, video) + (stvg_samples(spec, video) if stvg else []))
        save_samples(out / f"{split}.jsonl", samples)
        counts[split] = _counts(samples, k)
    meta = {"generator": "damo.data.synthetic", "version": GENERATOR_VERSION, "seed": seed,
            "difficulty": difficulty, "video_uri": "synth://{difficulty}/{seed}/{split}/{index}",
            "test_videos": "absolute paths to videos/test/*.mkv", "counts": counts}
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / "meta.json")
    return counts
