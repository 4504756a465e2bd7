"""Statistics of DaMO-style grounded QA augmentation (``damo.data.augment``) for the README.

Runs the rule generator on every video of ActivityNet Captions val_1 and YouCook2 val and on
procedural data, and the local LM (SmolLM2-135M-Instruct) on a random sample of videos of each
(it is slow on CPU); prints counts per question type, rejection rates with reasons, and ten random
examples per generator and source.

    python experiments/augment_stats.py --data ../shared/data [--llm-videos 20] [--synth-videos 200]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from damo.data import augment as A  # noqa: E402
from damo.data.synthetic import synth_samples  # noqa: E402


def show(name: str, samples: list, report: dict, rng: random.Random, wall: float) -> dict:
    print(f"\n=== {name}: {report['videos']} videos, {wall:.0f} s")
    print(f"candidates {report['candidates']}  accepted {report['accepted']}  rejected {report['rejected']} "
          f"({100 * report['rejection_rate']:.2f}%)  dialogues {report['dialogues']}  samples {report['samples']}")
    print(f"rejections: {report['rejections'] or 'none'}")
    print(f"{'qa_type':14s} {'cand':>7s} {'kept':>7s} {'rej %':>6s}  reasons")
    for t, v in report["by_type"].items():
        print(f"{t:14s} {v['candidates']:7d} {v['accepted']:7d} {100 * v['rejection_rate']:6.2f}  {v['rejections']}")
    print("examples:")
    for s in rng.sample(samples, min(10, len(samples))):
        if s.task == "dialogue":
            turns = " | ".join(f"Q: {t['query']} A: {t['answer']}" for t in s.meta["turns"])
            print(f"  [dialogue] {s.video}: {turns}")
        else:
            spans = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in s.spans)
            print(f"  [{s.meta['qa_type']}] {s.video}: Q: {s.query} A: {s.answer or '-'} spans: {spans}")
    return {"name": name, "wall_s": round(wall, 1), **{k: report[k] for k in (
        "videos", "candidates", "accepted", "rejected", "rejection_rate", "rejections", "dialogues", "samples",
        "by_type")}}


def run(name: str, videos: list, gen, rng: random.Random, seed: int) -> dict:
    t0 = time.time()
    samples, report = A.augment(videos, gen, seed=seed)
    return show(name, samples, report, rng, time.time() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                   help="folder with activitynet_captions/val_1.json and youcook2/yc2_val.json")
    p.add_argument("--llm-videos", type=int, default=20, help="videos per source for the local LM (0 = skip)")
    p.add_argument("--synth-videos", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm-only", action="store_true", help="skip the rule generator")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()
    data = Path(args.data)
    sources = {
        "ActivityNet val_1": A.load_videos(data / "activitynet_captions" / "val_1.json", "activitynet-captions"),
        "YouCook2 val": A.load_videos(data / "youcook2" / "yc2_val.json", "youcook2"),
        "procedural": A.videos_from_samples(synth_samples(f"synth://standard?n={args.synth_videos}&seed={args.seed}")),
    }
    rng = random.Random(args.seed)
    out = []
    rule = A.RuleGenerator(seed=args.seed)
    for name, videos in sources.items():
        if not args.llm_only:
            out.append(run(f"rule / {name}", videos, rule, rng, args.seed))
    if args.llm_videos:
        local = A.make_generator("local")
        for name, videos in sources.items():
            pick = random.Random(args.seed).sample(videos, min(args.llm_videos, len(videos)))
            out.append(run(f"local SmolLM2-135M / {name} (random {len(pick)})", pick, local, rng, args.seed))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
