"""Factorized Preference Optimization (D²VLM section 4, eqs. 4-7) as pure functions.

FPO is DPO whose response log-probability has two parts (eq. 7): the usual sum of
text-token log-probabilities (eq. 5) and, for every ``<evi>`` token, the log-probability
that its frame scores select exactly the referenced interval (eq. 6, a product of
independent Bernoullis: ``s_t`` inside the interval, ``1 - s_t`` outside). The second term
lets preference learning push on *where* the model grounds, not only on what it says.

Batch contract (one forward for both sides of every pair): the first ``P`` rows of the
batch are the chosen responses and the last ``P`` rows the rejected ones, built with
:func:`pair_batch` and the ordinary :class:`~damo.data.collate.Collator`. The rejected row
is teacher-forced with its own (wrong) evidence, so its ``<evi>`` targets are the rejected
intervals, exactly as eq. 7 scores a dispreferred response.

Focus (:class:`FPOSettings`): ``"sequence"`` scores whole responses (every text token and every
``<evi>``), as eq. 7 is written and as the official code does: ``fpo_anno_gen/build_fpo_anno.py``
(nusnlp/d2vlm 756d340) hands ``calculate_logps`` (d2vlm/model/d2vlm_fpo_arch.py) every chosen label
token and every ``<evi>`` on one side and every rejected one on the other (only its LLM-rewritten
``rvc`` pairs are scored on the rewritten text alone). ``focus="event"`` is ours: a pair is scored only
where it was perturbed, a textual perturbation on the perturbed event's text tokens, a temporal one on
the perturbed events' ``<evi>`` intervals (:func:`focus_masks`).

A training step of the FPO stage::

    items = pair_batch(rng.sample(pairs, P), clips)        # 2P rows, chosen first
    batch = collate(items, rng)
    batch = replace(batch, **focus_masks(batch, pairs, evi_id, level))
    out = model(batch)
    loss = fpo_result(out, batch, beta, focus=focus).loss    # + optional supervised terms:
    o, b = chosen_view(out, batch)                           # lm / grounding_bce / consistency
    loss = loss + losses.lm(LossInputs(o, b)) + ...          # on the chosen rows only
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from damo.config import FOCUS, FPOSettings
from damo.data.preference import chosen_sample, rejected_sample
from damo.data.schema import Sample
from damo.model.batch import Batch
from damo.model.checks import require
from damo.model.processing import ClipTensors, evi_span_index


def interval_logprob(evi_logits: torch.Tensor, targets: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """log p_g([s, e]) of eq. 6 for each ``<evi>``: ``(N, T)`` logits, targets, valid mask -> ``(N,)``.

    Frames inside the interval (target 1) contribute ``log s_t``, frames outside (target 0)
    ``log(1 - s_t)``, with ``s_t = sigmoid(logit_t)``; padded frames contribute nothing.
    Soft targets ``y`` in [0, 1] (e.g. the distance-decayed ones of the official code) give
    the mixture ``log(y s_t + (1 - y)(1 - s_t))``, which equals eq. 6 on hard targets.
    Everything stays in log space (``log(1 - sigmoid(x)) = logsigmoid(-x)``), so confident
    scores never underflow to ``log 0``.
    """
    if evi_logits.shape != targets.shape or evi_logits.shape != frame_mask.shape:
        raise ValueError(f"evi_logits {tuple(evi_logits.shape)}, targets {tuple(targets.shape)} and frame_mask "
                         f"{tuple(frame_mask.shape)} must all be (N, T)")
    x = evi_logits.float()
    y = targets.float()
    require(~((y < 0) | (y > 1)).any(), "interval targets must lie in [0, 1]")      # without a host sync
    per_frame = torch.logaddexp(y.log() + F.logsigmoid(x), (1 - y).log() + F.logsigmoid(-x))  # (N, T)
    return per_frame.masked_fill(~frame_mask.bool(), 0.0).sum(-1)            # (N,)


def token_logprob(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5: sum of next-token log-probs over response tokens, ``(B, L, V), (B, L) -> (B,)``.

    Position ``i`` predicts token ``i + 1`` (the shift of causal LM training); labels of -100
    (prompt, video placeholders, padding) are skipped, and with ``mask`` ``(B, L)`` every token
    whose mask is false.
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)                     # (B, L-1, V)
    y = labels[:, 1:]                                                        # (B, L-1)
    keep = y != -100
    if mask is not None:
        keep = keep & mask[:, 1:]
    picked = logp.gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)          # (B, L-1)
    return (picked * keep).sum(-1)                                           # (B,)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, evi_logits: torch.Tensor | None,
                     evi_targets: torch.Tensor, evi_batch: torch.Tensor, frame_mask: torch.Tensor,
                     token_mask: torch.Tensor | None = None, evi_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 7's log pi(R) per sample: text-token log-probs plus each of its ``<evi>`` interval log-probs.

    ``evi_logits``/``evi_targets`` are ``(N, T)`` over all ``<evi>`` tokens of the batch,
    ``evi_batch`` ``(N,)`` says which sample each belongs to, and ``frame_mask`` is the
    batch's per-sample ``(B, T)`` valid-frame mask. ``token_mask`` ``(B, L)`` and ``evi_weight``
    ``(N,)`` restrict the sum to some text tokens and ``<evi>`` tokens (the event focus).
    Returns ``(B,)``.
    """
    lp = token_logprob(logits, labels, token_mask)                           # (B,)
    if evi_logits is None or len(evi_batch) == 0:
        return lp
    g = interval_logprob(evi_logits, evi_targets, frame_mask[evi_batch])     # (N,)
    if evi_weight is not None:
        g = g * evi_weight
    return lp.index_add(0, evi_batch, g.to(lp.dtype))


