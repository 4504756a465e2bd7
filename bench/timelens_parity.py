"""TimeLens-Bench scoring against TimeLens' own evaluation code on the same answers: every number must agree.

``--timelens PATH`` is a checkout of TencentARC/TimeLens (``evaluation/compute_metrics.py`` and
``timelens/utils.py``; they need only json and re). The gt is Charades-STA's 3,720 test queries written in
TimeLens-Bench's layout (their spans, the CSV's video lengths, queries cleaned as TimeLens' loader cleans them);
the answers are seeded templates in the formats TimeLens' ``extract_time`` reads (ranges with "-" or "to", clock
times, several spans, bare numbers, none). The official side stores each answer as ``eval_dataloader.py`` does
(its ``extract_time``, ``[duration + 10, duration + 20]`` when it finds no time, ends rounded to whole seconds)
and scores the file with ``compute_metrics.py`` in its own process. Ours scores that same file with ``damo eval
--task timelens`` and, separately, the raw answers in canonical predictions with ``--parser timelens``. Official
code is never part of this project.

    python bench/timelens_parity.py --timelens PATH/TO/TimeLens [--shared ../shared/data]
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NAMES = ("IOU 0.3", "IOU 0.5", "IOU 0.7", "mIOU")


def answer(rng: random.Random, s: float, e: float) -> str:
    a, b = max(0.0, s + rng.uniform(-4, 4)), e + rng.uniform(-4, 4)
    return rng.choice([
        f"The event happens in {a:.1f} - {b:.1f} seconds.",
        f"It happens from {a:.2f} to {b:.2f}.",
        f"The event starts at 00:{int(a):02d} and ends at 00:{int(b):02d}.",
        f"Between 0:{int(a):02d}.5 and 0:{int(b):02d}.",
        f"The event happens in {a:.1f} - {b:.1f} seconds and again in {b + 2:.1f} - {b + 5:.1f} seconds.",
        f"Start time: {a:.1f} seconds. End time: {b:.1f} seconds.",
        f"{b:.1f} - {a:.1f}",
        "I cannot find it in the video.",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timelens", type=Path, required=True, help="a checkout of TencentARC/TimeLens")
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, str(args.timelens))
    from timelens.utils import extract_time          # the official parser, for the official side only

    from damo.cli import main as damo

    lengths = {r["id"]: float(r["length"]) for r in csv.DictReader(open(args.shared / "charades_sta" /
                                                                        "Charades_v1_test.csv"))}
    bench: dict = {}
    for line in (args.shared / "charades_sta" / "charades_sta_test.txt").read_text().splitlines():
        head, query = line.split("##")
        vid, s, e = head.split()
        rec = bench.setdefault(vid, {"duration": lengths[vid], "spans": [], "queries": []})
        rec["spans"].append([float(s), float(e)])
        rec["queries"].append(query)
    rng = random.Random(args.seed)
    dumps, canonical = [], []
    for vid, rec in bench.items():
        for k, (span, query) in enumerate(zip(rec["spans"], rec["queries"])):
            text = answer(rng, *span)
            found = extract_time(text) or [[rec["duration"] + 10, rec["duration"] + 20]]
            stamps = [[round(a), round(b)] for a, b in found]            # UNIT 1.0, as eval_dataloader.py
            clean = re.sub(r"\s+", " ", query).strip().strip(".").strip()
            dumps.append({f"{vid}.mp4>>>{clean}>>>{span}": {"timestamps": stamps, "answers": text}})
            canonical.append({"id": f"{vid}#{k}", "spans": [], "answer": text})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "charades-timelens.json").write_text(json.dumps(bench))
        (tmp / "official.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dumps))
        (tmp / "answers.jsonl").write_text("".join(json.dumps(d) + "\n" for d in canonical))
        proc = subprocess.run([sys.executable, "evaluation/compute_metrics.py", "-f", str(tmp / "official.jsonl")],
                              cwd=args.timelens, env={"PYTHONPATH": str(args.timelens)}, capture_output=True,
                              text=True)
        if proc.returncode:
            raise SystemExit(f"compute_metrics.py failed:\n{proc.stderr[-2000:]}")
        official = {k: float(v) for k, v in re.findall(r"^(IOU 0\.\d|mIOU): ([\d.]+)$", proc.stdout, re.M)}
        ours = {}
        for name, pred, extra in (("its prediction file", "official.jsonl", []),
                                  ("the raw answers, --parser timelens", "answers.jsonl", ["--parser", "timelens"])):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                damo(["eval", "--task", "timelens", "--gt", str(tmp / "charades-timelens.json"),
                      "--pred", str(tmp / pred), *extra])
            ours[name] = json.loads(out.getvalue())
    print(f"{len(dumps)} answers to Charades-STA's test queries in TimeLens-Bench's layout (seed {args.seed})")
    print(f"{'':<46}" + "".join(f"{k:>20}" for k in NAMES))
    print(f"{'TimeLens compute_metrics.py':<46}" + "".join(f"{official[k]:>20}" for k in NAMES))
    for name, m in ours.items():
        print(f"{'damo eval, ' + name:<46}" + "".join(f"{m[k]:>20}" for k in NAMES))
    same = all(m[k] == official[k] for m in ours.values() for k in NAMES)
    print(f"every number identical: {same}")


if __name__ == "__main__":
    main()
