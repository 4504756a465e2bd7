"""Public annotation formats -> canonical samples (``damo.data.schema``), and back to each peer's
prediction format.

One module per format, chosen by name from the plain dict :data:`FORMATS`. Every module has
``load(path, report, durations=None, ...) -> list[Sample]`` and
``write_predictions(preds, samples, path)``; where the peer has a prediction format of its own,
also ``read_predictions(path, samples) -> dict[str, Prediction]``. Sample ids are stable and
documented in each module's docstring. Every span goes through ``schema.clean_spans``; what a
policy touched is counted in the returned :class:`QuirkReport`, never changed silently.

One convention spans the formats: a canonical prediction for a ``dense_caption`` sample holds its
captions in ``answer``, one per line, aligned with its spans (best first).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType

from damo.data.schema import QuirkReport, Sample, save_samples

from . import activitynet, charades_sta, d2vlm, didemo, etbench, qvhighlights, tacos, timelens, youcook2

FORMATS: dict[str, ModuleType] = {
    "charades-sta": charades_sta,
    "qvhighlights": qvhighlights,
    "activitynet-captions": activitynet,
    "youcook2": youcook2,
    "didemo": didemo,
    "tacos": tacos,
    "etbench": etbench,
    "d2vlm": d2vlm,
    "timelens": timelens,
}

USES_DURATIONS = {"charades-sta", "didemo", "d2vlm"}  # the formats whose files may carry no video durations


def get(format: str) -> ModuleType:
    if format not in FORMATS:
        raise ValueError(f"unknown annotation format {format!r}; valid formats: {', '.join(FORMATS)}")
    return FORMATS[format]


def load(format: str, path: str | Path, durations: str | Path | None = None,
         **options: object) -> tuple[list[Sample], QuirkReport]:
    """Load a public annotation file as canonical samples plus the counts of every quirk policy."""
    module = get(format)
    accepted = set(inspect.signature(module.load).parameters) - {"path", "report", "durations"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"format {format!r} has no option(s) {unknown}; "
                         f"its options are {sorted(accepted) or 'none'}")
    if durations is not None and format not in USES_DURATIONS:
        raise ValueError(f"format {format!r} reads durations from the annotation file itself; drop --durations "
                         f"(only {', '.join(sorted(USES_DURATIONS))} take one)")
    report = QuirkReport()
    samples = module.load(path, report, durations=durations, **options)
    return samples, report


def convert(format: str, in_path: str | Path, out_path: str | Path, durations: str | Path | None = None,
            **options: object) -> dict:
    """Convert a public annotation file to canonical JSONL and return what was converted."""
    samples, report = load(format, in_path, durations=durations, **options)
    save_samples(out_path, samples)
    return {
        "videos": len({s.video for s in samples}),
        "samples": len(samples),
        "spans": sum(len(s.spans) for s in samples),
        "quirks": dict(report),
    }


__all__ = ["FORMATS", "get", "load", "convert"]
