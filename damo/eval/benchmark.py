"""What a benchmark is to ``damo eval --task``: one object holding its reader, its scorer, its answer
parsers and the options it takes.

Each benchmark module in ``damo/eval/`` builds one :class:`Benchmark` named ``BENCHMARK``, and
``damo/eval/__init__.py`` lists them in :data:`~damo.eval.BENCHMARKS`, the only list of benchmarks: the
command line offers its names and options, and :meth:`Benchmark.score` refuses an option the benchmark
does not take, naming the ones it does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from damo.data.schema import Prediction, QuirkReport, Sample
from damo.eval.predictions import SUBSETS, PredictionFile


class Reader(Protocol):
    """An annotation format (a module of :mod:`damo.data.formats`, ``damo data convert --format NAME``): gt
    samples and the peer's predictions."""

    NAME: str

    def load(self, path: str | Path, report: QuirkReport, durations: str | Path | None = None,
             **options: object) -> list[Sample]: ...

    def read_predictions(self, path: str | Path, samples: list[Sample]) -> dict[str, Prediction]: ...


@dataclass(frozen=True)
class Option:
    """An option of a benchmark's scorer: keyword ``name``, ``damo eval --name`` (``_`` written ``-``).

    With ``choices`` its value is one of them; without, ``flag`` makes it a switch (True when given) and
    otherwise it takes a path."""
    name: str
    help: str
    choices: tuple[str, ...] = ()
    default: str | bool | None = None
    flag: bool = False

    @property
    def cli(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: object) -> None:
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.cli} must be one of {', '.join(self.choices)}, got {value!r}")


PARSER = Option("parser", "how answers in free text become spans: one of the benchmark's parsers, listed below with "
                          "the evaluator each reads answers as (default: the first)")
DURATIONS = Option("durations", "video lengths for annotations that hold none: a CSV (id/video + length/duration "
                                "columns, e.g. Charades_v1_test.csv) or a JSON object id -> seconds")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: ``scorer(gt_path, preds, subset, **options) -> metrics`` with the keys the official
    evaluator ``evaluator`` prints; ``reader`` its annotation format; ``options`` what ``scorer`` takes by
    keyword. ``parsers`` names the ways ``--parser`` reads answers in free text, each with the evaluator it
    follows (the first is the default); a benchmark with parsers lists :data:`PARSER` in its options."""
    name: str
    evaluator: str
    reader: Reader
    scorer: Callable[..., dict]
    options: tuple[Option, ...] = ()
    parsers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if bool(self.parsers) != (PARSER in self.options):
            raise ValueError(f"benchmark {self.name!r}: list PARSER in its options exactly when it names parsers")

    def score(self, gt_path: str | Path, pred_path: str | Path, subset: str = "all", duplicates: str = "error",
            **options: object) -> dict:
        """Metrics of the predictions in ``pred_path`` against ``gt_path``; unknown or invalid options are
        errors naming the valid ones. Tolerated prediction quirks are counted under ``prediction_quirks``."""
        takes = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(takes))
        if unknown:
            valid = ", ".join(o.cli for o in self.options) or "none"
            raise ValueError(f"--task {self.name} takes no {', '.join('--' + u.replace('_', '-') for u in unknown)}; "
                             f"its options: {valid}")
        for name, value in options.items():
            takes[name].check(value)
        if self.parsers:
            options["parser"] = options.get("parser") or next(iter(self.parsers))
            if options["parser"] not in self.parsers:
                raise ValueError(f"--task {self.name} reads answers with --parser {' or '.join(self.parsers)}, "
                                 f"got {options['parser']!r}")
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        preds = PredictionFile(pred_path, duplicates)
        out = self.scorer(gt_path, preds, subset, **{o.name: o.default for o in self.options} | options)
        return {**out, "prediction_quirks": dict(preds.report)} if preds.report else out


def samples_and_predictions(reader: Reader, gt_path: str | Path, preds: PredictionFile, subset: str,
                            durations: str | Path | None = None,
                            **options: object) -> tuple[list[Sample], dict[str, Prediction]]:
    """The gt samples ``reader`` loads from ``gt_path`` (all, or with ``subset="predicted"`` only those with a
    prediction) and the predictions by id, canonical or in the reader's own layout."""
    samples = reader.load(gt_path, QuirkReport(), durations=durations, **options)
    by_id = preds.canonical() if preds.is_canonical() else reader.read_predictions(preds.path, samples)
    if subset == "predicted":
        samples = [s for s in samples if s.id in by_id]
        if not samples:
            raise ValueError("subset='predicted' but no prediction id matches a gt sample id")
    return samples, by_id


def options_of(benchmarks: Sequence[Benchmark]) -> dict[str, Option]:
    """Every option the ``benchmarks`` take, by name; two benchmarks naming one option must mean the same one."""
    out: dict[str, Option] = {}
    for b in benchmarks:
        for o in b.options:
            if out.setdefault(o.name, o) != o:
                raise ValueError(f"benchmark {b.name!r} declares option {o.cli} unlike another benchmark does; "
                                 f"share one Option object")
    return out
