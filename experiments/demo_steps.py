"""How many temporal-perception steps does the demo need? Accuracy per CPU second on a validation split.

    damo demo --workdir DEMO    # or damo train --recipe damo_4stage --workdir DEMO
    python experiments/demo_steps.py WORKDIR --from DEMO [--temporal-steps 700 400 250] [--seed 0] [--jobs 2]

The demo's recipe (``damo_4stage``) with the temporal stage cut to each of ``--temporal-steps``
(its cosine schedule follows the new length), everything else as shipped. The stages before
temporal are the same in every run, so they are taken from ``--from`` (a finished run of the same
code and seed) and copied into each run, which then trains temporal and dialogue.

Scored on a validation split made for this choice and seen by no other: ``--val-videos`` procedural
videos of split ``val`` with seed ``--val-seed``, encoded to ``.mkv`` files as the demo's test split
is, and read through the same decoding path; single-moment grounding queries, R@1 at IoU 0.5 and
mIoU (``damo eval``). The test split is never read. The CPU time of each run's training (user + sys
of its process, all threads) is what an idle machine would take on one core; it does not depend on
other work sharing the machine, unlike wall time. Writes ``WORKDIR/steps.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

EARLY = ("language", "align", "bridge")


def validation_split(root: Path, n: int, seed: int) -> Path:
    """The grounding queries of ``n`` encoded validation videos (written once)."""
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
            samples += [s for s in video_samples(spec, video) if s.task == "grounding"]
        save_samples(path, samples)
    return path


def run(cmd: list[str], log: Path) -> float:
    """Run a command with its output in ``log``; returns its CPU seconds (user + sys, all threads)."""
    with open(log, "a") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}")
    return usage.ru_utime + usage.ru_stime


def train(work: Path, steps: int, seed: int) -> float:
    sets = ["--set", f"seed={seed}", "--set", f"data.train=synth://standard?n=1500&seed={seed}&split=train",
            "--set", f"stages.3.steps={steps}"]
    return run([sys.executable, "-m", "damo.cli", "train", "--recipe", "damo_4stage", "--workdir", str(work), *sets],
               work.parent / f"{work.name}.log")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--temporal-steps", type=int, nargs="+", default=[700, 400, 250])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-seed", type=int, default=17)
    ap.add_argument("--val-videos", type=int, default=60)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--from", dest="source", type=Path, required=True,
                    help="a damo demo or damo train workdir of the same code and seed, its early stages finished")
    a = ap.parse_args()
    os.environ.setdefault("DAMO_THREADS", "1")
    root = a.workdir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    val = validation_split(root, a.val_videos, a.val_seed)
    early = a.source.resolve()
    unfinished = [s for s in EARLY if not (early / "stages" / s / "model.safetensors").is_file()]
    if unfinished:
        raise SystemExit(f"--from {a.source}: stages {unfinished} are not finished there; run damo demo first")
    results_path = root / "steps.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def one(steps: int) -> dict:
        if str(steps) in results:
            return results[str(steps)]
        work = root / f"temporal-{steps}"
        for s in EARLY:
            if not (work / "stages" / s).is_dir():
                shutil.copytree(early / "stages" / s, work / "stages" / s)
        t0 = time.time()
        cpu = train(work, steps, a.seed)
        wall = time.time() - t0
        run([sys.executable, "-m", "damo.cli", "eval", "--data", str(val), "--model", str(work / "model"),
             "--out", str(work / "val-eval")], root / f"temporal-{steps}.log")
        m = json.loads((work / "val-eval" / "metrics.json").read_text())["overall"]
        stats = {s: json.loads((work / "stages" / s / "stats.json").read_text())["wall_s"] for s in ("temporal", "dialogue")}
        return {"temporal_steps": steps, "train_cpu_s": round(cpu, 1), "train_wall_s": round(wall, 1),
                "stage_wall_s": stats, "n": m["n"], "R1@0.5": m["R1@0.5"], "mIoU": m["mIoU"]}

    with ThreadPoolExecutor(a.jobs) as pool:
        for r in pool.map(one, a.temporal_steps):
            results[str(r["temporal_steps"])] = r
            results_path.write_text(json.dumps(results, indent=2))
    print(f"validation: {val} (seed {a.val_seed}); training seed {a.seed}; load average now "
          f"{os.getloadavg()[0]:.2f}")
    print("| temporal steps | training CPU s (temporal + dialogue) | val n | val R@0.5 | val mIoU |")
    print("|---|---|---|---|---|")
    for r in sorted(results.values(), key=lambda r: -r["temporal_steps"]):
        print(f"| {r['temporal_steps']} | {r['train_cpu_s']:.0f} | {r['n']} | {r['R1@0.5']:.3f} | {r['mIoU']:.3f} |")


if __name__ == "__main__":
    main()
