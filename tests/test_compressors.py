"""Contract tests of the token compressors: shapes, budgets, gradients, determinism, padding, reload."""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from damo.model.compressors import (COMPRESSORS, SpatialTemporalPacker, TokenBudget, bipartite_merge, budget_tokens,
                                    build_compressor, region_mask)

D, L = 32, 16          # a 4 x 4 grid of tokens
ARGS = dict(tokens_in=L, budget=64, k_min=2, k_max=9, seed=3)
NAMES = sorted(COMPRESSORS)


def make(name: str, **over) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_compressor(name, D, **{**ARGS, **over})


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, L, D, generator=torch.Generator().manual_seed(seed))


def test_registry_and_bad_names():
    assert set(COMPRESSORS) == {"identity", "pool", "tome", "prune", "stp"}
    with pytest.raises(ValueError, match="unknown compressor"):
        build_compressor("nope", D, **ARGS)
    with pytest.raises(ValueError, match="k_min <= k_max"):
        build_compressor("pool", D, **{**ARGS, "k_min": 5, "k_max": 4})
    with pytest.raises(ValueError, match="square grid"):
        build_compressor("stp", D, **{**ARGS, "tokens_in": 12})


def test_budget_formula():
    assert budget_tokens(8, 64, 2, 9, 16) == 8             # floor(64 / 8)
    assert budget_tokens(2, 64, 2, 9, 16) == 9             # capped by k_max
    assert budget_tokens(2, 64, 2, 40, 16) == 16           # never more than a frame has
    assert budget_tokens(600, 2048, 4, 64, 576) == 3       # the budget beats k_min
    with pytest.raises(ValueError, match="fewer frames|at most"):
        budget_tokens(100, 50, 1, 4, 16)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [3, 8, 20])
def test_shapes_and_k_follow_the_budget(name, T):
    m = make(name).eval()
    k = m.tokens_per_frame(T, training=False)
    raw = min(64 // T, 9)
    expected = {"identity": L, "pool": math.isqrt(raw) ** 2, "tome": raw, "prune": raw,
                "stp": 1 + math.isqrt(raw - 1) ** 2}[name]
    assert k == expected
    with torch.no_grad():
        y = m(tokens(2, T), torch.ones(2, T, dtype=torch.bool))
    assert y.shape == (2, T, k, D)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["pool", "tome", "prune", "stp"])
def test_long_video_respects_budget(name):
    m = build_compressor(name, D, tokens_in=576, budget=2048, k_min=4, k_max=64).eval()
    k = m.tokens_per_frame(600, training=False)
    assert 1 <= k <= 2048 // 600
    assert 600 * k <= 2048
    # and the module really emits that many tokens for a long (smaller-grid) video
    m = build_compressor(name, D, tokens_in=64, budget=1000, k_min=4, k_max=64).eval()
    k = m.tokens_per_frame(300, training=False)
    with torch.no_grad():
        y = m(torch.randn(1, 300, 64, D), torch.ones(1, 300, dtype=torch.bool))
    assert y.shape == (1, 300, k, D) and 300 * k <= 1000


def test_prune_training_noise_is_seeded():
    a, b = make("prune").train(), make("prune").train()
    x, mask = tokens(1, 4), torch.ones(1, 4, dtype=torch.bool)
    assert torch.equal(a(x, mask, 3), b(x, mask, 3))
    c = make("prune", seed=11).train()
    assert not torch.equal(a(x, mask, 3), c(x, mask, 3))


@pytest.mark.parametrize("name", ["pool", "tome", "prune", "stp"])
def test_training_draws_are_seeded_and_in_range(name):
    a, b = make(name).train(), make(name).train()
    ka = [a.tokens_per_frame(4, training=True) for _ in range(40)]
    kb = [b.tokens_per_frame(4, training=True) for _ in range(40)]
    assert ka == kb                                          # same seed -> same draws
    allowed = {a.snap(k) for k in range(2, 10)}
    assert set(ka) <= allowed and len(set(ka)) > 1
    c = make(name, seed=4).train()
    assert [c.tokens_per_frame(4, training=True) for _ in range(40)] != ka
    # the budget caps the draws too: 20 frames x 3 tokens <= 64
    assert max(a.tokens_per_frame(20, training=True) for _ in range(40)) <= 3


def test_identity_passes_tokens_through():
    x = tokens(1, 3)
    assert torch.equal(make("identity")(x, torch.ones(1, 3, dtype=torch.bool)), x)


def test_pool_equals_adaptive_avg_pool_by_hand():
    m = make("pool")
    x = torch.arange(16.0).view(1, 1, 16, 1).expand(1, 1, 16, D).contiguous()   # grid values 0..15
    y = m(x, torch.ones(1, 1, dtype=torch.bool), k=4)
    # 4x4 grid rows [0..3], [4..7], ... -> 2x2 block means
    assert torch.allclose(y[0, 0, :, 0], torch.tensor([2.5, 4.5, 10.5, 12.5]))
    with pytest.raises(ValueError, match="cannot produce 5"):
        m(x, torch.ones(1, 1, dtype=torch.bool), k=5)


