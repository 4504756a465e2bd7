"""YouCook2 (Zhou et al., AAAI 2018) in either of its two public layouts.

- The original release ``youcookii_annotations_*.json``:
  ``{"database": {video_id: {"duration", "subset", "recipe_type", "video_url",
  "annotations": [{"id", "segment": [s, e], "sentence"}]}}}`` (detected by the top-level
  ``database`` key). Sample ids use the database key (e.g. ``GLd3aX16zBg``); ``meta`` keeps
  ``subset`` and ``recipe_type`` when present. ``subset=`` ("training", "validation") keeps only
  that split.
- The ActivityNet-style conversion shipped by PDVC (``yc2_val.json``:
  ``{"v_<id>": {duration, timestamps, sentences}}``); ids are the file's keys (``v_<id>``).

Both load exactly like ActivityNet Captions (``mode="dense"`` or ``"grounding"``, same ids, same
quirk policies; see :mod:`damo.data.formats.activitynet`), and predictions use the same
ActivityNet challenge JSON, which is what PDVC evaluates YouCook2 with.
"""
from __future__ import annotations

from pathlib import Path

from damo.data.schema import QuirkReport, Sample

from . import activitynet
from .common import read_json, require

NAME = "youcook2"
write_predictions = activitynet.write_predictions
read_predictions = activitynet.read_predictions


def _from_database(database: dict, path: str | Path, subset: str | None) -> tuple[dict, dict]:
    """Original layout -> ActivityNet layout, plus per-video extras for ``meta``."""
    videos, extras = {}, {}
    for vid, rec in database.items():
        where = f"{path}: database[{vid!r}]"
        require(rec, ("duration", "annotations"), where)
        if subset is not None and rec.get("subset") != subset:
            continue
        anns = [require(a, ("segment", "sentence"), f"{where}.annotations[{k}]")
                for k, a in enumerate(rec["annotations"])]
        videos[vid] = {"duration": rec["duration"], "timestamps": [a["segment"] for a in anns],
                       "sentences": [a["sentence"] for a in anns]}
        extras[vid] = {k: rec[k] for k in ("subset", "recipe_type") if k in rec}
    return videos, extras


def load(path: str | Path, report: QuirkReport, durations: str | Path | None = None,
         mode: str = "dense", subset: str | None = None) -> list[Sample]:
    """Load either YouCook2 layout (durations are in the file)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (YouCook2 'database' layout or ActivityNet-style)")
    if "database" in data:
        if not isinstance(data["database"], dict):
            raise ValueError(f"{path}: 'database' must map video id -> annotation record")
        videos, extras = _from_database(data["database"], path, subset)
    else:
        if subset is not None:
            raise ValueError(f"{path}: the ActivityNet-style YouCook2 file has no subsets; drop the subset option")
        videos, extras = data, {}
    samples = activitynet.samples_from_videos(videos, path, report, mode=mode, source=NAME)
    for s in samples:
        s.meta.update(extras.get(s.video, {}))
    return samples
