"""Evidence-token grounding (D²VLM, ICCV 2025: section 3.2 and appendix A).

An ``<evi>`` token grounds an event by scoring every frame-level LLM-processed video token:
``sim_t = sigmoid(<q, f_t> / sqrt(d))`` where ``q`` is the evidence query (a 2-layer MLP over the
hidden state that emitted ``<evi>``, appendix A) and ``f_t`` the frame projection, both taken
from the LLM's penultimate layer. Training marks frames inside the ground-truth interval as
salient; inference keeps frames scoring >= ``threshold`` x max (0.6 in the paper, appendix C.4)
and returns the best contiguous run. The salient frames' mean state is added to the ``<evi>``
input embedding (semantic capture).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class EvidenceHead(nn.Module):
    """Two MLPs (``<evi>`` state -> query, frame state -> key) of width ``hidden`` (0: ``d_llm``); with
    ``norm`` each starts with a LayerNorm, as D²VLM's official ``frm_head``/``evi_head`` do
    (LayerNorm(C), Linear(C, C/2), GELU, Linear(C/2, C): ``hidden = C/2``, ``d = C``)."""

    def __init__(self, d_llm: int, d: int = 64, hidden: int = 0, norm: bool = False):
        super().__init__()
        h = hidden or d_llm

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


def salient_frames(scores: np.ndarray, threshold: float = 0.6) -> tuple[int, int]:
    """Best contiguous run of frames scoring >= threshold x max; returns [first, last] indices.

    "Best" is the run with the largest summed score (so a long plateau beats an isolated spike
    of equal height). Ties go to the earliest run.
    """
    keep = scores >= threshold * scores.max()
    best, best_sum, i, T = (0, 0), -1.0, 0, len(scores)
    while i < T:
        if keep[i]:
            j = i
            while j + 1 < T and keep[j + 1]:
                j += 1
            s = float(scores[i:j + 1].sum())
            if s > best_sum:
                best, best_sum = (i, j), s
            i = j + 1
        else:
            i += 1
    return best


def decode_interval(scores: np.ndarray, fps: float, duration: float, threshold: float = 0.6) -> list[float]:
    """Frame scores ``(T,)`` -> ``[start, end, score]`` in seconds (score = mean over the run)."""
    a, b = salient_frames(scores, threshold)
    return [a / fps, min(duration, (b + 1) / fps), float(scores[a:b + 1].mean())]
