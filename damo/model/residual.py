"""DaMO's global residual (DaMO, ICASSP 2026 version, method section on the global residual).

Per modality, before any temporal modelling:
``X_res = AdaptiveAvgPool(X_local -> L' tokens) + FFN(X_global)``.
Pooling keeps a compact spatial (or spectral) summary; the FFN-projected global token
(CLS for frames, the window summary for audio) re-injects whole-frame semantics into every
pooled token. Both are mapped to the fuser width ``d``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GlobalResidual(nn.Module):
    def __init__(self, d_in: int, d: int, tokens: int, grid: bool):
        """``grid=True`` pools patch tokens on their 2-D grid (frames); otherwise along 1-D (audio)."""
        super().__init__()
        self.tokens, self.grid = tokens, grid
        if grid and math.isqrt(tokens) ** 2 != tokens:
            raise ValueError(f"visual residual tokens must be a square number, got {tokens}")
        self.local = nn.Linear(d_in, d)
        self.glob = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, N, D = x.shape                                        # (B, T, 1+P, Din)
        g, loc = x[:, :, 0], x[:, :, 1:].flatten(0, 1)              # (B, T, Din), (B*T, P, Din)
        if self.grid:
            side, out = math.isqrt(N - 1), math.isqrt(self.tokens)
            if side * side != N - 1:
                raise ValueError(f"the vision tower gave {N - 1} patch tokens per frame, not a square grid "
                                 "(the contract of damo.model.encoders.VisionTower)")
            loc = loc.transpose(1, 2).reshape(B * T, D, side, side)  # (B*T, Din, s, s)
            loc = F.adaptive_avg_pool2d(loc, out).flatten(2)          # (B*T, Din, L')
        else:
            loc = F.adaptive_avg_pool1d(loc.transpose(1, 2), self.tokens)  # (B*T, Din, L')
        loc = loc.transpose(1, 2).unflatten(0, (B, T))              # (B, T, L', Din)
        return self.local(loc) + self.glob(g).unsqueeze(2)          # (B, T, L', d)
