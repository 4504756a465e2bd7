"""The ``damo`` command: one function per subcommand.

    damo demo   [--workdir DIR]                     generate data, train the 4-stage recipe, evaluate, ground
    damo train  --recipe R [--workdir DIR] [--set key=value ...]     R: a YAML path or a shipped name
    damo eval   --data TEST.jsonl --model DIR [--out DIR]          run our model and score it
    damo eval   --task TASK --gt GT --pred PRED [--out M.json]      score any model's predictions
    damo ground VIDEO "QUERY" [--model DIR]
    damo data synth   --n N --seed S --out DIR [--difficulty standard] [--stvg]
    damo data convert --format F --in PATH [--durations CSV] --out OUT.jsonl
    damo data render  --config C | --model DIR --data FILE [--index N] [--json]
    damo export --model DIR --out DIR               the LLM (LoRA merged) as a plain transformers folder

Heavy imports happen inside each subcommand so ``damo --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from damo.textio import printable
from damo.threads import given_threads, threads, use_threads

if TYPE_CHECKING:       # the CLI imports the heavy modules inside each command, so it starts fast
    from damo.data.schema import Sample
    from damo.model.processing import DamoProcessor

DEFAULT_WORKDIR = Path("runs/demo")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_RECIPE = "damo_4stage"


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _setup_threads() -> None:
    """Every command, before numpy or torch load: their thread pools read these once at import. A
    user's ``OMP_NUM_THREADS`` without ``DAMO_THREADS`` is taken as ``DAMO_THREADS``, so the decoder
    and each stage's re-check keep it too (:mod:`damo.threads`)."""
    import os
    try:
        given = given_threads("DAMO_THREADS", "OMP_NUM_THREADS")
        if given is not None:
            os.environ["DAMO_THREADS"] = str(given)
        n = str(threads())
    except ValueError as e:
        raise SystemExit(f"damo: {e}") from None
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = n


def _setup_torch() -> int:
    """torch's threads chosen now (:func:`~damo.threads.use_threads`); returns the count."""
    return use_threads()


def _say_threads(n: int) -> None:
    import os
    why = "DAMO_THREADS" if "DAMO_THREADS" in os.environ else "the cores idle now; re-checked at each stage"
    print(f"training on {n} thread{'s' if n > 1 else ''} ({why}); set DAMO_THREADS to change")


def _grounding_lines(result: dict) -> str:
    """A grounding for the terminal: the answer, the spans (best first) and the model card's one line."""
    from damo.card import headline

    spans = ", ".join(f"{s['start']:.1f}-{s['end']:.1f} s ({s['score']:.2f})" for s in result["spans"]) or "none"
    lines = [f"answer: {result['answer']}", f"spans:  {spans}"]
    if "truth" in result:
        truth = ", ".join(f"{s:.1f}-{e:.1f} s" for s, e in result["truth"])
        lines.append(f"truth:  {truth}" + (f" (IoU of the first span {result['iou']:.3f})" if "iou" in result else ""))
    return "\n".join(lines + [f"model:  {headline(result['model'])}"])


def _device(name: str):
    """``auto``: the first CUDA device if there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; use --device cpu or auto")
    return torch.device(name)


@contextmanager
def _resumable(command: str, kept: str) -> Iterator[None]:
    """A sharded, resumable job's failure as one line: a failed rank (``kept``: what finished and where it
    stays; the same command resumes) or a bad value."""
    from damo.ranks import RankFailed, barrier

    try:
        yield
    except RankFailed as e:
        # said at once, in one write (ranks share stderr), by every rank before any exits: torchrun stops the
        # others when one rank exits
        sys.stderr.write(f"{command}: {e}; {kept}: run the same command again to resume\n")
        sys.stderr.flush()
        barrier()
        raise SystemExit(1) from None
    except ValueError as e:
        raise SystemExit(f"{command}: {e}") from None


def _dtype_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="weights of the LLM and the towers (default: the model's config; its auto is bfloat16 on "
                        "a GPU that supports it, else float32); DaMO's own modules stay float32 under autocast")


def _preset_option(p: argparse.ArgumentParser) -> None:
    from damo.model.presets import PRESETS
    p.add_argument("--preset", choices=list(PRESETS),
                   help="run --model (a Qwen2.5-VL, Qwen3-VL or Qwen2.5-Omni folder, or a hub id) with a published "
                        "checkpoint's prompt, frames, pixels, generation and answer parser (docs/backbones.md); "
                        "default for such a folder: its family's base model")


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video-root", metavar="DIR", help="folder the samples' video ids or relative paths resolve "
                   "against (ids try .mp4, .mkv, .webm, ... in turn)")
    p.add_argument("--on-missing", choices=["error", "skip"], default="error",
                   help="a sample whose video is missing: stop before any work (error) or leave it out and list it (skip)")


def _benchmark_list() -> str:
    """``damo eval --help``'s list of the benchmarks and the options each takes, from the registry."""
    from damo.eval import BENCHMARKS

    rows = [f"  {b.name:<22}{' '.join(o.cli for o in b.options) or '(none)'}\n"
            f"  {'':<22}{b.evaluator}; annotations: --format {b.reader.NAME}"
            + "".join(f"\n  {'':<22}--parser {k}: {v}" for k, v in b.parsers.items())
            for b in BENCHMARKS.values()]
    return ("benchmarks (--task NAME), the options each takes, the evaluator it matches and the annotation format "
            "(damo data convert --format) it reads:\n" + "\n".join(rows))


