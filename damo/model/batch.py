"""``Batch``: what :class:`~damo.model.modeling_damo.DamoModel` reads, one typed field per input.

B clips padded to T frames; T' frame tokens after grouping (``group`` frames each); L prompt (and
response) tokens; N ``<evi>`` tokens over the whole batch; M LAPE coordinate tokens in the responses.
The processor's ``generation_batch`` fills the clip and prompt fields; the training
:class:`~damo.data.collate.Collator` fills the targets too; FPO adds its focus masks, GRPO its
advantages. Each field
says along which axis it is indexed (``per``: ``row``, ``evi``, ``coord`` or ``pair``, none for
settings of the whole batch), so taking some rows (:meth:`Batch.rows`) keeps every field consistent.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

Tensor = torch.Tensor


def _per(axis: str | None, default=None):
    return field(default=default, metadata={"per": axis})


@dataclass
class Batch:
    # ---- the clips (damo.model.processing.stack_clips)
    frames: Tensor = _per("row")             # (B, T, 3, H, W) uint8: 4x less than floats through workers and
    #                                          shared memory; the model scales them to [0, 1] on its device
    mel: Tensor = _per("row")                # (B, T, F, M) audio features per frame window
    times: Tensor = _per("row")              # (B, T) window centres, seconds
    frame_mask: Tensor = _per("row")         # (B, T) bool: real frames
    frame_counts: list[int] | None = _per("row")   # real frames per row (each row's frame_mask is a prefix)
    vision_features: Tensor | None = _per("row")   # (B, T, 1+P, Dv) stored frozen-tower outputs (damo.data.features)
    audio_features: Tensor | None = _per("row")    # (B, T, 1+A, Da)
    duration: Tensor | None = _per("row")    # (B,) seconds
    # ---- the prompts (generation: left-padded; training: right-padded with the responses)
    group: int = _per(None, 1)               # frames per frame token (the processor's layout)
    num_frames: list[int] | None = _per("row")     # frame tokens per row (T'_b <= T')
    input_ids: Tensor | None = _per("row")   # (B, L)
    attention_mask: Tensor | None = _per("row")    # (B, L); damo.plan may pass a 4-D mask
    frame_pos: Tensor | None = _per("row")   # (B, T', K) positions of each frame token's K placeholders
    evi_mask: Tensor | None = _per("row")    # (B, T') valid frame tokens
    query_ids: Tensor | None = _per("row")   # (B, Lq) the question alone (query-aware tokens)
    query_mask: Tensor | None = _per("row")  # (B, Lq)
    # ---- training targets (damo.data.collate.Collator)
    labels: Tensor | None = _per("row")      # (B, L) next-token targets, -100 where not trained
    evi_batch: Tensor | None = _per("evi")   # (N,) row of each <evi>, ordered by row
    evi_pos: Tensor | None = _per("evi")     # (N,) its position in the row
    evi_targets: Tensor | None = _per("evi") # (N, T') frame targets (soft or hard)
    cons_pairs: Tensor | None = _per("pair") # (P, 2) <evi> indices grounding the same span (consistency loss)
    align_span_mask: Tensor | None = _per("row")   # (B, T) the caption's span (contrastive alignment)
    align_neg_mask: Tensor | None = _per("row")    # (B, T) a hard negative span, all False if none
    align_text_ids: Tensor | None = _per("row")    # (B, Lt) the caption
    align_text_mask: Tensor | None = _per("row")   # (B, Lt)
    coord_pos: Tensor | None = _per("coord") # (M, 2) [row, position] of each LAPE coordinate token
    coord_ids: Tensor | None = _per("coord") # (M, 2) its two neighbouring anchors
    coord_w: Tensor | None = _per("coord")   # (M, 2) their soft-target weights
    # ---- FPO with focus: event (damo.train.fpo.focus_masks)
    fpo_tokens: Tensor | None = _per("row")  # (B, L) bool: tokens scored
    fpo_evi: Tensor | None = _per("evi")     # (N,) <evi> scored
    # ---- GRPO rollouts (damo.train.grpo.Rollouts)
    advantages: Tensor | None = _per("row")  # (B,) each completion's group-relative advantage
    old_logp: Tensor | None = _per("row")    # (B, L - 1) token log-probs under the sampling policy
    evi_actions: Tensor | None = _per("evi") # (N, T') the frames each sampled <evi> drew (0/1)
    rollout_tokens: float | None = _per(None)  # completion tokens of the step's rollouts per micro-batch (dapo)

    @property
    def text_only(self) -> bool:
        """No frames: a language warm-up batch."""
        return self.frames.shape[1] == 0

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return replace(self, **{f.name: v.to(device, non_blocking=non_blocking) for f in fields(self)
                                if isinstance(v := getattr(self, f.name), Tensor)})

    def pin_memory(self) -> "Batch":
        """Page-locked copies of the tensors (the DataLoader's ``pin_memory`` calls it)."""
        return replace(self, **{f.name: v.pin_memory() for f in fields(self)
                                if isinstance(v := getattr(self, f.name), Tensor)})

    def rows(self, n: int) -> "Batch":
        """The first ``n`` rows, with their ``<evi>`` tokens, consistency pairs and coordinate tokens
        (``<evi>`` and coordinate tokens are ordered by row, as the collator emits them)."""
        keep_evi = None if self.evi_batch is None else int((self.evi_batch < n).sum())
        if keep_evi is not None and bool((self.evi_batch[:keep_evi] >= n).any()):
            raise ValueError("evi_batch must be ordered by row (as the Collator emits it)")
        out = {}
        for f in fields(self):
            v, per = getattr(self, f.name), f.metadata["per"]
            if v is None or per is None:
                continue
            if per == "row":
                out[f.name] = v[:n]
            elif per == "evi":
                out[f.name] = v[:keep_evi]
            elif per == "pair":
                out[f.name] = v[(v < keep_evi).all(1)]
            else:                                   # per coordinate token: rows in order
                out[f.name] = v[self.coord_pos[:, 0] < n]
        return replace(self, **out)
