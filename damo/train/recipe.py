"""Run a recipe: build (or reload) the model, then run each stage in order.

Each finished stage is saved to ``WORKDIR/stages/NAME`` and the final model to
``WORKDIR/model``; a rerun reuses finished stages instead of training them again, and a
stage's ``init_from`` loads a named earlier stage (or any model folder) explicitly.

Bad samples: after the videos are found, a pre-flight (:mod:`damo.data.preflight`) probes every
video and measures every sample's tokens, of the training data and of the validation data a stage
evaluates on; what fails stops the run (``on_missing: error``) or is left out (``skip``); samples
that fail only while training are replaced. Both go to ``WORKDIR/bad_samples.json``.

Crash safety: a stage with ``save_every`` writes checkpoints to ``WORKDIR/checkpoints/NAME``;
rerunning the same command after a crash or a kill resumes from the last one and reaches the
same weights as an uninterrupted run. Under ``torchrun`` the same call trains on every process
(rank 0 writes files); see :mod:`damo.train.distributed`.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from damo import card as model_card
from damo.config import Recipe
from damo.data.collate import turns_of
from damo.data.dataset import ClipLoader, load_dataset, resolve_videos
from damo.data.preference import load_pairs, pair_video, with_pair_video
from damo.data.features import FeatureLoader, extract
from damo.data.preflight import BadSampleError, preflight
from damo.data.schema import Sample
from damo.model import backbones
from damo.model.configuration_damo import DamoConfig
from damo.model.modeling_damo import DamoModel
from damo.model.vlm import SAVED, TRAINED, VideoLLM, VLMConfig
from damo.pipeline import processor_of, save_model
from damo.model.processing import response_text
from damo.model.tokenizer import train_tokenizer
from damo.threads import use_threads
from damo.train import distributed
from damo.train.checkpoint import atomic_write_text, clear_checkpoints
from damo.train.loop import run_stage
from damo.train.losses import stage_losses, stage_settings


# what a VideoLLM's batches and forward feed (VLMBatch: answers' labels, one evidence query per row, rollouts)
VLM_LOSSES = ("lm", "grounding_bce", "grpo")


def is_saved(folder: Path) -> bool:
    """Whether ``folder`` holds a whole saved model: a DaMO model, or what a whole VLM trained."""
    return (folder / "model.safetensors").is_file() or ((folder / SAVED).is_file() and (folder / TRAINED).is_file())


def load_model(folder: Path) -> DamoModel | VideoLLM:
    """The model :func:`is_saved` found in ``folder``."""
    return VideoLLM.from_pretrained(str(folder)) if (folder / SAVED).is_file() else DamoModel.load(folder)


def corpus(samples: list[Sample], response: str = "interleaved", level: str = "event") -> list[str]:
    """Every text the tiny tokenizer should know: queries, answers, captions, the responses."""
    texts = []
    for s in samples:
        for t in turns_of(s):
            texts += [t["query"], t["answer"], *t["captions"],
                      response_text(t["task"], t["answer"], t["spans"], t["captions"], response=response, level=level)]
    return texts


def build_model(cfg: DamoConfig | VLMConfig, samples: list[Sample], seed: int = 0) -> DamoModel | VideoLLM:
    """A fresh model: pretrained LLMs bring their tokenizer (plus our special tokens); the tiny
    or from-config LLM gets a BPE tokenizer trained on the recipe's texts; a whole VLM is its
    checkpoint with fresh LoRA adapters and evidence heads."""
    torch.manual_seed(seed)
    if isinstance(cfg, VLMConfig):
        return cfg.load()
    if cfg.llm.kind == "hf" and cfg.llm.pretrained:
        tok = backbones.load_tokenizer(cfg.llm)
    else:
        tok = train_tokenizer(corpus(samples, cfg.response, cfg.evidence.level), cfg.llm.vocab_size)
    return DamoModel(cfg, tok)


def dataset_samples(spec: str, recipe: Recipe, workdir: Path | None, say) -> list[Sample]:
    """A recipe dataset's samples with their videos found under ``recipe.video_root``; with
    ``on_missing: skip`` the samples of missing videos are left out and listed in
    ``WORKDIR/missing_videos.json`` (one entry per dataset spec)."""
    samples, missing = resolve_videos(load_dataset(spec), recipe.video_root, recipe.on_missing)
    if missing:
        say(f"{spec}: skipping {missing.summary()}")
        if workdir is not None:
            path = workdir / "missing_videos.json"
            report = json.loads(path.read_text()) if path.is_file() else {}
            workdir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(report | {spec: missing.to_dict()}, indent=2))
    return samples


def stage_pairs(path: str, recipe: Recipe, say) -> list[dict]:
    """A preference-pair file's records (validated) with their videos found under ``recipe.video_root``;
    pairs of missing videos are an error, or left out with ``on_missing: skip``."""
    found, missing = resolve_videos(load_pairs(path), recipe.video_root, recipe.on_missing, video_of=pair_video,
                                    with_video=with_pair_video, name_of=lambda p: p["id"])
    if missing:
        say(f"{path}: skipping {missing.summary()}")
    return found


def trains_encoders(model: DamoModel, patterns: list[str]) -> bool:
    """Whether any vision or audio tower parameter matches a stage's trainable patterns."""
    names = [n for n, _ in model.named_parameters() if n.startswith(("video.vision.", "video.audio."))]
    return any(fnmatch.fnmatch(n, p) for n in names for p in patterns)


