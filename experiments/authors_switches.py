"""The tiny default's switches against the authors' values, chosen on a validation split, several seeds.

    python experiments/authors_switches.py WORKDIR [--steps 0.3] [--seeds 0 1 2] [--jobs 1]

Three switches where the tiny default keeps its own value and the authors' code (nusnlp/d2vlm,
appletea233/LLaVA-ST; see the switch table in docs/model.md) does otherwise:
  default                        the tiny model as shipped (frame_times centre, video_attention causal)
  frame_times=start              frame i at i/fps, a span [s, e] trains frames round(s)..round(e)
                                 (d2vlm/utils/io.py ``_load_video``, d2vlm_arch.py ``forward_evi``)
  video_attention=bidirectional  video placeholders attend each other both ways (D2VLM's
                                 scripts/train_stage_3.sh ``--bi_attention True``)
  FPO focus=event                the default's model, then the FPO stage of
                                 ``damo/resources/recipes/d2vlm_fpo.yaml`` as shipped (perturbed spans only)
  FPO focus=sequence             the same stage scoring whole responses (d2vlm_fpo_arch.py ``calculate_logps``)
The first three train the stages of ``damo/resources/recipes/damo_4stage.yaml`` without dialogue at
``--steps`` of their steps, as the D2VLM ladder's +consistency rung (experiments/d2vlm_ladder.py); the
FPO variants continue the default's model of the same seed, as the ladder's +FPO rung, with the FPO
stage at ``--steps`` of its steps. Each (variant, seed) runs in ``WORKDIR/VARIANT/seed-S``; finished
runs are reused, so the command resumes. Seeds run one after another, each seed's FPO runs right
after its default, so a stopped run leaves whole seeds.

Scored only on a validation split made for this choice and used by no other: ``--val-videos``
procedural videos of split ``val`` with seed ``--val-seed`` (experiments/demo_steps.py chooses on
seed 17), encoded to ``.mkv`` and decoded as the demo's test split is; the test split is never
read. Metrics: single-moment grounding R@0.5 and mIoU, the grounded-QA answers' evidence spans R@0.5,
dense-caption F1 (E.T. Bench's dvc protocol). Prints a markdown table of mean +- std over seeds, the
per-seed differences against each variant's reference, and writes ``WORKDIR/switches.json``.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from common import add_budget_args, copy_stages, mean_std, run_parallel, short_recipe, validation_split
from damo.config import Recipe, load_recipe
from damo.data.dataset import ClipLoader
from damo.data.schema import load_samples
from damo.eval.etbench import etbench_task_metrics
from damo.eval.evaluate import grounding_report, predict
from damo.pipeline import DamoPipeline, processor_of
from damo.train.recipe import run_recipe

TRAIN = "synth://standard?n=1500&seed=0&split=train"
# variant -> (model overrides, FPO focus or None for no FPO stage, the variant it is compared with)
VARIANTS = {"default": ([], None, None),
            "frame_times=start": (["model.frame_times=start"], None, "default"),
            "video_attention=bidirectional": (["model.video_attention=bidirectional"], None, "default"),
            "FPO focus=event": ([], "event", "default"),
            "FPO focus=sequence": ([], "sequence", "FPO focus=event")}
METRICS = {"R@0.5": "grounding R@0.5", "mIoU": "grounding mIoU", "qa_R@0.5": "grounded-QA evidence R@0.5",
           "dvc_F1": "dense-caption F1"}


def recipe(variant: str, seed: int, a: argparse.Namespace) -> Recipe:
    overrides, focus, _ = VARIANTS[variant]
    r = short_recipe(seed, TRAIN, a, overrides)
    if focus:
        st = load_recipe("d2vlm_fpo").stages[-1]
        st.steps = max(1, round(st.steps * a.steps))
        st.fpo = st.fpo | {"focus": focus}
        r.stages.append(st)
    return r


def evaluate(model, val: Path) -> dict:
    samples = load_samples(val)
    preds = predict(DamoPipeline(model), samples, ClipLoader(processor_of(model)), progress=False)
    rep = grounding_report(samples, preds)
    by = {p.id: p for p in preds}
    records = [{"video": s.id, "a": by[s.id].answer, "tgt": s.spans, "g": s.captions}
               for s in samples if s.task == "dense_caption"]
    d = etbench_task_metrics("dvc", records)
    g, qa = rep["overall"], rep["task/grounded_qa"]
    return {"R@0.5": g["R1@0.5"], "mIoU": g["mIoU"], "qa_R@0.5": qa["R1@0.5"], "qa_mIoU": qa["mIoU"],
            "dvc_F1": d["F1"], "dvc_Sim": d["SentSim"], "n_grounding": g["n"], "n_qa": qa["n"], "n_dense": len(records)}


def run_one(job: tuple[str, int, dict]) -> dict:
    variant, seed, args = job
    a = argparse.Namespace(**args)
    torch.set_num_threads(a.threads)
    out = Path(a.workdir) / variant / f"seed-{seed}"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if VARIANTS[variant][1]:   # FPO continues the default run of the same seed
        copy_stages(Path(a.workdir) / "default" / f"seed-{seed}" / "stages", out)
    t0 = time.time()
    model = run_recipe(recipe(variant, seed, a), out, progress=False, log=lambda *_: None)
    train_s = time.time() - t0
    train_cpu = resource.getrusage(resource.RUSAGE_SELF)
    t1 = time.time()
    res = {"variant": variant, "seed": seed, "train_s": round(train_s, 1),
           "train_cpu_s": round(train_cpu.ru_utime + train_cpu.ru_stime, 1)} | evaluate(model, Path(a.val))
    res["eval_s"] = round(time.time() - t1, 1)
    done.write_text(json.dumps(res, indent=2))
    print(json.dumps(res), flush=True)
    return res


def table(results: list[dict]) -> str:
    lines = ["| variant | seeds | " + " | ".join(METRICS.values()) + " |", "|---|---|" + "---|" * len(METRICS)]
    for v in VARIANTS:
        rs = [r for r in results if r["variant"] == v]
        if rs:
            lines.append(f"| {v} | {len(rs)} | " + " | ".join(mean_std([r[k] for r in rs]) for k in METRICS) + " |")
    lines += ["", "| variant - reference, per seed | seeds | " + " | ".join(METRICS.values()) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    by = {(r["variant"], r["seed"]): r for r in results}
    for v, (_, _, ref) in VARIANTS.items():
        pairs = [(by[v, s], by[ref, s]) for (w, s) in by if w == v and (ref, s) in by]
        if pairs:
            lines.append(f"| {v} - {ref} | {len(pairs)} | "
                         + " | ".join(mean_std([x[k] - y[k] for x, y in pairs]) for k in METRICS) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--val-seed", type=int, default=23)
    ap.add_argument("--val-videos", type=int, default=60)
    add_budget_args(ap, test=False)
    a = ap.parse_args()
    root = Path(a.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    a.val = str(validation_split(root, a.val_videos, a.val_seed, ("grounding", "grounded_qa", "dense_caption")))
    args = vars(a)
    t0 = time.time()
    fpo = [v for v in a.variants if VARIANTS[v][1]]
    first = [v for v in VARIANTS if v in a.variants and not VARIANTS[v][1] or v == "default" and fpo]
    results = []
    for seed in a.seeds:                 # FPO starts from the default's model of the same seed
        for wave in filter(None, [first, fpo]):
            results += [r for r in run_parallel(run_one, [(v, seed, args) for v in wave], a.jobs)
                        if r["variant"] in a.variants]
    wall = time.time() - t0
    Path(root, "switches.json").write_text(json.dumps({"results": results, "wall_s": round(wall, 1),
                                                       "args": args}, indent=2))
    print(f"validation: {a.val} (seed {a.val_seed}, {a.val_videos} videos)")
    print(table(results))
    print(f"\nwall {wall / 60:.1f} min for {len(results)} runs")


if __name__ == "__main__":
    main()