@dataclass
class FPOResult:
    """The loss and what to log: per-pair implicit rewards and how often chosen wins."""
    loss: torch.Tensor             # scalar
    chosen_reward: torch.Tensor    # (P,) beta * (log pi(R) - log pi_ref(R)), detached
    rejected_reward: torch.Tensor  # (P,)

    @property
    def margin(self) -> float:
        return float((self.chosen_reward - self.rejected_reward).mean())

    @property
    def accuracy(self) -> float:
        return float((self.chosen_reward > self.rejected_reward).float().mean())

    def stats(self) -> dict[str, float]:
        return {"fpo": float(self.loss.detach()), "fpo_margin": self.margin, "fpo_accuracy": self.accuracy,
                "fpo_chosen": float(self.chosen_reward.mean()), "fpo_rejected": float(self.rejected_reward.mean())}


def fpo_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, beta: float,
             ref_chosen: torch.Tensor | None = None, ref_rejected: torch.Tensor | None = None) -> FPOResult:
    """Eq. 4 with a temperature: mean of ``-log sigmoid(beta * ((lc - rc) - (lr - rr)))``.

    Without reference log-probs the reference terms are zero: the reference-free form of
    eq. 4 that the paper writes (and its official code trains with). With a frozen
    reference model's log-probs this is DPO (Rafailov et al. 2023, eq. 7).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if logp_chosen.shape != logp_rejected.shape or logp_chosen.dim() != 1:
        raise ValueError(f"chosen {tuple(logp_chosen.shape)} and rejected {tuple(logp_rejected.shape)} log-probs "
                         "must both be (P,)")
    if (ref_chosen is None) != (ref_rejected is None):
        raise ValueError("give both reference log-probs (DPO) or neither (reference-free FPO)")
    rc = ref_chosen.detach() if ref_chosen is not None else torch.zeros_like(logp_chosen)
    rr = ref_rejected.detach() if ref_rejected is not None else torch.zeros_like(logp_rejected)
    chosen = beta * (logp_chosen - rc)                                       # (P,)
    rejected = beta * (logp_rejected - rr)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return FPOResult(loss, chosen.detach(), rejected.detach())


def split_pairs(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(2P,)`` -> chosen ``(P,)``, rejected ``(P,)`` under the chosen-first batch contract."""
    if logp.dim() != 1 or len(logp) % 2:
        raise ValueError(f"a preference batch has an even number of rows (chosen, then rejected), "
                         f"got {tuple(logp.shape)}")
    P = len(logp) // 2
    return logp[:P], logp[P:]


def batch_logprob(out: dict, batch: Batch, focus: str = "sequence") -> torch.Tensor:
    """:func:`sequence_logprob` of every row of a collated batch from ``DamoModel.forward``: ``(B,)``;
    ``focus="event"`` scores only what :func:`focus_masks` marked (``fpo_tokens``, ``fpo_evi``)."""
    if focus not in FOCUS:
        raise ValueError(f"fpo focus must be one of {FOCUS}, got {focus!r}")
    event = focus == "event"
    if event and batch.fpo_tokens is None:
        raise ValueError("focus 'event' needs the batch's fpo_tokens / fpo_evi (focus_masks)")
    return sequence_logprob(out["logits"], batch.labels, out.get("evi_logits"), batch.evi_targets,
                            batch.evi_batch, batch.evi_mask, batch.fpo_tokens if event else None,
                            batch.fpo_evi if event else None)


def fpo_result(out: dict, batch: Batch, beta: float = 0.1, ref_out: dict | None = None,
               focus: str = "sequence") -> FPOResult:
    """FPO on a chosen-first preference batch; ``ref_out`` is a frozen reference model's output (DPO mode)."""
    lc, lr = split_pairs(batch_logprob(out, batch, focus))
    if ref_out is None:
        return fpo_loss(lc, lr, beta)
    with torch.no_grad():
        rc, rr = split_pairs(batch_logprob(ref_out, batch, focus))
    return fpo_loss(lc, lr, beta, rc, rr)


