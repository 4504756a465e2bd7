"""Padding and stacking: canonical samples with their clips -> model batches.

What the LLM reads and writes (prompts, responses, targets) is the model's
:class:`~damo.model.processing.DamoProcessor`; this module only turns its per-sample encodings
into right-padded training batches (generation batches are the processor's own,
:meth:`~damo.model.processing.DamoProcessor.generation_batch`).
"""
from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import torch

from damo.data.schema import Sample
from damo.model.batch import Batch
from damo.model.processing import (ClipTensors, DamoProcessor, Encoded, VideoLayout, frame_positions, frame_targets,
                                   pad_rows, stack_clips)
from damo.model.vlm import VLMBatch, VLMClip, VLMProcessor
from damo.pipeline import processor_of


def turns_of(s: Sample) -> list[dict]:
    """A sample's turns: dialogues keep ``meta['turns']``; anything else is one turn (with the
    tube's boxes in time order for spatio-temporal grounding)."""
    if s.task == "dialogue":
        return s.meta["turns"]
    boxes = [b for _, b in sorted(s.meta.get("boxes", {}).items(), key=lambda kv: float(kv[0]))]
    return [{"task": s.task, "query": s.query, "answer": s.answer, "spans": s.spans, "captions": s.captions,
             "boxes": boxes}]


