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
  time         the default compressor (one token per frame) x time encoding (sinusoid, Dynamic-VLM timestamp text,
               LLaVA-ST LAPE time tokens, none)
  compressors  the compressors in front of the fuser (``placement: fuser``) on a 4x4 residual grid
               under ``--budget`` visual tokens per video (sinusoid time)
  coupled      answers with timestamps written out (coupled response): as digits (sinusoid) or as
               LAPE time tokens, read back from the two nearest anchors
  llm          accuracy against the LLM's visual tokens: Dynamic-VLM pooling / ToMe merging / Gumbel
               top-k pruning / LLaVA-ST's packer at the LLM (``placement: llm``) on the 4x4 fused grid,
               each under every ``--budgets`` value, plus the uncompressed grid (identity, 16 tokens per
               frame), each over ``--seeds``; reported as mean +- std over the seeds, without the cost pass.
               The stages that never read the LLM's video tokens (language warm-up, alignment: the
               alignment reads the fused grid's mean, whatever the compressor) run once per seed; each
               row starts from them and trains the bridging and temporal stages with its compressor.
               ``--fuser-tokens K`` adds the former placement at K tokens per frame (no compressor, the
               fuser's K outputs per frame), which trains its own shared stages

    python bench/tokens.py WORKDIR [--grid time compressors coupled llm] [--steps 0.3] [--jobs 2]

Each row runs in ``WORKDIR/ROW`` and is reused when finished, so the command resumes.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from common import add_budget_args, mean_std, run_parallel, short_recipe  # noqa: E402

from damo.data.dataset import ClipLoader, load_dataset  # noqa: E402
from damo.data.synthetic import num_frames  # noqa: E402
from damo.eval.evaluate import grounding_report, predict  # noqa: E402
from damo.eval.stvg import stvg_metrics  # noqa: E402
from damo.model.modeling_damo import DamoModel  # noqa: E402
from damo.model.processing import ClipTensors  # noqa: E402
from damo.pipeline import DamoPipeline  # noqa: E402
from damo.config import Stage  # noqa: E402
from damo.train.loop import run_stage  # noqa: E402
from damo.train.recipe import run_recipe  # noqa: E402

BOX_BINS = 16
TIME = {f"time: {e}": [f"model.time_encoding={e}"]
        for e in ("sinusoid", "timestamp", "lape", "none")}
COMPRESSORS = {f"compressor: {k}": [f"model.compressor.kind={k}", "model.compressor.placement=fuser",
                                     "model.compressor.k_max=16", "model.fuser.visual_tokens=16"]
               for k in ("pool", "tome", "prune", "stp")}
COUPLED = {f"coupled: {e}": ["model.response=coupled", f"model.time_encoding={e}"] for e in ("sinusoid", "lape")}
GRIDS = {"time": TIME, "compressors": COMPRESSORS, "coupled": COUPLED}
AT_LLM = ["model.compressor.placement=llm", "model.compressor.k_max=16", "model.fuser.visual_tokens=16"]


def llm_rows(budgets: list[int], fuser_tokens: list[int] = ()) -> dict[str, list[str]]:
    """The ``llm`` grid: each compressor at the LLM under each budget, the uncompressed grid, and the
    former placement (no compressor, the fuser emitting K tokens per frame) for each K in ``fuser_tokens``."""
    # 16 tokens for each of a 64-s clip's frames overflow the 1,024-token sequences: at most 40 frame tokens
    rows = {"llm: identity": [*AT_LLM, "model.compressor.kind=identity", "model.llm_frames=40"]}
    for k in ("pool", "tome", "prune", "stp"):
        for b in budgets:
            rows[f"llm: {k} {b}"] = [*AT_LLM, f"model.compressor.kind={k}", f"model.compressor.budget={b}"]
    for k in fuser_tokens:
        rows[f"fuser: {k} per frame"] = ["model.compressor.placement=fuser", "model.compressor.kind=identity",
                                         "model.fuser.visual_tokens=16", f"model.fuser.frame_tokens={k}"]
    return rows


def visual_tokens(model, frames: int) -> int:
    """Video tokens the LLM reads for a clip of ``frames`` frames, the bridge's fusion tokens excluded."""
    lay = DamoPipeline(model).processor.layout(frames)
    tl = -(-frames // lay.group)
    return tl * lay.per_frame + lay.slow_tokens(tl)


def llm_tokens(model, seconds: int) -> int:
    """LLM input tokens of the prompt for a ``seconds``-long video at the model's fps (one question)."""
    times = (torch.arange(int(seconds * model.cfg.fps)) + 0.5) / model.cfg.fps
    return len(DamoPipeline(model).processor.prompt("when does the red square appear?", times))


def whole_frame_siou(test: list) -> float:
    """m_sIoU of answering the whole frame at every true frame: the floor a box answer must beat."""
    st = [s for s in test if s.task == "stvg"]
    tubes = [{"span": s.spans[0], "boxes": s.meta["boxes"]} for s in st]
    whole = [{"span": s.spans[0], "boxes": {k: [0, 0, 1, 1] for k in s.meta["boxes"]}} for s in st]
    return stvg_metrics(tubes, whole)["m_sIoU"]


def fuser_tokens(model, seconds: int) -> int | str:
    try:
        return model.video.compressor.tokens_per_frame(int(seconds * model.cfg.fps), training=False)
    except ValueError:
        return "over budget"


def row_dir(row: str, seed: int) -> str:
    return row.replace(": ", "-").replace(" ", "-") + (f"-seed{seed}" if seed else "")


def recipe(seed: int, a: argparse.Namespace, overrides: list[str]):
    r = short_recipe(seed, f"synth://standard?n={a.train}&seed=0&split=train&stvg=1", a,
                     [f"model.box_bins={BOX_BINS}", f"model.compressor.budget={a.budget}", *overrides])
    for st in r.stages:
        st.batch = min(st.batch, a.batch or st.batch)
    return r


SHARED = ("language", "align")     # llm grid: stages that never read the compressed tokens


def run_shared(seed: int, a: argparse.Namespace, overrides: list[str], out: Path) -> None:
    r = short_recipe(seed, f"synth://standard?n={a.train}&seed=0&split=train&stvg=1",
                     argparse.Namespace(steps=a.shared_steps), [f"model.box_bins={BOX_BINS}", *overrides])
    r.stages = [st for st in r.stages if st.name in SHARED]
    run_recipe(r, out, progress=False, log=lambda *_: None)


def shared_stages(job: tuple[int, dict]) -> None:
    """The ``llm`` grid's shared stages for one seed, with the default compressor at the LLM."""
    seed, args = job
    a = argparse.Namespace(**args)
    torch.set_num_threads(a.threads)
    run_shared(seed, a, ["model.compressor.placement=llm", "model.fuser.visual_tokens=16"],
               Path(a.workdir) / f"shared-seed{seed}")


def run_llm_row(job: tuple[str, list[str], int, dict]) -> dict:
    """One row of the ``llm`` grid: the seed's shared stages, then bridging and temporal perception."""
    row, overrides, seed, args = job
    a = argparse.Namespace(**args)
    torch.set_num_threads(a.threads)
    out = Path(a.workdir) / row_dir(row, seed)
    if (out / "result.json").is_file():
        return json.loads((out / "result.json").read_text())
    r = recipe(seed, a, overrides)
    t0 = time.time()
    shared = Path(a.workdir) / f"shared-seed{seed}"
    if row.startswith("fuser:"):     # the fuser's output layer has another shape: the row's own shared stages
        shared = out / "shared"
        run_shared(seed, a, overrides, shared)
    base = DamoModel.load(shared / "model")
    torch.manual_seed(seed)
    model = DamoModel(r.model, base.tokenizer)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("video.compressor.") for k in missing), (missing, unexpected)
    samples = load_dataset(r.data["train"])
    clips = ClipLoader(DamoPipeline(model).processor, memory=True)
    stats = {}
    for i, st in enumerate(r.stages):
        if st.name not in SHARED:
            t1 = time.time()
            run_stage(model, st, samples, clips, r.seed + i, progress=False)
            stats[st.name] = time.time() - t1
    model.save(out / "model")
    return score_row(model, out, row, seed, a, r, time.time() - t0, stats["temporal"])


def run_one(job: tuple[str, list[str], int, dict]) -> dict:
    row, overrides, seed, args = job
    a = argparse.Namespace(**args)
    torch.set_num_threads(a.threads)
    out = Path(a.workdir) / row_dir(row, seed)
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    r = recipe(seed, a, overrides)
    t0 = time.time()
    model = run_recipe(r, out, progress=False, log=lambda *_: None)
    train_s = time.time() - t0      # the rows run side by side: costs are measured again alone (idle_costs)
    temporal_s = json.loads((out / "stages" / "temporal" / "stats.json").read_text())["wall_s"]
    return score_row(model, out, row, seed, a, r, train_s, temporal_s)


def score_row(model, out: Path, row: str, seed: int, a: argparse.Namespace, r, train_s: float,
              temporal_s: float) -> dict:
    temporal = next(st for st in r.stages if st.name == "temporal")
    test = [s for s in load_dataset(f"synth://standard?n={a.test}&seed=0&split=test&stvg=1")
            if s.task in ("grounding", "stvg")]
    t0 = time.time()
    pipe = DamoPipeline(model)
    preds = predict(pipe, test, ClipLoader(pipe.processor), progress=False)
    latency = (time.time() - t0) / len(test)
    rep = grounding_report(test, preds)
    res = {"row": row, "seed": seed, "LLM tokens 30 s": llm_tokens(model, 30), "LLM tokens 10 min": llm_tokens(model, 600),
           "visual tokens/video": statistics.mean(visual_tokens(model, num_frames(s.duration, model.cfg.fps))
                                                  for s in test),
           "visual tokens 30 s": visual_tokens(model, 30), "visual tokens 10 min": visual_tokens(model, 600),
           "fuser tokens/frame 30 s": fuser_tokens(model, 30), "fuser tokens/frame 10 min": fuser_tokens(model, 600),
           "train s": round(train_s, 1), "temporal steps": temporal.steps,
           "temporal step s (shared CPU)": round(temporal_s / temporal.steps, 3),
           "latency s/query": round(latency, 3),
           "R@0.5": rep["overall"]["R1@0.5"], "mIoU": rep["overall"]["mIoU"],
           "m_tIoU": rep["stvg"]["m_tIoU"], "m_sIoU": rep["stvg"]["m_sIoU"],
           "n_grounding": rep["overall"]["n"], "n_stvg": rep["stvg"]["n"]}
    (out / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res), flush=True)
    return res


