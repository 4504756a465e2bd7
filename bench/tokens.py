"""Token economy: compressors, time encodings and answer formats, trained and measured the same way.

Every row trains the stages of ``damo/resources/recipes/damo_4stage.yaml`` (without dialogue, at ``--steps`` of
their steps) on procedural videos whose samples include spatio-temporal grounding queries, with
LAPE box tokens for the tube answers, then measures on held-out test videos:
LLM input tokens for a 30 s and a 10 min video, visual tokens per frame entering the T-Fuseformer,
training step time (the temporal stage), inference latency per test query, single-moment grounding
R@0.5 / mIoU and LLaVA-ST's STVG m_tIoU / m_sIoU; then, in a fresh process per row and one row at a time,
the training step time and the time and peak memory (resident set) of answering one question about a
10-minute video (600 frames).

Rows (``--grid``):
  time         identity compressor x time encoding (sinusoid, Dynamic-VLM timestamp text,
               LLaVA-ST LAPE time tokens, none)
  compressors  Dynamic-VLM pooling / ToMe merging / Gumbel top-k pruning / LLaVA-ST STP on a 4x4
               residual grid under ``--budget`` visual tokens per video (sinusoid time)
  coupled      answers with timestamps written out (coupled response): as digits (sinusoid) or as
               LAPE time tokens, read back from the two nearest anchors

    python bench/tokens.py WORKDIR [--grid time compressors coupled] [--steps 0.3] [--jobs 2]

Each row runs in ``WORKDIR/ROW`` and is reused when finished, so the command resumes.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from common import add_budget_args, run_parallel, short_recipe  # noqa: E402

from damo.data.dataset import ClipLoader, load_dataset  # noqa: E402
from damo.eval.evaluate import grounding_report, predict  # noqa: E402
from damo.eval.stvg import stvg_metrics  # noqa: E402
from damo.model.modeling_damo import DamoModel  # noqa: E402
from damo.model.processing import ClipTensors  # noqa: E402
from damo.config import Stage  # noqa: E402
from damo.train.loop import run_stage  # noqa: E402
from damo.train.recipe import run_recipe  # noqa: E402

BOX_BINS = 16
TIME = {f"time: {e}": ["model.compressor.kind=identity", f"model.time_encoding={e}"]
        for e in ("sinusoid", "timestamp", "lape", "none")}
COMPRESSORS = {f"compressor: {k}": [f"model.compressor.kind={k}", "model.fuser.visual_tokens=16"]
               for k in ("pool", "tome", "prune", "stp")}
COUPLED = {f"coupled: {e}": ["model.response=coupled", f"model.time_encoding={e}"] for e in ("sinusoid", "lape")}
GRIDS = {"time": TIME, "compressors": COMPRESSORS, "coupled": COUPLED}


def llm_tokens(model, seconds: int) -> int:
    """LLM input tokens of the prompt for a ``seconds``-long video at the model's fps (one question)."""
    times = (torch.arange(int(seconds * model.cfg.fps)) + 0.5) / model.cfg.fps
    return len(model.processor.prompt("when does the red square appear?", times))


def whole_frame_siou(test: list) -> float:
    """m_sIoU of answering the whole frame at every true frame: the floor a box answer must beat."""
    st = [s for s in test if s.task == "stvg"]
    tubes = [{"span": s.spans[0], "boxes": s.meta["boxes"]} for s in st]
    whole = [{"span": s.spans[0], "boxes": {k: [0, 0, 1, 1] for k in s.meta["boxes"]}} for s in st]
    return stvg_metrics(tubes, whole)["m_sIoU"]


def fuser_tokens(model, seconds: int) -> int | str:
    try:
        return model.compressor.tokens_per_frame(int(seconds * model.cfg.fps), training=False)
    except ValueError:
        return "over budget"


