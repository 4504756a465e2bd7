"""Model cards: what a saved model was trained on, what it can name, what it reached.

A card is ``model_card.json`` next to a model's weights, written by
:func:`damo.train.recipe.run_recipe` for every stage and the final model; ``damo demo`` adds the
metrics the model reached on its held-out test split. Its fields::

    {"trained_on": "procedural" | "real" | "procedural and real" | "unknown",
     "data": [{"spec": "synth://standard?n=1500&seed=0&split=train", "kind": "procedural"}, ...],
     "recipe": "damo_4stage", "stages": ["language", "align", ...],
     "vocabulary": {"shapes": [...], "colours": [...], "sounds": [...]},    # procedural models only
     "metrics": {"test_data": ..., "overall": {"n", "R1@0.5", ...}, ...}}    # when evaluated

A model folder without a card (older models, models saved directly) loads as before; what it was
trained on is then ``"unknown"`` and no warning is given.

A model trained only on procedural videos knows coloured shapes, tones, beeps and noise bursts and
nothing else: asked about a real video it still answers in those words. :func:`real_video_warning`
says so whenever such a model is asked about a real video (a file that is not one of DaMO's
procedural renders, which carry :data:`PROCEDURAL_TAG` in their container metadata).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

CARD = "model_card.json"
PROCEDURAL_TAG = "damo procedural video"    # container comment of every file DaMO renders from a synth:// spec


def dataset_kind(spec: str, sources: Iterable[str]) -> str:
    """``"procedural"`` for a ``synth://`` spec or a dataset whose samples' ``source`` are all ``"synthetic"``,
    else ``"real"``."""
    if spec.startswith("synth://"):
        return "procedural"
    sources = list(sources)
    return "procedural" if sources and all(s == "synthetic" for s in sources) else "real"


def make_card(recipe_name: str, stages: list[str], data: list[dict], vocabulary: dict) -> dict:
    """A card for a model trained by ``stages`` of ``recipe_name`` on ``data`` ({"spec", "kind"} each);
    ``vocabulary`` (the procedural generator's events) is recorded when every dataset is procedural."""
    kinds = {d["kind"] for d in data}
    trained_on = ("unknown" if "unknown" in kinds else "procedural" if kinds == {"procedural"}
                  else "real" if kinds == {"real"} else "procedural and real")
    card: dict = {"trained_on": trained_on, "data": data, "recipe": recipe_name, "stages": stages}
    if trained_on == "procedural":
        card["vocabulary"] = vocabulary
    return card


def write_card(folder: str | Path, card: dict) -> None:
    """Write ``model_card.json`` into ``folder`` atomically (a reader never sees half a card)."""
    path = Path(folder) / CARD
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_card(folder: str | Path) -> dict | None:
    """The card of a model folder, or None when it has none."""
    path = Path(folder) / CARD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def add_metrics(folder: str | Path, metrics: dict) -> None:
    """Record the metrics a model reached in its card (a folder without a card gets none)."""
    card = read_card(folder)
    if card is not None:
        write_card(folder, card | {"metrics": metrics})


def summary(card: dict | None) -> dict:
    """The ``"model"`` field of a grounding's JSON: the card, or ``{"trained_on": "unknown"}``."""
    return dict(card) if card is not None else {"trained_on": "unknown"}


def headline(card: dict | None) -> str:
    """The card in one line: what the model was trained on, by which recipe, and the held-out R@0.5
    it reached when it was evaluated (``damo ground`` prints this; ``--json`` gives the whole card)."""
    if card is None or card.get("trained_on", "unknown") == "unknown":
        return "no model card: what this model was trained on is unknown"
    if "preset" in card:        # a published VLM checkpoint (damo.model.vlm.VideoLLM.card)
        return f"{card['checkpoint']} run as its authors run it: preset {card['preset']}"
    line = f"trained on {card['trained_on']} data by recipe {card['recipe']} ({len(card['stages'])} stages)"
    overall = card.get("metrics", {}).get("overall")
    if overall:
        line += f"; held-out test R@0.5 {overall['R1@0.5']:.3f} (n={overall['n']})"
    return line


def is_procedural_video(video: str | Path) -> bool:
    """A ``synth://`` URI, or a file DaMO rendered from one (tagged in its container metadata)."""
    if str(video).startswith("synth://"):
        return True
    import av

    try:
        with av.open(str(video)) as c:
            return any(str(v).startswith(PROCEDURAL_TAG) for k, v in c.metadata.items() if k.lower() == "comment")
    except (av.FFmpegError, OSError):
        return False


def real_video_warning(card: dict | None, video: str | Path) -> str | None:
    """One line when a model trained only on procedural data is asked about a real video, else None."""
    if card is None or card.get("trained_on") != "procedural" or is_procedural_video(video):
        return None
    return ("this model was trained only on procedural videos (coloured shapes, tones, beeps, noise bursts): "
            "about a real video its answer names those events and its spans are not meaningful; "
            "ground real videos with a model trained on real data")