def idle_costs(job: tuple[str, dict]) -> dict:
    """Costs of a trained row measured alone, in a fresh process (the training runs share the CPU):
    one question about a 10-minute video (600 random frames), its seconds and the process's peak
    resident memory; seconds per test question (10 single-moment grounding queries); seconds per
    training step like the temporal stage's (batch 16, after 2 warm-up steps)."""
    row, args = job
    torch.set_num_threads(args["threads"])
    pipe = DamoPipeline.load(Path(args["workdir"]) / row_dir(row, 0) / "model")
    model = pipe.model
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
        pipe.answer([clip], ["when does the red square appear?"])
        out["10 min query s"] = round(time.time() - t0, 2)
    except ValueError:          # the compressor's visual-token budget is below one token per frame
        out["10 min query s"] = "over budget"
    out["10 min peak MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    store = ClipLoader(pipe.processor, memory=True)
    test = [s for s in load_dataset("synth://standard?n=10&seed=0&split=test") if s.task == "grounding"][:10]
    for s in test:
        store(s.video)
    t0 = time.time()
    predict(pipe, test, store, progress=False)
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


def llm_table(results: list[dict]) -> None:
    """Mean +- std over seeds per row of the ``llm`` grid, by visual tokens per video."""
    by_row: dict[str, list[dict]] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    cols = ["temporal step s (shared CPU)", "R@0.5", "mIoU", "m_tIoU"]
    print("\n| row | seeds | visual tokens 30 s / 10 min | visual tokens per test video | " + " | ".join(cols)
          + " |\n|" + "---|" * (len(cols) + 4))
    for row, rs in sorted(by_row.items(), key=lambda kv: kv[1][0]["visual tokens/video"]):
        print(f"| {row} | {len(rs)} | {rs[0]['visual tokens 30 s']} / {rs[0]['visual tokens 10 min']} | "
              f"{rs[0]['visual tokens/video']:.0f} | " + " | ".join(mean_std([r[c] for r in rs]) for c in cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--grid", nargs="+", default=list(GRIDS), choices=[*GRIDS, "llm"])
    ap.add_argument("--train", type=int, default=1500, help="training videos")
    ap.add_argument("--budget", type=int, default=240, help="visual tokens per video for the compressors")
    ap.add_argument("--budgets", type=int, nargs="+", default=[48, 160, 480],
                    help="visual tokens per video of the llm grid")
    ap.add_argument("--batch", type=int, default=0, help="cap every stage's batch (0: the recipe's); llm grid: "
                    "the per-row stages")
    ap.add_argument("--fuser-tokens", type=int, nargs="*", default=[],
                    help="llm grid: also the former placement, the fuser emitting K tokens per frame, for each K")
    ap.add_argument("--shared-steps", type=float, default=0.2,
                    help="llm grid: fraction of the recipe's steps for the shared stages")
    add_budget_args(ap)
    a = ap.parse_args()
    rows = {k: v for g in a.grid if g in GRIDS for k, v in GRIDS[g].items()}
    t0 = time.time()
    if "llm" in a.grid:
        run_parallel(shared_stages, [(s, vars(a)) for s in a.seeds], a.jobs)
        jobs = [(row, ov, s, vars(a)) for s in a.seeds for row, ov in llm_rows(a.budgets, a.fuser_tokens).items()]
        llm = run_parallel(run_llm_row, jobs, a.jobs)
        Path(a.workdir, "tokens_llm.json").write_text(json.dumps({"results": llm, "args": vars(a)}, indent=2))
        llm_table(llm)
        print(f"wall {(time.time() - t0) / 60:.1f} min for {len(llm)} runs")
    if not rows:
        return
    results = run_parallel(run_one, [(row, ov, 0, vars(a)) for row, ov in rows.items()], a.jobs)
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
