"""Where the demo's training time goes: per stage, the share of data, forward, backward and optimiser.

Runs the demo's recipe (``damo_4stage``, the tiny model, the demo's procedural training data) for
``--steps`` steps of each stage, once per thread count in ``--threads``, and times every step's
phases with both clocks: wall time and this process's CPU time (all its threads). The phases:

- data: drawing the step's batch (the clip of a video first seen is rendered then, and kept, as
  in the demo: ``clip_memory``); ``render`` is that part alone, counted per clip
- forward: the model and the stage's losses
- backward: autograd
- optimiser: gradient clipping and the AdamW step
- other: the rest of the step (zeroing gradients, logging)

The demo renders each of its 1,500 training videos once per run; a short profile renders a clip for
most of its draws, so its data share is larger than the demo's. The last table therefore projects a
whole demo: each stage's measured seconds per step of forward, backward, optimiser and batching
(without rendering) times its full step count, plus one rendering per training video.

On a machine shared with other work, wall times stretch with the load while the shares and the
ratios between thread counts stay comparable; the load average is printed before and after.

    python bench/demo_profile.py [--steps 12] [--threads 1 2] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import replace
from unittest.mock import patch

import torch

from damo.config import load_recipe
from damo.data.dataset import ClipLoader
from damo.train import loop, recipe as recipe_mod

PHASES = ("data", "forward", "backward", "optimiser", "other")


class Clock:
    """Wall and CPU seconds per (stage, phase), and the clips rendered per stage."""

    def __init__(self):
        self.stage = ""
        self.wall: dict[tuple[str, str], float] = defaultdict(float)
        self.cpu: dict[tuple[str, str], float] = defaultdict(float)
        self.rendered: dict[str, int] = defaultdict(int)

    def timed(self, phase: str, fn):
        def wrapper(*args, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall[self.stage, phase] += time.perf_counter() - w
                self.cpu[self.stage, phase] += time.process_time() - c
        return wrapper


def profile(threads: int, steps: int, seed: int, workdir: str) -> tuple[Clock, dict[str, int]]:
    """Train every stage of the demo's recipe for ``steps`` steps on ``threads`` threads; returns the
    clock and each stage's full step count."""
    torch.set_num_threads(threads)
    recipe = load_recipe("damo_4stage", [f"seed={seed}"])
    recipe.data["train"] = f"synth://standard?n=1500&seed={seed}&split=train"
    full = {st.name: st.steps for st in recipe.stages}
    recipe.stages = [replace(st, steps=steps, warmup=min(st.warmup, steps)) for st in recipe.stages]
    clock = Clock()
    run_stage, loader, call = loop.run_stage, loop.loader, ClipLoader.__call__

    def stage(model, st, *args, **kwargs):
        clock.stage = st.name
        t0w, t0c = time.perf_counter(), time.process_time()
        try:
            return run_stage(model, st, *args, **kwargs)
        finally:
            clock.wall[st.name, "step"] += time.perf_counter() - t0w
            clock.cpu[st.name, "step"] += time.process_time() - t0c

    def timed_loader(*args, **kwargs):
        it = iter(loader(*args, **kwargs))
        return iter(clock.timed("data", lambda: next(it)), object())

    def clip(self, video):
        if video in self._mem:
            return call(self, video)
        clock.rendered[clock.stage] += 1
        return clock.timed("render", call)(self, video)

    with ExitStack() as stack:
        stack.enter_context(patch.object(recipe_mod, "run_stage", stage))
        stack.enter_context(patch.object(loop, "loader", timed_loader))
        stack.enter_context(patch.object(ClipLoader, "__call__", clip))
        stack.enter_context(patch.object(loop.StageLoss, "forward", clock.timed("forward", loop.StageLoss.forward)))
        stack.enter_context(patch.object(torch.autograd, "backward", clock.timed("backward", torch.autograd.backward)))
        stack.enter_context(patch.object(torch.optim.AdamW, "step", clock.timed("optimiser", torch.optim.AdamW.step)))
        stack.enter_context(patch.object(torch.nn.utils, "clip_grad_norm_",
                                         clock.timed("optimiser", torch.nn.utils.clip_grad_norm_)))
        recipe_mod.run_recipe(recipe, workdir, progress=False, log=lambda *_: None)
    return clock, full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="steps of each stage")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    load0 = os.getloadavg()
    print(f"{args.steps} steps per stage of damo_4stage, seed {args.seed}; load average before "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, {os.cpu_count()} cores\n")
    results = {}
    for n in args.threads:
        with tempfile.TemporaryDirectory() as work:
            results[n] = profile(n, args.steps, args.seed, work)
    print("| stage | threads | wall s/step | CPU s/step | data | (render) | forward | backward | optimiser | other |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for stage in results[args.threads[0]][1]:
        for n, (clock, _) in results.items():
            step_w, step_c = clock.wall[stage, "step"], clock.cpu[stage, "step"]
            cpu = {p: clock.cpu[stage, p] for p in PHASES[:-1]}
            cpu["other"] = step_c - sum(cpu.values())
            shares = " | ".join(f"{cpu[p] / step_c:.0%}" + (f" | {clock.cpu[stage, 'render'] / step_c:.0%}"
                                                            if p == "data" else "") for p in PHASES)
            print(f"| {stage} | {n} | {step_w / args.steps:.3f} | {step_c / args.steps:.3f} | {shares} |")
    print("\nShares are of CPU time. Projected whole demo (full step counts; one rendering per training video):")
    print("| threads | stage | CPU s | wall s |")
    print("|---|---|---|---|")
    for n, (clock, full) in results.items():
        tot_c = tot_w = 0.0
        renders = sum(clock.rendered.values())
        per_clip_c = sum(clock.cpu[s, "render"] for s in full) / max(1, renders)
        per_clip_w = sum(clock.wall[s, "render"] for s in full) / max(1, renders)
        for stage, k in full.items():
            c = (clock.cpu[stage, "step"] - clock.cpu[stage, "render"]) / args.steps * k
            w = (clock.wall[stage, "step"] - clock.wall[stage, "render"]) / args.steps * k
            tot_c, tot_w = tot_c + c, tot_w + w
            print(f"| {n} | {stage} ({k} steps) | {c:.0f} | {w:.0f} |")
        print(f"| {n} | rendering 1,500 clips ({per_clip_c * 1000:.0f} ms CPU each) | {1500 * per_clip_c:.0f} | "
              f"{1500 * per_clip_w:.0f} |")
        print(f"| {n} | **training** | **{tot_c + 1500 * per_clip_c:.0f}** | **{tot_w + 1500 * per_clip_w:.0f}** |")
    load1 = os.getloadavg()
    print(f"\nload average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
