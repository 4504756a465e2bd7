"""Tiny from-scratch LLM vs SmolLM2-135M-Instruct + LoRA, same data, same stages, same steps.

    python experiments/compare_llms.py WORKDIR [--val 30]

Runs ``damo/resources/recipes/damo_smollm2.yaml`` twice (once with ``damo/resources/configs/tiny.yaml`` as the model and the
LLM fully trainable), then grounds the first ``--val`` held-out grounding queries with each and
prints train time, R@0.5 / mIoU and a few answers side by side.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from damo.config import load_recipe
from damo.data.dataset import ClipLoader, load_dataset
from damo.eval.evaluate import grounding_report, predict
from damo.train.recipe import run_recipe
from damo.pipeline import DamoPipeline, processor_of

TINY = ["model=tiny",
        "stages.1.trainable=[video.*, connector.*, llm.*, evidence.*]"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--val", type=int, default=30)
    a = ap.parse_args()
    rows = {}
    for name, over in [("tiny", TINY), ("smollm2", [])]:
        r = load_recipe("damo_smollm2", over)
        t0 = time.time()
        model = run_recipe(r, Path(a.workdir) / name, progress=False)
        train_s = time.time() - t0
        val = [s for s in load_dataset(r.data["val"]) if s.task == "grounding"][:a.val]
        preds = predict(DamoPipeline(model), val, ClipLoader(processor_of(model)), progress=False)
        m = grounding_report(val, preds)["overall"]
        rows[name] = {"train_s": round(train_s), "R@0.5": m["R1@0.5"], "mIoU": m["mIoU"],
                      "answers": [(s.query, s.spans, p.answer) for s, p in zip(val[:3], preds[:3])]}
        print(name, json.dumps(rows[name], indent=1), flush=True)
    print("\n| LLM | train s | R@0.5 | mIoU |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['train_s']} | {row['R@0.5']:.3f} | {row['mIoU']:.3f} |")


if __name__ == "__main__":
    main()
