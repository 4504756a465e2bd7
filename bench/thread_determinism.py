"""Why one and two threads train different models: the same batch's gradients, bit for bit.

One batch of the demo's temporal stage (the tiny model at initialisation, 16 procedural clips, every
loss of the stage) goes forward and backward at each thread count twice. Each thread count repeats
itself exactly; between thread counts the loss is the same and many gradients differ in their last
bits, where a reduction (a weight's gradient sums over every token) is split among the threads
differently. Training compounds such differences over its 1,260 steps, so two thread counts end
as two nearby initialisations do.

    python bench/thread_determinism.py
    MKL_CBWR=AUTO,STRICT python bench/thread_determinism.py    # MKL's strict reproducible matmuls
"""
from __future__ import annotations

import os
import random

import torch

from damo.config import load_recipe
from damo.data.collate import Collator
from damo.data.dataset import ClipLoader
from damo.data.synthetic import synth_samples
from damo.train.loop import StageLoss, set_trainable
from damo.train.recipe import build_model


def main() -> None:
    recipe = load_recipe("damo_4stage", [])
    samples = synth_samples("synth://standard?n=20&seed=0&split=train")
    model = build_model(recipe.model, samples, recipe.seed)
    stage = next(st for st in recipe.stages if st.name == "temporal")
    set_trainable(model, stage.trainable)
    collate = Collator.for_model(model)
    clips = ClipLoader(collate.processor, memory=True)
    batch = collate([(s, clips(s.video)) for s in samples[:16]], random.Random(0))
    loss = StageLoss(model, stage.losses, use_llm=True)
    runs: dict[int, list] = {1: [], 2: []}
    for n in (1, 2, 1, 2):
        torch.set_num_threads(n)
        model.zero_grad()
        total, _ = loss(batch)
        total.backward()
        runs[n].append((total.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    for n, ((t0, g0), (t1, g1)) in runs.items():
        same = t0 == t1 and all(torch.equal(g0[k], g1[k]) for k in g0)
        print(f"{n} thread(s), twice: {'identical' if same else 'DIFFERENT'}")
    (t1, g1), (t2, g2) = runs[1][0], runs[2][0]
    differ = {k: (g1[k] - g2[k]).abs().max().item() for k in g1 if not torch.equal(g1[k], g2[k])}
    by_part: dict[str, int] = {}
    for k in differ:
        part = ".".join(k.split(".")[:2])
        by_part[part] = by_part.get(part, 0) + 1
    print(f"MKL_CBWR={os.environ.get('MKL_CBWR', '(unset)')}; loss at 1 and 2 threads: {t1!r} {t2!r}")
    print(f"{len(differ)} of {len(g1)} parameter gradients differ between 1 and 2 threads; largest difference "
          f"{max(differ.values(), default=0.0):.1e} (gradient scale {max(g.abs().max().item() for g in g1.values()):.1e})")
    print("differing gradients per part: " + ", ".join(f"{p} {c}" for p, c in sorted(by_part.items())))


if __name__ == "__main__":
    main()
