"""Processes under ``torchrun``: joining the process group, each rank's share of a corpus job, and the job's end.

Training splits every global batch across ranks (:mod:`damo.train.distributed`). Corpus jobs (``damo eval --data
--model``, ``damo data features``, ``damo data augment``) split their items instead: rank ``r`` of ``w`` takes
items ``r, r + w, r + 2w, ...`` of those not finished yet (:func:`share`), writes what it finishes to files of its
own as it goes (a killed job resumes from them, with any number of processes), and :func:`run_share` then tells
every rank how each one fared: a rank that failed is named, with its error, on every rank; else rank 0 merges the
ranks' files into the one output a single process writes.

    torchrun --nproc_per_node 8 -m damo.cli eval --data test.jsonl --model DIR --out runs/eval      # one node
    torchrun --nnodes 2 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
             --nproc_per_node 8 -m damo.cli data features --model DIR --data train.jsonl --out feats  # each node

Several nodes must see the same output folder (a shared file system).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)
    return DistInfo(0, 1, 0, device)


def gather_dicts(d: dict) -> dict:
    """The union of every process's ``d`` (picklable keys and values), on every process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(d)
    parts: list[dict] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, d)
    return {k: v for p in parts for k, v in p.items()}


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


ONE = DistInfo(0, 1, 0, torch.device("cpu"))     # a job run by one process


def device_for(name: str) -> str:
    """The device a command's ``--device`` names for this process: under ``torchrun`` (or ``accelerate launch``)
    with CUDA, ``auto`` and ``cuda`` mean this process's own GPU (``LOCAL_RANK``)."""
    if name in ("auto", "cuda") and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return name


def share(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's items: every ``world``-th from its rank on, so long and short ones spread evenly."""
    return list(items[info.rank::info.world])


class RankFailed(RuntimeError):
    """One or more ranks of a corpus job failed; the message names each with its error."""


def run_share(info: DistInfo, work: Callable[[], int]) -> list[int]:
    """Run this rank's ``work`` (returning how many items it handled) and return every rank's count, in rank
    order. With several ranks an error in ``work`` is caught and gathered with the others' results, so every
    rank raises :class:`RankFailed` naming each rank that failed (one process raises the error itself)."""
    if info.world == 1:
        return [work()]
    try:
        status: tuple[int, str | None] = (work(), None)
    except Exception as e:          # noqa: BLE001  (any failure of this rank is reported by every rank)
        status = (0, f"{type(e).__name__}: {e}")
    statuses: list = [None] * info.world
    dist.all_gather_object(statuses, status)
    failed = [f"rank {r} of {info.world} failed: {err}" for r, (_, err) in enumerate(statuses) if err]
    if failed:
        raise RankFailed("; ".join(failed))
    return [n for n, _ in statuses]


class Parts:
    """Each rank's finished work of one job, one JSONL file per rank in ``folder`` (``rank-R.jsonl``), so a killed
    job resumes with any number of processes. ``job`` (what the work depends on: model, data, settings) is kept
    in ``job.json``; a folder holding another job's work is an error. Every rank reads :attr:`rows` (the work
    finished so far) before any rank writes."""

    def __init__(self, folder: str | Path, job: dict, info: DistInfo):
        self.folder, self.info = Path(folder), info
        self.folder.mkdir(parents=True, exist_ok=True)
        kept = self.folder / "job.json"
        if kept.is_file() and json.loads(kept.read_text()) != job:
            raise ValueError(f"{self.folder} holds unfinished work of another run ({kept.read_text().strip()}); "
                             "delete it, or write this run's output elsewhere")
        self.rows = self.read()
        barrier()
        if info.main:
            kept.write_text(json.dumps(job))

    def read(self) -> list[dict]:
        """Every complete row of every rank's file (a line a kill cut short has no newline and is left out)."""
        return [json.loads(line) for path in sorted(self.folder.glob("rank-*.jsonl"))
                for line in path.read_text().splitlines(True) if line.endswith("\n")]

    @contextmanager
    def writer(self) -> Iterator[Callable[[list[dict]], None]]:
        """A function appending rows to this rank's file, each call flushed (a cut-short line is dropped first)."""
        path = self.folder / f"rank-{self.info.rank}.jsonl"
        text = path.read_text() if path.is_file() else ""
        path.write_text(text[:text.rfind("\n") + 1])
        with path.open("a") as f:
            def add(rows: list[dict]) -> None:
                f.writelines(json.dumps(r) + "\n" for r in rows)
                f.flush()
            yield add