def stage_features(model: DamoModel, data: list[Sample], clips: ClipLoader, root: str, info, say) -> FeatureLoader:
    """The stored outputs of the model's (frozen) towers for a stage's videos, computed first where
    missing: every process runs the towers on its own device over its share of the shards
    (:func:`damo.data.features.extract`), instead of rank 0 on the CPU while the others wait."""
    towers = (model.video.vision, model.video.audio)
    for t in towers:
        t.to(info.device)
    r = extract(model, [s.video for s in data], clips, root, progress=False, info=info)
    for t in towers:
        t.cpu()
    say(f"features: {r['written']} videos computed ({r['videos_per_rank']} per process), {r['reused']} reused "
        f"in {r['folder']}")
    distributed.barrier()                   # rank 0 has written the index
    return FeatureLoader(root, model)


RECORD = "recipe_record.json"


def data_identity(spec: str) -> str:
    """A dataset spec as reuse compares it: a file by its content, anything else by its text."""
    p = Path(spec)
    if not p.is_file():
        return spec
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"{spec} sha256:{h.hexdigest()}"


def stage_records(recipe: Recipe) -> list[dict]:
    """What each stage's result depends on: its own settings, the model config, the data, the
    seed and (through ``previous``) every earlier stage."""
    common = {"model": asdict(recipe.model), "seed": recipe.seed, "video_root": recipe.video_root,
              "on_missing": recipe.on_missing,
              "data": {k: data_identity(v) for k, v in sorted(recipe.data.items()) if k == "train"}}
    out, prev = [], None
    for i, st in enumerate(recipe.stages):
        stage = asdict(st)
        if not stage["grpo"]:      # records of stages without GRPO settings stay as they were before them
            del stage["grpo"]
        elif stage["grpo"].get("eval_every") and "val" in recipe.data:    # its output is chosen on the validation data
            stage["val_data"] = data_identity(recipe.data["val"])
        rec = common | {"stage": stage | {"extra_data": [data_identity(x) for x in st.extra_data],
                                          "pairs": st.pairs and data_identity(st.pairs)},
                        "index": i, "previous": prev}
        prev = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()
        out.append(rec | {"key": prev})
    return out