def _changed(own: list, other: list) -> set[int]:
    """Indices of ``own``'s spans that ``other`` does not have (the perturbed events of one side)."""
    theirs = {(float(a), float(b)) for a, b in other}
    return {k for k, (a, b) in enumerate(own) if (float(a), float(b)) not in theirs}


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def focus_masks(batch: Batch, pairs: Sequence[dict], evi_id: int, level: str = "event") -> dict[str, torch.Tensor]:
    """Where each row of a chosen-first preference batch is scored under ``focus: event``.

    Temporal pairs: the ``<evi>`` tokens (both stages) of the events one side has and the other
    does not (a shifted event on both sides; an added one on the rejected side, a deleted one on
    the chosen side; two merged events against their hull), no text. Textual pairs: the text
    from the first token where the two responses differ to the end of the last perturbed event's
    text (the next ``<evi>`` after the last differing token, or the response's end), no ``<evi>``.
    Tokens before the first difference have equal log-probs on both sides, so leaving them out
    changes nothing in the reference-free loss. Returns ``fpo_tokens`` ``(B, L)`` and ``fpo_evi`` ``(N,)``.
    """
    labels, eb = batch.labels, batch.evi_batch
    B = labels.shape[0]
    if B != 2 * len(pairs):
        raise ValueError(f"a preference batch of {len(pairs)} pairs has {2 * len(pairs)} rows, got {B}")
    tokens = torch.zeros_like(labels, dtype=torch.bool)
    evi = torch.zeros(len(eb))
    for i, p in enumerate(pairs):
        rows = (i, len(pairs) + i)
        sides = (p["sample"]["spans"], p["rejected"]["spans"])
        if p["factor"] == "temporal":
            for row, own, other in ((rows[0], sides[0], sides[1]), (rows[1], sides[1], sides[0])):
                moved = _changed(own, other)
                for k, e in enumerate((eb == row).nonzero().flatten().tolist()):
                    evi[e] = float(evi_span_index(k, len(own), level) in moved)
            continue
        pos = [(labels[r] != -100).nonzero().flatten() for r in rows]
        seqs = [labels[r, q].tolist() for r, q in zip(rows, pos)]
        start = _common_prefix(*seqs)
        tail = _common_prefix(seqs[0][start:][::-1], seqs[1][start:][::-1])
        for r, q, seq in zip(rows, pos, seqs):
            last = len(seq) - tail                                       # first token after the difference
            end = next((j for j in range(last, len(seq)) if seq[j] == evi_id), len(seq))
            tokens[r, q[start:end]] = True
    return {"fpo_tokens": tokens, "fpo_evi": evi}


def chosen_view(out: dict, batch: Batch) -> tuple[dict, Batch]:
    """The chosen rows of a chosen-first preference batch and of the model output.

    Lets the FPO stage add the supervised objectives of :mod:`damo.train.losses` (``lm``,
    ``grounding_bce``, ``consistency``) on the preferred responses only, as the official
    D²VLM FPO training adds its SFT, grounding and consistency losses to the preference term.
    ``<evi>`` rows are ordered by sample (the collator emits them row by row), so the chosen
    ones are a prefix.
    """
    B = batch.input_ids.shape[0]
    if B % 2:
        raise ValueError(f"a preference batch has an even number of rows (chosen, then rejected), got {B}")
    b = batch.rows(B // 2)
    nc = len(b.evi_batch)
    o = {k: (v[:nc] if k in ("evi_logits", "evi_features") else v[:B // 2]) for k, v in out.items()}
    return o, b


def pair_samples(pairs: Sequence[dict]) -> list[Sample]:
    """The chosen samples of all pairs, then their rejected twins (same video, query, id + ``#rejected``)."""
    return [chosen_sample(p) for p in pairs] + [rejected_sample(p) for p in pairs]


def pair_batch(pairs: Sequence[dict], clip_of: Callable[[str], ClipTensors]) -> list[tuple[Sample, ClipTensors]]:
    """Collator items for one FPO step: chosen rows first, rejected rows second, each with its clip.

    ``clip_of`` maps a video reference to its clip (e.g. a :class:`~damo.data.dataset.ClipLoader`); each video is
    fetched once and shared by both rows, so ``collate(pair_batch(...))`` + one model
    forward yields both log-probs of every pair.
    """
    if not pairs:
        raise ValueError("pair_batch needs at least one preference pair")
    samples = pair_samples(pairs)
    clips: dict[str, ClipTensors] = {}
    for s in samples:
        if s.video not in clips:
            clips[s.video] = clip_of(s.video)
    return [(s, clips[s.video]) for s in samples]


__all__ = ["FPOSettings", "interval_logprob", "token_logprob", "sequence_logprob", "FPOResult", "fpo_loss",
           "split_pairs", "batch_logprob", "fpo_result", "focus_masks", "chosen_view", "pair_samples",
           "pair_batch"]
