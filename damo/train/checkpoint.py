"""Crash-safe training checkpoints: atomic, pickle-free, and complete enough to resume bit for bit.

A checkpoint is a folder ``step-00000012/`` with ``tensors.safetensors`` (trainable weights,
optimizer moments, the torch RNG state) and ``state.json`` (optimizer hyper-parameters,
scheduler counters, python and numpy RNG states, the step reached and the loss history).
Nothing is pickled, so loading a checkpoint cannot run code.

Atomicity: the folder is written under a temporary name, fsync'ed, renamed into place, and
only then does the ``latest`` pointer file move to it (temp file + ``os.replace``). A run
killed at any instant leaves either the previous checkpoint or the new one, never half of one.

The data position is the step number alone: the training loop draws each step's global batch
from an RNG seeded by ``(seed, step)``, so resuming at step ``k`` sees exactly the batches an
uninterrupted run sees from step ``k`` on.

Weights and optimizer state go through ``torch.distributed.checkpoint.state_dict``, so the
same code saves a plain, a DDP or an FSDP model (full, unsharded tensors, written by rank 0).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from damo.model.backbones import load_state_file

LATEST = "latest"


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX needs the directory itself synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temp file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors`` save through a synced temp file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp),
              metadata=metadata or {"format": "pt"})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# ---------------------------------------------------------------- nested state <-> JSON + tensors
def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], key: str = "") -> Any:
    """Replace every tensor in a nested structure by a reference, collecting tensors by key.

    Tuples, non-string dict keys and numpy arrays are tagged so :func:`join_tensors` restores
    them exactly (python's RNG state is a tuple; optimizer states may be keyed by integers).
    """
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[k, split_tensors(v, tensors, f"{key}.{k}" if key else str(k))] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [split_tensors(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [split_tensors(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {key!r}; only tensors, arrays and JSON values")


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(join_tensors(v, tensors) for v in obj["__tuple__"])
    return {k: join_tensors(v, tensors) for k, v in obj["__dict__"]}


# ---------------------------------------------------------------- RNG
def rng_state() -> dict:
    """Python, numpy and torch global RNG states (CUDA too when present)."""
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ---------------------------------------------------------------- checkpoints
def latest_checkpoint(folder: str | Path) -> Path | None:
    """The folder ``latest`` points to, or None when no checkpoint was completed."""
    ptr = Path(folder) / LATEST
    if not ptr.is_file():
        return None
    path = Path(folder) / ptr.read_text().strip()
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{ptr} points to {path}, which is not a complete checkpoint")
    return path


def save_checkpoint(folder: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, extra: dict | None = None,
                    write: bool = True, keep: int = 1) -> Path:
    """Save trainable weights, optimizer, scheduler, RNG states and ``extra`` (JSON) at ``step``.

    Collective under DDP/FSDP: every rank calls it, only the rank with ``write=True`` writes.
    Frozen weights are not saved: a resumed stage rebuilds them from the stage's starting
    point, which is itself a saved model. Older checkpoints beyond ``keep`` are removed.
    """
    folder = Path(folder)
    msd, osd = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                         ignore_frozen_params=True))
    name = f"step-{step:08d}"
    if not write:
        return folder / name
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    state = {"step": step,
             "optimizer": split_tensors(osd, tensors, "optimizer"),
             "scheduler": split_tensors(scheduler.state_dict(), tensors, "scheduler"),
             "rng": split_tensors(rng_state(), tensors, "rng"),
             "extra": split_tensors(extra or {}, tensors, "extra")}
    tensors |= {f"model.{k}": v for k, v in msd.items()}
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    atomic_save_tensors(tensors, tmp / "tensors.safetensors")
    atomic_write_text(tmp / "state.json", json.dumps(state))
    final = folder / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(folder)
    atomic_write_text(folder / LATEST, name)
    old = sorted(p for p in folder.glob("step-*") if p.is_dir() and p != final)
    for p in old[:max(0, len(old) - keep + 1)]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict:
    """Restore what :func:`save_checkpoint` wrote (RNG states included); returns ``{step, extra}``.

    The model must have the same trainable parameters, and the optimizer must be built over
    them, as when the checkpoint was saved.
    """
    path = Path(path)
    tensors = load_state_file(path / "tensors.safetensors")
    state = json.loads((path / "state.json").read_text())
    msd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    # state_dict names, not named_parameters: tied weights (lm_head = embeddings) appear under both names
    trainable = {n for n, p in model.state_dict(keep_vars=True).items() if p.requires_grad}
    if set(msd) != trainable:
        raise ValueError(f"checkpoint {path} holds weights {sorted(set(msd) ^ trainable)[:5]} that do not match the "
                         "trainable parameters of this stage; was the recipe changed since it was saved?")
    set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=join_tensors(state["optimizer"], tensors),
                   options=StateDictOptions(full_state_dict=True, strict=False))
    scheduler.load_state_dict(join_tensors(state["scheduler"], tensors))
    set_rng_state(join_tensors(state["rng"], tensors))
    return {"step": state["step"], "extra": join_tensors(state["extra"], tensors)}


def clear_checkpoints(folder: str | Path) -> None:
    """Remove a finished stage's checkpoints (its saved model supersedes them)."""
    shutil.rmtree(folder, ignore_errors=True)
