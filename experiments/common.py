"""Shared pieces of the experiments: the shipped recipe at a smaller budget, parallel runs, tables."""
from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
from pathlib import Path
from typing import Callable

from damo.config import Recipe, load_recipe


def add_budget_args(ap: argparse.ArgumentParser, test: bool = True) -> None:
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    if test:
        ap.add_argument("--test", type=int, default=60, help="test videos")
    ap.add_argument("--steps", type=float, default=0.5,
                    help="fraction of damo/resources/recipes/damo_4stage.yaml's steps for each stage (dialogue is dropped)")


def short_recipe(seed: int, train: str, a: argparse.Namespace, overrides: list[str] = ()) -> Recipe:
    """``damo/resources/recipes/damo_4stage.yaml`` without its dialogue stage, each stage at ``a.steps`` of its steps."""
    r = load_recipe("damo_4stage", [f"seed={seed}", f"data.train={train}", *overrides])
    r.stages = [st for st in r.stages if st.name != "dialogue"]
    for st in r.stages:
        st.steps = max(1, round(st.steps * a.steps))
    return r


def validation_split(root: Path, n: int, seed: int, tasks: tuple[str, ...] = ("grounding",)) -> Path:
    """``root/val/val.jsonl``: the ``tasks`` samples of ``n`` procedural videos of split ``val`` made with
    ``seed``, each encoded to an ``.mkv`` file as the demo's test split is, so a model reads them through
    the same decoding path. Written once; a later call with the same ``root`` reuses the file."""
    from damo.data.schema import save_samples
    from damo.data.synthetic import write_video
    from damo.data.synthetic.events import generate_spec
    from damo.data.synthetic.queries import video_samples

    path = root / "val" / "val.jsonl"
    if not path.is_file():
        samples = []
        for i in range(n):
            spec = generate_spec("standard", seed, "val", i)
            video = str(write_video(spec, root / "val" / "videos" / f"{i:05d}.mkv"))
            samples += [s for s in video_samples(spec, video) if s.task in tasks]
        save_samples(path, samples)
    return path


def copy_stages(src: Path, out: Path, names: tuple[str, ...] | None = None) -> None:
    """Seed a run's workdir ``out`` with the finished stages of another (``src``: its ``stages`` folder; only
    ``names`` when given), so the run trains only what comes after them."""
    for st in src.iterdir():
        if (names is None or st.name in names) and not (out / "stages" / st.name).exists():
            shutil.copytree(st, out / "stages" / st.name)


def run_parallel(fn: Callable, jobs: list, n: int) -> list:
    """``fn`` over ``jobs`` in ``n`` spawned processes, a fresh one per job (each sets its own torch
    threads; a job's peak memory is its own)."""
    with mp.get_context("spawn").Pool(n, maxtasksperchild=1) as pool:
        return pool.map(fn, jobs, chunksize=1)


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"