def test_bipartite_merge_by_hand():
    # A = tokens 0, 2; B = tokens 1, 3. Token 2 is parallel to token 3 (cos 1), token 0 is not
    # close to anything, so r=1 merges 2 into 3 with the size-weighted mean.
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [1.0, 1.0]]])
    size = torch.tensor([[1.0, 1.0, 3.0, 1.0]])
    pos = torch.arange(4)[None]
    y, s, p = bipartite_merge(x, size, pos, 1)
    assert p.tolist() == [[0, 1, 3]]
    assert torch.allclose(y, torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.75, 1.75]]]))
    assert s.tolist() == [[1.0, 1.0, 4.0]]


def test_tome_merges_duplicates_first():
    x = torch.randn(1, 1, L, D, generator=torch.Generator().manual_seed(1))
    x[0, 0, 1] = x[0, 0, 0] * 2          # same direction as token 0: merged first
    m = make("tome")
    y = m(x, torch.ones(1, 1, dtype=torch.bool), k=L - 1)
    assert torch.allclose(y[0, 0, 0], x[0, 0, :2].mean(0), atol=1e-6)
    assert torch.allclose(y[0, 0, 1:], x[0, 0, 2:])
    # several rounds (16 -> 8 -> 4): each round merges at most half the tokens
    assert m(x, torch.ones(1, 1, dtype=torch.bool), k=4).shape == (1, 1, 4, D)


def test_prune_inference_keeps_topk_in_order():
    m = make("prune").eval()
    x = tokens(1, 2)
    with torch.no_grad():
        s = m.scorer(x).squeeze(-1)
        y = m(x, torch.ones(1, 2, dtype=torch.bool), k=5)
    idx = s.topk(5, -1).indices.sort(-1).values
    assert torch.equal(y, x.gather(2, idx[..., None].expand(-1, -1, -1, D)))


def test_prune_training_gradient_reaches_scorer_and_values_are_tokens():
    m = make("prune").train()
    x = tokens(2, 3).requires_grad_(True)
    y = m(x, torch.ones(2, 3, dtype=torch.bool), k=4)
    # forward values are exactly input tokens (straight-through), kept in their original order
    rows = x.detach().flatten(0, 1)                              # (6, L, D)
    for i, frame in enumerate(y.detach().flatten(0, 1)):
        hits = [next(j for j in range(L) if torch.equal(t, rows[i, j])) for t in frame]
        assert hits == sorted(hits)
    (y * torch.randn_like(y)).sum().backward()
    g = [p.grad for p in m.scorer.parameters()]
    assert all(gi is not None and gi.abs().sum() > 0 for gi in g)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_region_mask_matches_adaptive_pool_bins():
    m = region_mask(5, 2)                                        # bins [0, 3) and [2, 5) per axis
    allowed = (~m).view(2, 2, 5, 5)
    assert allowed[0, 0, :3, :3].all() and not allowed[0, 0, 3:].any() and not allowed[0, 0, :, 3:].any()
    assert allowed[1, 1, 2:, 2:].all() and not allowed[1, 1, :2].any()
    x = torch.randn(1, 3, 5, 5)
    pooled = F.adaptive_avg_pool2d(x, 2).flatten(2)              # (1, 3, 4)
    by_mask = torch.stack([x.flatten(2)[..., ~m[i]].mean(-1) for i in range(4)], -1)
    assert torch.allclose(pooled, by_mask, atol=1e-6)


