"""Training objectives as pure functions of model outputs and batch targets.

Each takes ``(out, batch)`` and returns a scalar tensor; a stage weighs them by name
(:data:`LOSSES`). A new objective is a new function plus a recipe entry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lm(out: dict, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy on response tokens (labels -100 elsewhere): L_sft of D²VLM eq. 2."""
    logits = out["logits"][:, :-1]
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


def grounding_bce(out: dict, batch: dict) -> torch.Tensor:
    """D²VLM eq. 3: mean over frames of BCE(y_t, sim_t) for every ``<evi>``, averaged over ``<evi>`` tokens.

    Padded frames (beyond a sample's length) are excluded.
    """
    if "evi_logits" not in out:
        return out["logits"].sum() * 0.0
    valid = batch["frame_mask"][batch["evi_batch"]].float()                 # (N, T)
    bce = F.binary_cross_entropy_with_logits(out["evi_logits"], batch["evi_targets"], reduction="none")
    return ((bce * valid).sum(1) / valid.sum(1)).mean()


def consistency(out: dict, batch: dict) -> torch.Tensor:
    """D²VLM eq. 1: mean |F_evi^S1_k - F_evi^S2_k| between the grounding-stage and answer-stage ``<evi>`` features."""
    p = batch["cons_pairs"]
    if "evi_features" not in out or len(p) == 0:
        return out["logits"].sum() * 0.0
    f = out["evi_features"]
    return (f[p[:, 0]] - f[p[:, 1]]).abs().mean()


def contrastive(out: dict, batch: dict, model) -> torch.Tensor:
    """Symmetric InfoNCE between moment embeddings and their caption embeddings (DaMO stage 1, CLIP/BLIP-2 style)."""
    v, t = model.align_embeddings(out["frame_features"], batch["align_span_mask"], batch["align_text_ids"],
                                  batch["align_text_mask"])
    logits = model.logit_scale.exp().clamp(max=100) * v @ t.T               # (B, B)
    target = torch.arange(len(v))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


LOSSES = {"lm": lm, "grounding_bce": grounding_bce, "consistency": consistency, "contrastive": contrastive}
NEEDS_MODEL = {"contrastive"}
NEEDS_LLM = {"lm", "grounding_bce", "consistency"}
