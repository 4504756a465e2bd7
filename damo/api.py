"""The Python API: ``damo.load(path).ground(video, query)``."""
from __future__ import annotations

from pathlib import Path

from damo.data.clips import ClipStore
from damo.eval.evaluate import predict_one
from damo.model.modeling_damo import DamoModel


class Grounder:
    """A trained model plus the clip pipeline it was trained with."""

    def __init__(self, model: DamoModel, cache_dir: str | Path | None = None):
        c = model.cfg
        self.model = model
        self.store = ClipStore(c.fps, c.vision.image_size, c.audio.n_mels, c.audio.frames, cache_dir=cache_dir)

    def ground(self, video: str | Path, query: str) -> dict:
        """Answer ``query`` about ``video`` (a file or a ``synth://`` URI).

        Returns ``{"answer", "spans": [{"start", "end", "score"}] (best first), "evidence":
        [[start, end, score]] (the pure-grounding stage), "duration"}``, seconds throughout.
        """
        clip = self.store.get(str(video))
        r = predict_one(self.model, clip, query)
        return {"answer": r["answer"],
                "spans": [{"start": round(s, 2), "end": round(e, 2), "score": round(p, 4)} for s, e, p in r["spans"]],
                "evidence": [[round(x, 2) for x in sp] for sp in r["evidence"]],
                "duration": round(clip.duration, 3)}


def load(path: str | Path, cache_dir: str | Path | None = None) -> Grounder:
    """Load a saved model folder (``config.json`` + ``model.safetensors`` + ``tokenizer/``)."""
    return Grounder(DamoModel.load(path), cache_dir)
