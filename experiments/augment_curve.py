"""Does DaMO-style augmented grounded QA help stage 3 at a fixed number of source videos?

    python experiments/augment_curve.py WORKDIR [--sizes 100 300 900] [--seeds 0 1 2] [--jobs 2]

For each number of training videos N and each seed, two runs with the same stages and steps
(align, bridge, temporal): ``base`` trains on the procedural samples of the N videos;
``+aug`` adds, in the temporal stage only (as DaMO adds its LLM-generated QA to temporal
perception), the grounded QA that ``damo data augment`` (rule generator) makes from the same
N videos' dense captions. The two arms share the align and bridge stages of their seed.
Grounding R@0.5 and mIoU on the held-out test split; prints a markdown table of mean +- std
over seeds and writes ``WORKDIR/curve.json``. Runs resume from ``WORKDIR``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import time
from pathlib import Path

import torch
import yaml

from damo.config import Recipe
from damo.data import augment as A
from damo.data.clips import load_dataset
from damo.data.schema import save_samples
from damo.data.synthetic import synth_samples
from damo.eval.evaluate import grounding_report, predict
from damo.train.recipe import clip_store, run_recipe

REPO = Path(__file__).resolve().parents[1]
ENCODERS = ["vision.*", "audio.*", "residual_*", "temporal_conv.*", "fuseformer.*"]
LLM_SIDE = ["projector.*", "time_proj.*", "bridge*", "llm.*", "evidence.*"]


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
    model = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    stages = [
        {"name": "align", "tasks": ["dense_caption"], "losses": {"contrastive": 1.0}, "steps": a.align_steps,
         "batch": 32, "lr": 2e-3, "trainable": ENCODERS + ["text_encoder.*", "align_video.*", "logit_scale"]},
        {"name": "bridge", "tasks": ["dense_caption", "grounded_qa"], "losses": {"lm": 1.0}, "steps": a.bridge_steps,
         "lr": 2e-3, "trainable": LLM_SIDE[:-1]},
        {"name": "temporal", "losses": {"lm": 1.0, "grounding_bce": 10.0, "consistency": 1.0},
         "steps": a.temporal_steps, "lr": 2e-3, "trainable": ENCODERS + LLM_SIDE,
         "extra_data": [str(aug)] if aug else []},
    ]
    return Recipe.from_dict({"name": f"curve-{n}", "seed": seed, "model": model, "stages": stages,
                             "data": {"train": train_spec(n)}})


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
        for st in ("align", "bridge"):     # same seed, same data, same steps: reuse the base arm's stages
            if (base / st / "model.safetensors").is_file() and not (out / "stages" / st).exists():
                shutil.copytree(base / st, out / "stages" / st)
    t0 = time.time()
    model = run_recipe(recipe(n, seed, aug, a), out, progress=False, log=lambda *_: None)
    train_s = time.time() - t0
    test = [s for s in load_dataset(f"synth://standard?n={a.test}&seed=0&split=test") if s.task == "grounding"]
    g = grounding_report(test, predict(model, test, clip_store(model.cfg), progress=False))
    res = {"n": n, "arm": arm, "seed": seed, "train_s": round(train_s, 1), "R@0.5": g["overall"]["R1@0.5"],
           "mIoU": g["overall"]["mIoU"], "n_test": g["overall"]["n"]}
    done.write_text(json.dumps(res, indent=2))
    print(json.dumps(res), flush=True)
    return res


def table(results: list[dict], reports: dict[int, dict]) -> str:
    def ms(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"

    lines = ["| source videos | stage-3 samples base / +aug | R@0.5 base | R@0.5 +aug | mIoU base | mIoU +aug |",
             "|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in results}):
        cell = {arm: [r for r in results if r["n"] == n and r["arm"] == arm] for arm in ("base", "+aug")}
        nb = len(synth_samples(train_spec(n)))
        lines.append(f"| {n} | {nb} / {nb + reports[n]['samples']} | "
                     + " | ".join(ms([r[k] for r in cell[arm]]) if cell[arm] else "–"
                                  for k in ("R@0.5", "mIoU") for arm in ("base", "+aug")) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 900])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--test", type=int, default=60, help="test videos")
    ap.add_argument("--align-steps", type=int, default=60)
    ap.add_argument("--bridge-steps", type=int, default=50)
    ap.add_argument("--temporal-steps", type=int, default=300)
    a = ap.parse_args()
    root = Path(a.workdir)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    reports = {n: augmented(root, n)[1] for n in a.sizes}
    args = vars(a)
    ctx = mp.get_context("spawn")
    results = []
    for arm in ("base", "+aug"):             # +aug reuses its seed's base stages
        with ctx.Pool(a.jobs) as pool:
            results += pool.map(run_one, [(n, s, arm, args) for n in a.sizes for s in a.seeds], chunksize=1)
    wall = time.time() - t0
    (root / "curve.json").write_text(json.dumps({"results": results, "wall_s": round(wall, 1), "args": args,
                                                 "augment": reports}, indent=2))
    print(table(results, reports))
    print(f"\nwall {wall / 60:.1f} min for {len(results)} runs")


if __name__ == "__main__":
    main()
