"""LAPE coordinate tokens: tokenizer additions, soft targets, decoding, interpolation, prompts."""
from __future__ import annotations

import pytest
import torch

from damo.model import coordinates as co
from damo.model.tokenizer import train_tokenizer

TEXTS = ["when does the red square appear at 12 seconds?", "the x and y of the box", "t 1 2 3 <t x y"] * 10


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300)


def test_time_and_box_tokens_are_single_tokens(tok):
    before = len(tok)
    ids = co.add_time_tokens(tok, 16)
    xs, ys = co.add_box_tokens(tok, 10)
    assert len(tok) == before + 16 + 20
    assert ids == list(range(ids[0], ids[0] + 16))
    assert co.add_time_tokens(tok, 16) == ids                     # idempotent
    text = "from <t_3> to <t_15> at <x_0><y_9><x_4> <y_2> then <t_1>x"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    for name, i in [("<t_3>", ids[3]), ("<t_15>", ids[15]), ("<x_0>", xs[0]), ("<y_9>", ys[9]),
                    ("<x_4>", xs[4]), ("<y_2>", ys[2]), ("<t_1>", ids[1])]:
        assert tok.convert_ids_to_tokens(i) == name
        assert i in enc
    # <t_1> is not merged into <t_15> and the digits of ordinary text still tokenise normally
    assert enc.count(ids[1]) == 1 and enc.count(ids[15]) == 1
    assert tok("12 seconds", add_special_tokens=False)["input_ids"] == \
        train_tokenizer(TEXTS, 300)("12 seconds", add_special_tokens=False)["input_ids"]


def test_decode_position_inverts_two_anchor_targets():
    g = torch.Generator().manual_seed(0)
    n = 32
    rel = torch.rand(500, generator=g)
    y = torch.zeros(500, n)
    for i, r in enumerate(rel.tolist()):                            # the processor's two-anchor soft targets
        lo, w = co.anchor_pair(r, n)
        y[i, lo], y[i, lo + 1] = 1 - w, w
    assert torch.allclose(co.decode_position(y.clamp(min=1e-12).log()), rel, atol=2e-5)   # logits whose softmax is y
    # noisy logits still decode within half a bin of the truth
    noisy = y.clamp(min=1e-12).log().clamp(min=-8) + 0.05 * torch.randn(500, n, generator=g)
    assert ((co.decode_position(noisy) - rel).abs() <= 1 / (n - 1) / 2).all()


def test_decode_picks_top_and_its_better_neighbour():
    # top anchor 2 (p .5), neighbours 1 (p .1) and 3 (p .3): u = (2*.5 + 3*.3) / .8 = 2.375
    p = torch.tensor([0.05, 0.1, 0.5, 0.3, 0.05])
    assert co.decode_position(p.log()).item() == pytest.approx(2.375 / 4)
    # top at the end of the axis uses its only neighbour
    p = torch.tensor([0.1, 0.1, 0.1, 0.2, 0.5])
    assert co.decode_position(p.log()).item() == pytest.approx((4 * 0.5 + 3 * 0.2) / 0.7 / 4)
    # a far-away second mode is ignored: only the two nearest anchors count
    p = torch.tensor([0.45, 0.0, 0.0, 0.0, 0.55]).clamp(min=1e-9)
    assert co.decode_position(p.log()).item() == pytest.approx(1.0, abs=1e-6)


def test_frame_time_embedding_exact_at_anchors_and_linear_between():
    n, C = 5, 3
    e_in = torch.arange(n * C, dtype=torch.float32).view(n, C)
    e_out = 3 * e_in
    rho = (e_in + e_out) / 2
    dur = torch.tensor([8.0, 4.0])
    times = torch.tensor([[0.0, 2.0, 8.0], [1.0, 1.5, 4.0]])         # anchors every 2 s and 1 s
    emb = co.frame_time_embedding(e_in, e_out, times, dur)
    assert emb.shape == (2, 3, C)
    assert torch.equal(emb[0], rho[[0, 1, 4]])
    assert torch.equal(emb[1, 0], rho[1]) and torch.equal(emb[1, 2], rho[4])
    assert torch.allclose(emb[1, 1], (rho[1] + rho[2]) / 2)