class Collator:
    """Turns ``[(sample, clip)]`` into a right-padded training batch for :class:`DamoModel`."""

    def __init__(self, processor: DamoProcessor):
        self.processor = processor

    @classmethod
    def for_model(cls, model) -> "Collator | VLMCollator":
        """The collator of the model's processor (:func:`~damo.pipeline.processor_of`): this one for a DaMO
        model, :class:`VLMCollator` for a whole VLM."""
        return cls.for_processor(processor_of(model))

    @staticmethod
    def for_processor(processor: DamoProcessor | VLMProcessor) -> "Collator | VLMCollator":
        """The collator of a processor: this one for DaMO's, :class:`VLMCollator` for a whole VLM's."""
        return COLLATORS[type(processor)](processor)

    def check(self, sample: Sample, times: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``sample`` alone, at frame times ``times``, needs more than ``max_len`` tokens."""
        proc = self.processor
        proc.encode_turns(turns_of(sample), times, float(sample.duration), proc.layout(len(times)),
                          f"sample {sample.id}")

    def __call__(self, items: list[tuple[Sample, ClipTensors | None]], rng: random.Random | None = None) -> Batch:
        """``items`` pair samples with their clips; a clip of ``None`` makes a text-only batch (no
        video tokens, no evidence targets: a language warm-up for a from-scratch LLM)."""
        proc = self.processor
        batch = stack_clips([c for _, c in items])
        lay = proc.layout(batch.frames.shape[1])           # frames per LLM frame token and tokens each, for the whole batch
        encs = [proc.encode_turns(turns_of(s), None if c is None else c.times, float(s.duration), lay, f"sample {s.id}")
                for s, c in items]
        return self._pad(items, encs, batch, lay, rng)

    def completions(self, items: list[tuple[Sample, ClipTensors]], completions: list[list[int]],
                    evidence: list[list[dict]]) -> Batch:
        """A batch of sampled responses: each sample's prompt followed by its generated token ids,
        trained on the generated tokens; each generated ``<evi>`` targets the frames it grounded when
        sampled (``evidence``, as :meth:`DamoModel.generate` returns it at a temperature)."""
        proc = self.processor
        batch = stack_clips([c for _, c in items])
        lay = proc.layout(batch.frames.shape[1])
        encs = [proc.encode_completion(s.query, c.times, lay, ids, [e["run"] for e in ev])
                for (s, c), ids, ev in zip(items, completions, evidence)]
        return self._pad(items, encs, batch, lay)

    def _pad(self, items: list[tuple[Sample, ClipTensors | None]], encs: list[Encoded], batch: Batch,
             lay: VideoLayout, rng: random.Random | None = None) -> Batch:
        proc, cfg = self.processor, self.processor.config
        T, g = batch.frames.shape[1], lay.group
        Tl = -(-T // g)
        frame_pos, evi_mask = frame_positions([e.frame_pos for e in encs], Tl, lay.per_frame, [0] * len(encs))
        evi_b, evi_p, evi_y, pairs, coord_pos, coord_ids, coord_w = [], [], [], [], [], [], []
        for b, e in enumerate(encs):
            base = len(evi_b)
            evi_b += [b] * len(e.evi_pos)
            evi_p += e.evi_pos
            evi_y += [np.pad(y, (0, Tl - len(y))) for y in e.evi_targets]
            pairs += [(base + i, base + j) for i, j in e.cons_pairs]
            coord_pos += [(b, p) for p in e.coord_pos]
            coord_ids += e.coord_ids
            coord_w += e.coord_w
        pad = proc.tokenizer.pad_token_id
        # one (span, caption) per sample for contrastive alignment, plus a hard negative
        r = rng or random
        align = [proc.alignment_pair(s.spans, s.captions, s.query, s.duration, r) for s, _ in items]
        texts = [proc.encode(cap) or [pad] for _, cap, _ in align]
        queries = [proc.encode(turns_of(s)[0]["query"]) or [pad] for s, _ in items]
        span_mask = torch.zeros(len(items), T, dtype=torch.bool)
        neg_mask = torch.zeros(len(items), T, dtype=torch.bool)      # all-False rows: no hard negative
        for b, ((s, _), (sp, _, neg)) in enumerate(zip(items, align)):
            n = int(batch.frame_mask[b].sum())
            fps = proc.sampling(float(s.duration))[0]              # this clip's frames per second
            span_mask[b, :n] = torch.from_numpy(frame_targets([sp], n, fps, cfg.frame_times) > 0)
            if neg is not None:
                neg_mask[b, :n] = torch.from_numpy(frame_targets([neg], n, fps, cfg.frame_times) > 0)
        return replace(
            batch, group=g, num_frames=[int(x) for x in evi_mask.sum(1)],
            input_ids=pad_rows([e.ids for e in encs], pad),
            attention_mask=pad_rows([[1] * len(e.ids) for e in encs], 0),
            labels=pad_rows([e.labels for e in encs], -100), frame_pos=frame_pos,
            evi_batch=torch.tensor(evi_b, dtype=torch.long), evi_pos=torch.tensor(evi_p, dtype=torch.long),
            evi_targets=torch.from_numpy(np.stack(evi_y)).float() if evi_y else torch.zeros(0, Tl),
            evi_mask=evi_mask, cons_pairs=torch.tensor(pairs, dtype=torch.long).view(-1, 2),
            align_span_mask=span_mask, align_neg_mask=neg_mask, align_text_ids=pad_rows(texts, pad),
            align_text_mask=pad_rows([[True] * len(t) for t in texts], False),
            query_ids=pad_rows(queries, pad), query_mask=pad_rows([[True] * len(q) for q in queries], False),
            duration=torch.tensor([float(s.duration) for s, _ in items]),
            coord_pos=torch.tensor(coord_pos, dtype=torch.long).view(-1, 2),
            coord_ids=torch.tensor(coord_ids, dtype=torch.long).view(-1, 2),
            coord_w=torch.tensor(coord_w, dtype=torch.float32).view(-1, 2))


class VLMCollator:
    """``[(sample, clip)]`` -> a whole VLM's training batch (:class:`~damo.model.vlm.VLMBatch`): each
    sample's question in the preset's prompt, its spans as the answer the preset writes, and those
    spans as each temporal patch's evidence target; sampled completions for GRPO the same way."""

    def __init__(self, processor: VLMProcessor):
        self.processor = processor

    def __call__(self, items: list[tuple[Sample, VLMClip]], rng: random.Random | None = None) -> VLMBatch:
        proc = self.processor
        return proc.training_batch([c for _, c in items], [s.query for s, _ in items],
                                   [proc.reply_ids(s.spans) for s, _ in items], [s.spans for s, _ in items])

    def completions(self, items: list[tuple[Sample, VLMClip]], completions: list[list[int]],
                    evidence: list[list[dict]]) -> VLMBatch:
        """A batch of sampled answers (token ids, the end of the turn included), trained on those tokens."""
        return self.processor.training_batch([c for _, c in items], [s.query for s, _ in items], completions,
                                             [s.spans for s, _ in items])

    def check(self, sample: Sample, times: torch.Tensor) -> None:
        """Raise ``ValueError`` for a sample the preset cannot answer: a dialogue, no span, an oversized question."""
        if sample.task == "dialogue":
            raise ValueError(f"sample {sample.id}: a whole VLM trains on single questions, not dialogues")
        self.processor.reply_ids(sample.spans)
        self.processor.query_ids(sample.query)


COLLATORS: dict[type, type] = {DamoProcessor: Collator, VLMProcessor: VLMCollator}
