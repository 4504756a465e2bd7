"""Data-loading throughput for a CLIP tower: clips per second at 0, 1 and 2 loader workers.

Each item is one shared video turned into what a CLIP ViT-L/14 consumes: frames at 1 fps
(the frame nearest each window centre), 224 x 224, as a normalised float tensor ``(T, 3, 224, 224)``
with CLIP's mean and std. Two loaders do that same work inside a ``torch.utils.data.DataLoader``:

- ours: ``damo.media.decode_clip(path, 1.0, 224, audio=False)`` (PyAV, scaled to 224 in the decoder),
  no disk cache, so every item is decoded;
- decord 0.6.0, the reader of the papers' code: ``VideoReader(width=224, height=224)`` +
  ``get_batch`` of the same frame indices.

Rounds alternate the two loaders per worker count; the table gives the median clips/s and the ratio
ours / decord. Videos decord cannot open are reported and left out of its column. The machine's
load average is printed, since other processes slow both. Needs the bench extra
(``pip install decord==0.6.0``).

    python bench/dataload.py [--videos DIR] [--repeat 3] [--rounds 3] [--workers 0 1 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from damo.media import decode_clip

REPO = Path(__file__).resolve().parents[1]
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
SIZE = 224


def normalise(frames: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)   # (T, 3, S, S)
    return (x - MEAN) / STD


def ours(path: str) -> torch.Tensor:
    return normalise(decode_clip(path, 1.0, SIZE, audio=False).frames)


def with_decord(path: str) -> torch.Tensor:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), width=SIZE, height=SIZE, num_threads=1)
    stamps = vr.get_frame_timestamp(np.arange(len(vr)))[:, 0]          # (N,) each frame's start time
    duration = float(vr.get_frame_timestamp(len(vr) - 1)[1])
    centres = np.arange(max(1, int(np.ceil(duration - 1e-6)))) + 0.5   # 1 fps window centres
    idx = np.abs(stamps[None, :] - centres[:, None]).argmin(axis=1)
    return normalise(vr.get_batch(idx).asnumpy())


class Videos(Dataset):
    def __init__(self, paths: list[str], load):
        self.paths, self.load = paths, load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.load(self.paths[i])


def clips_per_second(paths: list[str], load, workers: int) -> float:
    loader = DataLoader(Videos(paths, load), batch_size=None, num_workers=workers,
                        prefetch_factor=2 if workers else None)
    t0 = time.perf_counter()
    n = sum(1 for _ in loader)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", default=str(REPO.parent / "shared" / "data" / "videos"))
    ap.add_argument("--repeat", type=int, default=3, help="each video appears this many times per pass")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    videos = sorted(str(p) for p in Path(args.videos).iterdir() if p.is_file())
    readable = []
    for v in videos:
        try:
            with_decord(v)
            readable.append(v)
        except Exception as e:      # report what decord cannot read, whatever it raises
            print(f"decord cannot read {Path(v).name}: {type(e).__name__}: {str(e)[:80]}")
    both = readable * args.repeat
    print(f"{len(readable)} videos x {args.repeat}, {SIZE} px CLIP input, load average {os.getloadavg()[0]:.2f}")
    print(f"{'workers':>7} {'ours clips/s':>13} {'decord clips/s':>15} {'ours/decord':>12}")
    for w in args.workers:
        a, b = [], []
        for r in range(args.rounds):
            for name, fn in ((("ours", ours), ("decord", with_decord)) if r % 2 == 0 else
                             (("decord", with_decord), ("ours", ours))):
                (a if name == "ours" else b).append(clips_per_second(both, fn, w))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{w:>7} {ma:>13.2f} {mb:>15.2f} {ma / mb:>12.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