def test_frame_time_embedding_gradient_reaches_both_tables():
    e_in = torch.randn(6, 4, requires_grad=True)
    e_out = torch.randn(6, 4, requires_grad=True)
    co.frame_time_embedding(e_in, e_out, torch.tensor([[0.5, 1.5, 2.5]]), torch.tensor([3.0])).sum().backward()
    assert e_in.grad.abs().sum() > 0 and torch.equal(e_in.grad, e_out.grad)
    with pytest.raises(ValueError, match=r"times \(B, T\)"):
        co.frame_time_embedding(e_in, e_out, torch.tensor([0.5]), torch.tensor([3.0]))
    with pytest.raises(ValueError, match="duration must be > 0"):
        co.frame_time_embedding(e_in, e_out, torch.tensor([[0.5]]), torch.tensor([0.0]))


def test_grid_position_embedding_cell_centres():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])           # value = anchor index on channel 0
    y = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])           # ... on channel 1
    e = co.grid_position_embedding(2, 4, {"x": (x, x), "y": (y, y)})
    assert e.shape == (8, 2)
    # column centres 1/8, 3/8, 5/8, 7/8 -> anchor units 0.25, 0.75, 1.25, 1.75; rows 0.5, 1.5
    assert torch.allclose(e[:4, 0], torch.tensor([0.25, 0.75, 1.25, 1.75]))
    assert torch.allclose(e[::4, 1], torch.tensor([0.5, 1.5]))


def test_grid_position_embedding_2x2_by_hand():
    """Eq. 5 on a 2 x 2 grid with 3 anchors per axis: cell centres 1/4 and 3/4 sit halfway between
    anchors 0|1 and 1|2; each axis contributes the mean of its input and output rows there."""
    x_in = torch.tensor([[0.0, 0, 0, 0], [4, 0, 0, 0], [8, 0, 0, 0]])
    x_out = torch.tensor([[0.0, 0, 0, 0], [0, 4, 0, 0], [0, 8, 0, 0]])
    y_in = torch.tensor([[0.0, 0, 0, 0], [0, 0, 4, 0], [0, 0, 8, 0]])
    y_out = torch.tensor([[0.0, 0, 0, 0], [0, 0, 0, 4], [0, 0, 0, 8]])
    e = co.grid_position_embedding(2, 2, {"x": (x_in, x_out), "y": (y_in, y_out)})
    # rho_x(1/4) = (x_in[0] + x_in[1]) / 4 + (x_out[0] + x_out[1]) / 4 = [1, 1, 0, 0]; at 3/4: [3, 3, 0, 0]
    assert torch.equal(e, torch.tensor([[1.0, 1, 1, 1],     # row 0, col 0
                                        [3, 3, 1, 1],       # row 0, col 1
                                        [1, 1, 3, 3],       # row 1, col 0
                                        [3, 3, 3, 3]]))     # row 1, col 1
    assert torch.equal(co.grid_position_embedding(1, 1, {"x": (x_in, x_out), "y": (y_in, y_out)}), torch.zeros(1, 4))


def test_propagation_keeps_values_and_shares_gradients_with_neighbours():
    m = co.propagation_matrix(4)
    assert m[0].tolist() == [1.0, 0.5, 0.25, 0.125] and torch.equal(m, m.T)
    rows = torch.randn(4, 3, requires_grad=True)
    out = co.propagate(rows, m)
    assert torch.equal(out, rows)
    # a gradient on anchor 1 alone reaches every anchor as (I + M) g: 2x itself, halving per step away
    g = torch.zeros(4, 3)
    g[1] = torch.tensor([1.0, -2.0, 4.0])
    out.backward(g)
    assert torch.allclose(rows.grad, torch.tensor([0.5, 2.0, 0.5, 0.25])[:, None] * g[1])


