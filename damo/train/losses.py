"""Training objectives with one contract.

Every loss is a function ``(x: LossInputs) -> scalar`` registered in :data:`LOSSES` with what it
needs (:class:`Loss`): whether it reads the LLM's outputs (``llm``; without, the model runs only
up to the fuser's frame features), which batches it trains on (``samples``, preference ``pairs``
or policy ``rollouts``), and, through its stage settings, whether it compares with a frozen
reference model. The loop builds one :class:`LossInputs` per micro-batch and calls every loss of
the stage the same way; a new objective is a new function plus one registry line.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from damo.model.batch import Batch
from damo.config import FPOSettings, Stage
from damo.train.fpo import chosen_view, fpo_result
from damo.train.grpo import GRPOSettings, grpo_objective

BATCHES = ("samples", "pairs", "rollouts")


@dataclass
class LossInputs:
    """What a loss may read: the model's outputs on the batch, the batch, the model (for heads used
    outside ``forward``), a frozen reference model's outputs on the same batch (losses whose
    settings ask for one) and the loss's own stage settings. ``log`` collects extra numbers a
    loss reports (floats, per micro-batch)."""
    out: dict
    batch: Batch
    model: nn.Module | None = None
    ref_out: dict | None = None
    settings: Any = None
    log: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Loss:
    """A registered objective and what it needs. ``settings``: the class of its stage settings,
    read from the stage key of the loss's name (``fpo:``, ``grpo:``); a settings object with
    ``reference`` true makes the loop keep a frozen copy of the model from the stage start."""
    fn: Callable[[LossInputs], torch.Tensor]
    llm: bool = True
    batches: str = "samples"
    settings: type | None = None


def lm(x: LossInputs) -> torch.Tensor:
    """Next-token cross-entropy on response tokens (labels -100 elsewhere): L_sft of D²VLM eq. 2.

    LAPE coordinate tokens (``batch.coord_pos``) are trained on soft two-anchor targets
    instead of the one-hot closest anchor (LLaVA-ST section 3.2): ``-(w_lo log p_lo + w_hi log p_hi)``
    with the anchors and weights of ``batch.coord_ids`` and ``batch.coord_w``; every token
    counts once in the mean.
    """
    batch = x.batch
    logits = x.out["logits"][:, :-1]
    labels = batch.labels[:, 1:]
    cp = batch.coord_pos
    if cp is None or not len(cp):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
    r, p = cp[:, 0], cp[:, 1] - 1                                          # logits at p predict token p + 1
    labels = labels.index_put((r, p), labels.new_full((), -100))
    hard = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")
    logp = logits[r, p].float().log_softmax(-1).gather(1, batch.coord_ids)   # (N, 2)
    soft = -(batch.coord_w * logp).sum()
    return (hard + soft) / ((labels != -100).sum() + len(cp))


def grounding_bce(x: LossInputs) -> torch.Tensor:
    """D²VLM eq. 3: mean over frames of BCE(y_t, sim_t) for every ``<evi>``, averaged over ``<evi>`` tokens.

    Padded frames (beyond a sample's length) are excluded.
    """
    out, batch = x.out, x.batch
    if "evi_logits" not in out:
        return out["logits"].sum() * 0.0
    valid = batch.evi_mask[batch.evi_batch].float()                   # (N, T') valid frame tokens
    bce = F.binary_cross_entropy_with_logits(out["evi_logits"], batch.evi_targets, reduction="none")
    return ((bce * valid).sum(1) / valid.sum(1)).mean()


def consistency(x: LossInputs) -> torch.Tensor:
    """D²VLM eq. 1: mean |F_evi^S1_k - F_evi^S2_k| between the grounding-stage and answer-stage ``<evi>`` features."""
    out, p = x.out, x.batch.cons_pairs
    if "evi_features" not in out or len(p) == 0:
        return out["logits"].sum() * 0.0
    f = out["evi_features"]
    return (f[p[:, 0]] - f[p[:, 1]]).abs().mean()


def contrastive(x: LossInputs) -> torch.Tensor:
    """Symmetric InfoNCE between moment embeddings and their caption embeddings (DaMO stage 1, CLIP/BLIP-2 style).

    Each caption is also contrasted with a hard negative moment from its own video (another
    event), so the encoders must tell apart what distinguishes events within a clip. A caption whose
    video has no other event gets ``-inf`` for it (no weight in the softmax), computed for every batch
    rather than only those holding a negative, so the host never reads whether one does.
    """
    out, batch, model = x.out, x.batch, x.model
    v, t = model.align_embeddings(out["frame_features"], batch.align_span_mask, batch.align_text_ids,
                                  batch.align_text_mask)
    scale = model.alignment.logit_scale.exp().clamp(max=100)
    logits = scale * v @ t.T                                                  # (B videos, B texts)
    target = torch.arange(len(v), device=v.device)
    has_neg = batch.align_neg_mask.any(1)
    vn = model.align_embeddings(out["frame_features"], batch.align_neg_mask, batch.align_text_ids,
                                batch.align_text_mask)[0]                  # (B, d)
    hard = scale * (vn * t).sum(-1, keepdim=True)                             # (B, 1): text i vs its own negative
    t2v = torch.cat([logits.T, hard.masked_fill(~has_neg[:, None], float("-inf"))], 1)   # (B texts, B videos + 1)
    return (F.cross_entropy(logits, target) + F.cross_entropy(t2v, target)) / 2


def fpo(x: LossInputs) -> torch.Tensor:
    """Factorized Preference Optimization (D²VLM §4, eqs. 4-7) with a stage's ``fpo:`` settings
    (:class:`damo.config.FPOSettings`: beta, reference-free or DPO, event or sequence focus).

    The batch holds preference pairs (chosen rows first, see :func:`damo.train.fpo.pair_batch`).
    """
    st = x.settings or FPOSettings()
    if st.reference != (x.ref_out is not None):
        raise ValueError(f"fpo mode {st.mode!r} {'needs' if st.reference else 'takes no'} reference model output")
    return fpo_result(x.out, x.batch, st.beta, x.ref_out, st.focus).loss


def grpo(x: LossInputs) -> torch.Tensor:
    """Group Relative Policy Optimization on a rollout batch (:mod:`damo.train.grpo`) with a stage's
    ``grpo:`` settings; reports KL and clip fractions in ``x.log``."""
    return grpo_objective(x.out, x.batch, x.settings or GRPOSettings(), x.ref_out, x.log)


def _on_chosen(fn: Callable[[LossInputs], torch.Tensor]) -> Callable[[LossInputs], torch.Tensor]:
    """A supervised loss applied to the chosen rows of a preference batch only (as D²VLM's FPO stage
    keeps its SFT, grounding and consistency terms on the preferred responses)."""
    def loss(x: LossInputs) -> torch.Tensor:
        out, batch = chosen_view(x.out, x.batch)
        return fn(replace(x, out=out, batch=batch))
    loss.__doc__ = f"{fn.__name__} on the chosen rows of a preference batch."
    return loss


LOSSES: dict[str, Loss] = {
    "lm": Loss(lm), "grounding_bce": Loss(grounding_bce), "consistency": Loss(consistency),
    "contrastive": Loss(contrastive, llm=False),
    "fpo": Loss(fpo, batches="pairs", settings=FPOSettings),
    "lm_chosen": Loss(_on_chosen(lm), batches="pairs"),
    "grounding_bce_chosen": Loss(_on_chosen(grounding_bce), batches="pairs"),
    "consistency_chosen": Loss(_on_chosen(consistency), batches="pairs"),
    "grpo": Loss(grpo, batches="rollouts", settings=GRPOSettings),
}


def stage_losses(name: str, losses: dict[str, float]) -> tuple[str, bool]:
    """A stage's batch kind (``samples``, ``pairs`` or ``rollouts``) and whether it needs the LLM,
    after checking its losses exist and share one kind of batch."""
    unknown = set(losses) - set(LOSSES)
    if unknown:
        raise ValueError(f"stage {name!r}: unknown losses {sorted(unknown)}; valid: {sorted(LOSSES)}")
    kinds = {n: LOSSES[n].batches for n in losses}
    if len(set(kinds.values())) > 1:
        by = {k: sorted(n for n, v in kinds.items() if v == k) for k in BATCHES if k in kinds.values()}
        raise ValueError(f"stage {name!r} mixes losses that train on different batches {by}; a stage trains on one "
                         f"kind (on preference pairs use only {sorted(n for n, s in LOSSES.items() if s.batches == 'pairs')}"
                         f", plain losses would train the rejected responses)")
    return next(iter(kinds.values()), "samples"), any(LOSSES[n].llm for n in losses)


def stage_settings(stage: Stage) -> dict[str, Any]:
    """Each loss's parsed settings from its stage key (``None`` for losses without settings); a bad
    setting is an error naming the stage."""
    try:
        return {n: LOSSES[n].settings.from_dict(getattr(stage, n)) if LOSSES[n].settings else None
                for n in stage.losses}
    except ValueError as e:
        raise ValueError(f"stage {stage.name!r}: {e}") from None
