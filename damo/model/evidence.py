"""Evidence-token grounding (D²VLM, ICCV 2025: section 3.2 and appendix A).

An ``<evi>`` token grounds an event by scoring every frame-level LLM-processed video token:
``sim_t = sigmoid(<q, f_t> / sqrt(d))`` where ``q`` is the evidence query (an MLP over the
hidden state that emitted ``<evi>``, appendix A) and ``f_t`` the frame projection, both taken
from the LLM's penultimate layer. Training targets are 1 inside the ground-truth interval and,
as the official code trains them, ``alpha^-distance`` outside (:func:`soft_targets`); the
paper's text uses hard 0/1. Inference keeps frames scoring >= ``threshold`` x max (0.6,
appendix C.4) and returns the run of kept frames with the highest mean score, as the official
``find_and_merge`` does (:func:`salient_frames`). The salient frames' mean state is added to the
``<evi>`` input embedding (semantic capture).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class EvidenceHead(nn.Module):
    """Two MLPs (``<evi>`` state -> query, frame state -> key). The defaults build D²VLM's official
    ``evi_head``/``frm_head`` (d2vlm/model/d2vlm_arch.py): LayerNorm(C), Linear(C, C/2), GELU,
    Linear(C/2, C), scores scaled by ``1/sqrt(C)``. ``d`` (0: ``C``) is the output width,
    ``hidden`` (0: ``C/2``) the hidden width; ``norm=False`` drops the LayerNorm."""

    def __init__(self, d_llm: int, d: int = 0, hidden: int = 0, norm: bool = True):
        super().__init__()
        d = d or d_llm
        h = hidden or max(1, d_llm // 2)

        def mlp() -> nn.Sequential:
            return nn.Sequential(*([nn.LayerNorm(d_llm)] if norm else []), nn.Linear(d_llm, h), nn.GELU(), nn.Linear(h, d))

        self.query, self.frame = mlp(), mlp()
        self.scale = d ** -0.5

    def logits(self, h_evi: torch.Tensor, h_frames: torch.Tensor) -> torch.Tensor:
        """h_evi ``(B, K, C)``, h_frames ``(B, T, C)`` -> frame logits ``(B, K, T)`` (sigmoid -> scores)."""
        q = self.query(h_evi)                                        # (B, K, d)
        f = self.frame(h_frames)                                     # (B, T, d)
        return torch.einsum("bkd,btd->bkt", q, f) * self.scale


def pool_groups(x: torch.Tensor, mask: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean of consecutive groups of ``g`` frames: x ``(B, T, ...)``, mask ``(B, T)`` ->
    ``(B, ceil(T/g), ...)`` and the groups' mask (a group is valid if any of its frames is)."""
    if g == 1:
        return x, mask
    B, T = mask.shape
    n = -(-T // g)
    pad = n * g - T
    m = F.pad(mask.float(), (0, pad)).view(B, n, g)
    xs = F.pad(x, (0,) * (2 * (x.dim() - 2)) + (0, pad)).view(B, n, g, *x.shape[2:])
    w = m.view(B, n, g, *([1] * (x.dim() - 2)))
    return (xs * w).sum(2) / w.sum(2).clamp(min=1), m.amax(2) > 0


def soft_targets(y: np.ndarray, alpha: float) -> np.ndarray:
    """Distance-decayed grounding targets (D²VLM official code, ``forward_evi``; ``alpha`` = 2 there):
    frame tokens with a positive hard target keep it, the others get ``alpha ** -d`` with ``d`` the
    distance in tokens to the nearest positive one. No positive token: all zeros."""
    inside = y > 0
    if not inside.any():
        return np.zeros_like(y)
    i = np.arange(len(y))
    big = 2 * len(y)
    before = i - np.maximum.accumulate(np.where(inside, i, -big))             # tokens since the last positive
    after = np.minimum.accumulate(np.where(inside, i, big)[::-1])[::-1] - i   # tokens to the next positive
    d = np.minimum(before, after).astype(np.float64)
    return np.where(inside, y, np.power(float(alpha), -d)).astype(y.dtype)


def _runs(keep: np.ndarray) -> list[tuple[int, int]]:
    """``[first, last]`` of each run of consecutive true values."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


DECODERS = ("mean", "sum")


def run_frames(first: int, last: int, group: int, scores: np.ndarray) -> list:
    """Frame tokens ``first..last`` (``group`` frames each, ``scores`` per token) -> ``[first frame, last
    frame, mean score]``: what an ``<evi>`` grounds, which the processor turns into seconds."""
    return [first * group, last * group + group - 1, float(scores[first:last + 1].mean())]


def salient_frames(scores: np.ndarray, threshold: float = 0.6, rank: str = "mean") -> tuple[int, int]:
    """The salient run of frames: among the runs of frames scoring >= ``threshold`` x max, the one
    with the highest mean score (``rank="mean"``, D²VLM's official ``find_and_merge``) or summed
    score (``"sum"``, which favours long runs). Returns ``[first, last]`` indices.

    Ties under ``"mean"`` follow ``find_and_merge``: every run reaching the best mean is covered,
    from the first such run's first frame to the last one's last frame.
    """
    if rank not in DECODERS:
        raise ValueError(f"evidence decode must be one of {DECODERS}, got {rank!r}")
    runs = _runs(scores >= threshold * scores.max())
    value = [float(scores[a:b + 1].mean() if rank == "mean" else scores[a:b + 1].sum()) for a, b in runs]
    best = [r for r, v in zip(runs, value) if v == max(value)]
    return (best[0][0], best[-1][1]) if rank == "mean" else best[0]   # "sum": ties go to the earliest run


def capture_weights(targets: torch.Tensor) -> torch.Tensor:
    """Which frame tokens' states semantic capture averages for each ``<evi>``: ``(N, T)`` targets ->
    0/1 weights on the tokens at the row's highest target, i.e. the ground-truth span's frames for
    hard or soft targets (the official code takes the mean over the span's frames); with pooled
    tokens, those most covered by the span."""
    top = targets.amax(1, keepdim=True)
    return ((targets >= top) & (top > 0)).to(targets.dtype)


def sample_frames(logits: torch.Tensor, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> tuple[np.ndarray, tuple[int, int] | None]:
    """An ``<evi>`` token's frames drawn as a policy: each frame token independently with probability
    ``sigmoid(logit / temperature)`` (``logits (T,)``), the product of Bernoullis whose log-probability
    is D²VLM's eq. 6 (:func:`damo.train.fpo.interval_logprob` with the draw as target). Returns the
    0/1 draw ``(T,)`` and its longest run ``(first, last)`` (the earliest on ties), the span the token
    grounds; ``None`` when no frame was drawn."""
    p = torch.sigmoid(logits.detach().float() / temperature)
    z = torch.bernoulli(p, generator=generator).cpu().numpy()
    runs = _runs(z > 0)
    return z, max(runs, key=lambda r: r[1] - r[0]) if runs else None