# The demo's table: README's rows, each a group of damo.eval.evaluate.grounding_report.
DEMO_ROWS = (("overall", "overall"), ("modality/visual", "visual only"), ("modality/audio", "audio only"),
             ("kind/flash", "audio-visual: flash with the beep"), ("kind/composite", "audio-visual: composite"),
             ("task/multi_grounding", "multi-moment queries"), ("task/grounded_qa", "grounded QA evidence spans"))


def cmd_demo(args: argparse.Namespace) -> int:
    """Data -> 4-stage training -> evaluation on the encoded test split -> one grounding."""
    from damo.config import load_recipe
    from damo.data import synthetic
    from damo.api import Grounder
    from damo.data.schema import load_samples, write_jsonl
    from damo.data.dataset import ClipLoader
    from damo.eval.evaluate import grounding_report, predict
    from damo.train.recipe import run_recipe
    from damo import card as model_card
    from damo.pipeline import DamoPipeline

    _say_threads(_setup_torch())
    t0 = time.time()
    started = time.strftime("%Y%m%d-%H%M%S")
    work = Path(args.workdir)
    recipe = load_recipe(args.recipe, args.set)
    data = work / "data"
    if not (data / "test.jsonl").is_file():
        print(f"generating the procedural test split into {data} ...")
        synthetic.synthesize(data, n=args.n_train, seed=recipe.seed, difficulty=args.difficulty, test_n=args.n_test)
    else:
        print(f"reusing data in {data}")
    recipe.data["train"] = f"synth://{args.difficulty}?n={args.n_train}&seed={recipe.seed}&split=train"
    run_recipe(recipe, work, threads_per_stage=True)
    model = DamoPipeline.load(work / "model")
    test = load_samples(data / "test.jsonl")
    preds = predict(model, test, ClipLoader(model.processor), batch_size=8)
    write_jsonl(work / "predictions.jsonl", (p.to_dict() for p in preds))
    metrics = grounding_report(test, preds)
    rows = {label: metrics[key] for key, label in DEMO_ROWS if key in metrics}
    model_card.add_metrics(work / "model", {"test_data": str((data / "test.jsonl").resolve()), **rows})
    g = next(s for s in test if s.task == "grounding")
    example = Grounder(model, card=model_card.read_card(work / "model")).ground(g.video, g.query)
    report = {"started": started, "wall_s": round(time.time() - t0, 1), "metrics": metrics,
              "example": {"video": g.video, "query": g.query, "truth": g.spans, **example}}
    # report.json is the latest run; reports/ keeps every run's (a rerun's wall_s differs: it reuses work)
    (work / "reports").mkdir(exist_ok=True)
    kept = work / "reports" / f"report-{started}.json"
    n = 1
    while kept.exists():    # two runs started in the same second
        n += 1
        kept = work / "reports" / f"report-{started}-{n}.json"
    kept.write_text(json.dumps(report, indent=2))
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print("\nR@1 on held-out test grounding queries (IoU >= t):")
    for label, m in rows.items():
        print(f"  {label:36s} n={m['n']:4d}  R@0.3={m['R1@0.3']:.3f}  R@0.5={m['R1@0.5']:.3f}  "
              f"R@0.7={m['R1@0.7']:.3f}  mIoU={m['mIoU']:.3f}")
    print(f"\nexample: {g.video}: {g.query!r} (truth {g.spans})")
    print(_grounding_lines(example))
    print(f"\nwall {report['wall_s']} s; report in {work / 'report.json'} (this run's copy: {kept}); "
          f"model in {work / 'model'} (what it knows: {work / 'model' / model_card.CARD})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from damo.config import load_recipe
    from damo.train.recipe import run_recipe

    _say_threads(_setup_torch())
    try:
        recipe = load_recipe(args.recipe, args.set)
        if args.num_workers is not None:
            recipe.num_workers = args.num_workers
        if args.init:
            recipe.init = args.init
        run_recipe(recipe, args.workdir or Path("runs") / recipe.name, overwrite=args.overwrite, threads_per_stage=True)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"damo train: {printable(e)}") from None
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from damo.config import find, load_recipe, read_yaml
    from damo.model.configuration_damo import DamoConfig
    from damo.model.vlm import VLMConfig
    from damo.plan import PlanOptions, format_plan, plan, plan_vlm

    if not args.config and not args.recipe:
        raise SystemExit("damo plan needs --config (a model YAML) and/or --recipe (its model is used without --config)")
    recipe = load_recipe(args.recipe) if args.recipe else None
    opts = PlanOptions(gpus=args.gpus, gpu_gb=args.gpu_gb, frames=args.frames, text_tokens=args.text_tokens,
                       micro_batch=args.micro_batch)
    if args.config:
        path = find("configs", args.config)
        raw = read_yaml(path) or {}
        if "vlm" in raw:
            if args.frames:
                raise SystemExit(f"{path} is a whole VLM: damo plan takes no --frames for it (its preset sets "
                                 "them)")
            try:     # without a recipe every parameter trains (or, with lora, the adapters and the heads)
                p = plan_vlm(VLMConfig.from_dict(raw["vlm"], str(path)), opts, recipe)
            except ValueError as e:
                raise SystemExit(str(e)) from None
        else:
            p = plan(DamoConfig.from_dict(raw), recipe, opts)
    elif isinstance(recipe.model, VLMConfig):
        try:
            p = plan_vlm(recipe.model, opts, recipe)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    else:
        p = plan(recipe.model, recipe, opts)
    if args.parallel:
        for e in p["stages"].values():
            e["memory_gb"], e["fits"] = ({args.parallel: e[k][args.parallel]} for k in ("memory_gb", "fits"))
    print(json.dumps(p, indent=1) if args.json else format_plan(p, args.recipe or args.config))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.task:
        if not (args.gt and args.pred):
            raise SystemExit("damo eval --task needs --gt and --pred (or use --data and --model to run our model)")
        from damo.eval import BENCHMARKS
        from damo.eval.benchmark import options_of
        from damo.eval.score import score
        given = {k: getattr(args, k) for k in options_of(list(BENCHMARKS.values())) if getattr(args, k) is not None}
        try:
            m = score(args.task, args.gt, args.pred, args.subset, args.duplicates, **given)
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"damo eval: {err}") from None
        if args.out:
            Path(args.out).write_text(json.dumps(m, indent=2))
        _print(m)
        return 0
    if not (args.data and args.model):
        raise SystemExit("damo eval needs either --task/--gt/--pred (score predictions) or --data/--model (run our model)")
    import shutil

    from damo.data.dataset import ClipLoader, resolve_videos
    from damo.data.schema import load_samples, write_jsonl
    from damo.eval.evaluate import grounding_report, predict_resumable
    from damo.api import vlm_source
    from damo.pipeline import DamoPipeline
    from damo.ranks import device_for, init_distributed

    _setup_torch()
    info = init_distributed()
    device = _device(device_for(args.device))
    samples, missing = resolve_videos(load_samples(args.data), args.video_root, args.on_missing)
    if missing:
        print(f"skipping {missing.summary()}", file=sys.stderr)
    if not samples:
        raise SystemExit(f"none of the {len(missing.samples)} samples of {args.data} has its video; nothing to evaluate")
    extra = {}
    try:
        source = vlm_source(args.model, args.preset, args.dtype)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if source is not None:
        from damo.model.vlm import VideoLLM
        if args.features:
            raise SystemExit("--features holds the stored outputs of DaMO's towers; a whole VLM reads its own frames: "
                             "drop --features")
        try:
            model = VideoLLM.from_pretrained(*source).to(device)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        extra["max_new_tokens"] = model.preset.max_new_tokens
        convention = model.preset.convention
    else:
        model = DamoPipeline.load(args.model, dtype=args.dtype).to(device)
        convention = ">="
    if args.features:
        from damo.data.features import FeatureLoader
        clips = FeatureLoader(args.features, model.model)
    else:
        clips = ClipLoader(model.processor)
    out = Path(args.out or "runs/eval")
    job = {"data": str(Path(args.data).resolve()), "model": str(args.model), "preset": args.preset,
           "dtype": args.dtype, "features": args.features, "video_root": args.video_root}
    with _resumable("damo eval", f"finished predictions stay in {out / 'parts'}"):
        preds, failed, run = predict_resumable(model, samples, clips, out / "parts", job, info,
                                               batch_size=args.batch_size, num_workers=args.num_workers, **extra)
    if not info.main:
        return 0
    m = grounding_report(samples, preds, convention)
    if missing:
        m["skipped"] = missing.to_dict()
    if failed:      # scored as misses
        print(f"{len(failed)} samples could not be read: " + "; ".join(f"{f['id']} ({f['video']}): {f['reason']}"
                                                                      for f in failed[:5]), file=sys.stderr)
        m["failed"] = failed
    m["run"] = run
    write_jsonl(out / "predictions.jsonl", (p.to_dict() for p in preds))
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    shutil.rmtree(out / "parts")
    _print(m)
    return 0


