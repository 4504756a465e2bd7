"""Group Relative Policy Optimization with verifiable temporal rewards.

GRPO (Shao et al. 2024, DeepSeekMath section 4.1) samples ``G`` responses per prompt from the
current policy, scores each with rewards computed from the response itself, and uses each
response's reward relative to its group as the advantage of every one of its tokens in PPO's
clipped surrogate (Schulman et al. 2017). Here the reward is checked against the sample's
ground-truth spans, as in the grounding models that end their training with it: Time-R1
(xiaomi-research/time-r1, ``main.py``: ``iou`` and ``iou_v2`` rewards, group size 8,
temperature 1.0), VideoChat-R1 (IoU plus a format reward, group size 8) and TimeLens (IoU only,
``scale_rewards`` off, no KL).

The objective follows TRL's ``GRPOTrainer._compute_loss`` (trl 1.16.0) term for term, and a test
checks it against TRL's own code on the same inputs for each aggregation offered here
(:data:`AGGREGATIONS`):

- ratio ``r = exp(logp - logp_old)`` per token, clipped to ``[1 - epsilon, 1 + epsilon_high]``;
  per-token loss ``-min(r A, clip(r) A)``, plus ``beta`` times the k3 estimate of
  KL(policy || reference), ``exp(ref - logp) - (ref - logp) - 1`` (Schulman 2020), when ``beta > 0``;
- ``grpo``: mean over each completion's tokens, then over completions (the paper's form);
  ``bnpo``: mean over all completion tokens of the micro-batch; ``dr_grpo``: sum over tokens
  divided by completions x ``max_new_tokens`` (Liu et al. 2025, Dr. GRPO); ``dapo``: sum over
  tokens divided by the tokens of the whole rollout batch of the step (Yu et al. 2025, DAPO).

Advantages (:func:`group_advantages`): reward minus its group's mean, divided by the group's
standard deviation (+1e-4) with ``scale_rewards: group``, or not divided with ``none``
(Dr. GRPO; TimeLens). A group whose rewards are all equal has advantage 0 everywhere and so
contributes no policy gradient; such groups are dropped from the update
(``drop_zero_variance``, DAPO's dynamic sampling without the refill) and counted. When every group of
a micro-batch is flat, its first group stays (its advantages are 0), so every process still runs a
forward and backward (DDP needs them all); that step's policy gradient is zero (the KL term, AdamW's
momentum and weight decay still act).

Old log-probs: with one policy update per rollout (``iterations: 1``) the sampling policy is the
current one, so ``logp_old`` is ``logp`` detached (ratio 1, as TRL does); with more, the rollout
batch keeps the log-probs of a no-grad forward at sampling time and is reused for
``iterations`` optimizer steps. Log-probs are taken at the sampling temperature (as TRL).

What the policy samples: the response tokens, through the model's batched, KV-cached
:meth:`~damo.model.modeling_damo.DamoModel.generate`. Spans written as text
(``response: coupled``, and the answer of ``decomposed``) and LAPE time tokens (a sampled
coordinate token means its anchor's time) are sampled tokens, so the reward is a function of the
sampled actions alone.

D²VLM's evidence tokens (``response: interleaved``) read their span off the evidence head's
frame scores, which greedy decoding thresholds; a policy must instead *draw* it. Each sampled
``<evi>`` draws every frame token independently with probability ``sigmoid(logit / temperature)``
and grounds the longest run of drawn frames (:func:`damo.model.evidence.sample_frames`). The
draw's log-probability is D²VLM's eq. 6 - the product of Bernoullis over frames that FPO already
uses as the likelihood of an interval (:func:`damo.train.fpo.interval_logprob`) - so the
``<evi>`` token and its frames form one action whose log-probability is the token's plus the
draw's (:func:`policy_logps`), and the clipped ratio and the KL apply to it like to any token.
This follows D²VLM's own factorisation of the response likelihood (section 4, eq. 7) rather than
any published RL recipe for evidence tokens, which we know of none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from damo.data.collate import Collator
from damo.data.dataset import sample_video
from damo.data.schema import Sample
from damo.spans import span_iou
from damo.model.batch import Batch
from damo.model.generation import Generation
from damo.model.processing import ClipTensors, DamoProcessor
from damo.model.vlm import VLMProcessor
from damo.train.fpo import interval_logprob

AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALES = ("group", "none")
F1_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)     # E.T. Bench's dense-captioning tIoU thresholds


# ----------------------------------------------------------------------------- rewards
def _best_gt(pred: Sequence[float], gt: Sequence[Sequence[float]]) -> tuple[float, Sequence[float]]:
    """IoU of one predicted span with the ground-truth span it overlaps most, and that span."""
    ious = span_iou([pred[:2]], [g[:2] for g in gt])[0]
    k = int(ious.argmax())
    return float(ious[k]), gt[k]


def iou_reward(pred: list[list[float]], gt: list[list[float]], duration: float) -> float:
    """Temporal IoU of the top predicted span with the ground truth (its best-overlapping span when
    there are several); 0 when the answer gives no span (Time-R1 ``iou``)."""
    return _best_gt(pred[0], gt)[0] if pred and gt else 0.0


def iou_v2_reward(pred: list[list[float]], gt: list[list[float]], duration: float) -> float:
    """Time-R1's ``iou_v2``: IoU x (1 - |s - s*| / D) x (1 - |e - e*| / D), so among spans of equal
    IoU the one whose ends are closer scores higher."""
    if not pred or not gt:
        return 0.0
    iou, g = _best_gt(pred[0], gt)
    return iou * (1 - abs(pred[0][0] - g[0]) / duration) * (1 - abs(pred[0][1] - g[1]) / duration)


def format_reward(pred: list[list[float]], gt: list[list[float]], duration: float) -> float:
    """1 when the answer parses into at least one span, else 0 (the format reward of Time-R1 and
    VideoChat-R1, whose think/answer tags our responses do not have)."""
    return float(bool(pred))


def span_f1_reward(pred: list[list[float]], gt: list[list[float]], duration: float) -> float:
    """For answers with several spans (dense captions, grounded QA): F1 of predicted against
    ground-truth spans matched one to one (greedily by IoU), averaged over tIoU 0.1/0.3/0.5/0.7
    (E.T. Bench's dense-captioning thresholds)."""
    if not pred or not gt:
        return 0.0
    iou = span_iou([p[:2] for p in pred], [g[:2] for g in gt])             # (P, G)
    pairs = sorted(((iou[i, j], i, j) for i in range(len(pred)) for j in range(len(gt))), reverse=True)
    used_p, used_g, matched = set(), set(), []
    for v, i, j in pairs:
        if i not in used_p and j not in used_g:
            used_p.add(i), used_g.add(j), matched.append(v)
    f1 = []
    for t in F1_THRESHOLDS:
        hits = sum(v >= t for v in matched)
        p, r = hits / len(pred), hits / len(gt)
        f1.append(2 * p * r / (p + r) if hits else 0.0)
    return sum(f1) / len(f1)


RewardFn = Callable[[list[list[float]], list[list[float]], float], float]
REWARDS: dict[str, RewardFn] = {"iou": iou_reward, "iou_v2": iou_v2_reward, "format": format_reward,
                                "span_f1": span_f1_reward}


# ----------------------------------------------------------------------------- settings
@dataclass
class GRPOSettings:
    """A ``grpo`` stage's ``grpo:`` settings (defaults: Time-R1's group of 8 at temperature 1.0,
    TRL's epsilon 0.2 and ``grpo`` aggregation, TimeLens' ``beta`` 0).

    ``rewards``: reward name -> weight (:data:`REWARDS`), summed before the group normalisation;
    ``iterations``: optimizer steps per rollout batch (TRL's ``num_iterations``);
    ``epsilon_high``: the upper clip (DAPO's clip-higher), ``None`` for ``epsilon``;
    ``difficulty``: ``[lo, hi]``, keep only the prompts whose greedy answer from the starting model has
    an IoU in that band (:func:`difficulty_band`); ``eval_every``, ``patience``: every ``eval_every``
    steps the mean reward of greedy answers on the validation data (its first ``val`` prompts, all by
    default), stopping after ``patience`` evaluations without a new best and keeping the best weights
    (:class:`RewardPlateau`)."""
    group: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    rewards: dict[str, float] = field(default_factory=lambda: {"iou": 1.0, "format": 1.0})
    scale_rewards: str = "group"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    iterations: int = 1
    beta: float = 0.0
    loss_type: str = "grpo"
    drop_zero_variance: bool = True
    difficulty: list[float] | None = None
    eval_every: int = 0
    patience: int | None = None
    val: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.rewards) - set(REWARDS)
        if unknown or not self.rewards:
            raise ValueError(f"grpo.rewards: unknown reward {sorted(unknown)}; known rewards: {sorted(REWARDS)}"
                             if unknown else f"grpo.rewards is empty; name some of {sorted(REWARDS)}")
        if self.scale_rewards not in SCALES:
            raise ValueError(f"grpo.scale_rewards must be one of {SCALES}, got {self.scale_rewards!r}")
        if self.loss_type not in AGGREGATIONS:
            raise ValueError(f"grpo.loss_type must be one of {AGGREGATIONS}, got {self.loss_type!r}")
        if self.group < 2:
            raise ValueError(f"grpo.group must be >= 2 (advantages compare completions of one prompt), got {self.group}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"grpo.temperature must be > 0 and grpo.top_p in (0, 1], got {self.temperature}, "
                             f"{self.top_p}")
        if self.iterations < 1 or self.max_new_tokens < 1 or self.beta < 0 or self.epsilon < 0:
            raise ValueError("grpo.iterations and grpo.max_new_tokens must be >= 1, grpo.beta and grpo.epsilon >= 0")
        band = self.difficulty
        if band is not None and not (isinstance(band, (list, tuple)) and len(band) == 2
                                     and all(isinstance(x, (int, float)) for x in band) and 0 <= band[0] <= band[1] <= 1):
            raise ValueError(f"grpo.difficulty must be [lo, hi] with 0 <= lo <= hi <= 1 (an IoU band), got {band!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ValueError(f"grpo.eval_every must be a whole number of steps >= 0 (0: no evaluation), "
                             f"got {self.eval_every!r}")
        if self.eval_every and not (isinstance(self.patience, int) and self.patience >= 1):
            raise ValueError(f"grpo.eval_every needs grpo.patience, the evaluations without a new best reward "
                             f"before the stage stops (>= 1), got {self.patience!r}")
        if not self.eval_every and (self.patience is not None or self.val is not None):
            raise ValueError("grpo.patience and grpo.val apply to validation evaluations: set grpo.eval_every too")
        if self.val is not None and not (isinstance(self.val, int) and self.val >= 1):
            raise ValueError(f"grpo.val must be a number of validation prompts >= 1, got {self.val!r}")

    @property
    def eps_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def reference(self) -> bool:
        """Whether the objective compares with a frozen reference model (a KL term)."""
        return self.beta > 0

    @classmethod
    def from_dict(cls, d: dict) -> "GRPOSettings":
        bad = set(d) - set(cls.__dataclass_fields__)
        if bad:
            raise ValueError(f"unknown grpo settings {sorted(bad)}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


# ----------------------------------------------------------------------------- the objective
def group_advantages(rewards: torch.Tensor, group: int, scale: str = "group") -> tuple[torch.Tensor, torch.Tensor]:
    """``(P * G,)`` rewards, ``G`` consecutive per prompt -> advantages ``(P * G,)`` and each group's
    standard deviation ``(P,)`` (Bessel-corrected, as TRL's): ``r - mean``, divided by ``std + 1e-4``
    with ``scale="group"``."""
    if scale not in SCALES:
        raise ValueError(f"scale_rewards must be one of {SCALES}, got {scale!r}")
    r = rewards.view(-1, group).float()                                     # (P, G)
    std = r.std(1)
    adv = r - r.mean(1, keepdim=True)
    if scale == "group":
        adv = adv / (std[:, None] + 1e-4)
    return adv.flatten(), std


@dataclass
class GRPOResult:
    """The loss and what to log (means over completion tokens)."""
    loss: torch.Tensor          # scalar
    kl: float                   # k3 KL estimate to the reference (0 without one)
    clip_low: float             # share of tokens whose ratio fell below 1 - epsilon with A < 0
    clip_high: float            # ... above 1 + epsilon_high with A > 0
    clip: float                 # either


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logp: torch.Tensor | None = None, beta: float = 0.0, epsilon: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "grpo", max_new_tokens: int | None = None,
              num_items: float | None = None) -> GRPOResult:
    """The clipped GRPO objective on per-token log-probs ``(B, L)`` of the policy, of the sampling
    policy (``old_logp``) and of the reference, advantages ``(B,)`` and the completion ``mask`` ``(B, L)``.

    ``max_new_tokens`` is the ``dr_grpo`` denominator's length; ``num_items`` the ``dapo``
    denominator (completion tokens of the step's rollout batch; default: this batch's)."""
    if loss_type not in AGGREGATIONS:
        raise ValueError(f"loss_type must be one of {AGGREGATIONS}, got {loss_type!r}")
    if beta > 0 and ref_logp is None:
        raise ValueError("a KL term (beta > 0) needs the reference model's log-probs")
    eh = epsilon if epsilon_high is None else epsilon_high
    m = mask.to(logp.dtype)
    a = advantages[:, None].to(logp.dtype)                                  # (B, 1)
    ratio = torch.exp(logp - old_logp.detach())                             # (B, L)
    clipped = ratio.clamp(1 - epsilon, 1 + eh)
    per_token = -torch.min(ratio * a, clipped * a)
    kl = None
    if beta > 0:
        d = ref_logp.detach() - logp
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * m).sum() / m.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        if max_new_tokens is None:
            raise ValueError("dr_grpo divides by max_new_tokens; give it")
        loss = (per_token * m).sum() / (per_token.shape[0] * max_new_tokens)
    else:
        loss = (per_token * m).sum() / max(1.0, float(m.sum() if num_items is None else num_items))
    n = m.sum().clamp(min=1)
    low = ((ratio < 1 - epsilon) & (a < 0)).to(m.dtype)
    high = ((ratio > 1 + eh) & (a > 0)).to(m.dtype)
    return GRPOResult(loss, float((kl.detach() * m).sum() / n) if kl is not None else 0.0, float((low * m).sum() / n),
                      float((high * m).sum() / n), float((torch.maximum(low, high) * m).sum() / n))