def _changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{k}.")
        elif a != b and k not in ("key", "previous"):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def check_reuse(folder: Path, record: dict, overwrite: bool) -> bool:
    """True if ``folder`` holds a result of exactly ``record`` (reuse it). A result of another recipe,
    config or data is refused with what changed, or, with ``overwrite``, left to be retrained."""
    path = folder / RECORD
    old = json.loads(path.read_text()) if path.is_file() else {}
    if old.get("key") == record["key"]:
        return True
    if overwrite:
        return False
    what = _changes(old, record) if old else ["it has no record of the recipe that made it"]
    raise ValueError(f"{folder} was trained with a different recipe, config or data ({'; '.join(what[:5])}"
                     f"{'; ...' if len(what) > 5 else ''}); use a new --workdir, or --overwrite to retrain it")


def recipe_card(recipe: Recipe, upto: int, kinds: dict[str, str], inherited: list[dict]) -> dict:
    """The model card of stage ``upto`` (the final model: the last stage): the data every stage so far
    trained on, by kind, plus whatever an ``init_from`` model folder was trained on (``inherited``)."""
    from damo.data.synthetic import vocabulary

    specs = [recipe.data["train"]] + [x for st in recipe.stages[:upto + 1] for x in st.extra_data]
    data = inherited + [{"spec": spec, "kind": kinds[spec]} for spec in dict.fromkeys(specs)]
    return model_card.make_card(recipe.name, [st.name for st in recipe.stages[:upto + 1]], data, vocabulary())


def from_init(recipe: Recipe, log) -> Recipe:
    """The recipe that continues the saved model ``recipe.init``: its leading stages that model was
    already trained through (by name, from its card) are left out, the first remaining stage starts
    from it, and the model config is the saved one. So ``damo train --recipe damo_grpo --init
    runs/demo/model`` runs only the GRPO stage after the demo's four."""
    src = Path(recipe.init)
    if not is_saved(src):
        raise FileNotFoundError(f"--init {recipe.init}: no model.safetensors there; give a model folder "
                                "(damo train writes one to WORKDIR/model)")
    card = model_card.read_card(src)
    trained = card["stages"] if card else []
    k = 0
    while k < len(recipe.stages) and k < len(trained) and recipe.stages[k].name == trained[k]:
        k += 1
    if k == len(recipe.stages):
        raise ValueError(f"--init {recipe.init} was already trained through every stage of recipe {recipe.name!r} "
                         f"({', '.join(trained)}); nothing is left to run")
    stages = [replace(st) for st in recipe.stages[k:]]
    stages[0].init_from = stages[0].init_from or str(src)
    if k:
        log(f"--init {src}: trained through {', '.join(trained[:k])}; running {', '.join(st.name for st in stages)}")
    # a whole VLM's folder rebuilds itself from its vlm.json (load_model): the recipe keeps its model config
    cfg = (recipe.model if (src / SAVED).is_file() else
           DamoConfig.from_dict(json.loads((src / "config.json").read_text())))
    return replace(recipe, stages=stages, model=cfg, init=None)