def cmd_ground(args: argparse.Namespace) -> int:
    """One video (JSON on stdout, optional timeline picture) or a batch (JSONL, one line per request)."""
    import damo
    from damo.api import parse_spans, score_truth, vlm_source
    from damo.media import MediaError

    _setup_torch()
    model_dir = Path(args.model)
    try:
        whole_vlm = vlm_source(args.model, args.preset, args.dtype) is not None
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if not whole_vlm and not (model_dir / "model.safetensors").is_file():
        raise SystemExit(f"no trained model in {model_dir}; run `damo demo` first or pass --model DIR")
    if args.batch:
        if args.video or args.query:
            raise SystemExit("damo ground --batch takes no VIDEO/QUERY arguments; put the question in --query")
        query = args.query_opt
        if not args.out:
            raise SystemExit("damo ground --batch needs --out RESULTS.jsonl")
        if args.plot or args.truth:
            raise SystemExit("--plot and --truth are for one video; in batch mode give spans per JSONL line")
        out, src = Path(args.out).resolve(), Path(args.batch).resolve()
        if out == src or (src.is_dir() and src in out.parents):
            raise SystemExit(f"--out {args.out} would write into the batch's input; choose a file outside {args.batch}")
        try:
            grounder = damo.load(args.model, device=str(_device(args.device)), dtype=args.dtype, preset=args.preset)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        failures, n = [], 0
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        try:
            with open(partial, "w", encoding="utf-8") as f:
                warned = False
                for row in grounder.ground_batch(args.batch, query, progress=not args.quiet):
                    if "warning" in row and not warned:     # once per batch; every row carries it
                        print(f"warning: {printable(row['warning'])}", file=sys.stderr)
                        warned = True
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()  # results appear as they are made; a killed batch keeps them in OUT.partial
                    n += 1
                    if "error" in row:
                        failures.append(row)
            partial.replace(out)
        except ValueError as e:
            partial.unlink(missing_ok=True)
            print(f"error: {printable(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"interrupted after {n} requests; their results are in {partial}", file=sys.stderr)
            return 130
        finally:
            print(f"{n - len(failures)} of {n} requests grounded", file=sys.stderr)
            if failures:
                print(f"{len(failures)} failed:", file=sys.stderr)
                for r in failures:
                    where = f"line {r['line']}: " if "line" in r else ""
                    print(f"  {where}{printable(r['video'])}: {printable(r['error'])}", file=sys.stderr)
        print(f"results in {out}", file=sys.stderr)
        return 1 if failures else 0

    if args.query is None:
        args.query = args.query_opt
    if args.video is None or args.query is None:
        raise SystemExit('damo ground needs VIDEO and "QUERY" (or --batch FOLDER_OR_JSONL --query Q --out R.jsonl)')
    try:
        truth = parse_spans(args.truth) if args.truth else None
    except ValueError as e:
        raise SystemExit(f"--truth: {e}") from None
    if args.plot:
        from damo.app.timeline import require_matplotlib
        try:
            require_matplotlib()
        except ImportError as e:
            raise SystemExit(f"--plot: {e}") from None
    try:
        g = damo.load(args.model, device=str(_device(args.device)), dtype=args.dtype,
                      preset=args.preset).explain(args.video, args.query, progress=not args.quiet)
        result = g.to_dict()
        if truth is not None:
            result.update(score_truth(g, truth))
    except (MediaError, ValueError) as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2
    if "warning" in result:
        print(f"warning: {printable(result['warning'])}", file=sys.stderr)
    for policy, count in result.get("truth_fixed", {}).items():
        print(f"warning: --truth: {count} span(s) {policy.replace('_', ' ')} (video is {g.duration:.2f} s); "
              "fixed as listed in 'truth'", file=sys.stderr)
    if args.plot:
        from damo.app.timeline import plot_timeline
        plot_timeline(g, args.plot, truth=result.get("truth"))
        print(f"timeline written to {args.plot}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.json:
        _print(result)
    else:
        print(_grounding_lines(result))
    return 0


def cmd_data_features(args: argparse.Namespace) -> int:
    """Frozen-tower outputs of a dataset's videos, stored once (see damo.data.features)."""
    from damo.config import read_yaml
    from damo.data.dataset import ClipLoader, load_dataset, resolve_videos
    from damo.data.features import extract
    from damo.model.configuration_damo import DamoConfig, LLMConfig
    from damo.model.modeling_damo import DamoModel
    from damo.model.tokenizer import train_tokenizer
    from damo.pipeline import DamoPipeline

    from damo.ranks import device_for, init_distributed

    _setup_torch()
    info = init_distributed()
    src = Path(args.model)
    if src.is_dir():
        pipe = DamoPipeline.load(src)
    elif src.is_file():     # a model config: only its towers matter here, so the LLM stays the tiny default
        cfg = DamoConfig.from_dict(read_yaml(src) or {})
        cfg.llm = LLMConfig()
        pipe = DamoPipeline(DamoModel(cfg, train_tokenizer(["features"], 300)))
    else:
        raise SystemExit(f"--model {src}: neither a model folder nor a model config file")
    model = pipe.model.to(_device(device_for(args.device)))
    samples, missing = resolve_videos(load_dataset(args.data), args.video_root, args.on_missing)
    if missing and info.main:
        print(f"skipping {missing.summary()}", file=sys.stderr)
    with _resumable("damo data features", f"finished shards stay in {args.out}"):
        report = extract(model, [s.video for s in samples], ClipLoader(pipe.processor), args.out,
                         shard_videos=args.shard_videos, info=info)
    if info.main:
        _print(report)
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from damo.data import synthetic
    _print(synthetic.synthesize(args.out, n=args.n, seed=args.seed, difficulty=args.difficulty, test_n=args.n_test,
                                stvg=args.stvg))
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from damo.data import formats
    options = {}
    for o in args.option:
        if "=" not in o:
            raise SystemExit(f"--option {o!r} must look like key=value (e.g. mode=grounding)")
        k, v = o.split("=", 1)
        options[k] = v
    if not args.video_root:
        _print(formats.convert(args.format, args.inp, args.out, durations=args.durations, **options))
        return 0
    from damo.data.dataset import resolve_videos
    from damo.data.schema import save_samples

    samples, quirks = formats.load(args.format, args.inp, durations=args.durations, **options)
    try:
        kept, missing = resolve_videos(samples, args.video_root, args.on_missing)   # raises before writing anything
    except FileNotFoundError as e:
        raise SystemExit(f"damo data convert: {printable(e)}") from None
    save_samples(args.out, kept)
    _print({"videos": len({s.video for s in kept}), "samples": len(kept), "spans": sum(len(s.spans) for s in kept),
            "quirks": dict(quirks), "missing": {"videos": len(missing.videos), "samples": len(missing.samples),
                                                 "first": missing.videos[:5]}})
    return 0


def _offline(name_or_path: str) -> bool:
    """Whether an LLM's tokenizer loads without the network: a folder, or a hub id in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    return Path(name_or_path).is_dir() or isinstance(try_to_load_from_cache(name_or_path, "tokenizer_config.json"), str)


def _config_processor(config: str, samples: list[Sample]) -> tuple[DamoProcessor, str]:
    """A model config's processor and a note on its tokenizer: the pretrained LLM's own when it
    loads offline; the tiny LLM's trained on ``samples``' texts (as a recipe trains it); otherwise
    a stand-in of the LLM's vocabulary size."""
    import yaml

    from damo.config import find
    from damo.model import backbones
    from damo.model.configuration_damo import DamoConfig
    from damo.model.tokenizer import train_tokenizer
    from damo.model.processing import DamoProcessor
    from damo.plan import standin_tokenizer
    from damo.train.recipe import corpus

    cfg = DamoConfig.from_dict(yaml.safe_load(find("configs", config).read_text()) or {})
    if cfg.llm.kind != "hf":
        tok = train_tokenizer(corpus(samples, cfg.response, cfg.evidence.level), cfg.llm.vocab_size)
        note = "the tiny LLM's tokenizer, trained on this file's texts"
    elif cfg.llm.pretrained and _offline(cfg.llm.name_or_path):
        tok, note = backbones.load_tokenizer(cfg.llm), f"{cfg.llm.name_or_path}'s own"
    else:
        tok = standin_tokenizer(cfg)
        note = (f"a stand-in ({cfg.llm.name_or_path} is not on this machine): the text is exact, "
                "token counts are one per word")
    return DamoProcessor.from_model_config(cfg, tok), note


def cmd_data_render(args: argparse.Namespace) -> int:
    """``damo data render``: one sample as a model sees and learns it (prompt, frame times, targets, response)."""
    from damo.data.dataset import ClipLoader, load_dataset, resolve_videos
    from damo.data.inspect import format_render, render_sample, sample_times
    from damo.pipeline import DamoPipeline

    if bool(args.config) == bool(args.model):
        raise SystemExit("damo data render needs one of --config (a model config) or --model (a saved model folder)")
    try:
        samples = load_dataset(args.data)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"--data {args.data}: {e}") from None
    if not 0 <= args.index < len(samples):
        raise SystemExit(f"--index {args.index}: {args.data} holds {len(samples)} samples (0 .. {len(samples) - 1})")
    sample = samples[args.index]
    try:
        if args.model:
            processor, note = DamoPipeline.load(args.model).processor, "the model's own"
        else:
            processor, note = _config_processor(args.config, samples)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
    found, _ = resolve_videos([sample], args.video_root, "skip")
    if found:      # the decoded frames' own times
        times = ClipLoader(processor).raw(found[0].video).times.tolist()
    else:
        times = sample_times(processor, sample.duration)
        note += f"; video {sample.video} not found, frame times from the duration"
    try:
        r = render_sample(processor, sample, times)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(json.dumps(r, ensure_ascii=False) if args.json else format_render(r, note))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The web demo: examples, uploads, answers, timeline and a player that jumps to each span."""
    import damo
    from damo.app.serve import run

    from damo.api import vlm_source

    _setup_torch()
    model_dir = Path(args.model)
    try:
        whole_vlm = vlm_source(args.model, args.preset, args.dtype) is not None
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if not whole_vlm and not (model_dir / "model.safetensors").is_file():
        raise SystemExit(f"no trained model in {model_dir}; run `damo demo` first or pass --model DIR")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can upload files", file=sys.stderr)
    try:
        grounder = damo.load(args.model, dtype=args.dtype, preset=args.preset)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        run(grounder, Path(args.examples_dir), args.host, args.port, examples=args.examples,
            max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds)
    except OSError as e:
        raise SystemExit(f"cannot serve on {args.host}:{args.port} ({e.strerror or e}); try another --port") from None
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A trained model's LLM, LoRA merged, as a plain transformers folder with our tokenizer."""
    from damo.model.backbones import export_llm
    from damo.model.modeling_damo import DamoModel

    try:
        model = DamoModel.load(args.model)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"damo export: {e}") from None
    out = export_llm(model.llm, model.tokenizer, args.out)
    print(f"wrote {out}: AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load it")
    return 0


