"""Evaluation throughput: questions per second at batch 1 and batch 8, same model, same clips.

Runs ``damo.eval.evaluate.predict`` over the first ``--n`` grounding questions of a canonical test
file with the clips already in memory (so the figure is the model's: encoders, LLM prefill and
generation with the KV cache), alternating the two batch sizes for ``--rounds`` rounds, and checks
that both give identical predictions. Defaults to the demo's model and test split (run
``damo demo`` first).

    python bench/eval_throughput.py [--model runs/demo/model] [--data runs/demo/data/test.jsonl] [--n 64]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from damo.data.dataset import ClipLoader
from damo.data.schema import load_samples
from damo.eval.evaluate import predict
from damo.pipeline import DamoPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/model")
    ap.add_argument("--data", default="runs/demo/data/test.jsonl")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("DAMO_THREADS", "1")))
    model = DamoPipeline.load(args.model).to(args.device)
    samples = [s for s in load_samples(args.data) if s.task == "grounding"][:args.n]
    clips = ClipLoader(model.processor, memory=True)
    for s in samples:
        clips(s.video)
    predict(model, samples[:8], clips, batch_size=8, progress=False)      # warm-up
    qps = {b: [] for b in args.batch}
    preds = {}
    print(f"{len(samples)} questions, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f}")
    for r in range(args.rounds):
        for b in (args.batch if r % 2 == 0 else args.batch[::-1]):
            t0 = time.perf_counter()
            preds[b] = [p.to_dict() for p in predict(model, samples, clips, batch_size=b, progress=False)]
            qps[b].append(len(samples) / (time.perf_counter() - t0))
    base = statistics.median(qps[args.batch[0]])
    print(f"{'batch':>5} {'questions/s':>12} {'speed-up':>9} {'same predictions':>17}")
    for b in args.batch:
        m = statistics.median(qps[b])
        print(f"{b:>5} {m:>12.2f} {m / base:>9.2f} {str(preds[b] == preds[args.batch[0]]):>17}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