def test_one_step_from_equal_rows_leaves_neighbours_closest():
    """LLaVA-ST initialises new rows equal (the vocabulary mean). One SGD step with a loss on one
    anchor moves anchor j by 2^-|i-j| of anchor i's gradient, so after the step the anchors' distance
    grows with their index distance; independent rows would move anchor i alone."""
    rows = torch.ones(6, 3).requires_grad_()
    (co.propagate(rows, co.propagation_matrix(6))[2] * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    new = rows.detach() - 0.1 * rows.grad
    d = torch.cdist(new, new)
    assert d[2, 1] == d[2, 3] < d[2, 0] < d[2, 5] and d[0, 1] < d[0, 2]
    assert (rows.grad.norm(dim=1) > 0).all()


def test_interpolate_anchors_between_two_anchors():
    table = torch.tensor([[0.0, 10.0], [4.0, 20.0], [8.0, 40.0], [12.0, 80.0], [16.0, 160.0]])
    # 0.3 of the axis with 5 anchors is 1.2 anchor steps: 0.8 of anchor 1 + 0.2 of anchor 2
    assert torch.allclose(co.interpolate_anchors(table, torch.tensor(0.3)), 0.8 * table[1] + 0.2 * table[2])
    assert co.anchor_pair(0.3, 5) == (1, pytest.approx(0.2))
    assert torch.equal(co.interpolate_anchors(table, torch.tensor([0.0, 1.0, 1.5])), table[[0, 4, 4]])


def test_box_tokens_are_the_closest_anchors():
    n = 11
    toks = co.box_to_tokens([0.12, 0.5, 0.71, 1.0], n)
    assert toks == ["<x_1>", "<y_5>", "<x_7>", "<y_10>"]
    with pytest.raises(ValueError, match="swapped"):
        co.box_to_tokens([0.5, 0.1, 0.2, 0.3], n)


def test_time_to_token_closest_anchor():
    assert co.time_to_token(6.0, 20.0, 5) == "<t_1>"      # anchors 0, 5, 10, 15, 20
    assert co.time_to_token(8.0, 20.0, 5) == "<t_2>"
    assert co.time_to_token(30.0, 20.0, 5) == "<t_4>"
    with pytest.raises(ValueError, match="at least 2"):
        co.time_token_names(1)


def test_timestamp_prompt():
    assert co.timestamp_prompt([1, 2, 3]) == ["1s: ", "2s: ", "3s: "]
    assert co.timestamp_prompt([0.5, 1.5, 12.25]) == ["0.5s: ", "1.5s: ", "12.2s: "]
    assert co.timestamp_prompt([0.0, 3.6], decimals=0) == ["0s: ", "4s: "]


def test_anchor_tables_read_the_llm_rows():
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = train_tokenizer(TEXTS, 300)          # its own tokenizer: the shared one counts its additions
    ids = co.add_time_tokens(tok, 8)
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(Qwen2Config(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=False))
    e_in, e_out = co.anchor_tables(llm, ids)                         # same values, propagated gradients
    assert torch.equal(e_in, llm.get_input_embeddings().weight[ids])
    assert torch.equal(e_out, llm.lm_head.weight[ids])
    emb = co.frame_time_embedding(e_in, e_out, torch.tensor([[0.5, 3.5]]), torch.tensor([4.0]))
    emb.sum().backward()                                             # LAPE trains the token rows
    assert llm.get_input_embeddings().weight.grad[ids].abs().sum() > 0
    assert llm.lm_head.weight.grad[ids].abs().sum() > 0


def test_time_positions_work_on_meta_tensors_for_planning():
    """`damo plan` runs LAPE on the meta device, where durations carry no values to check."""
    table = torch.zeros(8, 4, device="meta")
    times = torch.ones(3, 5, device="meta")
    assert co.frame_time_embedding(table, table, times, torch.full((3,), 10.0, device="meta")).shape == (3, 5, 4)
    with pytest.raises(ValueError, match="> 0 seconds"):
        co.frame_time_embedding(torch.zeros(8, 4), torch.zeros(8, 4), torch.ones(3, 5), torch.zeros(3))


def test_registered_propagation_keeps_outputs_and_propagates_row_gradients():
    """On an LLM with an untied head: the same logits, and the gradient on every coordinate row of the
    embeddings and the head becomes (I + M) g per axis (axes do not mix); other rows are untouched."""
    import copy

    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = train_tokenizer(TEXTS, 300)
    axes = {"t": co.add_time_tokens(tok, 4)}
    axes["x"], axes["y"] = co.add_box_tokens(tok, 3)
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(Qwen2Config(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=False))
    ntp = copy.deepcopy(plain)
    co.register_propagation(ntp, axes)
    ids = torch.tensor([[5, axes["t"][1], 7, axes["x"][0], axes["y"][2], 9]])
    grads = []
    for llm in (plain, ntp):
        logits = llm(input_ids=ids).logits
        (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
        grads.append((logits.detach(), llm.get_input_embeddings().weight.grad, llm.lm_head.weight.grad))
    (l0, e0, h0), (l1, e1, h1) = grads
    assert torch.equal(l0, l1)
    coord = [i for a in axes.values() for i in a]
    other = [i for i in range(len(tok)) if i not in coord]
    for g0, g1 in ((e0, e1), (h0, h1)):
        assert torch.allclose(g1[other], g0[other])
        for a in axes.values():
            want = (torch.eye(len(a)) + co.propagation_matrix(len(a))) @ g0[a]
            assert torch.allclose(g1[a], want, atol=1e-6)
    # the input rows of the never-seen anchors <t_0>, <t_2>, <t_3>, <x_1>, ... now train too
    assert e0[axes["t"][0]].abs().sum() == 0 and e1[axes["t"][0]].abs().sum() > 0
