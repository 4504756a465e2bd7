"""SFT then GRPO against SFT continued for the same wall time, several seeds, on procedural data.

    python experiments/grpo_vs_sft.py WORKDIR --select-form [--seeds 0 1 2]
    python experiments/grpo_vs_sft.py WORKDIR [--form text] [--seeds 0 1 2] [--grpo-steps 60] [--sft-steps 60]

0. ``--select-form``: the output form of the spans, chosen on the validation split. Per seed, the base
   model of step 1 in each form of :data:`FORMS`, side by side: timestamps written as text, or as
   LLaVA-ST's LAPE time tokens ``<t_i>`` (LLaVA-ST, section 3). Each is scored on the validation
   split's single-moment grounding queries only (never the test split); the models land in
   ``WORKDIR/FORM/base/seed-S``, so ``WORKDIR/FORM`` is the workdir of the run below with ``--form FORM``.
   Prints the table and writes ``WORKDIR/forms.json``.
1. base: per seed, the stages of ``damo/resources/recipes/damo_4stage.yaml`` without dialogue at
   ``--steps`` of their steps with ``response: coupled`` (spans written in the answer, so they are
   sampled tokens), as the D2VLM ladder's coupled rung trains it, in the ``--form`` output form.
2. from each base model, side by side (one thread each, started together): a ``grpo`` stage
   (``--grpo-steps``) and the same stage's data, trainable parts and learning rate with the
   supervised ``lm`` loss instead (``--sft-steps``), both on the single-moment grounding queries.
   Choose the two step counts so both arms take about the same wall time (time a few steps of
   each side by side first); the table reports each arm's measured wall time.
3. every model (base, +GRPO, +SFT) is scored on the validation and the held-out test split's
   single-moment grounding queries: R@0.3/0.5/0.7 and mIoU.

Each run's folder ``WORKDIR/ARM/seed-S`` holds its model, its stage's ``stats.json`` and
``history.json`` (the GRPO reward curve); finished runs are reused. Prints a markdown table of
mean +- std over seeds and writes ``WORKDIR/grpo_vs_sft.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import torch

from common import mean_std, run_parallel, short_recipe
from damo.config import Recipe, Stage
from damo.data.dataset import ClipLoader, load_dataset
from damo.eval.evaluate import grounding_report, predict
from damo.model.modeling_damo import DamoModel
from damo.train.recipe import run_recipe
from damo.pipeline import DamoPipeline, processor_of

TRAIN = "synth://standard?n=1500&seed=0&split=train"
METRICS = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")
# the spans' output forms: both are sampled tokens (the D2VLM ladder's coupled rung; bench/tokens.py's coupled grid)
FORMS = {"text": ["model.response=coupled"], "lape": ["model.response=coupled", "model.time_encoding=lape"]}


def arm_stage(arm: str, a: argparse.Namespace) -> Stage:
    common = dict(tasks=["grounding"], trainable=["connector.*", "llm.*"], lr=a.lr, warmup=5)
    if arm == "grpo":
        return Stage(name="grpo", losses={"grpo": 1.0}, steps=a.grpo_steps, batch=a.prompts, **common,
                     grpo={"group": a.group, "max_new_tokens": 24, "rewards": {"iou": 1.0, "format": 1.0}})
    return Stage(name="sft", losses={"lm": 1.0}, steps=a.sft_steps, batch=a.sft_batch, **common)


def scores(model: DamoModel, split: str, n: int) -> dict:
    test = [s for s in load_dataset(f"synth://standard?n={n}&seed=0&split={split}") if s.task == "grounding"]
    preds = predict(DamoPipeline(model), test, ClipLoader(processor_of(model)), progress=False)
    g = grounding_report(test, preds)["overall"]
    return {k: g[k] for k in METRICS} | {"n": g["n"]}


def base_model(workdir: Path, seed: int, a: argparse.Namespace, form: str) -> tuple[DamoModel, float]:
    """The seed's base model in ``form`` and its training wall seconds, trained unless ``workdir`` has it."""
    base = workdir / "base" / f"seed-{seed}"
    if (base / "model" / "model.safetensors").is_file():
        return DamoModel.load(base / "model"), json.loads((base / "train_s.json").read_text())["train_s"]
    t0 = time.time()
    model = run_recipe(short_recipe(seed, TRAIN, a, FORMS[form]), base, progress=False, log=lambda *_: None)
    train_s = round(time.time() - t0, 1)
    (base / "train_s.json").write_text(json.dumps({"train_s": train_s}))
    return model, train_s