def run_one(job: tuple[str, list[str], dict]) -> dict:
    row, overrides, args = job
    a = argparse.Namespace(**args)
    torch.set_num_threads(a.threads)
    out = Path(a.workdir) / row.replace(": ", "-")
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    r = short_recipe(0, f"synth://standard?n={a.train}&seed=0&split=train&stvg=1", a,
                     [*overrides, f"model.box_bins={BOX_BINS}", f"model.compressor.budget={a.budget}"])
    t0 = time.time()
    model = run_recipe(r, out, progress=False, log=lambda *_: None)
    train_s = time.time() - t0      # the rows run side by side: costs are measured again alone (idle_costs)
    temporal = next(st for st in r.stages if st.name == "temporal")
    temporal_s = json.loads((out / "stages" / "temporal" / "stats.json").read_text())["wall_s"]
    test = [s for s in load_dataset(f"synth://standard?n={a.test}&seed=0&split=test&stvg=1")
            if s.task in ("grounding", "stvg")]
    t0 = time.time()
    preds = predict(model, test, ClipLoader(model.processor), progress=False)
    latency = (time.time() - t0) / len(test)
    rep = grounding_report(test, preds)
    res = {"row": row, "LLM tokens 30 s": llm_tokens(model, 30), "LLM tokens 10 min": llm_tokens(model, 600),
           "fuser tokens/frame 30 s": fuser_tokens(model, 30), "fuser tokens/frame 10 min": fuser_tokens(model, 600),
           "train s": round(train_s, 1), "temporal steps": temporal.steps,
           "temporal step s (shared CPU)": round(temporal_s / temporal.steps, 3),
           "latency s/query": round(latency, 3),
           "R@0.5": rep["overall"]["R1@0.5"], "mIoU": rep["overall"]["mIoU"],
           "m_tIoU": rep["stvg"]["m_tIoU"], "m_sIoU": rep["stvg"]["m_sIoU"],
           "n_grounding": rep["overall"]["n"], "n_stvg": rep["stvg"]["n"]}
    done.write_text(json.dumps(res, indent=2))
    print(json.dumps(res), flush=True)
    return res


def idle_costs(job: tuple[str, dict]) -> dict:
    """Costs of a trained row measured alone, in a fresh process (the training runs share the CPU):
    one question about a 10-minute video (600 random frames), its seconds and the process's peak
    resident memory; seconds per test question (10 single-moment grounding queries); seconds per
    training step like the temporal stage's (batch 16, after 2 warm-up steps)."""
    row, args = job
    torch.set_num_threads(args["threads"])
    model = DamoModel.load(Path(args["workdir"]) / row.replace(": ", "-") / "model")
    c = model.cfg
    out = {}
    g = torch.Generator().manual_seed(0)
    T = int(600 * c.fps)
    clip = ClipTensors(frames=torch.randint(0, 255, (T, c.vision.image_size, c.vision.image_size, 3), generator=g,
                                            dtype=torch.uint8),
                       mel=torch.randn(T, c.audio.frames, c.audio.n_mels, generator=g).half(),
                       times=(torch.arange(T) + 0.5) / c.fps, duration=600.0)
    t0 = time.time()
    try:
        model.eval().answer([clip], ["when does the red square appear?"])
        out["10 min query s"] = round(time.time() - t0, 2)
    except ValueError:          # the compressor's visual-token budget is below one token per frame
        out["10 min query s"] = "over budget"
    out["10 min peak MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    store = ClipLoader(model.processor, memory=True)
    test = [s for s in load_dataset("synth://standard?n=10&seed=0&split=test") if s.task == "grounding"][:10]
    for s in test:
        store(s.video)
    t0 = time.time()
    predict(model, test, store, progress=False)
    out["latency s/query"] = round((time.time() - t0) / len(test), 3)
    data = load_dataset("synth://standard?n=40&seed=0&split=train&stvg=1")
    for s in data:
        store(s.video)
    stage = Stage(name="time", losses={"lm": 1.0, "grounding_bce": 10.0, "consistency": 1.0}, steps=2, batch=16)
    run_stage(model, stage, data, store, seed=0, progress=False)
    stage.steps = 10
    t0 = time.time()
    run_stage(model, stage, data, store, seed=1, progress=False)
    out["step s"] = round((time.time() - t0) / stage.steps, 3)
    return out


COLUMNS = ["row", "LLM tokens 30 s", "LLM tokens 10 min", "fuser tokens/frame 30 s", "fuser tokens/frame 10 min",
           "step s", "latency s/query", "10 min query s", "10 min peak MB", "R@0.5", "mIoU", "m_tIoU", "m_sIoU"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--grid", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--train", type=int, default=1500, help="training videos")
    ap.add_argument("--budget", type=int, default=240, help="visual tokens per video for the compressors")
    add_budget_args(ap)
    a = ap.parse_args()
    rows = {k: v for g in a.grid for k, v in GRIDS[g].items()}
    t0 = time.time()
    results = run_parallel(run_one, [(row, ov, vars(a)) for row, ov in rows.items()], a.jobs)
    for r, m in zip(results, run_parallel(idle_costs, [(r["row"], vars(a)) for r in results], 1)):
        r.update(m)
    Path(a.workdir, "tokens.json").write_text(json.dumps({"results": results, "args": vars(a)}, indent=2))
    print("\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for r in results:
        print("| " + " | ".join(str(r[k]) for k in COLUMNS) + " |")
    test = load_dataset(f"synth://standard?n={a.test}&seed=0&split=test&stvg=1")
    print(f"\nwhole-frame boxes on the true spans: m_sIoU {whole_frame_siou(test):.3f}")
    print(f"wall {(time.time() - t0) / 60:.1f} min for {len(results)} rows")


if __name__ == "__main__":
    main()
