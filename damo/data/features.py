"""Frozen-encoder features, computed once and read back instead of running the encoders.

Every paper trains its connector and LLM with the vision and audio towers frozen (DaMO after
alignment, D²VLM, LLaVA-ST), so their outputs depend only on the video. ``damo data features``
runs the towers once over a dataset and writes them as sharded safetensors to ``OUT/KEY/``, where
``KEY`` digests the encoder settings (tower configs, input size, fps, audio features and the
towers' weights), so features of different encoders never mix:

- ``index.json``: those settings in full and, per video reference, its shard (``shard-NNNNN.json`` lists a
  shard's videos until the index takes them in);
- ``shard-NNNNN.safetensors``: per video ``KEY.vision`` ``(T, 1+P, Dv)``, ``KEY.audio``
  ``(T, 1+A, Da)`` (both in the towers' dtype) and ``KEY.times`` ``(T,)`` seconds.

A shard is written (atomically) before the index names it, so a killed run resumes with the
videos it had not stored yet. :class:`FeatureLoader` reads one video's tensors at a time
(memory stays flat) from the folder of the model's own settings.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from damo.model.modeling_damo import DamoModel
from damo.model.processing import ClipTensors, DamoProcessor
from damo.ranks import ONE, DistInfo, barrier, run_share, share

INDEX = "index.json"


def video_key(video: str) -> str:
    """A video reference (path or URI, as the samples name it) -> a tensor-name-safe key."""
    return hashlib.sha256(video.encode()).hexdigest()[:32]


def encoder_settings(model: DamoModel) -> dict:
    """Everything the towers' outputs depend on, with a digest of their weights."""
    c, p = model.cfg, DamoProcessor.from_model_config(model.cfg, model.tokenizer).config
    h = hashlib.sha256()
    for name, t in sorted({**model.video.vision.state_dict(prefix="vision."),
                           **model.video.audio.state_dict(prefix="audio.")}.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return {"vision": asdict(c.vision), "audio": asdict(c.audio), "fps": c.fps, "image_size": p.image_size,
            "audio_features": p.audio_features, "n_mels": p.n_mels, "mel_frames": p.mel_frames,
            "weights_sha256": h.hexdigest()}


def settings_dir(root: str | Path, model: DamoModel) -> tuple[Path, dict]:
    """The folder under ``root`` holding features of ``model``'s towers, and their settings."""
    settings = encoder_settings(model)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / key, settings


def _write_json(path: Path, obj: dict | list) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _stored(out: Path, settings: dict) -> dict:
    """The index, with the shards finished since it was last written (each one's ``.json`` beside it) folded in."""
    index_path = out / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"settings": settings, "videos": {}}
    for part in sorted(out.glob("shard-*.json")):
        index["videos"].update(dict.fromkeys(json.loads(part.read_text()), part.with_suffix(".safetensors").name))
    return index


@torch.no_grad()
def extract(model: DamoModel, videos: Iterable[str], clips: Callable[[str], ClipTensors], out: str | Path,
            shard_videos: int = 64, progress: bool = True, info: DistInfo = ONE) -> dict:
    """Run the model's frozen towers over ``videos`` into ``out/KEY`` (resuming what is there).

    The videos not stored yet are cut into shards of ``shard_videos`` in order; under torchrun rank ``r`` of ``w``
    computes shards ``r, r + w, ...`` (:mod:`damo.ranks`), so the folder ends as one process leaves it. Each shard
    is written with a ``.json`` list of its videos, folded into ``index.json`` once every rank is done.
    Returns ``{"folder", "videos", "written", "reused", "shards", "world_size", "videos_per_rank"}``.
    """
    out, settings = settings_dir(out, model)
    out.mkdir(parents=True, exist_ok=True)
    index = _stored(out, settings)
    todo = [v for v in dict.fromkeys(videos) if v not in index["videos"]]
    first = 1 + max((int(n[6:11]) for n in index["videos"].values()), default=-1)   # after any shard of a killed run
    groups = [(f"shard-{first + g:05d}", todo[i:i + shard_videos]) for g, i in enumerate(range(0, len(todo), shard_videos))]
    dev = next(model.parameters()).device
    model.eval()
    barrier()                   # every rank has planned from the same folder before any writes to it

    def work() -> int:
        mine = share(groups, info)
        bar = tqdm(total=sum(len(vs) for _, vs in mine), desc="features", disable=not (progress and info.main),
                   dynamic_ncols=True)
        for name, vs in mine:
            tensors: dict[str, torch.Tensor] = {}
            for v in vs:
                c = clips(v)
                frames = c.frames.permute(0, 3, 1, 2).float().div(255.0)[None].to(dev)     # (1, T, 3, H, W)
                k = video_key(v)
                tensors[f"{k}.vision"] = model.video.vision(frames)[0].contiguous().cpu()          # (T, 1+P, Dv)
                tensors[f"{k}.audio"] = model.video.audio(c.mel.float()[None].to(dev))[0].contiguous().cpu()
                tensors[f"{k}.times"] = c.times.contiguous()
                tensors[f"{k}.duration"] = torch.tensor([c.duration], dtype=torch.float64)
                bar.update()
            tmp = out / f"{name}.safetensors.tmp-{os.getpid()}"
            save_file(tensors, str(tmp))
            tmp.replace(out / f"{name}.safetensors")          # the shard first, then the list that names it
            _write_json(out / f"{name}.json", vs)
        bar.close()
        return sum(len(vs) for _, vs in mine)

    per_rank = run_share(info, work)
    if info.main:           # every rank has finished writing: fold their shards' lists into the index
        _write_json(out / INDEX, _stored(out, settings))
        for part in out.glob("shard-*.json"):
            part.unlink()
    return {"folder": str(out), "videos": len(index["videos"]) + len(todo), "written": len(todo),
            "reused": len(index["videos"]), "shards": len(set(index["videos"].values())) + len(groups),
            "world_size": info.world, "videos_per_rank": per_rank}


class FeatureLoader:
    """A video reference -> :class:`ClipTensors` holding the stored tower outputs (no frames)."""

    def __init__(self, root: str | Path, model: DamoModel):
        self.root = settings_dir(root, model)[0]
        index_path = self.root / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(f"{root} holds no features of this model's encoders (settings and weights); "
                                    "write them with damo data features --model MODEL")
        self.shard_of = json.loads(index_path.read_text())["videos"]

    def __call__(self, video: str) -> ClipTensors:
        if video not in self.shard_of:
            raise KeyError(f"{video}: no stored features in {self.root}; run damo data features on its dataset")
        k = video_key(video)
        with safe_open(str(self.root / self.shard_of[video]), framework="pt") as f:
            vis, aud = f.get_tensor(f"{k}.vision"), f.get_tensor(f"{k}.audio")
            times, duration = f.get_tensor(f"{k}.times"), float(f.get_tensor(f"{k}.duration")[0])
        T = vis.shape[0]
        return ClipTensors(frames=torch.zeros(T, 0, 0, 3, dtype=torch.uint8), mel=torch.zeros(T, 0, 0),
                           times=times, duration=duration, vision=vis, audio=aud)