def run_one(job: tuple[str, int, dict]) -> dict:
    arm, seed, args = job
    a = argparse.Namespace(**args)
    torch.set_num_threads(1)
    out = Path(a.workdir) / arm / f"seed-{seed}"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if arm == "base":
        model, train_s = base_model(Path(a.workdir), seed, a, a.form)
    else:
        base = Path(a.workdir) / "base" / f"seed-{seed}" / "model"
        t0 = time.time()
        r = Recipe(stages=[arm_stage(arm, a)], model=DamoModel.load(base).cfg,
                   data={"train": TRAIN}, seed=seed, name=f"base+{arm}", clip_memory=True, init=str(base))
        model = run_recipe(r, out, progress=False, log=lambda *_: None)
        train_s = round(time.time() - t0, 1)
    res = {"arm": arm, "seed": seed, "train_s": train_s,
           "val": scores(model, "val", a.val), "test": scores(model, "test", a.test)}
    if arm == "grpo":
        res["stats"] = json.loads((out / "stages" / "grpo" / "stats.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(res, indent=2))
    print(json.dumps(res), flush=True)
    return res


def form_one(job: tuple[str, int, dict]) -> dict:
    """One seed's base model in one output form, scored on the validation split only."""
    form, seed, args = job
    a = argparse.Namespace(**args)
    torch.set_num_threads(1)
    done = Path(a.workdir) / form / "base" / f"seed-{seed}" / "val.json"
    if done.is_file():
        return json.loads(done.read_text())
    model, train_s = base_model(Path(a.workdir) / form, seed, a, form)
    res = {"arm": form, "seed": seed, "train_s": train_s, "val": scores(model, "val", a.val)}
    done.write_text(json.dumps(res, indent=2))
    print(json.dumps(res), flush=True)
    return res


def table(results: list[dict], split: str, arms: Sequence[str] = ("base", "sft", "grpo")) -> str:
    lines = [f"| arm ({split}) | " + " | ".join(METRICS) + " | training wall s |", "|---" * (len(METRICS) + 2) + "|"]
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        if rs:
            lines.append(f"| {arm} | " + " | ".join(mean_std([r[split][k] for r in rs]) for k in METRICS)
                         + f" | {mean_std([r['train_s'] for r in rs])} |")
    return "\n".join(lines)


def curves(workdir: str, seeds: list[int]) -> str:
    """The GRPO stage's reward, IoU reward and zero-variance share per quarter of its steps, per seed."""
    lines = ["| seed | reward (quarters) | IoU reward (quarters) | zero-variance groups (quarters) |", "|---|---|---|---|"]
    for seed in seeds:
        path = Path(workdir) / "grpo" / f"seed-{seed}" / "stages" / "grpo" / "history.json"
        if not path.is_file():
            continue
        h = json.loads(path.read_text())
        q = max(1, len(h["reward"]) // 4)
        cells = [" / ".join(f"{sum(h[k][i * q:(i + 1) * q]) / q:.3f}" for i in range(4))
                 for k in ("reward", "reward_iou", "zero_variance")]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--select-form", action="store_true",
                    help="train the base model in each output form and compare them on the validation split")
    ap.add_argument("--form", choices=sorted(FORMS), default="text", help="the spans' output form of the base model")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=float, default=0.3, help="fraction of the 4-stage recipe's steps for the base")
    ap.add_argument("--grpo-steps", type=int, default=60)
    ap.add_argument("--sft-steps", type=int, default=60)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per GRPO step (each sampled --group times)")
    ap.add_argument("--sft-batch", type=int, default=16, help="samples per SFT step (the temporal stage's batch)")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--val", type=int, default=40, help="validation videos")
    ap.add_argument("--test", type=int, default=40, help="test videos")
    a = ap.parse_args()
    args = vars(a)
    t0 = time.time()
    if a.select_form:
        results = []
        for seed in a.seeds:
            results += run_parallel(form_one, [(form, seed, args) for form in FORMS], len(FORMS))
        Path(a.workdir, "forms.json").write_text(json.dumps({"results": results, "args": args,
                                                            "wall_s": round(time.time() - t0, 1)}, indent=2))
        print(table(results, "val", list(FORMS)))
        return
    results = []
    for seed in a.seeds:
        results += run_parallel(run_one, [("base", seed, args)], 1)
        results += run_parallel(run_one, [("grpo", seed, args), ("sft", seed, args)], 2)
    Path(a.workdir, "grpo_vs_sft.json").write_text(json.dumps({"results": results, "args": args,
                                                               "wall_s": round(time.time() - t0, 1)}, indent=2))
    print(table(results, "val"))
    print()
    print(table(results, "test"))
    print()
    print(curves(a.workdir, a.seeds))


if __name__ == "__main__":
    main()
