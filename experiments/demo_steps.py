"""How many temporal-perception steps does the demo need? Accuracy per CPU second on a validation split.

    python experiments/demo_steps.py WORKDIR [--temporal-steps 400 500] [--seeds 0 1 2] [--jobs 2]

The demo's recipe (``damo_4stage``) with the temporal stage cut to each of ``--temporal-steps``
(its cosine schedule follows the new length), everything else as shipped, for each training seed.
Per seed, the first step count trains the whole recipe (``WORKDIR/seed-S/temporal-N``); the stages
before temporal are the same in every run of that seed, so the other step counts copy them from it
and train temporal and dialogue only.

Scored on a validation split made for this choice and seen by no other: ``--val-videos`` procedural
videos of split ``val`` with seed ``--val-seed``, encoded to ``.mkv`` files as the demo's test split
is, and read through the same decoding path; single-moment grounding queries, R@1 at IoU 0.5 and
mIoU (``damo eval``). The test split is never read. The CPU time of each run's training (user + sys
of its process, all threads) is what an idle machine would take on one core; it does not depend on
other work sharing the machine, unlike wall time. Writes ``WORKDIR/steps.json`` and prints a table
per seed and the mean over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import copy_stages, validation_split

EARLY, LATE = ("language", "align", "bridge"), ("temporal", "dialogue")


def run(cmd: list[str], log: Path) -> None:
    """Run a command with its output in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed; see {log}")


def train(work: Path, steps: int, seed: int) -> None:
    sets = ["--set", f"seed={seed}", "--set", f"data.train=synth://standard?n=1500&seed={seed}&split=train",
            "--set", f"stages.3.steps={steps}"]
    run([sys.executable, "-m", "damo.cli", "train", "--recipe", "damo_4stage", "--workdir", str(work), *sets],
               work.parent / f"{work.name}.log")


def one(root: Path, val: Path, seed: int, steps: int, first: int) -> dict:
    """Train (or reuse) the run of ``steps`` temporal steps for ``seed`` and score it on ``val``."""
    work = root / f"seed-{seed}" / f"temporal-{steps}"
    if steps != first:
        copy_stages(root / f"seed-{seed}" / f"temporal-{first}" / "stages", work, EARLY)
    train(work, steps, seed)
    run([sys.executable, "-m", "damo.cli", "eval", "--data", str(val), "--model", str(work / "model"),
         "--out", str(work / "val-eval")], work.parent / f"{work.name}.log")
    m = json.loads((work / "val-eval" / "metrics.json").read_text())["overall"]
    stats = {s: json.loads((work / "stages" / s / "stats.json").read_text()) for s in LATE}
    return {"seed": seed, "temporal_steps": steps, "late_cpu_s": round(sum(st["cpu_s"] for st in stats.values()), 1),
            "late_wall_s": round(sum(st["wall_s"] for st in stats.values()), 1),
            "n": m["n"], "R1@0.5": m["R1@0.5"], "mIoU": m["mIoU"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--temporal-steps", type=int, nargs="+", default=[400, 500])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--val-seed", type=int, default=17)
    ap.add_argument("--val-videos", type=int, default=60)
    ap.add_argument("--jobs", type=int, default=2, help="seeds trained at once (one thread each)")
    a = ap.parse_args()
    os.environ.setdefault("DAMO_THREADS", "1")
    root = a.workdir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    val = validation_split(root, a.val_videos, a.val_seed)
    results_path = root / "steps.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    lock = threading.Lock()

    def seed_runs(seed: int) -> None:
        for steps in a.temporal_steps:              # the first trains the early stages the others copy
            key = f"{seed}:{steps}"
            if key not in results:
                r = one(root, val, seed, steps, a.temporal_steps[0])
                with lock:
                    results[key] = r
                    results_path.write_text(json.dumps(results, indent=2))

    with ThreadPoolExecutor(a.jobs) as pool:
        list(pool.map(seed_runs, a.seeds))
    print(f"validation: {val} (seed {a.val_seed}); load average now {os.getloadavg()[0]:.2f}")
    print("| temporal steps | seed | CPU s of temporal + dialogue | val n | val R@0.5 | val mIoU |")
    print("|---|---|---|---|---|---|")
    for steps in a.temporal_steps:
        rows = [results[f"{s}:{steps}"] for s in a.seeds]
        for r in rows:
            print(f"| {steps} | {r['seed']} | {r['late_cpu_s']:.0f} | {r['n']} | {r['R1@0.5']:.3f} | {r['mIoU']:.3f} |")
        print(f"| {steps} | mean | {statistics.mean(r['late_cpu_s'] for r in rows):.0f} | | "
              f"**{statistics.mean(r['R1@0.5'] for r in rows):.3f}** | {statistics.mean(r['mIoU'] for r in rows):.3f} |")


if __name__ == "__main__":
    main()
