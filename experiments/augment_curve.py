"""Does DaMO-style augmented grounded QA help stage 3 at a fixed number of source videos?

    python experiments/augment_curve.py WORKDIR [--sizes 100 300 900] [--seeds 0 1 2] [--jobs 2]

For each number of training videos N and each seed, two runs with the same stages and steps
(those of ``damo/resources/recipes/damo_4stage.yaml`` without dialogue, at ``--steps`` of their steps):
``base`` trains on the procedural samples of the N videos; ``+aug`` adds, in the temporal
stage only (as DaMO adds its LLM-generated QA to temporal perception), the grounded QA that ``damo data augment`` (rule generator) makes from the same
N videos' dense captions. The two arms share the stages before temporal of their seed.
Grounding R@0.5 and mIoU on the held-out test split; prints a markdown table of mean +- std
over seeds and writes ``WORKDIR/curve.json``. Runs resume from ``WORKDIR``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from common import add_budget_args, mean_std, run_parallel, short_recipe
from damo.config import Recipe
from damo.data import augment as A
from damo.data.dataset import ClipLoader, load_dataset
from damo.data.schema import save_samples
from damo.data.synthetic import synth_samples
from damo.eval.evaluate import grounding_report, predict
from damo.train.recipe import run_recipe
from damo.pipeline import DamoPipeline, processor_of


def train_spec(n: int) -> str:
    return f"synth://standard?n={n}&seed=0&split=train"


def augmented(workdir: Path, n: int) -> tuple[Path, dict]:
    """The rule generator's grounded QA for the N training videos (made once per size)."""
    path = workdir / f"aug-{n}.jsonl"
    report_path = workdir / f"aug-{n}.report.json"
    if not path.is_file():
        samples, report = A.augment(A.videos_from_samples(synth_samples(train_spec(n))), A.RuleGenerator(seed=0))
        save_samples(path, samples)
        report_path.write_text(json.dumps(report, indent=2))
    return path, json.loads(report_path.read_text())


def recipe(n: int, seed: int, aug: Path | None, a: argparse.Namespace) -> Recipe:
    r = short_recipe(seed, train_spec(n), a)
    if aug:
        next(st for st in r.stages if st.name == "temporal").extra_data = [str(aug)]
    return r


def run_one(job: tuple[int, int, str, dict]) -> dict:
    n, seed, arm, args = job
    a = argparse.Namespace(**args)
    torch.set_num_threads(a.threads)
    root = Path(a.workdir)
    out = root / f"n{n}" / arm / f"seed-{seed}"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    aug = None
    if arm == "+aug":
        aug, _ = augmented(root, n)
        base = root / f"n{n}" / "base" / f"seed-{seed}" / "stages"
        for st in ("language", "align", "bridge"):   # same seed, data and steps: reuse the base arm's stages
            if (base / st / "model.safetensors").is_file() and not (out / "stages" / st).exists():
                shutil.copytree(base / st, out / "stages" / st)
    t0 = time.time()
    model = run_recipe(recipe(n, seed, aug, a), out, progress=False, log=lambda *_: None)
    train_s = time.time() - t0
    test = [s for s in load_dataset(f"synth://standard?n={a.test}&seed=0&split=test") if s.task == "grounding"]
    g = grounding_report(test, predict(DamoPipeline(model), test, ClipLoader(processor_of(model)), progress=False))
    res = {"n": n, "arm": arm, "seed": seed, "train_s": round(train_s, 1), "R@0.5": g["overall"]["R1@0.5"],
           "mIoU": g["overall"]["mIoU"], "n_test": g["overall"]["n"]}
    done.write_text(json.dumps(res, indent=2))
    print(json.dumps(res), flush=True)
    return res


def table(results: list[dict], reports: dict[int, dict]) -> str:
    lines = ["| source videos | stage-3 samples base / +aug | R@0.5 base | R@0.5 +aug | mIoU base | mIoU +aug |",
             "|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in results}):
        cell = {arm: [r for r in results if r["n"] == n and r["arm"] == arm] for arm in ("base", "+aug")}
        nb = len(synth_samples(train_spec(n)))
        lines.append(f"| {n} | {nb} / {nb + reports[n]['samples']} | "
                     + " | ".join(mean_std([r[k] for r in cell[arm]]) if cell[arm] else "–"
                                  for k in ("R@0.5", "mIoU") for arm in ("base", "+aug")) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 900])
    add_budget_args(ap)
    a = ap.parse_args()
    root = Path(a.workdir)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    reports = {n: augmented(root, n)[1] for n in a.sizes}
    args = vars(a)
    results = []
    for arm in ("base", "+aug"):             # +aug reuses its seed's base stages
        results += run_parallel(run_one, [(n, s, arm, args) for n in a.sizes for s in a.seeds], a.jobs)
    wall = time.time() - t0
    (root / "curve.json").write_text(json.dumps({"results": results, "wall_s": round(wall, 1), "args": args,
                                                 "augment": reports}, indent=2))
    print(table(results, reports))
    print(f"\nwall {wall / 60:.1f} min for {len(results)} runs")


if __name__ == "__main__":
    main()
