"""A DaMO model with the processor above it, as a transformers pipeline pairs a model with its processor.

The model (:class:`~damo.model.modeling_damo.DamoModel`) takes tensors and token ids only; the
processor (:class:`~damo.model.processing.DamoProcessor`) writes the prompts and reads the answers.
:meth:`DamoPipeline.answer` walks processor -> model -> processor once per batch of questions, and a
model folder holds both: the model's ``config.json``, weights and ``tokenizer/``, and the processor's
``processor_config.json`` beside them (:meth:`DamoPipeline.save`, :meth:`DamoPipeline.load`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from damo.model.modeling_damo import DamoModel
from damo.model.processing import ClipTensors, DamoProcessor

if TYPE_CHECKING:
    from damo.model.vlm import VideoLLM, VLMProcessor


def processor_of(model: DamoModel | VideoLLM, folder: str | Path | None = None) -> DamoProcessor | VLMProcessor:
    """The processor a model reads and writes through: a whole VLM holds its own; a DaMO model's is the
    ``processor_config.json`` saved beside it in ``folder``, else the one its config describes."""
    if not isinstance(model, DamoModel):
        return model.processor
    if folder is not None and (Path(folder) / "processor_config.json").is_file():
        return DamoProcessor.from_pretrained(folder, model.tokenizer)
    return DamoProcessor.from_model_config(model.cfg, model.tokenizer)


def save_model(model: DamoModel | VideoLLM, processor: DamoProcessor | VLMProcessor, folder: str | Path) -> None:
    """A trained model into ``folder``: a DaMO model with its processor beside it, a whole VLM as it saves itself."""
    if isinstance(model, DamoModel):
        DamoPipeline(model, processor).save(folder)
    else:
        model.save(folder)


class DamoPipeline:
    """``model`` and ``processor`` (default: the processor the model's config describes, on its tokenizer)."""

    def __init__(self, model: DamoModel, processor: DamoProcessor | None = None):
        self.model = model
        self.processor = processor or processor_of(model)

    @classmethod
    def load(cls, path: str | Path, allow_pickle: bool = False, dtype: str | None = None) -> "DamoPipeline":
        """A saved model folder: the model (:meth:`DamoModel.load`) and its ``processor_config.json``
        (a folder without one gets the processor of the model's config)."""
        model = DamoModel.load(path, allow_pickle=allow_pickle, dtype=dtype)
        return cls(model, processor_of(model, path))

    def save(self, path: str | Path) -> None:
        """The model's files and the processor's ``processor_config.json`` in one folder."""
        self.model.save(path)
        self.processor.save_pretrained(path)

    def to(self, device: str | torch.device) -> "DamoPipeline":
        self.model.to(device)
        return self

    def answer(self, clips: list[ClipTensors], queries: list[str], max_new_tokens: int = 48,
               tasks: list[str | None] | None = None) -> list[dict]:
        """Answer one question per clip in batches: the processor's prompts, the model's
        :meth:`~damo.model.modeling_damo.DamoModel.generate` (with each question's task for the
        generation settings), and the processor's decoding into ``{"answer", "spans", "evidence",
        "scores", "tube"}``."""
        proc = self.processor
        # clips whose video layout differs (frame grouping, tokens per frame under the budget) go in
        # separate batches, so every clip is laid out as it would be alone
        by_group: dict = {}
        for i, c in enumerate(clips):
            by_group.setdefault(proc.layout(len(c.times)), []).append(i)
        rows: list[dict] = [{}] * len(clips)
        for idx in by_group.values():
            batch = proc.generation_batch([clips[i] for i in idx], [queries[i] for i in idx])
            for i, r in zip(idx, self.model.generate(batch, max_new_tokens, [tasks[i] for i in idx] if tasks else None)):
                rows[i] = r
        return [proc.decode(r["ids"], r["evidence"], r["coords"], c.duration, c.times.tolist())
                for r, c in zip(rows, clips)]
