"""Recipes as data: YAML files of stages, with dotted command-line overrides.

A recipe is an ordered list of stages (DESIGN.md section 5). Each stage names what it
trains (parameter-name glob patterns), on which data (task filter), with which losses and
weights, for how many steps. One loop (:mod:`damo.train.loop`) runs every stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from damo.model.modeling_damo import DamoConfig, grouped_name

FOCUS = ("event", "sequence")
MODES = ("reference_free", "dpo")


@dataclass
class FPOSettings:
    """An FPO stage's ``fpo:`` settings. ``beta``: eq. 4's temperature (0.1 in the official code);
    ``mode``: ``reference_free`` (the paper's and the official form) or ``dpo`` (log-ratios against a
    frozen copy of the model at the stage start, Rafailov et al. 2023); ``focus``: ``event`` (the
    official scoring of the perturbed parts only) or ``sequence`` (whole responses)."""
    beta: float = 0.1
    mode: str = "reference_free"
    focus: str = "event"

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"fpo.beta must be > 0, got {self.beta}")
        if self.mode not in MODES:
            raise ValueError(f"fpo.mode must be one of {MODES}, got {self.mode!r}")
        if self.focus not in FOCUS:
            raise ValueError(f"fpo.focus must be one of {FOCUS}, got {self.focus!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "FPOSettings":
        bad = set(d) - set(cls.__dataclass_fields__)
        if bad:
            raise ValueError(f"unknown fpo settings {sorted(bad)}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: float(v) if k == "beta" else v for k, v in d.items()})


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
    batch: int = 16
    warmup: int = 20
    weight_decay: float = 0.01
    grad_accum: int = 1                   # micro-batches per optimizer step (per process); `batch` is the global batch
    save_every: int = 0                   # write a resumable checkpoint every N steps (0: only at the stage end)
    fpo: dict = field(default_factory=dict)   # FPO settings: beta, mode (reference_free | dpo), focus (event | sequence)
    pairs: str | None = None              # FPO stages: a `damo data prefs` JSONL (default: pairs made from the samples)

    def __post_init__(self):
        # globs written for the flat module layout (fuseformer.*, bridge*) name the same parameters
        self.trainable = [grouped_name(p) for p in self.trainable]


@dataclass
class Recipe:
    stages: list[Stage]
    model: DamoConfig = field(default_factory=DamoConfig)
    data: dict[str, str] = field(default_factory=dict)   # split -> dataset spec (synth://... or JSONL path)
    seed: int = 0
    name: str = "recipe"
    parallel: str = "ddp"                 # under torchrun: "ddp" (replicate) or "fsdp" (shard weights, for big LLMs)
    video_root: str | None = None         # folder the datasets' video ids and relative paths resolve against
    on_missing: str = "error"             # error: stop before training if a video is missing; skip: leave it out
    num_workers: int = 0                  # data-loader processes decoding and collating ahead of the model
    clip_memory: bool = False             # keep every clip in memory (small procedural datasets only)
    features: str | None = None           # folder of frozen-tower outputs: stages with frozen encoders read them

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Path | None = None) -> "Recipe":
        d = dict(d)
        model = d.pop("model", {}) or {}
        if isinstance(model, str):  # a model YAML: a path relative to the recipe, or a shipped config's name
            model = yaml.safe_load(model_path(model, base).read_text()) or {}
        stages = d.pop("stages", None)
        if not stages:
            raise ValueError("a recipe needs a non-empty 'stages' list")
        out = []
        for s in stages:
            bad = set(s) - set(Stage.__dataclass_fields__)
            if bad:
                raise ValueError(f"stage {s.get('name', '?')!r}: unknown keys {sorted(bad)}; "
                                 f"valid: {sorted(Stage.__dataclass_fields__)}")
            s = dict(s)
            for k in ("lr", "weight_decay"):
                if k in s:
                    s[k] = float(s[k])
            out.append(Stage(**s))
            _check_preference_settings(out[-1])
        names = [s.name for s in out]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        valid = set(cls.__dataclass_fields__) - {"stages", "model"}
        bad = set(d) - valid
        if bad:
            raise ValueError(f"unknown recipe keys {sorted(bad)}; valid: model, stages, {', '.join(sorted(valid))}")
        return cls(stages=out, model=DamoConfig.from_dict(model), **d)


def _check_preference_settings(stage: Stage) -> None:
    if (stage.fpo or stage.pairs) and "fpo" not in stage.losses:
        raise ValueError(f"stage {stage.name!r}: 'fpo' settings and 'pairs' belong to a stage with the fpo loss")
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
    d = yaml.safe_load(path.read_text()) or {}
    if isinstance(d.get("model"), str):
        d["model"] = yaml.safe_load(model_path(d["model"], path.parent).read_text()) or {}
    for o in overrides or []:
        if "=" not in o:
            raise ValueError(f"override {o!r} must look like key.sub=value")
        k, v = o.split("=", 1)
        set_dotted(d, k, yaml.safe_load(v))
    return Recipe.from_dict(d, base=path.parent)
