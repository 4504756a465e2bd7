"""Recipes as data: YAML files of stages, with dotted command-line overrides.

A recipe is an ordered list of stages (DESIGN.md section 5). Each stage names what it
trains (parameter-name glob patterns), on which data (task filter), with which losses and
weights, for how many steps. One loop (:mod:`damo.train.loop`) runs every stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from damo.model.configuration_damo import DamoConfig
from damo.model.vlm import VLMConfig

from damo.model.modeling_damo import grouped_name

FOCUS = ("event", "sequence")
MODES = ("reference_free", "dpo")


@dataclass
class FPOSettings:
    """An FPO stage's ``fpo:`` settings. ``beta``: eq. 4's temperature (0.1 in the official code);
    ``mode``: ``reference_free`` (the paper's and the official form) or ``dpo`` (log-ratios against a
    frozen copy of the model at the stage start, Rafailov et al. 2023); ``focus``: ``sequence`` (whole
    responses, the official scoring: damo.train.fpo) or ``event`` (the perturbed parts only, ours)."""
    beta: float = 0.1
    mode: str = "reference_free"
    focus: str = "sequence"

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"fpo.beta must be > 0, got {self.beta}")
        if self.mode not in MODES:
            raise ValueError(f"fpo.mode must be one of {MODES}, got {self.mode!r}")
        if self.focus not in FOCUS:
            raise ValueError(f"fpo.focus must be one of {FOCUS}, got {self.focus!r}")

    @property
    def reference(self) -> bool:
        """Whether the loss compares with a frozen copy of the model (``dpo`` mode)."""
        return self.mode == "dpo"

    @classmethod
    def from_dict(cls, d: dict) -> "FPOSettings":
        bad = set(d) - set(cls.__dataclass_fields__)
        if bad:
            raise ValueError(f"unknown fpo settings {sorted(bad)}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: float(v) if k == "beta" else v for k, v in d.items()})


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: ``*name`` may repeat a node a billion times in a kilobyte (a recipe of
    nested aliases expands past gigabytes when its stages are recorded), and recipes never need one."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ValueError(f"{mark.name}:{mark.line + 1}: YAML aliases (*name) are not accepted in recipes and "
                             "configs; write the value out")
        return super().compose_node(parent, index)


def read_yaml(text: str | Path) -> Any:
    """Parse YAML text, or the file at a :class:`~pathlib.Path`, refusing aliases (``ValueError``)."""
    if isinstance(text, Path):
        with open(text, encoding="utf-8") as f:
            return yaml.load(f, Loader=_NoAliasLoader)
    return yaml.load(text, Loader=_NoAliasLoader)


def _whole(stage: str, key: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"stage {stage!r}: {key} must be a whole number >= {least}, got {value!r}")


def _fraction(stage: str, key: str, value: object, positive: bool) -> float:
    """``value`` as a float in [0, 1] ((0, 1] when ``positive``); YAML reads ``1e-3`` as text."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not 0 <= x <= 1 or (positive and x == 0):
        raise ValueError(f"stage {stage!r}: {key} must be a number in {'(' if positive else '['}0, 1], got {value!r}")
    return x


@dataclass
class Stage:
    name: str
    losses: dict[str, float]
    steps: int
    trainable: list[str] = field(default_factory=lambda: ["*"])
    tasks: list[str] | None = None        # keep only samples of these tasks (None: all)
    extra_data: list[str] = field(default_factory=list)   # datasets added to the recipe's train data for this stage only
    dialogue: bool = False                # group each video's samples into multi-turn dialogues
    text_only: bool = False               # questions and responses without their videos (LLM language warm-up)
    init_from: str | None = None          # a previous stage's name or a model folder; default: continue
    lr: float = 1e-3
    lrs: dict[str, float] = field(default_factory=dict)   # learning rates of the trainable parameters these globs match (first match; others: lr)
    batch: int = 16
    warmup: int = 20
    weight_decay: float = 0.01
    grad_accum: int = 1                   # micro-batches per optimizer step (per process); `batch` is the global batch
    save_every: int = 0                   # write a resumable checkpoint every N steps (0: only at the stage end)
    fpo: dict = field(default_factory=dict)   # FPO settings: beta, mode (reference_free | dpo), focus (event | sequence)
    pairs: str | None = None              # FPO stages: a `damo data prefs` JSONL (default: pairs made from the samples)
    grpo: dict = field(default_factory=dict)  # GRPO settings (damo.train.grpo.GRPOSettings): group, rewards, ...

    def __post_init__(self):
        # every number is checked here, before any model is built: a learning rate above 1 sends
        # AdamW's weights to infinity in a step, and a step count that is not a number fails late
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a stage's name must be text, got {self.name!r}")
        self.lr = _fraction(self.name, "lr", self.lr, positive=True)
        if not isinstance(self.lrs, dict):
            raise ValueError(f"stage {self.name!r}: lrs must map trainable globs to learning rates, got {self.lrs!r}")
        self.lrs = {grouped_name(g): _fraction(self.name, f"lrs[{g!r}]", v, positive=True) for g, v in self.lrs.items()}
        self.weight_decay = _fraction(self.name, "weight_decay", self.weight_decay, positive=False)
        for key, least in (("steps", 1), ("batch", 1), ("warmup", 0), ("grad_accum", 1), ("save_every", 0)):
            _whole(self.name, key, getattr(self, key), least)
        bad = {k: v for k, v in self.losses.items() if isinstance(v, bool) or not isinstance(v, (int, float))
               or not math.isfinite(v) or v < 0} if isinstance(self.losses, dict) else self.losses
        if not isinstance(self.losses, dict) or bad:
            raise ValueError(f"stage {self.name!r}: losses must map loss names to finite weights >= 0, got {bad!r}")
        # globs written for the flat module layout (fuseformer.*, bridge*) name the same parameters
        self.trainable = [grouped_name(p) for p in self.trainable]