def token_logps(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of the labelled tokens, ``(B, L, V), (B, L) -> (B, L - 1)``: position ``i``
    predicts token ``i + 1``; unlabelled positions (-100) get 0."""
    logp = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    y = labels[:, 1:]
    return logp.gather(-1, y.clamp(min=0)[..., None]).squeeze(-1) * (y != -100)


def policy_logps(out: dict, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of a rollout's actions, ``(B, L - 1)`` aligned as :func:`token_logps`: each sampled
    token's, and at each ``<evi>`` also the log-probability of the frames it drew (``evi_actions``,
    D²VLM eq. 6 at the sampling temperature)."""
    logp = token_logps(out["logits"], batch.labels, temperature)
    if batch.evi_actions is None or not len(batch.evi_batch):
        return logp
    g = interval_logprob(out["evi_logits"] / temperature, batch.evi_actions, batch.evi_mask[batch.evi_batch])
    return logp.index_put((batch.evi_batch, batch.evi_pos - 1), g.to(logp.dtype), accumulate=True)


def grpo_objective(out: dict, batch: Batch, st: GRPOSettings, ref_out: dict | None, log: dict[str, float]) -> torch.Tensor:
    """:func:`grpo_loss` of a rollout batch (:meth:`Rollouts.batch`) from the model's outputs; writes
    ``kl``, ``clip``, ``clip_low`` and ``clip_high`` into ``log``."""
    logp = policy_logps(out, batch, st.temperature)                           # (B, L - 1)
    mask = batch.labels[:, 1:] != -100
    old = batch.old_logp if batch.old_logp is not None else logp.detach()
    ref = policy_logps(ref_out, batch, st.temperature) if ref_out is not None else None
    r = grpo_loss(logp, old, batch.advantages, mask, ref, st.beta, st.epsilon, st.epsilon_high, st.loss_type,
                  st.max_new_tokens, batch.rollout_tokens)
    log.update(kl=r.kl, clip=r.clip, clip_low=r.clip_low, clip_high=r.clip_high)
    return r.loss


# ----------------------------------------------------------------------------- rollouts
def rollout_reward(pred: list[list[float]], s: Sample, rewards: dict[str, float]) -> dict[str, float]:
    """Each named reward of one parsed answer (spans best first) against the sample's spans."""
    return {n: REWARDS[n](pred, [list(x) for x in s.spans], float(s.duration)) for n in rewards}


def greedy_rewards(model, proc: DamoProcessor | VLMProcessor, samples: list[Sample], clips, st: GRPOSettings,
                   batch: int = 16) -> list[dict[str, float]]:
    """Each named reward of the model's greedy answer (its own decoding settings, prompts and answers
    through ``proc``) to each sample, with ``iou`` always among them; ``clips`` maps a video reference to its clip."""
    was_training, out = model.training, []
    names = {"iou": 1.0} | st.rewards
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        cl = [clips(sample_video(s)) for s in chunk]
        rows = model.generate(proc.generation_batch(cl, [s.query for s in chunk]), st.max_new_tokens)
        out += [rollout_reward(proc.decode(r["ids"], r["evidence"], r["coords"], c.duration, c.times.tolist())["spans"],
                               s, names) for r, c, s in zip(rows, cl, chunk)]
    model.train(was_training)
    return out


def difficulty_band(model, proc: DamoProcessor | VLMProcessor, samples: list[Sample], clips, st: GRPOSettings
                    ) -> tuple[list[Sample], dict[str, float]]:
    """The prompts of a stage whose greedy answer from ``model`` (the starting, SFT model) has an IoU
    with the ground truth inside ``st.difficulty`` (inclusive), and how many were kept and dropped.

    Training on prompts of middling difficulty follows TimeLens (CVPR 2026), whose RL stage samples
    harder examples by difficulty, and Time-R1, which filters its samples by difficulty each epoch:
    a prompt the model always gets right or always wrong gives groups of equal rewards, hence no
    gradient."""
    lo, hi = st.difficulty
    ious = [r["iou"] for r in greedy_rewards(model, proc, samples, clips, st)]
    kept = [s for s, v in zip(samples, ious) if lo <= v <= hi]
    if not kept:
        raise ValueError(f"grpo.difficulty {[lo, hi]} keeps none of the stage's {len(samples)} prompts (the starting "
                         f"model's IoUs range {min(ious):.2f}..{max(ious):.2f}); widen the band")
    return kept, {"difficulty_kept": float(len(kept)), "difficulty_dropped": float(len(samples) - len(kept))}


class RewardPlateau:
    """Early stopping on a validation reward plateau, as TimeLens (CVPR 2026) stops its RL stage when
    the reward plateaus: every ``eval_every`` steps the mean total reward (weighted as the stage's
    ``rewards``) of greedy answers on the validation prompts; after ``patience`` evaluations without
    a strictly higher one the stage stops, and :meth:`restore` puts back the trainable weights of the
    best evaluation. :meth:`state` is what a step checkpoint keeps of it (the best reward, its step,
    the evaluations since and the best weights), so a resumed stage stops where an uninterrupted one
    does and keeps the same weights."""

    def __init__(self, model, proc: DamoProcessor | VLMProcessor, samples: list[Sample], clips, st: GRPOSettings):
        if not samples:
            raise ValueError("grpo.eval_every needs validation prompts of the stage's tasks: give the recipe a "
                             "data.val dataset with some")
        self.model, self.proc, self.clips, self.st = model, proc, clips, st
        self.samples = samples[:st.val] if st.val else samples
        self.best, self.best_step, self.since = -math.inf, 0, 0
        self.weights: dict[str, torch.Tensor] = {}

    def due(self, steps_done: int) -> bool:
        return steps_done % self.st.eval_every == 0

    def evaluate(self, steps_done: int) -> float:
        """The validation reward after ``steps_done`` steps; remembers the weights when it is the best."""
        scores = greedy_rewards(self.model, self.proc, self.samples, self.clips, self.st)
        reward = float(np.mean([sum(w * r[n] for n, w in self.st.rewards.items()) for r in scores]))
        if reward > self.best:
            self.best, self.best_step, self.since = reward, steps_done, 0
            self.weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        else:
            self.since += 1
        return reward

    @property
    def stop(self) -> bool:
        return self.since >= self.st.patience

    def state(self) -> dict:
        """The early stopping's state, for a step checkpoint (JSON values and the best trainable weights)."""
        return {"best": self.best, "best_step": self.best_step, "since": self.since, "weights": self.weights}

    def load_state(self, state: dict) -> None:
        """Resume from :meth:`state` as a checkpoint returned it."""
        self.best, self.best_step, self.since, self.weights = (state["best"], state["best_step"], state["since"],
                                                               state["weights"])

    def restore(self) -> dict[str, float]:
        """Loads the best evaluation's weights into the model; returns ``val_reward_best`` and ``best_step``
        (nothing when the stage ended before its first evaluation)."""
        if not self.weights:
            return {}
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in self.weights:
                    p.copy_(self.weights[n])
        return {"val_reward_best": self.best, "best_step": float(self.best_step)}


class Rollouts:
    """Turns micro-batches of prompts into rollout batches for the ``grpo`` loss.

    For each ``(sample, clip)`` it samples ``group`` completions from ``model`` in one batched,
    KV-cached :meth:`~damo.model.modeling_damo.DamoModel.generate` as a policy (seeded per step,
    so a rerun samples the same), parses them with the processor, scores them, and returns the
    teacher-forced batch of prompt + completion with ``advantages``, ``old_logp`` (when
    ``iterations`` > 1) and ``rollout_tokens``, plus what to log: each reward's mean and std,
    the share of zero-variance groups, the mean completion length."""

    def __init__(self, model, proc: DamoProcessor | VLMProcessor, settings: GRPOSettings, seed: int):
        self.model, self.st, self.seed = model, settings, seed
        self.policy = Generation(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
        self.collator = Collator.for_processor(proc)

    def batch(self, items: list[tuple[Sample, ClipTensors]], step: int, part: int) -> tuple[Batch, dict[str, float]]:
        st, model, proc = self.st, self.model, self.collator.processor
        G = st.group
        samples = [s for s, _ in items for _ in range(G)]
        clips = [c for _, c in items for _ in range(G)]
        was_training = model.training
        rows = model.generate(proc.generation_batch(clips, [s.query for s in samples]), st.max_new_tokens,
                              seed=self.seed * 1_000_003 + step * 1_009 + part, policy=self.policy)
        model.train(was_training)
        stop = proc.response_ids("", last=True)                # what ends a response (eos, or the chat's stop)
        comps = [r["ids"] + (stop if len(r["ids"]) < st.max_new_tokens else []) for r in rows]
        parsed = [proc.decode(r["ids"], r["evidence"], r["coords"], c.duration, c.times.tolist())["spans"]
                  for r, c in zip(rows, clips)]
        scores = [rollout_reward(p, s, st.rewards) for p, s in zip(parsed, samples)]
        per = {n: torch.tensor([x[n] for x in scores]) for n in st.rewards}
        total = sum(w * per[n] for n, w in st.rewards.items())                 # (P * G,)
        adv, std = group_advantages(total, G, st.scale_rewards)
        flat = std.abs() < 1e-6                                                 # (P,) zero-variance groups
        keep = [p for p in range(len(items)) if not (st.drop_zero_variance and flat[p])] or [0]
        rows_kept = [p * G + g for p in keep for g in range(G)]
        batch = self.collator.completions([(samples[i], clips[i]) for i in rows_kept], [comps[i] for i in rows_kept],
                                          [rows[i]["evidence"] for i in rows_kept])
        tokens = float((batch.labels[:, 1:] != -100).sum())
        Tl = batch.evi_mask.shape[1]
        drawn = [np.pad(e["frames"], (0, Tl - len(e["frames"]))) for i in rows_kept for e in rows[i]["evidence"]]
        batch = replace(batch, advantages=adv[rows_kept], rollout_tokens=tokens,
                        evi_actions=torch.from_numpy(np.stack(drawn)).float() if drawn else None)
        if st.iterations > 1:
            with torch.no_grad():
                batch = replace(batch, old_logp=policy_logps(model(batch), batch, st.temperature))
        log = {f"reward_{n}": float(v.mean()) for n, v in per.items()}
        log |= {f"reward_{n}_std": float(v.std()) for n, v in per.items()}
        log |= {"reward": float(total.mean()), "zero_variance": float(flat.float().mean()),
                "completion_len": float(np.mean([len(c) for c in comps]))}
        return batch, log


def rollout_batches(rollouts: Rollouts, prompts: Iterator[tuple[int, list, list]], grad_accum: int
                    ) -> Iterator[tuple[Batch, dict[str, float], list]]:
    """The batch source of a rollout stage: ``prompts`` yields ``(step, [(sample, clip)], replaced)``
    per micro-batch, ``grad_accum`` per optimizer step; each step's micro-batches are sampled together
    (so ``dapo`` divides by the tokens of the whole step) and reused for ``iterations`` steps. Yields
    ``(batch, log, replaced)`` per micro-batch (``replaced``: the unusable records its prompts replaced)."""
    cache: list[tuple[Batch, dict[str, float]]] = []
    it = iter(prompts)
    for first in it:
        chunk = [first] + [next(it) for _ in range(grad_accum - 1)]
        step = chunk[0][0]
        if step % rollouts.st.iterations == 0 or not cache:
            made = [rollouts.batch(items, step, j) for j, (_, items, _) in enumerate(chunk)]
            tokens = sum(b.rollout_tokens for b, _ in made) / grad_accum
            cache = [(replace(b, rollout_tokens=tokens), log) for b, log in made]
        yield from ((b, log, replaced) for (b, log), (_, _, replaced) in zip(cache, chunk))
