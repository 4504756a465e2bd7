"""D²VLM's ablation ladder (Table 4 + FPO) on procedural data, several seeds, fixed budget.

    python experiments/d2vlm_ladder.py WORKDIR [--seeds 0 1 2] [--jobs 2]

Rungs, each adding one piece (D²VLM section 6, Table 4, then section 4):
  1. coupled       timestamps as plain text in the answer, no evidence tokens
  2. decomposed    pure grounding with <evi> first, then the answer with text timestamps
  3. interleaved   the answer refers to the events with <evi> tokens
  4. +consistency  the consistency loss ties both stages' <evi> (eq. 1)
  5. +FPO          rung 4, then Factorized Preference Optimization on factorised pairs (eqs. 4-7)
Every rung trains the stages of ``damo/resources/recipes/damo_4stage.yaml`` without dialogue, at a fraction
(``--steps``) of their steps, on the same videos; rung 5 continues rung 4's model with the FPO
stage of ``damo/resources/recipes/d2vlm_fpo.yaml``. Each (rung, seed) runs in
``WORKDIR/RUNG/seed-S``; finished runs are reused, so the command resumes. Metrics on the
held-out test split: single-moment grounding R@0.5 and mIoU, and dense captioning F1
(E.T. Bench's dvc protocol: tIoU 0.1/0.3/0.5/0.7) and SentSim. Prints a markdown table of
mean +- std over seeds and writes ``WORKDIR/ladder.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import add_budget_args, copy_stages, mean_std, run_parallel, short_recipe
from damo.config import Recipe, load_recipe
from damo.data.dataset import ClipLoader, load_dataset
from damo.eval.evaluate import grounding_report, predict
from damo.eval.etbench import etbench_task_metrics
from damo.train.recipe import run_recipe
from damo.pipeline import DamoPipeline, processor_of

# rung -> (model overrides, consistency loss on, FPO stage); the last two are Table 6's variants of
# the full design (run them with --rungs)
RUNGS = {"coupled": (["model.response=coupled"], False, False),
         "decomposed": (["model.response=decomposed"], False, False),
         "interleaved": ([], False, False), "+consistency": ([], True, False), "+FPO": ([], True, True),
         "frame-level evidence": (["model.evidence.level=frame"], True, False),
         "no semantic capture": (["model.evidence.semantic_capture=false"], True, False)}
LADDER = ["coupled", "decomposed", "interleaved", "+consistency", "+FPO"]
PAPER = {"coupled": (21.2, 14.3, 11.3), "decomposed": (28.9, 23.1, 16.0), "interleaved": (35.6, 34.3, 19.8),
         "+consistency": (39.5, 35.0, 21.2), "+FPO": (42.3, None, None), "frame-level evidence": (26.1, 33.4, 16.2),
         "no semantic capture": (37.1, 27.5, 17.7)}   # grounding F1, dvc F1, dvc Sim on E.T. Bench (Tables 4-6)


def recipe(rung: str, seed: int, a: argparse.Namespace) -> Recipe:
    overrides, cons, fpo = RUNGS[rung]
    r = short_recipe(seed, f"synth://standard?n={a.train}&seed=0&split=train", a, overrides)
    for st in r.stages:
        if not cons:
            st.losses.pop("consistency", None)
    if fpo:
        st = load_recipe("d2vlm_fpo").stages[-1]
        st.steps = max(1, round(st.steps * a.steps))
        r.stages.append(st)
    return r


def evaluate(model, a: argparse.Namespace) -> dict:
    test = load_dataset(f"synth://standard?n={a.test}&seed=0&split=test")
    test = [s for s in test if s.task in ("grounding", "dense_caption")]
    preds = predict(DamoPipeline(model), test, ClipLoader(processor_of(model)), progress=False)
    g = grounding_report(test, preds)["overall"]
    by = {p.id: p for p in preds}
    records = [{"video": s.id, "a": by[s.id].answer, "tgt": s.spans, "g": s.captions}
               for s in test if s.task == "dense_caption"]
    d = etbench_task_metrics("dvc", records)
    return {"R@0.5": g["R1@0.5"], "mIoU": g["mIoU"], "dvc_F1": d["F1"], "dvc_Sim": d["SentSim"],
            "n_grounding": g["n"], "n_dense": len(records)}


def run_one(job: tuple[str, int, dict]) -> dict:
    rung, seed, args = job
    a = argparse.Namespace(**args)
    torch.set_num_threads(a.threads)
    out = Path(a.workdir) / rung / f"seed-{seed}"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if RUNGS[rung][2]:   # +FPO continues the +consistency run of the same seed
        copy_stages(Path(a.workdir) / "+consistency" / f"seed-{seed}" / "stages", out)
    t0 = time.time()
    model = run_recipe(recipe(rung, seed, a), out, progress=False, log=lambda *_: None)
    train_s = time.time() - t0
    res = {"rung": rung, "seed": seed, "train_s": round(train_s, 1)} | evaluate(model, a)
    res["wall_s"] = round(time.time() - t0, 1)
    done.write_text(json.dumps(res, indent=2))
    print(json.dumps(res), flush=True)
    return res


def table(results: list[dict]) -> str:
    lines = ["| rung | grounding R@0.5 | grounding mIoU | dense-caption F1 | dense-caption SentSim | paper (grounding F1 / dvc F1 / dvc Sim) |",
             "|---|---|---|---|---|---|"]
    for rung in RUNGS:
        rs = [r for r in results if r["rung"] == rung]
        if not rs:
            continue
        paper = " / ".join("–" if x is None else f"{x}" for x in PAPER[rung])
        lines.append(f"| {rung} | " + " | ".join(mean_std([r[k] for r in rs]) for k in ("R@0.5", "mIoU", "dvc_F1", "dvc_Sim"))
                     + f" | {paper} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--rungs", nargs="+", default=LADDER, choices=list(RUNGS))
    ap.add_argument("--train", type=int, default=1500, help="training videos")
    add_budget_args(ap)
    a = ap.parse_args()
    args = vars(a)
    t0 = time.time()
    first = [r for r in RUNGS if r in a.rungs and not RUNGS[r][2] or r == "+consistency" and "+FPO" in a.rungs]
    waves = [first, [r for r in a.rungs if RUNGS[r][2]]]       # +FPO starts from +consistency's model
    results = []
    for wave in filter(None, waves):
        jobs = [(rung, seed, args) for seed in a.seeds for rung in wave]
        results += [r for r in run_parallel(run_one, jobs, a.jobs) if r["rung"] in a.rungs]
    wall = time.time() - t0
    Path(a.workdir, "ladder.json").write_text(json.dumps({"results": results, "wall_s": round(wall, 1),
                                                          "args": args}, indent=2))
    print(table(results))
    print(f"\nwall {wall / 60:.1f} min for {len(results)} runs")


if __name__ == "__main__":
    main()