@dataclass
class Recipe:
    stages: list[Stage]
    model: DamoConfig | VLMConfig = field(default_factory=DamoConfig)     # a DaMO model, or a whole VLM (key vlm)
    data: dict[str, str] = field(default_factory=dict)   # split -> dataset spec (synth://... or JSONL path)
    seed: int = 0
    name: str = "recipe"
    parallel: str = "ddp"                 # under torchrun: "ddp" (replicate) or "fsdp" (shard weights, for big LLMs)
    video_root: str | None = None         # folder the datasets' video ids and relative paths resolve against
    on_missing: str = "error"             # error: stop before training if a video is missing; skip: leave it out
    num_workers: int = 0                  # data-loader processes decoding and collating ahead of the model
    clip_memory: bool = False             # keep every clip in memory (small procedural datasets only)
    # a node-local folder caching decoded clips, keyed by path, size and modification time; None: training
    # decodes each clip afresh and writes nothing (a dataset of 100K videos is read about once per epoch)
    media_cache: str | None = None
    features: str | None = None           # folder of frozen-tower outputs: stages with frozen encoders read them
    init: str | None = None               # a saved model to start from (damo train --init): see damo.train.recipe

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Path | None = None, where: str = "the recipe") -> "Recipe":
        d = dict(d)
        model = d.pop("model", {}) or {}
        if isinstance(model, str):  # a model YAML: a path relative to the recipe, or a shipped config's name
            model = read_yaml(model_path(model, base)) or {}
        stages = d.pop("stages", None)
        if not stages:
            raise ValueError("a recipe needs a non-empty 'stages' list")
        out = []
        for s in stages:
            bad = set(s) - set(Stage.__dataclass_fields__)
            if bad:
                raise ValueError(f"stage {s.get('name', '?')!r}: unknown keys {sorted(bad)}; "
                                 f"valid: {sorted(Stage.__dataclass_fields__)}")
            out.append(Stage(**s))
            _check_loss_settings(out[-1])
        names = [s.name for s in out]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        valid = set(cls.__dataclass_fields__) - {"stages", "model"}
        bad = set(d) - valid
        if bad:
            raise ValueError(f"unknown recipe keys {sorted(bad)}; valid: model, stages, {', '.join(sorted(valid))}")
        if "vlm" in model and isinstance(model["vlm"].get("config"), str):   # a model config's transformers config
            named = read_yaml(model_path(model["vlm"]["config"], base)) or {}
            if not isinstance(named, dict) or "vlm" not in named:
                raise ValueError(f"{where}: model.vlm.config {model['vlm']['config']!r} is no whole-VLM model config; "
                                 "name one such as qwen2.5-vl-7b, or write the transformers config out")
            model = {"vlm": model["vlm"] | {"config": named["vlm"]["config"]}}
        cfg = VLMConfig.from_dict(model["vlm"], f"{where}: model") if "vlm" in model else DamoConfig.from_dict(model)
        return cls(stages=out, model=cfg, **d)


def _check_loss_settings(stage: Stage) -> None:
    """Settings of a loss the stage does not use are a mistake (the grpo settings themselves are
    parsed with the stage's losses when the recipe runs, :func:`damo.train.losses.stage_settings`)."""
    if (stage.fpo or stage.pairs) and "fpo" not in stage.losses:
        raise ValueError(f"stage {stage.name!r}: 'fpo' settings and 'pairs' belong to a stage with the fpo loss")
    if stage.grpo and "grpo" not in stage.losses:
        raise ValueError(f"stage {stage.name!r}: 'grpo' settings belong to a stage with the grpo loss")
    FPOSettings.from_dict(stage.fpo)


def set_dotted(d: dict, key: str, value: Any) -> None:
    """``set_dotted(d, "stages.0.steps", 10)``: list indices are integers."""
    parts = key.split(".")
    cur: Any = d
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur.setdefault(p, {})
    last = parts[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value


def shipped(kind: str) -> Path:
    """The folder of the ``recipes`` or model ``configs`` that ship inside the package."""
    return Path(str(resources.files("damo") / "resources" / kind))


def find(kind: str, name: str | Path) -> Path:
    """A recipe (``kind="recipes"``) or model config (``"configs"``) file: ``name`` as a path if that
    file exists, else the shipped one of that bare name (``damo_4stage`` or ``damo_4stage.yaml``)."""
    p = Path(name)
    if p.is_file():
        return p
    if p.parent == Path("."):
        q = shipped(kind) / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
        if q.is_file():
            return q
    known = ", ".join(sorted(f.stem for f in shipped(kind).glob("*.yaml")))
    raise FileNotFoundError(f"{kind[:-1]} {name} not found: give a file path or a shipped name ({known})")


def model_path(model: str, base: Path | None) -> Path:
    """The model YAML a recipe names: relative to the recipe's folder ``base``, or a shipped config."""
    p = Path(model)
    if base is not None and not p.is_absolute() and (base / p).is_file():
        return base / p
    return find("configs", p)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (a YAML path, or a shipped recipe's name) and apply ``key=value`` overrides
    (values parsed as YAML)."""
    path = find("recipes", path)
    d = read_yaml(path) or {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping with 'stages', got {type(d).__name__}")
    if isinstance(d.get("model"), str):
        d["model"] = read_yaml(model_path(d["model"], path.parent)) or {}
    for o in overrides or []:
        if "=" not in o:
            raise ValueError(f"override {o!r} must look like key.sub=value")
        k, v = o.split("=", 1)
        set_dotted(d, k, read_yaml(v))
    return Recipe.from_dict(d, base=path.parent, where=str(path))
