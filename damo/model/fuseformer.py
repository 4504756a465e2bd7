"""T-Fuseformer: DaMO's hierarchical dual-stream audio-visual fuser.

DaMO (method: temporal pathway and T-Fuseformer) stacks blocks of
1. temporal-aware unimodal attention, per stream: self-attention + FFN over all of the
   stream's tokens (time embedded), then a set of learnable queries cross-attends to the
   stream, compressing it and picking out key moments;
   (Stream self-attention runs within windows of ``window`` frames so that cost grows linearly
   with video length; the queries still read the whole stream.)
2. temporal-aware multimodal attention: shared fusion tokens are concatenated with both
   streams' compressed queries and a joint self-attention + FFN fuses them.
The queries and fusion tokens carry over from block to block (the hierarchy).

Our system additionally needs one fused token per sampled frame so that evidence tokens
(D²VLM) can point at frames: after the last block, each frame's visual and audio tokens
are pooled, concatenated and projected, plus a projection of the frame's own pre-fusion
features (a skip path that keeps frames distinct). So the fuser returns per-frame tokens
``(B, T, K, D)`` and the fusion tokens ``(B, F, D)``.

With ``grid=True`` the same projections run on every visual token of the frame instead of their
mean (each with the frame's pooled audio): a fused grid ``(B, T, Lv, D)`` in the residual's
row-major layout, for a token compressor in front of the LLM
(:mod:`damo.model.compressors`). The projections are linear, so the grid's mean is exactly the
one-token summary.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from damo.model.encoders import Block


def sinusoid(t: torch.Tensor, d: int) -> torch.Tensor:
    """Sinusoidal embedding of real-valued times ``t`` (..., ) -> (..., d)."""
    half = d // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float().unsqueeze(-1) * freq                       # (..., d/2)
    return torch.cat([ang.sin(), ang.cos()], -1)


class CrossBlock(nn.Module):
    """Queries cross-attend to a memory, then an FFN."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.lnq, self.lnm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, q: torch.Tensor, mem: torch.Tensor, mem_pad: torch.Tensor | None = None) -> torch.Tensor:
        m = self.lnm(mem)
        q = q + self.attn(self.lnq(q), m, m, key_padding_mask=mem_pad, need_weights=False)[0]
        return q + self.mlp(self.ln2(q))