def cmd_data_augment(args: argparse.Namespace) -> int:
    """``damo data augment``: annotations -> grounded QA JSONL; prints the report as JSON."""
    import shutil

    from damo.data.augment import augment_resumable, load_videos, make_generator
    from damo.data.schema import save_samples
    from damo.ranks import init_distributed

    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"--limit must be a positive number of videos, got {args.limit}")
    try:
        videos = load_videos(args.inp, args.format)
        gen = make_generator(args.generator, seed=args.seed, url=args.url, model=args.model)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise SystemExit(str(e)) from None
    if args.limit is not None:
        videos = videos[:args.limit]
    info = init_distributed()
    parts = Path(f"{args.out}.parts")
    job = {"in": str(Path(args.inp).resolve()), "format": args.format, "generator": args.generator, "seed": args.seed,
           "url": args.url, "model": args.model, "limit": args.limit}
    with _resumable("damo data augment", f"finished videos stay in {parts}"):
        samples, report = augment_resumable(videos, gen, parts, job, info, seed=args.seed)
    if not info.main:
        return 0
    save_samples(args.out, samples)
    shutil.rmtree(parts)
    report["out"] = str(args.out)
    _print(report)
    return 0


def cmd_data_prefs(args: argparse.Namespace) -> int:
    """``damo data prefs``: canonical samples -> factorized preference pairs JSONL; prints the report as JSON."""
    from damo.data.dataset import load_dataset
    from damo.data.preference import make_pairs, make_rewriter, save_pairs

    try:
        samples = load_dataset(args.inp)
        rewriter = make_rewriter(args.rewriter, samples, url=args.url, model=args.model)
        pairs, report = make_pairs(samples, seed=args.seed, rewriter=rewriter, subfactors=args.subfactors,
                                   min_shift=args.min_shift)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(str(e)) from None
    save_pairs(args.out, pairs)
    report["out"] = str(args.out)
    _print(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from damo.data.synthetic.events import DIFFICULTIES

    p = argparse.ArgumentParser(prog="damo", description="Temporally grounded video-language models.")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="train the 4-stage recipe on procedural data, evaluate, ground")
    d.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    d.add_argument("--recipe", default=DEFAULT_RECIPE,
                   help="a recipe YAML, or a shipped recipe's name (default: %(default)s)")
    d.add_argument("--difficulty", default="standard", choices=DIFFICULTIES)
    d.add_argument("--n-train", type=int, default=1500)
    d.add_argument("--n-test", type=int, default=120)
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("train", help="run a multi-stage recipe")
    t.add_argument("--recipe", required=True, help="a recipe YAML, or a shipped recipe's name (e.g. damo_4stage)")
    t.add_argument("--workdir")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    t.add_argument("--num-workers", type=int, help="data-loader processes decoding videos ahead (recipe: num_workers)")
    t.add_argument("--init", metavar="DIR", help="start from this saved model and run only the recipe's stages it "
                                                 "was not trained through (recipe: init)")
    t.add_argument("--overwrite", action="store_true",
                   help="retrain finished stages whose recipe, config or data changed (default: stop and say what changed)")
    t.set_defaults(fn=cmd_train)

    pl = sub.add_parser("plan", help="dry run of a config and recipe at full scale on the meta device: parameters "
                                     "and per-GPU memory per stage (offline, no weights)")
    pl.add_argument("--config", help="model YAML or a shipped config's name (default: the recipe's model)")
    pl.add_argument("--recipe", help="recipe YAML or a shipped recipe's name (default: one stage training everything)")
    pl.add_argument("--gpus", type=int, default=8)
    pl.add_argument("--gpu-gb", type=float, default=80.0, help="memory per GPU")
    pl.add_argument("--parallel", choices=["ddp", "fsdp"], help="report only this mode (default: both)")
    pl.add_argument("--frames", type=int, help="sampled frames per clip, all seen by the towers (default: 180, "
                    "3 minutes at 1 fps, or the config's llm_frames if more)")
    pl.add_argument("--text-tokens", type=int, default=256, help="question + answer tokens per clip")
    pl.add_argument("--micro-batch", type=int, help="clips per GPU per forward (default: each stage's batch over "
                    "gpus x grad_accum)")
    pl.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    pl.set_defaults(fn=cmd_plan)

    from damo.eval import BENCHMARKS
    from damo.eval.benchmark import options_of
    from damo.eval.predictions import DUPLICATES, SUBSETS
    e = sub.add_parser("eval", help="score predictions, or run a model and score it",
                       epilog=_benchmark_list(), formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--task", choices=list(BENCHMARKS), help="the benchmark whose official evaluator to reproduce "
                                                            "(listed below with the options each takes)")
    e.add_argument("--gt")
    e.add_argument("--pred")
    e.add_argument("--subset", default="all", choices=SUBSETS,
                   help="score every gt sample (default; one without a prediction is a miss) or the predicted ones")
    e.add_argument("--duplicates", default="error", choices=DUPLICATES,
                   help="a prediction id seen twice: an error (default), or keep its first or last prediction")
    taken = e.add_argument_group("benchmark options (each benchmark takes only its own)")
    for o in options_of(list(BENCHMARKS.values())).values():
        users = ", ".join(b.name for b in BENCHMARKS.values() if o in b.options)
        default = f" (default: {o.default})" if o.choices else ""
        if o.flag:
            taken.add_argument(o.cli, action="store_true", default=None, help=f"{users}: {o.help}")
        else:
            taken.add_argument(o.cli, choices=o.choices or None, help=f"{users}: {o.help}{default}")
    e.add_argument("--data", help="canonical JSONL to run --model on")
    e.add_argument("--model")
    e.add_argument("--out")
    _data_options(e)
    e.add_argument("--batch-size", type=int, default=8, help="questions answered together (left-padded prompts)")
    e.add_argument("--device", default="auto", choices=DEVICES)
    e.add_argument("--num-workers", type=int, default=0, help="data-loader processes decoding videos ahead")
    e.add_argument("--features", metavar="DIR", help="read the towers' outputs stored by damo data features")
    _preset_option(e)
    _dtype_option(e)
    e.set_defaults(fn=cmd_eval)

    g = sub.add_parser("ground", help="answer a question about a video and say when",
                       description="Answer QUERY about VIDEO with spans in seconds. For a file name starting "
                                   "with '-', put '--' before it: damo ground -- -clip.mp4 \"when?\"")
    g.add_argument("video", nargs="?", help="video file (mp4, webm, mkv, avi, ...)")
    g.add_argument("query", nargs="?", help="the question, in quotes")
    g.add_argument("--model", default=str(DEFAULT_WORKDIR / "model"), metavar="DIR",
                   help="trained model folder (default: %(default)s, relative to the current folder: the one "
                        "`damo demo` trains, on procedural shapes and tones only)")
    g.add_argument("--plot", metavar="OUT.png", help="draw a timeline: thumbnails, evidence scores, spans (needs damo[plot])")
    g.add_argument("--truth", metavar="S-E[,S-E]", help="ground-truth spans in seconds, drawn and scored (IoU)")
    g.add_argument("--batch", metavar="FOLDER_OR_JSONL",
                   help="ground every video of a folder (with --query) or every {video, query} line of a JSONL")
    g.add_argument("--query", dest="query_opt", metavar="Q", help="the question for every video of a --batch folder")
    g.add_argument("--out", metavar="FILE", help="write the JSON result (batch: one JSON line per request)")
    g.add_argument("--json", "--verbose", dest="json", action="store_true",
                   help="print the whole JSON result, the model's card included, instead of the answer, the spans "
                        "and the card's one line")
    g.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    g.add_argument("--device", default="auto", choices=DEVICES)
    _dtype_option(g)
    _preset_option(g)
    g.set_defaults(fn=cmd_ground)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_cmd", required=True)
    s = data.add_parser("synth", help="procedural audio-visual videos with exact ground truth")
    s.add_argument("--n", type=int, required=True, help="training videos")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--difficulty", default="standard", choices=DIFFICULTIES)
    s.add_argument("--n-test", type=int, default=None)
    s.add_argument("--stvg", action="store_true", help="add where-and-when questions with box tubes")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_data_synth)

    f = data.add_parser("features", help="store the frozen vision/audio towers' outputs of a dataset's videos")
    f.add_argument("--model", required=True, help="a model folder (e.g. a finished alignment stage) or a model config")
    f.add_argument("--data", required=True, help="canonical JSONL or synth:// spec")
    f.add_argument("--out", required=True, help="features folder (a subfolder per encoder settings; resumable)")
    f.add_argument("--shard-videos", type=int, default=64, help="videos per safetensors shard")
    f.add_argument("--device", default="auto", choices=DEVICES)
    _data_options(f)
    f.set_defaults(fn=cmd_data_features)
    c = data.add_parser("convert", help="public annotation format -> canonical JSONL")
    c.add_argument("--format", required=True)
    c.add_argument("--in", dest="inp", required=True)
    c.add_argument("--durations")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="format option, e.g. mode=grounding for activitynet-captions")
    c.add_argument("--out", required=True)
    _data_options(c)
    c.set_defaults(fn=cmd_data_convert)
    r = data.add_parser("render", help="one sample as a model sees and learns it: prompt, frame times, targets, response")
    r.add_argument("--config", help="a model config (path or shipped name, e.g. paper-d2vlm)")
    r.add_argument("--model", help="a saved model folder (its own tokenizer and processor)")
    r.add_argument("--data", required=True, help="canonical JSONL or synth:// spec")
    r.add_argument("--index", type=int, default=0, help="which sample (0-based)")
    r.add_argument("--json", action="store_true", help="one JSON object instead of text")
    r.add_argument("--video-root", metavar="DIR", help="folder the sample's video resolves against (its decoded "
                   "frame times are shown; without the video, the times follow from the duration)")
    r.set_defaults(fn=cmd_data_render)
    from damo.data.augment import GENERATORS      # their heavy imports happen inside their commands
    from damo.data.preference import REWRITERS
    a = data.add_parser("augment", help="dense captions -> temporally grounded QA and dialogues (DaMO)",
                        description="Generate, validate and deduplicate temporally grounded QA from timed captions.")
    a.add_argument("--in", dest="inp", required=True, help="annotation file")
    a.add_argument("--format", required=True,
                   help="activitynet-captions, youcook2, or canonical (JSONL with dense_caption samples)")
    a.add_argument("--out", required=True, help="output canonical JSONL")
    a.add_argument("--generator", default="rule", choices=list(GENERATORS))
    a.add_argument("--url", help="OpenAI-compatible server for --generator http")
    a.add_argument("--model", help="local: HF model folder (default: SmolLM2-135M-Instruct); http: model name")
    a.add_argument("--limit", type=int, help="augment only the first N videos")
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(fn=cmd_data_augment)
    pr = data.add_parser("prefs", help="factorized preference pairs for FPO (D2VLM section 5)",
                         description="Perturb ground-truth responses by one temporal or textual factor to make "
                                     "rejected responses.")
    pr.add_argument("--in", dest="inp", required=True, help="canonical samples JSONL or synth://... spec")
    pr.add_argument("--out", required=True, help="output preference-pair JSONL")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--rewriter", default="rule", choices=list(REWRITERS),
                    help="text distortion: rule (offline key-word swaps) or http (OpenAI-compatible server)")
    pr.add_argument("--url", help="server for --rewriter http, e.g. http://127.0.0.1:8000")
    pr.add_argument("--model", help="model name sent to the --rewriter http server")
    pr.add_argument("--subfactors", type=lambda v: [x for x in v.split(",") if x],
                    help="comma-separated subset of shift,add,delete,merge,distort,repeat")
    pr.add_argument("--min-shift", dest="min_shift", type=float, default=1.0,
                    help="smallest temporal change in seconds (shift distance, added event length)")
    pr.set_defaults(fn=cmd_data_prefs)
    v = sub.add_parser("serve", help="web demo: pick or upload a video, ask, see when (localhost)")
    v.add_argument("--model", default=str(DEFAULT_WORKDIR / "model"), metavar="DIR",
                   help="trained model folder (default: %(default)s, relative to the current folder)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind; the default is reachable from this machine only")
    v.add_argument("--port", type=int, default=7860)
    v.add_argument("--examples", type=int, default=3, help="generated example videos to offer")
    v.add_argument("--examples-dir", default=str(Path.home() / ".cache" / "damo" / "examples"))
    v.add_argument("--max-upload-mb", type=float, default=200.0, help="largest accepted upload")
    v.add_argument("--max-seconds", type=float, default=300.0, help="longest a question may wait for its answer")
    _dtype_option(v)
    _preset_option(v)
    v.set_defaults(fn=cmd_serve)

    x = sub.add_parser("export", help="write a trained model's LLM (LoRA merged) as a plain transformers folder")
    x.add_argument("--model", required=True, metavar="DIR", help="trained model folder")
    x.add_argument("--out", required=True, metavar="DIR", help="folder for the LLM and its tokenizer")
    x.set_defaults(fn=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    _setup_threads()
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
