"""Visual token compressors under a per-video token budget.

One tensor contract for every compressor: tokens ``x (B, T, L, D)`` and ``frame_mask (B, T)``
(True for real frames) -> ``(B, T, K, D)``, the same K for every frame of the batch so that
everything downstream stays rectangular. Padded frames come out as zeros and never change
the real frames' outputs. A compressor is chosen by name from :data:`COMPRESSORS`;
:func:`build_compressor` turns plain arguments into a module.

Budget (Dynamic-VLM, section 3.2 and section 5.3): a video gets at most ``budget`` visual
tokens in total, and tokens per frame live in ``[k_min, k_max]``.

- inference: ``K = min(floor(budget / T), k_max)``, the paper's ``min(budget / T, max)``.
  The budget is a hard cap: when it allows fewer than ``k_min`` tokens per frame, K follows
  the budget (``k_min`` only bounds the training draws). A budget below one token per frame
  is an error (sample fewer frames).
- training: ``K`` is drawn uniformly from ``[k_min, min(k_max, floor(budget / T))]`` with the
  module's own :class:`torch.Generator`, seeded from ``seed``, so a run is reproducible and
  the draws do not disturb the global RNG. (The paper samples from ``[min, max]`` and relies
  on a 16K context limit; capping by the budget keeps the same guarantee here.)
- K never exceeds the ``tokens_in`` (L) tokens a frame has.

Each compressor then rounds K down to what its geometry can produce (a square grid for
pooling and the Spatial-Temporal Packer), and reports the result through
``tokens_per_frame(T, training)``. T is the batch's frame count (padded length), so the
longest video in the batch respects the budget.

How a caller sizes the prompt: call ``k = comp.tokens_per_frame(T, training)`` once per batch
(in training this consumes one draw), write ``T * k`` video placeholders, then call
``comp(x, frame_mask, k)``. ``comp(x, frame_mask)`` without ``k`` decides K itself.

Placement (``CompressorConfig.placement``):

- ``llm`` (default): the compressor reduces the per-frame tokens that reach the LLM (the
  T-Fuseformer's fused grid), as Dynamic-VLM compresses the vision encoder's tokens right before
  its projector. The processor must write the prompt before the model runs, so K is the
  deterministic :class:`TokenBudget` value for the batch's number of LLM frame tokens, in training
  too (videos of different lengths still train different K). Every frame token gets K tokens; the
  Spatial-Temporal Packer adds a slow stream in front of the frames (:meth:`SpatialTemporalPacker.pack`).
  Grid outputs (pooling, the packer's streams) are row-major ``s x s`` grids.
- ``fuser``: the compressor reduces the visual residual tokens in front of the T-Fuseformer, whose
  per-frame summary (``fuser.frame_tokens``) reaches the LLM; K is drawn in training as above.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def budget_tokens(T: int, budget: int, k_min: int, k_max: int, tokens_in: int) -> int:
    """Inference tokens per frame: ``min(floor(budget / T), k_max, tokens_in)`` (Dynamic-VLM 5.3)."""
    if T < 1:
        raise ValueError(f"need at least one frame, got T={T}")
    per_frame = budget // T
    if per_frame < 1:
        raise ValueError(f"a budget of {budget} visual tokens cannot give each of {T} frames a token; "
                         f"sample at most {budget} frames or raise the budget")
    return min(per_frame, k_max, tokens_in)


def sample_tokens(T: int, budget: int, k_min: int, k_max: int, tokens_in: int, generator: torch.Generator) -> int:
    """Training tokens per frame: uniform on ``[k_min, cap]`` with ``cap`` the inference value."""
    cap = budget_tokens(T, budget, k_min, k_max, tokens_in)
    lo = min(k_min, cap)
    return int(torch.randint(lo, cap + 1, (), generator=generator))


def slow_steps(frame_tokens: int, stride: int) -> int:
    """Slow-stream steps of the packer: one per ``stride`` frame tokens, the last one possibly short."""
    return -(-frame_tokens // stride)


PLACEMENTS = ("llm", "fuser")          # where the compressor works (CompressorConfig.placement)
STP_FAST_SIDE, STP_STRIDE = 1, 4      # the packer's defaults: fast side, frames per slow step


@dataclass(frozen=True)
class TokenBudget:
    """Visual tokens a video gets at the LLM (placement ``llm``): a pure function of these settings
    and the number T' of LLM frame tokens, so the processor writes the prompt before the model runs.

    Dynamic-VLM (section 3.2; inference in section 6: ``min(N_max / T, max)`` tokens per frame):
    every frame token gets ``K = min(floor(budget / T'), k_max, tokens_in)``, rounded down to what
    the compressor produces (a square for pooling). A video of more than ``budget // k_min`` frame
    tokens has its frames pooled in groups first (:meth:`frame_cap`): a long video trades tokens
    per frame for frames down to ``k_min``, then keeps fewer frames, as Dynamic-VLM samples at most
    T frames. The budget always holds. ``identity`` ignores it (every token: the reference).

    The Spatial-Temporal Packer (LLaVA-ST section 3.3): fast side ``f = min(fast_side,
    floor(sqrt(K)), n)`` for every frame token (eq. 7), and one slow step per ``stride`` frame
    tokens taking what the fast stream leaves, ``s = min(n, floor(sqrt(min(k_max, (budget - T'
    f^2) // steps))))`` (eqs. 6 and 8), n the input grid side.
    """
    kind: str
    tokens_in: int
    budget: int
    k_min: int = 1
    k_max: int = 16
    fast_side: int = STP_FAST_SIDE
    stride: int = STP_STRIDE

    def frame_cap(self) -> int:
        """Most LLM frame tokens a video may have under the budget (0: no cap)."""
        return self.budget // self.k_min if COMPRESSOR_TYPES[self.kind].follows_budget else 0

    def split(self, Tl: int) -> tuple[int, int]:
        """(K tokens per frame token, slow-stream side) for a video of ``Tl`` LLM frame tokens."""
        cls = COMPRESSOR_TYPES[self.kind]
        if not cls.follows_budget:
            return self.tokens_in, 0
        return cls.llm_split(budget_tokens(Tl, self.budget, self.k_min, self.k_max, self.tokens_in), Tl, self)

    def tokens(self, Tl: int) -> int:
        """Visual tokens the LLM reads for ``Tl`` frame tokens (fast/per-frame + slow)."""
        k, s = self.split(Tl)
        return Tl * k + slow_steps(Tl, self.stride) * s * s


def _square_side(L: int) -> int | None:
    """Side of the square grid L tokens form, or None when L is not a square number."""
    s = math.isqrt(L)
    return s if s * s == L else None


class BudgetedCompressor(nn.Module):
    """Shared budget bookkeeping; subclasses say how a raw K becomes their output count."""

    follows_budget = True      # False: the output count ignores the budget (the uncompressed reference)
    keeps_grid = False         # True: a frame's output tokens are a row-major square grid (spatial LAPE applies)

    def __init__(self, tokens_in: int, budget: int, k_min: int, k_max: int, seed: int):
        super().__init__()
        if not 1 <= k_min <= k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
        if tokens_in < 1 or budget < 1:
            raise ValueError(f"tokens_in and budget must be positive, got {tokens_in} and {budget}")
        self.tokens_in, self.budget, self.k_min, self.k_max, self.seed = tokens_in, budget, k_min, k_max, seed
        self.generator = torch.Generator().manual_seed(seed)

    @staticmethod
    def snap_to(k: int, tokens_in: int) -> int:
        """Largest output count <= k this compressor can produce from ``tokens_in`` tokens."""
        return k

    def snap(self, k: int) -> int:
        return self.snap_to(k, self.tokens_in)

    @classmethod
    def llm_split(cls, k: int, Tl: int, budget: "TokenBudget") -> tuple[int, int]:
        """LLM placement: (tokens per frame token, slow-stream side) for a raw K; no slow stream."""
        return cls.snap_to(k, budget.tokens_in), 0

    def tokens_per_frame(self, T: int, training: bool) -> int:
        """K for a batch of T frames: sampled (training) or from the budget formula (inference)."""
        if training:
            k = sample_tokens(T, self.budget, self.k_min, self.k_max, self.tokens_in, self.generator)
        else:
            k = budget_tokens(T, self.budget, self.k_min, self.k_max, self.tokens_in)
        return self.snap(k)

    def check(self, x: torch.Tensor, frame_mask: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"compressors take tokens (B, T, L, D), got shape {tuple(x.shape)}")
        B, T, L, D = x.shape
        if L != self.tokens_in:
            raise ValueError(f"compressor was built for {self.tokens_in} tokens per frame, got {L}")
        if frame_mask.shape != (B, T):
            raise ValueError(f"frame_mask must be (B, T) = {(B, T)}, got {tuple(frame_mask.shape)}")

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor, k: int | None = None) -> torch.Tensor:
        self.check(x, frame_mask)
        B, T, L, D = x.shape
        if k is None:
            k = self.tokens_per_frame(T, self.training)
        if k != self.snap(k) or not 1 <= k <= L:
            raise ValueError(f"{type(self).__name__} cannot produce {k} tokens per frame from {L}; "
                             "use the value tokens_per_frame returns")
        y = self.compress(x, frame_mask, k)                                    # (B, T, K, D)
        return y * frame_mask[:, :, None, None].to(y.dtype)                    # padded frames -> 0

    def compress(self, x: torch.Tensor, frame_mask: torch.Tensor, k: int) -> torch.Tensor:
        raise NotImplementedError

    def pack(self, x: torch.Tensor, frame_mask: torch.Tensor, k: int,
             slow_side: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LLM placement: ``(B, T, K, D)`` tokens per frame token and no slow stream (``slow_side`` 0)."""
        return self(x, frame_mask, k), None


# ------------------------------------------------------------------------------- identity

class Identity(BudgetedCompressor):
    """No compression: K = L whatever the budget (the uncompressed baseline)."""

    follows_budget = False
    keeps_grid = True

    def tokens_per_frame(self, T: int, training: bool) -> int:
        return self.tokens_in

    @staticmethod
    def snap_to(k: int, tokens_in: int) -> int:
        return tokens_in

    def compress(self, x: torch.Tensor, frame_mask: torch.Tensor, k: int) -> torch.Tensor:
        return x


# ------------------------------------------------------------------- adaptive pooling

class DynamicPool(BudgetedCompressor):
    """Dynamic spatial pooling (Dynamic-VLM eq. 1): ``AdaptiveAvgPool2d`` to an ``s x s`` grid.

    Tokens on a square ``sqrt(L) x sqrt(L)`` grid are pooled in 2-D with side
    ``s = floor(sqrt(K))`` (so K snaps to ``s^2``, section 5.3); any other L is pooled along the
    token sequence to exactly K. No parameters.
    """

    keeps_grid = True

    @staticmethod
    def snap_to(k: int, tokens_in: int) -> int:
        return math.isqrt(k) ** 2 if _square_side(tokens_in) else k

    def compress(self, x: torch.Tensor, frame_mask: torch.Tensor, k: int) -> torch.Tensor:
        B, T, L, D = x.shape
        n = _square_side(L)
        if n is None:
            y = F.adaptive_avg_pool1d(x.flatten(0, 1).transpose(1, 2), k)     # (B*T, D, K)
            return y.transpose(1, 2).reshape(B, T, k, D)
        s = math.isqrt(k)
        g = x.flatten(0, 1).transpose(1, 2).reshape(B * T, D, n, n)            # (B*T, D, n, n)
        y = F.adaptive_avg_pool2d(g, s).flatten(2)                             # (B*T, D, s*s)
        return y.transpose(1, 2).reshape(B, T, k, D)                           # (B, T, K, D)


# --------------------------------------------------------------------------- ToMe merging

def bipartite_merge(x: torch.Tensor, size: torch.Tensor, pos: torch.Tensor, r: int):
    """One round of bipartite soft matching (Bolya et al., ICLR 2023, section 3).

    x ``(N, L, D)``, size ``(N, L)`` tokens merged into each, pos ``(N, L)`` original order.
    Tokens alternate into sets A (even) and B (odd); every A token links to its most
    cosine-similar B token; the r strongest links merge (size-weighted mean) into B.
    Returns the ``L - r`` survivors, kept in their original spatial order.
    """
    N, L, D = x.shape
    a, b = x[:, 0::2], x[:, 1::2]                                              # (N, La, D), (N, Lb, D)
    sa, sb = size[:, 0::2], size[:, 1::2]
    pa, pb = pos[:, 0::2], pos[:, 1::2]
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(1, 2)      # (N, La, Lb)
    best, dst = sim.max(-1)                                                    # (N, La)
    order = best.sort(dim=-1, descending=True, stable=True).indices            # strongest links first
    merge, keep = order[:, :r], order[:, r:]                                   # (N, r), (N, La - r)
    dst = dst.gather(1, merge)                                                 # (N, r) B index per merged A
    wa = (a * sa[..., None]).gather(1, merge[..., None].expand(-1, -1, D))     # (N, r, D) size-weighted
    b_sum = (b * sb[..., None]).scatter_add(1, dst[..., None].expand(-1, -1, D), wa)
    sb = sb.scatter_add(1, dst, sa.gather(1, merge))                           # (N, Lb)
    b = b_sum / sb[..., None]
    x = torch.cat([a.gather(1, keep[..., None].expand(-1, -1, D)), b], 1)      # (N, L - r, D)
    size = torch.cat([sa.gather(1, keep), sb], 1)
    pos = torch.cat([pa.gather(1, keep), pb], 1)
    idx = pos.argsort(-1)                                                      # restore spatial order
    return x.gather(1, idx[..., None].expand(-1, -1, D)), size.gather(1, idx), pos.gather(1, idx)


class TokenMerging(BudgetedCompressor):
    """Dynamic token merging (Dynamic-VLM eq. 2) with ToMe's bipartite soft matching.

    Rounds merge up to half the tokens each (ToMe's bound for one bipartite round) until K
    remain; a merged token is the size-weighted mean of its sources. Similarity is the
    cosine of the tokens themselves (no attention keys exist here). No parameters and no
    randomness, so training and inference agree and outputs are deterministic.
    """

    def compress(self, x: torch.Tensor, frame_mask: torch.Tensor, k: int) -> torch.Tensor:
        B, T, L, D = x.shape
        h = x.flatten(0, 1)                                                    # (B*T, L, D)
        size = torch.ones(h.shape[:2], dtype=h.dtype, device=h.device)
        pos = torch.arange(L, device=h.device).expand(B * T, L)
        while h.shape[1] > k:
            n = h.shape[1]
            h, size, pos = bipartite_merge(h, size, pos, min(n - k, (n + 1) // 2))
        return h.reshape(B, T, k, D)                                           # (B, T, K, D)


# ---------------------------------------------------------------------- Gumbel pruning

class GumbelPrune(BudgetedCompressor):
    """Learned top-K pruning (Dynamic-VLM eq. 3: ``KeepTopK(GumbelSoftmax(MLP(F)), M)``).

    An MLP scores each token. Training: Gumbel noise (from the module's generator) is added to
    the scores, the K best are kept by a hard mask, and a straight-through estimator passes
    the gradient of ``softmax((score + g) / tau)`` to the scorer: the forward value of a kept
    token is exactly the token, the backward path reaches the MLP. Inference: hard top-K of
    the clean scores. Kept tokens stay in their original order in both modes.
    """

    def __init__(self, d: int, tokens_in: int, budget: int, k_min: int, k_max: int, seed: int = 0,
                 tau: float = 1.0, hidden: int = 0):
        super().__init__(tokens_in, budget, k_min, k_max, seed)
        if tau <= 0:
            raise ValueError(f"Gumbel temperature tau must be > 0, got {tau}")
        self.tau = tau
        hidden = hidden or max(1, d // 2)
        self.scorer = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def compress(self, x: torch.Tensor, frame_mask: torch.Tensor, k: int) -> torch.Tensor:
        B, T, L, D = x.shape
        s = self.scorer(x).squeeze(-1)                                         # (B, T, L)
        if self.training:
            u = torch.rand(s.shape, generator=self.generator).to(s.device).clamp(1e-9, 1 - 1e-9)
            s = s - torch.log(-torch.log(u))                                   # + Gumbel(0, 1)
        idx = s.topk(k, -1).indices.sort(-1).values                            # (B, T, K) kept, in order
        kept = x.gather(2, idx[..., None].expand(-1, -1, -1, D))               # (B, T, K, D)
        if not self.training:
            return kept
        soft = torch.softmax(s / self.tau, -1).gather(2, idx)                  # (B, T, K)
        return kept + kept * (soft - soft.detach())[..., None]                 # value exactly x, gradient via soft


# ---------------------------------------------------------- LLaVA-ST Spatial-Temporal Packer

def region_mask(n_in: int, n_out: int, device: torch.device | None = None) -> torch.Tensor:
    """Which grid tokens each pooled point may attend to: ``(n_out^2, n_in^2)``, True = blocked.

    Regions are exactly the bins of ``adaptive_avg_pool2d`` (start ``floor(i n / o)``, end
    ``ceil((i + 1) n / o)``), so the query point is the mean of its own region. Built on ``device``,
    the tokens', so no step copies a mask from the host.
    """
    i, j = torch.arange(n_out, device=device), torch.arange(n_in, device=device)
    lo = (i * n_in) // n_out
    hi = -((-(i + 1) * n_in) // n_out)
    inside = (j >= lo[:, None]) & (j < hi[:, None])                            # (o, n) per axis
    both = inside[:, None, :, None] & inside[None, :, None, :]                 # (o, o, n, n)
    return ~both.reshape(n_out * n_out, n_in * n_in)


class PointToRegion(nn.Module):
    """Point-to-region attention (LLaVA-ST section 3.3, eq. 6): a pooled point queries its region.

    The point starts as the region's average (so an untrained packer is average pooling) and
    adds what attention over the region's tokens finds.
    """

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_q, self.ln_kv = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        m = self.ln_kv(kv)
        return q + self.attn(self.ln_q(q), m, m, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                             need_weights=False)[0]


class SpatialTemporalPacker(BudgetedCompressor):
    """LLaVA-ST's Spatial-Temporal Packer (section 3.3, eqs. 6-8).

    1. ``F^ = packer_s(v, s x s)`` (eq. 6): each frame's ``sqrt(L) x sqrt(L)`` grid is reduced to
       ``s x s`` points, each attending to its own region.
    2. fast stream ``packer_s(F^, f x f)`` (eq. 7): every frame, few tokens (``f <= fast_side``).
    3. slow stream ``packer_t(F^, stride)`` (eq. 8): consecutive groups of ``stride`` frames; at
       each of the ``s x s`` locations the group's temporal mean attends to that location in the
       group's real frames. More tokens, fewer time steps.

    ``stride`` is frames per slow step (the paper fixes the number of steps, sigma = 20 of 100
    frames, i.e. stride 5), so it does not depend on T. A learned stream embedding tells the two
    streams apart.

    At the LLM (:meth:`pack`, placement ``llm``) the two streams reach the LLM as the paper feeds
    them: the slow stream's ``steps x s^2`` tokens once, and every frame's own ``f^2`` fast tokens
    (which ground it); sides from :class:`TokenBudget`.

    In front of the fuser (placement ``fuser``, :meth:`compress`) the output must stay
    ``(B, T, K, D)``: frame t carries its own f^2 fast tokens followed by the s^2 slow tokens of
    its group ``t // stride`` (repeated for the group's frames), with ``f = min(fast_side,
    floor(sqrt(K)))`` and ``s = floor(sqrt(K - f^2))`` (at most the input grid side); ``s = 0``
    leaves only the fast stream (computed from the input grid).
    """

    keeps_grid = True

    def __init__(self, d: int, tokens_in: int, budget: int, k_min: int, k_max: int, seed: int = 0,
                 heads: int = 4, fast_side: int = STP_FAST_SIDE, stride: int = STP_STRIDE):
        super().__init__(tokens_in, budget, k_min, k_max, seed)
        if _square_side(tokens_in) is None:
            raise ValueError(f"the Spatial-Temporal Packer needs tokens on a square grid, got L={tokens_in}")
        if fast_side < 1 or stride < 1:
            raise ValueError(f"fast_side and stride must be >= 1, got {fast_side} and {stride}")
        self.fast_side, self.stride = fast_side, stride
        self.pack_slow = PointToRegion(d, heads)       # eq. 6: v -> F^
        self.pack_fast = PointToRegion(d, heads)       # eq. 7: F^ -> F^_s
        self.pack_time = PointToRegion(d, heads)       # eq. 8: F^ -> F^_t
        self.stream = nn.Parameter(torch.zeros(2, d))  # fast / slow marker

    def sides(self, k: int) -> tuple[int, int]:
        """(fast side f, slow side s) for a raw K."""
        n = math.isqrt(self.tokens_in)
        f = min(self.fast_side, math.isqrt(k), n)
        return f, min(math.isqrt(k - f * f), n)

    def snap(self, k: int) -> int:
        f, s = self.sides(k)
        return f * f + s * s

    @classmethod
    def llm_split(cls, k: int, Tl: int, budget: "TokenBudget") -> tuple[int, int]:
        """Fast tokens per frame token ``f^2`` and the slow side ``s`` (see :class:`TokenBudget`)."""
        n = math.isqrt(budget.tokens_in)
        f = min(budget.fast_side, math.isqrt(k), n)
        steps = slow_steps(Tl, budget.stride)
        return f * f, min(n, math.isqrt(min(budget.k_max, (budget.budget - Tl * f * f) // steps)))

    def spatial(self, pack: PointToRegion, x: torch.Tensor, side: int) -> torch.Tensor:
        """``packer_s``: x ``(N, n*n, D)`` -> ``(N, side*side, D)``."""
        N, L, D = x.shape
        n = math.isqrt(L)
        g = x.transpose(1, 2).reshape(N, D, n, n)                              # (N, D, n, n)
        q = F.adaptive_avg_pool2d(g, side).flatten(2).transpose(1, 2)          # (N, side^2, D) region means
        return pack(q, x, attn_mask=region_mask(n, side, x.device))

    def temporal(self, h: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """``packer_t``: h ``(B, T, S, D)`` -> one step per group of ``stride`` frames ``(B, G, S, D)``."""
        B, T, S, D = h.shape
        st = self.stride
        G = -(-T // st)
        h = F.pad(h, (0, 0, 0, 0, 0, G * st - T))                              # (B, G*st, S, D)
        real = F.pad(frame_mask, (0, G * st - T), value=False).view(B, G, st)  # (B, G, st)
        h = h.view(B, G, st, S, D).permute(0, 1, 3, 2, 4).reshape(B * G * S, st, D)  # (B*G*S, st, D)
        w = real[:, :, None, :].expand(B, G, S, st).reshape(B * G * S, st).to(h.dtype)
        q = (h * w[..., None]).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)[..., None]  # (B*G*S, 1, D)
        pad = w == 0
        pad = pad & ~pad.all(1, keepdim=True)          # an all-padding group would give NaN; it is zeroed later
        y = self.pack_time(q, h, key_padding_mask=pad)                         # (B*G*S, 1, D)
        return y.view(B, G, S, D)

    def compress(self, x: torch.Tensor, frame_mask: torch.Tensor, k: int) -> torch.Tensor:
        B, T, L, D = x.shape
        f, s = self.sides(k)
        flat = x.flatten(0, 1)                                                 # (B*T, L, D)
        if s == 0:
            fast = self.spatial(self.pack_fast, flat, f)                       # (B*T, f^2, D)
            return (fast + self.stream[0]).view(B, T, f * f, D)
        h = self.spatial(self.pack_slow, flat, s)                              # (B*T, s^2, D)  F^
        src = h if s >= f else flat
        fast = self.spatial(self.pack_fast, src, f).view(B, T, f * f, D)      # (B, T, f^2, D)
        slow = self.temporal(h.view(B, T, s * s, D), frame_mask)              # (B, G, s^2, D)
        group = torch.arange(T, device=x.device) // self.stride
        slow = slow[:, group]                                                  # (B, T, s^2, D) its group's tokens
        return torch.cat([fast + self.stream[0], slow + self.stream[1]], 2)    # (B, T, f^2 + s^2, D)

    def pack(self, x: torch.Tensor, frame_mask: torch.Tensor, k: int,
             slow_side: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Both streams for the LLM: fast ``(B, T, f^2, D)`` with ``k = f^2``, and slow
        ``(B, ceil(T / stride), s^2, D)`` with ``s = slow_side`` (None when 0). Padded frames and
        slow steps without a real frame come out as zeros. Grids are row-major."""
        self.check(x, frame_mask)
        B, T, L, D = x.shape
        f, s = math.isqrt(k), slow_side
        n = math.isqrt(L)
        if f * f != k or not 1 <= f <= n or not 0 <= s <= n:
            raise ValueError(f"the Spatial-Temporal Packer cannot give {k} fast tokens and a {s} x {s} slow grid "
                             f"from a {n} x {n} grid; use TokenBudget.split")
        flat = x.flatten(0, 1)                                                 # (B*T, L, D)
        fm = frame_mask[:, :, None, None].to(x.dtype)
        if s == 0:
            fast = self.spatial(self.pack_fast, flat, f).view(B, T, k, D)
            return (fast + self.stream[0]) * fm, None
        h = self.spatial(self.pack_slow, flat, s)                              # (B*T, s^2, D)  F^ (eq. 6)
        fast = self.spatial(self.pack_fast, h if s >= f else flat, f).view(B, T, k, D)   # eq. 7
        slow = self.temporal(h.view(B, T, s * s, D), frame_mask)               # (B, G, s^2, D)  eq. 8
        G = slow.shape[1]
        real = F.pad(frame_mask, (0, G * self.stride - T)).view(B, G, self.stride).any(2)   # (B, G)
        return (fast + self.stream[0]) * fm, (slow + self.stream[1]) * real[:, :, None, None].to(x.dtype)


# ------------------------------------------------------------------------------ registry

def build_identity(d: int, tokens_in: int, budget: int, k_min: int, k_max: int, seed: int = 0) -> nn.Module:
    return Identity(tokens_in, budget, k_min, k_max, seed)


def build_pool(d: int, tokens_in: int, budget: int, k_min: int, k_max: int, seed: int = 0) -> nn.Module:
    return DynamicPool(tokens_in, budget, k_min, k_max, seed)


def build_tome(d: int, tokens_in: int, budget: int, k_min: int, k_max: int, seed: int = 0) -> nn.Module:
    return TokenMerging(tokens_in, budget, k_min, k_max, seed)


def build_prune(d: int, tokens_in: int, budget: int, k_min: int, k_max: int, seed: int = 0,
                tau: float = 1.0, hidden: int = 0) -> nn.Module:
    return GumbelPrune(d, tokens_in, budget, k_min, k_max, seed, tau=tau, hidden=hidden)


def build_stp(d: int, tokens_in: int, budget: int, k_min: int, k_max: int, seed: int = 0,
              heads: int = 4, fast_side: int = STP_FAST_SIDE, stride: int = STP_STRIDE) -> nn.Module:
    return SpatialTemporalPacker(d, tokens_in, budget, k_min, k_max, seed, heads=heads, fast_side=fast_side,
                                 stride=stride)


COMPRESSOR_TYPES: dict[str, type[BudgetedCompressor]] = {
    "identity": Identity, "pool": DynamicPool, "tome": TokenMerging, "prune": GumbelPrune, "stp": SpatialTemporalPacker}

COMPRESSORS: dict[str, Callable[..., nn.Module]] = {
    "identity": build_identity,
    "pool": build_pool,
    "tome": build_tome,
    "prune": build_prune,
    "stp": build_stp,
}


def build_compressor(name: str, d: int, **kwargs) -> nn.Module:
    """Compressor ``name`` for width ``d``; kwargs: ``tokens_in, budget, k_min, k_max, seed`` + its own."""
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; choose one of {sorted(COMPRESSORS)}")
    return COMPRESSORS[name](d, **kwargs)


def _slow_first(fast: list, slow: list) -> list:
    return slow + fast


def _fast_first(fast: list, slow: list) -> list:
    return fast + slow


# The packer's two streams in the prompt (after the fusion tokens): ours puts the slow stream first;
# LLaVA-ST writes the fast tokens, then the slow ones (llava/train/train.py preprocess_multimodal:
# VID_START + fast + VID_END + SLOW_VID_START + slow + SLOW_VID_END). Works on tokens or embeddings.
STREAM_ORDERS: dict[str, Callable[[list, list], list]] = {"slow_first": _slow_first, "fast_first": _fast_first}