def windowed(block: Block, x: torch.Tensor, pad: torch.Tensor, per_frame: int, window: int) -> torch.Tensor:
    """Self-attention within windows of ``window`` frames: linear in video length.

    x ``(B, T*L, D)`` with ``L = per_frame`` tokens per frame; pad ``(B, T*L)`` True where padded.
    Videos no longer than one window attend globally, exactly as an unwindowed block.
    """
    B, N, D = x.shape
    T = N // per_frame
    if T <= window:
        return block(x, pad)
    nw = -(-T // window)
    extra = (nw * window - T) * per_frame
    x = F.pad(x, (0, 0, 0, extra))                                  # (B, nw*W*L, D)
    pad = F.pad(pad, (0, extra), value=True)
    pw = pad.reshape(B * nw, window * per_frame)
    pw = pw & ~pw.all(1, keepdim=True)      # an all-padding window would give NaN; its output is dropped
    y = block(x.reshape(B * nw, window * per_frame, D), pw)        # (B*nw, W*L, D)
    return y.reshape(B, -1, D)[:, :N]


class FuseBlock(nn.Module):
    def __init__(self, d: int, heads: int, window: int):
        super().__init__()
        self.window = window
        self.self_v, self.self_a = Block(d, heads), Block(d, heads)
        self.query_v, self.query_a = CrossBlock(d, heads), CrossBlock(d, heads)
        self.joint = Block(d, heads)

    def forward(self, v, a, qv, qa, f, pad_v, pad_a, Lv: int, La: int):
        v = windowed(self.self_v, v, pad_v, Lv, self.window)       # (B, T*Lv, D)
        a = windowed(self.self_a, a, pad_a, La, self.window)       # (B, T*La, D)
        qv = self.query_v(qv, v, pad_v)                             # (B, Qv, D)
        qa = self.query_a(qa, a, pad_a)                             # (B, Qa, D)
        z = self.joint(torch.cat([f, qv, qa], 1))                   # (B, F+Qv+Qa, D)
        f, qv, qa = z.split([f.shape[1], qv.shape[1], qa.shape[1]], 1)
        return v, a, qv, qa, f


class TemporalFuseformer(nn.Module):
    def __init__(self, d: int = 96, blocks: int = 2, heads: int = 4, visual_queries: int = 16,
                 audio_queries: int = 8, fusion_tokens: int = 8, frame_tokens: int = 1, max_frames: int = 4096,
                 window: int = 64, grid: bool = False):
        super().__init__()
        if grid and frame_tokens != 1:
            raise ValueError(f"a fused grid has one token per visual token: frame_tokens must be 1, got {frame_tokens}")
        self.d, self.frame_tokens, self.grid = d, frame_tokens, grid
        self.qv = nn.Parameter(torch.randn(1, visual_queries, d) * 0.02)
        self.qa = nn.Parameter(torch.randn(1, audio_queries, d) * 0.02)
        self.fusion = nn.Parameter(torch.randn(1, fusion_tokens, d) * 0.02)
        # learnable + sinusoidal temporal position embeddings (DaMO temporal pathway)
        self.time_v = nn.Embedding(max_frames, d)
        self.time_a = nn.Embedding(max_frames, d)
        nn.init.zeros_(self.time_v.weight)
        nn.init.zeros_(self.time_a.weight)
        self.blocks = nn.ModuleList(FuseBlock(d, heads, window) for _ in range(blocks))
        self.ln_v, self.ln_a, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.frame_out = nn.Linear(2 * d, frame_tokens * d)
        # a direct path from each frame's own pre-fusion features: clip-level attention tends to
        # make a video's frames alike, while grounding needs them told apart
        self.frame_skip = nn.Linear(2 * d, frame_tokens * d)

    def forward(self, v: torch.Tensor, a: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v ``(B, T, Lv, D)``, a ``(B, T, La, D)``, frame_mask ``(B, T)`` True for real frames.

        Returns per-frame fused tokens ``(B, T, K, D)`` (the grid: ``K = Lv``) and fusion tokens ``(B, F, D)``.
        """
        B, T, Lv, D = v.shape
        La = a.shape[2]
        v0, a0 = v, a.mean(2, keepdim=True)                        # pre-fusion features for the skip path
        idx = torch.arange(T, device=v.device)
        pe = sinusoid(idx, D)                                       # (T, D)
        v = v + (pe + self.time_v(idx))[None, :, None]
        a = a + (pe + self.time_a(idx))[None, :, None]
        pad_v = (~frame_mask).repeat_interleave(Lv, 1)              # (B, T*Lv)
        pad_a = (~frame_mask).repeat_interleave(La, 1)              # (B, T*La)
        v, a = v.flatten(1, 2), a.flatten(1, 2)                     # (B, T*Lv, D), (B, T*La, D)
        qv, qa, f = self.qv.expand(B, -1, -1), self.qa.expand(B, -1, -1), self.fusion.expand(B, -1, -1)
        for blk in self.blocks:
            v, a, qv, qa, f = blk(v, a, qv, qa, f, pad_v, pad_a, Lv, La)
        v = self.ln_v(v).unflatten(1, (T, Lv))                     # (B, T, Lv, D)
        a = self.ln_a(a).unflatten(1, (T, La)).mean(2, keepdim=True)  # (B, T, 1, D)
        if not self.grid:
            v, v0 = v.mean(2, keepdim=True), v0.mean(2, keepdim=True)  # (B, T, 1, D)
        n = v.shape[2]
        frames = (self.frame_out(torch.cat([v, a.expand(-1, -1, n, -1)], -1))
                  + self.frame_skip(torch.cat([v0, a0.expand(-1, -1, n, -1)], -1)))   # (B, T, n, K*D)
        return frames.reshape(B, T, n * self.frame_tokens, D), self.ln_f(f)