def run_recipe(recipe: Recipe, workdir: str | Path, progress: bool = True, log=print,
               overwrite: bool = False, threads_per_stage: bool = False) -> DamoModel:
    """Train every stage of ``recipe`` into ``workdir``, resuming whatever a previous run of the same
    recipe left: a finished stage (or the final model) is reused only if the recipe, config and
    data that made it are the same as now; otherwise the run stops and says what changed, unless
    ``overwrite``, which retrains from the first stage that differs. ``threads_per_stage``: choose
    torch's threads again before each stage it trains (:func:`damo.threads.use_threads`)."""
    workdir = Path(workdir)
    info = distributed.init_distributed()
    if recipe.init:
        recipe = from_init(recipe, log if info.main else (lambda *_: None))
    records = stage_records(recipe)
    final = workdir / "model"
    if is_saved(final) and check_reuse(final, records[-1], overwrite):
        log(f"reusing trained model {final}")
        if model_card.read_card(final) is None and info.main:      # a model trained before cards existed
            specs = [recipe.data["train"]] + [x for st in recipe.stages for x in st.extra_data]
            kinds = {x: model_card.dataset_kind(x, [] if x.startswith("synth://") else (s.source for s in load_dataset(x)))
                     for x in specs}
            names = {st.name for st in recipe.stages}
            outside = [st.init_from for st in recipe.stages if st.init_from and st.init_from not in names]
            card = model_card.read_card(outside[-1]) if outside else None
            inherited = [] if not outside else card["data"] if card else [{"spec": outside[-1], "kind": "unknown"}]
            model_card.write_card(final, recipe_card(recipe, len(recipe.stages) - 1, kinds, inherited))
        return load_model(final)
    if "train" not in recipe.data:
        raise ValueError("recipe.data needs a 'train' dataset (synth://... or a JSONL path)")
    if recipe.parallel not in distributed.PARALLEL:
        raise ValueError(f"recipe.parallel must be one of {distributed.PARALLEL}, got {recipe.parallel!r}")
    evaluated = []                    # stages that evaluate on the validation data
    for st in recipe.stages:          # unknown losses, mixed batch kinds, bad settings: before any work
        stage_losses(st.name, st.losses)
        if getattr(stage_settings(st).get("grpo"), "eval_every", 0):
            evaluated.append(st.name)
    if isinstance(recipe.model, VLMConfig):
        unsupported = sorted({n for st in recipe.stages for n in st.losses} - set(VLM_LOSSES))
        if unsupported or any(st.text_only or st.dialogue for st in recipe.stages):
            raise ValueError(f"recipe {recipe.name}: a whole VLM trains on single questions with its video, with the "
                             f"losses {', '.join(VLM_LOSSES)}; remove {unsupported or 'text_only and dialogue'} "
                             "from its stages")
        if recipe.features:
            raise ValueError("recipe.features stores the outputs of DaMO's frozen towers; a whole VLM runs its own "
                             "vision tower: remove features from the recipe")
        try:     # LoRA targets matching no module: before any data or weight is read
            recipe.model.check()
        except ValueError as e:
            raise ValueError(f"recipe {recipe.name}: model: vlm: {e}") from None
    if evaluated and "val" not in recipe.data:
        raise ValueError(f"stages {evaluated} evaluate on validation data (grpo.eval_every): add data.val to the "
                         "recipe, or remove grpo.eval_every")
    say = log if info.main else (lambda *_: None)
    specs = [recipe.data["train"]] + [x for st in recipe.stages for x in st.extra_data]
    if evaluated:         # the validation data gets the training data's pre-flight: a bad sample stops no evaluation
        specs.append(recipe.data["val"])
    datasets = {spec: dataset_samples(spec, recipe, workdir if info.main else None, say) for spec in dict.fromkeys(specs)}
    samples = datasets[recipe.data["train"]]
    kinds = {spec: model_card.dataset_kind(spec, (s.source for s in ss)) for spec, ss in datasets.items()}
    inherited: list[dict] = []      # the data of an init_from model folder outside this recipe
    first = recipe.stages[0].init_from         # a model folder: its tokenizer and processor, not fresh ones
    model = load_model(Path(first)) if first else build_model(recipe.model, samples, recipe.seed)
    processor = processor_of(model, first)             # one processor for every stage
    report = {"preflight": {}, "stages": {}}        # WORKDIR/bad_samples.json
    for spec in datasets:
        datasets[spec], bad = preflight(datasets[spec], processor)
        if bad and recipe.on_missing == "error":
            raise BadSampleError(f"{spec}: {bad.summary()}; fix or remove them, or set on_missing: skip to leave "
                                 "them out (they are listed in bad_samples.json)")
        if bad:
            say(f"{spec}: skipping {bad.summary()}")
            report["preflight"][spec] = bad.rows
    samples = datasets[recipe.data["train"]]
    val = datasets[recipe.data["val"]] if evaluated else None
    clips = ClipLoader(processor, recipe.media_cache, memory=recipe.clip_memory,    # shared by the stages
                       cache="stat" if recipe.media_cache else "off")
    done: dict[str, Path] = {}
    for i, stage in enumerate(recipe.stages):
        ckpt = workdir / "stages" / stage.name
        if stage.init_from:
            src = done.get(stage.init_from, Path(stage.init_from))
            if not is_saved(src):
                raise FileNotFoundError(f"stage {stage.name!r}: init_from {stage.init_from!r} is neither an "
                                        f"earlier stage nor a model folder")
            model = load_model(src)
            if stage.init_from not in done:
                card = model_card.read_card(src)
                inherited = card["data"] if card else [{"spec": str(src), "kind": "unknown"}]
        record = records[i]
        if is_saved(ckpt) and check_reuse(ckpt, record, overwrite):
            say(f"stage {stage.name}: reusing {ckpt}")
            model = load_model(ckpt)
            if info.main and model_card.read_card(ckpt) is None:
                model_card.write_card(ckpt, recipe_card(recipe, i, kinds, inherited))
        else:
            overwrite = True        # everything after a retrained stage is retrained too
            partial = workdir / "checkpoints" / stage.name
            if (partial / "latest").is_file() and not check_reuse(partial, record, True):
                clear_checkpoints(partial)          # a checkpoint of another recipe is not resumed
            if (partial / "latest").is_file():
                say(f"stage {stage.name}: resuming from {(partial / 'latest').read_text().strip()}")
            elif info.main:
                partial.mkdir(parents=True, exist_ok=True)
                atomic_write_text(partial / RECORD, json.dumps(record, indent=1))
            if threads_per_stage:
                say(f"stage {stage.name}: {use_threads()} threads")
            t0, cpu0 = time.time(), time.process_time()
            data = samples + [x for spec in stage.extra_data for x in datasets[spec]]
            stage_clips = clips
            if recipe.features and not stage.text_only and not trains_encoders(model, stage.trainable):
                evaluated_on = val if stage.name in evaluated else []
                stage_clips = stage_features(model, data + evaluated_on, clips, recipe.features, info, say)
            pairs = stage_pairs(stage.pairs, recipe, say) if stage.pairs else None
            replaced: list[dict] = []
            stats = run_stage(model, stage, data, stage_clips, recipe.seed + i, progress, checkpoint_dir=partial,
                              dist_info=info, parallel=recipe.parallel, num_workers=recipe.num_workers, pairs=pairs,
                              bad_samples=replaced, history_file=partial / "history.json", val=val,
                              processor=processor)
            if replaced:
                say(f"stage {stage.name}: replaced {len(replaced)} samples that could not be read "
                    f"({', '.join(r['id'] for r in replaced[:5])}{', ...' if len(replaced) > 5 else ''})")
                report["stages"][stage.name] = replaced
            stats["wall_s"] = round(time.time() - t0, 1)
            stats["cpu_s"] = round(time.process_time() - cpu0, 1)     # this process, all its threads
            say(f"stage {stage.name}: " + ", ".join(f"{k}={v:.3f}" for k, v in stats.items()))
            if info.main:
                if report["preflight"] or report["stages"]:
                    atomic_write_text(workdir / "bad_samples.json", json.dumps(report, indent=2))
                save_model(model, processor, ckpt)
                atomic_write_text(ckpt / "stats.json", json.dumps(stats, indent=2))
                shutil.copyfile(partial / "history.json", ckpt / "history.json")
                atomic_write_text(ckpt / RECORD, json.dumps(record, indent=1))
                model_card.write_card(ckpt, recipe_card(recipe, i, kinds, inherited))
                clear_checkpoints(partial)
            distributed.barrier()
        done[stage.name] = ckpt
    if info.main:
        save_model(model, processor, final)
        atomic_write_text(final / RECORD, json.dumps(records[-1], indent=1))
        model_card.write_card(final, recipe_card(recipe, len(recipe.stages) - 1, kinds, inherited))
    distributed.barrier()
    return model
