"""Training objectives as pure functions of model outputs and batch targets.

Each takes ``(out, batch)`` and returns a scalar tensor; a stage weighs them by name
(:data:`LOSSES`). A new objective is a new function plus a recipe entry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from damo.model.batch import Batch
from damo.train.fpo import chosen_view
from damo.train.fpo import fpo as fpo_loss_of_batch


def lm(out: dict, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy on response tokens (labels -100 elsewhere): L_sft of D²VLM eq. 2.

    LAPE coordinate tokens (``batch.coord_pos``) are trained on soft two-anchor targets
    instead of the one-hot closest anchor (LLaVA-ST section 3.2): ``-(w_lo log p_lo + w_hi log p_hi)``
    with the anchors and weights of ``batch.coord_ids`` and ``batch.coord_w``; every token
    counts once in the mean.
    """
    logits = out["logits"][:, :-1]
    labels = batch.labels[:, 1:]
    cp = batch.coord_pos
    if cp is None or not len(cp):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
    r, p = cp[:, 0], cp[:, 1] - 1                                          # logits at p predict token p + 1
    labels = labels.index_put((r, p), torch.tensor(-100))
    hard = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")
    logp = logits[r, p].float().log_softmax(-1).gather(1, batch.coord_ids)   # (N, 2)
    soft = -(batch.coord_w * logp).sum()
    return (hard + soft) / ((labels != -100).sum() + len(cp))


def grounding_bce(out: dict, batch: Batch) -> torch.Tensor:
    """D²VLM eq. 3: mean over frames of BCE(y_t, sim_t) for every ``<evi>``, averaged over ``<evi>`` tokens.

    Padded frames (beyond a sample's length) are excluded.
    """
    if "evi_logits" not in out:
        return out["logits"].sum() * 0.0
    valid = batch.evi_mask[batch.evi_batch].float()                   # (N, T') valid frame tokens
    bce = F.binary_cross_entropy_with_logits(out["evi_logits"], batch.evi_targets, reduction="none")
    return ((bce * valid).sum(1) / valid.sum(1)).mean()


def consistency(out: dict, batch: Batch) -> torch.Tensor:
    """D²VLM eq. 1: mean |F_evi^S1_k - F_evi^S2_k| between the grounding-stage and answer-stage ``<evi>`` features."""
    p = batch.cons_pairs
    if "evi_features" not in out or len(p) == 0:
        return out["logits"].sum() * 0.0
    f = out["evi_features"]
    return (f[p[:, 0]] - f[p[:, 1]]).abs().mean()


def contrastive(out: dict, batch: Batch, model) -> torch.Tensor:
    """Symmetric InfoNCE between moment embeddings and their caption embeddings (DaMO stage 1, CLIP/BLIP-2 style).

    Each caption is also contrasted with a hard negative moment from its own video (another
    event), so the encoders must tell apart what distinguishes events within a clip.
    """
    v, t = model.align_embeddings(out["frame_features"], batch.align_span_mask, batch.align_text_ids,
                                  batch.align_text_mask)
    scale = model.alignment.logit_scale.exp().clamp(max=100)
    logits = scale * v @ t.T                                                  # (B videos, B texts)
    target = torch.arange(len(v), device=v.device)
    has_neg = batch.align_neg_mask.any(1)
    t2v = logits.T                                                            # (B texts, B videos)
    if has_neg.any():
        vn = model.align_embeddings(out["frame_features"], batch.align_neg_mask, batch.align_text_ids,
                                    batch.align_text_mask)[0]              # (B, d)
        hard = scale * (vn * t).sum(-1, keepdim=True)                         # (B, 1): text i vs its own negative
        t2v = torch.cat([t2v, hard.masked_fill(~has_neg[:, None], float("-inf"))], 1)  # (B, B+1)
    return (F.cross_entropy(logits, target) + F.cross_entropy(t2v, target)) / 2


def fpo(out: dict, batch: Batch, settings=None, ref_out: dict | None = None) -> torch.Tensor:
    """Factorized Preference Optimization (D²VLM §4, eqs. 4-7) with a stage's ``fpo:`` settings
    (:class:`damo.train.fpo.FPOSettings`: beta, reference-free or DPO, event or sequence focus).

    The batch holds preference pairs (chosen rows first, see :func:`damo.train.fpo.pair_batch`).
    """
    return fpo_loss_of_batch(out, batch, settings, ref_out)


def _on_chosen(fn):
    """A supervised loss applied to the chosen rows of a preference batch only (as D²VLM's FPO stage
    keeps its SFT, grounding and consistency terms on the preferred responses)."""
    def loss(out: dict, batch: Batch) -> torch.Tensor:
        return fn(*chosen_view(out, batch))
    loss.__doc__ = f"{fn.__name__} on the chosen rows of a preference batch."
    return loss


LOSSES = {"lm": lm, "grounding_bce": grounding_bce, "consistency": consistency, "contrastive": contrastive,
          "fpo": fpo, "lm_chosen": _on_chosen(lm), "grounding_bce_chosen": _on_chosen(grounding_bce),
          "consistency_chosen": _on_chosen(consistency)}
NEEDS_MODEL = {"contrastive"}
NEEDS_LLM = {"lm", "grounding_bce", "consistency", "fpo", "lm_chosen", "grounding_bce_chosen", "consistency_chosen"}
PREFERENCE = {"fpo", "lm_chosen", "grounding_bce_chosen", "consistency_chosen"}   # need preference-pair batches