def test_stp_layout_and_gradients():
    m = make("stp", budget=10 ** 6, k_max=5, fast_side=1, stride=2).train()
    assert m.sides(5) == (1, 2)
    x = tokens(1, 5).requires_grad_(True)
    y = m(x, torch.ones(1, 5, dtype=torch.bool), k=5)            # 1 fast + 4 slow tokens per frame
    assert y.shape == (1, 5, 5, D)
    # frames of one slow group share their slow tokens; fast tokens are per frame
    assert torch.equal(y[0, 0, 1:], y[0, 1, 1:]) and torch.equal(y[0, 2, 1:], y[0, 3, 1:])
    assert not torch.equal(y[0, 1, 1:], y[0, 2, 1:])
    assert not torch.equal(y[0, 0, 0], y[0, 1, 0])
    y.square().sum().backward()
    for pack in (m.pack_slow, m.pack_fast, m.pack_time):
        w = pack.attn.in_proj_weight.grad
        assert w is not None and w.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_stp_untrained_attention_off_is_pooling():
    """With the attention output zeroed the packer reduces to region means (its design start)."""
    m = make("stp", fast_side=1, stride=1).eval()
    for pack in (m.pack_slow, m.pack_fast, m.pack_time):
        torch.nn.init.zeros_(pack.attn.out_proj.weight)
        torch.nn.init.zeros_(pack.attn.out_proj.bias)
    x = tokens(1, 2)
    with torch.no_grad():
        y = m(x, torch.ones(1, 2, dtype=torch.bool), k=5)
    grid = x.flatten(0, 1).transpose(1, 2).reshape(2, D, 4, 4)
    assert torch.allclose(y[0, :, 1:], F.adaptive_avg_pool2d(grid, 2).flatten(2).transpose(1, 2), atol=1e-5)
    assert torch.allclose(y[0, :, 0], x[0].mean(1), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_inference_is_deterministic(name):
    m = make(name).eval()
    x, mask = tokens(2, 6), torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(m(x, mask), m(x, mask))


@pytest.mark.parametrize("name", NAMES)
def test_padding_frames_do_not_change_real_frames(name):
    m = make(name, stride=3).eval() if name == "stp" else make(name).eval()
    x = tokens(1, 5)
    padded = torch.cat([x, 100 * tokens(1, 4, seed=9)], 1)      # 4 padding frames of garbage
    mask = torch.tensor([[True] * 5 + [False] * 4])
    with torch.no_grad():
        k = m.tokens_per_frame(9, training=False)
        a = m(x, torch.ones(1, 5, dtype=torch.bool), k)
        b = m(padded, mask, k)
    assert torch.allclose(a, b[:, :5], atol=1e-5)
    assert (b[:, 5:] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    m = make(name).eval()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    torch.manual_seed(123)                                      # different init
    n = build_compressor(name, D, **ARGS).eval()
    n.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    x, mask = tokens(2, 4), torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(m(x, mask), n(x, mask))


def test_bad_inputs_have_clear_errors():
    m = make("pool")
    with pytest.raises(ValueError, match="built for 16 tokens"):
        m(torch.randn(1, 2, 9, D), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, T, L, D\)"):
        m(torch.randn(2, L, D), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="frame_mask"):
        m(tokens(1, 2), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="fast_side and stride"):
        SpatialTemporalPacker(D, L, 64, 1, 4, stride=0)


# ------------------------------------------------------------------ at the LLM (placement llm)
def test_token_budget_per_frame_and_slow_stream():
    pool, tome = TokenBudget("pool", 16, 240), TokenBudget("tome", 16, 240)
    assert pool.split(30) == (4, 0) and tome.split(30) == (8, 0)             # floor(240 / 30) = 8 -> pool 2 x 2
    assert TokenBudget("identity", 16, 240).split(300) == (16, 0)           # the reference ignores the budget
    assert TokenBudget("identity", 16, 240).frame_cap() == 0 and pool.frame_cap() == 240
    assert TokenBudget("pool", 16, 240, k_min=4).frame_cap() == 60          # then frames are grouped
    # LLaVA-ST's sizes: 100 frames, 3 x 3 fast, sigma = 20 slow steps of 9 x 9 -> 2,520 tokens
    stp = TokenBudget("stp", 81, 2520, k_max=81, fast_side=3, stride=5)
    assert stp.split(100) == (9, 9) and stp.tokens(100) == 2520
    # fast tokens first: 1,000 tokens leave 100 for 20 slow steps of 2 x 2
    assert TokenBudget("stp", 81, 1000, k_max=81, fast_side=3, stride=5).split(100) == (9, 2)


@pytest.mark.parametrize("kind", ["pool", "tome", "prune", "stp"])
def test_token_budget_always_holds(kind):
    for budget in (20, 48, 160, 480, 2048):
        tb = TokenBudget(kind, 16, budget, k_min=1, k_max=16, fast_side=2, stride=4)
        for Tl in range(1, min(tb.frame_cap(), 300) + 1):
            k, s = tb.split(Tl)
            assert k >= 1 and tb.tokens(Tl) <= budget, (budget, Tl, k, s)


@pytest.mark.parametrize("name", NAMES)
def test_pack_shapes_and_padded_frames(name):
    m = make(name, stride=3).eval() if name == "stp" else make(name).eval()
    tb = TokenBudget(name, L, 48, k_max=9, stride=3)
    k, s = tb.split(7)
    x = tokens(2, 7)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.no_grad():
        y, slow = m.pack(x, mask, k, s)
        alone, alone_slow = m.pack(x[1:, :4], mask[1:, :4], k, s)
    assert y.shape == (2, 7, k, D) and (y[1, 4:] == 0).all()
    assert torch.allclose(y[1, :4], alone[0], atol=1e-5)
    if name != "stp":
        assert slow is None and s == 0
        return
    assert (k, s) == (1, 3) and slow.shape == (2, 3, 9, D)                 # 7 frames: slow steps 0-2, 3-5, 6
    assert (slow[1, 2] == 0).all() and torch.allclose(slow[1, :2], alone_slow[0], atol=1e-5)
    with pytest.raises(ValueError, match="cannot give"):
        m.pack(x, mask, 2, s)
