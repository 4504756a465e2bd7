"""Switchable time encodings: sinusoid, Dynamic-VLM timestamps, LLaVA-ST LAPE tokens, none."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from damo.data.collate import Collator
from damo.model.processing import DamoProcessor, response_text, stack_clips, text_spans
from damo.model import tokenizer as tk
from damo.model.configuration_damo import DamoConfig
from damo.model.modeling_damo import DamoModel
from damo.model.tokenizer import train_tokenizer
from damo.train import losses
from damo.pipeline import DamoPipeline, processor_of

from helpers import clip, tiny_cfg
from test_model import TEXTS, sample

BINS = 7     # anchors at 0, 1, ..., 6 s of a 6-second clip


def build(enc: str, response: str = "interleaved", box_bins: int = 0) -> DamoModel:
    cfg = tiny_cfg()
    cfg.time_encoding, cfg.response, cfg.time_bins, cfg.box_bins = enc, response, BINS, box_bins
    torch.manual_seed(0)
    return DamoModel(cfg, train_tokenizer(TEXTS, 300)).eval()


@pytest.fixture(scope="module")
def lape() -> DamoModel:
    return build("lape", "coupled")


def test_config_rejects_unknown_encodings():
    with pytest.raises(ValueError, match="time_encoding must be one of"):
        DamoConfig.from_dict({"time_encoding": "rope"})
    with pytest.raises(ValueError, match="time_bins must be >= 2"):
        DamoConfig.from_dict({"time_encoding": "lape", "time_bins": 1})


def test_timestamp_prompt_writes_each_frames_time_before_its_tokens():
    tok = train_tokenizer(TEXTS, 300)
    proc = DamoProcessor(tok, video_tokens=3, frame_tokens=2, layout="video_first", time_encoding="timestamp")
    text = tok.decode(proc.prompt("when?", [0.5, 1.5]))
    assert text.startswith("<bos>" + "<video>" * 3 + " 0.5s:<video><video> 1.5s:<video><video><|user|>")


def test_timestamp_collate_points_frame_positions_at_the_placeholders():
    m = build("timestamp")
    b = Collator.for_model(m)([(sample(0), clip(4, 0)), (sample(1), clip(6, 1))])
    video = m.tokenizer.convert_tokens_to_ids(tk.VIDEO)
    for row, n in enumerate(b.num_frames):
        pos = b.frame_pos[row, :n, 0]
        assert (b.input_ids[row, pos] == video).all()
        # the tokens between two frames' placeholders spell the second frame's time
        assert m.tokenizer.decode(b.input_ids[row, pos[0] + 1:pos[1]]).strip() == "1.5s:"
    out = m(b)
    assert out["evi_logits"].shape == (4, 6)
    r = DamoPipeline(m).answer([clip(6, 0)], ["when does the red square appear?"], 6)[0]
    assert all(0 <= s <= e <= 6.0 for s, e, _ in r["spans"])


@pytest.mark.parametrize("enc,depends", [("sinusoid", True), ("lape", True), ("timestamp", False), ("none", False)])
def test_frame_embeddings_carry_time_only_where_they_should(enc, depends):
    m = build(enc)
    c = clip(4, 0)
    x = replace(stack_clips([c]), duration=torch.tensor([4.0]))
    with torch.no_grad():
        a = m.video_embeddings(x)[0]
        b = m.video_embeddings(replace(x, times=x.times.flip(1)))[0]
    assert (not torch.allclose(a, b)) == depends
    assert hasattr(m.connector, "time_proj") == (enc == "sinusoid")


def test_lape_adds_time_tokens_to_vocabulary_and_head(lape):
    ids = lape.time_ids
    assert lape.tokenizer.convert_ids_to_tokens(ids) == [f"<t_{i}>" for i in range(BINS)]
    assert lape.llm.get_input_embeddings().num_embeddings == len(lape.tokenizer)
    assert lape.llm.get_output_embeddings().weight.shape[0] == len(lape.tokenizer)


def test_lape_positional_embedding_trains_the_time_token_rows(lape):
    c = clip(6, 0)
    e = lape.video_embeddings(replace(stack_clips([c]), duration=torch.tensor([6.0])))[0]
    e.sum().backward()
    g = lape.llm.get_input_embeddings().weight.grad
    try:
        assert g[lape.time_ids].abs().sum(1).gt(0).all()          # every anchor is interpolated at some frame
        other = [i for i in range(g.shape[0]) if i not in set(lape.time_ids)]
        assert g[other].abs().sum() == 0
    finally:
        lape.zero_grad()


def test_lape_response_tokens_and_soft_targets(lape):
    assert response_text("grounding", "red", [[1.5, 3.0]], [], response="coupled", duration=6.0, time_bins=BINS) == \
        "red in <t_2> - <t_3> seconds."
    b = Collator.for_model(lape)([(sample(0, spans=((1.5, 3.0),)), clip(6, 0))])
    toks = lape.tokenizer.convert_ids_to_tokens(b.input_ids[0, b.coord_pos[:, 1]].tolist())
    assert toks == ["<t_2>", "<t_3>"]
    # 1.5 s of 6 s sits halfway between anchors 1 and 2; 3.0 s is anchor 3 exactly
    anchors = [lape.tokenizer.convert_ids_to_tokens(r) for r in b.coord_ids.tolist()]
    assert anchors == [["<t_1>", "<t_2>"], ["<t_3>", "<t_4>"]]
    assert b.coord_w.tolist() == [[0.5, 0.5], [1.0, 0.0]]


def test_lm_loss_uses_soft_targets_on_time_tokens(lape):
    b = Collator.for_model(lape)([(sample(0, spans=((1.5, 3.0),)), clip(6, 0))])
    torch.manual_seed(1)
    L, V = b.input_ids.shape[1], len(lape.tokenizer)
    logits = torch.randn(1, L, V)
    got = losses.lm(losses.LossInputs({"logits": logits}, b))
    # by hand: -log p(label) at ordinary response tokens, -(w . log p of the two anchors) at time tokens
    timed = {int(p) for p in b.coord_pos[:, 1]}
    terms = []
    for p in range(1, L):
        lab = int(b.labels[0, p])
        if lab == -100:
            continue
        logp = logits[0, p - 1].log_softmax(-1)
        if p in timed:
            k = sorted(timed).index(p)
            terms.append(-(b.coord_w[k] * logp[b.coord_ids[k]]).sum())
        else:
            terms.append(-logp[lab])
    assert got.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    # without LAPE the same batch is plain cross-entropy on the hard labels
    plain = replace(b, coord_pos=None)
    assert losses.lm(losses.LossInputs({"logits": logits}, plain)).item() != pytest.approx(got.item())


def test_lape_answers_render_decoded_seconds(lape):
    ids = lape.tokenizer.convert_tokens_to_ids(["<t_2>", "<t_3>"])
    body = [*lape.tokenizer("red in", add_special_tokens=False)["input_ids"], ids[0],
            *lape.tokenizer(" -", add_special_tokens=False)["input_ids"], ids[1],
            *lape.tokenizer(" seconds.", add_special_tokens=False)["input_ids"]]
    text = processor_of(lape).render(body, [], [("t", 1.5), ("t", 3.0)])
    assert text_spans(text, 6.0) == [[1.5, 3.0, 1.0]]


def test_lape_generation_reads_time_from_two_bins(lape):
    """With the head fixed to favour <t_4> (logit 10) then <t_5> (9), every step emits <t_4> and
    decodes u = 4 + p5 / (p4 + p5) = 4 + 1 / (1 + e) anchors, i.e. that many seconds of 6."""
    t4, t5 = lape.time_ids[4], lape.time_ids[5]

    def fixed(module, args, out):
        z = torch.full_like(out, -1e4)
        z[..., t4], z[..., t5] = 10.0, 9.0
        return z

    hook = lape.llm.get_output_embeddings().register_forward_hook(fixed)
    try:
        c = clip(6, 0)
        gen = lape.generate(processor_of(lape).generation_batch([c], ["when?"]), max_new_tokens=2)[0]
    finally:
        hook.remove()
    assert gen["ids"] == [t4, t4]
    assert [a for a, _ in gen["coords"]] == ["t", "t"]
    assert [v for _, v in gen["coords"]] == pytest.approx([4 + 1 / (1 + math.e)] * 2, rel=1e-5)


@pytest.mark.parametrize("enc", ["timestamp", "lape", "none"])
def test_time_encodings_round_trip_through_save_and_load(enc, tmp_path):
    m = build(enc, "coupled", box_bins=4 if enc == "lape" else 0)
    b = Collator.for_model(m)([(sample(0, spans=((1.5, 3.0),)), clip(6, 0))])
    m.save(tmp_path)
    m2 = DamoModel.load(tmp_path)
    assert m2.cfg.time_encoding == enc and m2.coord_axes == m.coord_axes
    b2 = Collator.for_model(m2)([(sample(0, spans=((1.5, 3.0),)), clip(6, 0))])
    assert torch.equal(b.input_ids, b2.input_ids)
    with torch.no_grad():
        assert torch.allclose(m(b)["logits"], m2(b2)["logits"], atol=1e-6)


def llm_inputs(m: DamoModel) -> tuple[list, object]:
    """Record the ``inputs_embeds`` of every LLM call (remove the returned hook)."""
    seen: list = []
    hook = m.llm.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["inputs_embeds"].detach()),
                                           with_kwargs=True)
    return seen, hook


def test_time_tokens_enter_the_llm_at_their_exact_value(lape):
    """1.5 s of a 6 s clip sits halfway between <t_1> (1 s) and <t_2> (2 s): the response writes the
    closer-rounded token <t_2>, but the LLM reads the mean of the two anchors' input embeddings; 3.0 s
    is <t_3> exactly."""
    b = Collator.for_model(lape)([(sample(0, spans=((1.5, 3.0),)), clip(6, 0))])
    seen, hook = llm_inputs(lape)
    try:
        with torch.no_grad():
            lape(b)
    finally:
        hook.remove()
    E = lape.llm.get_input_embeddings().weight.detach()
    t = lape.time_ids
    (p0, p1) = b.coord_pos[:, 1].tolist()
    for emb in seen:                               # the semantic-capture pass and the trained pass
        assert torch.allclose(emb[0, p0], (E[t[1]] + E[t[2]]) / 2)
        assert not torch.allclose(emb[0, p0], E[t[2]])
        assert torch.equal(emb[0, p1], E[t[3]])


def test_generated_time_tokens_are_fed_back_between_anchors(lape):
    """The head favours <t_4> (logit 10) over <t_5> (9): the step emits <t_4>, decodes
    4 + 1 / (1 + e) anchors, and the next LLM input is that interpolation of <t_4> and <t_5>."""
    t4, t5 = lape.time_ids[4], lape.time_ids[5]

    def fixed(module, args, out):
        z = torch.full_like(out, -1e4)
        z[..., t4], z[..., t5] = 10.0, 9.0
        return z

    seen, hook = llm_inputs(lape)
    head = lape.llm.get_output_embeddings().register_forward_hook(fixed)
    try:
        lape.generate(processor_of(lape).generation_batch([clip(6, 0)], ["when?"]), max_new_tokens=2)
    finally:
        hook.remove()
        head.remove()
    E = lape.llm.get_input_embeddings().weight.detach()
    w = 1 / (1 + math.e)
    assert seen[1].shape[1] == 1
    assert torch.allclose(seen[1][0, 0], (1 - w) * E[t4] + w * E[t5], atol=1e-6)


def grid_model(frame_tokens: int) -> DamoModel:
    """Pooling the fused 2 x 2 grid to ``frame_tokens`` tokens per frame at the LLM (4: the whole grid)."""
    cfg = tiny_cfg()
    cfg.time_encoding, cfg.response, cfg.time_bins, cfg.box_bins = "lape", "coupled", 5, 5
    cfg.compressor.k_max, cfg.query_aware = frame_tokens, False
    torch.manual_seed(0)
    return DamoModel(cfg, train_tokenizer(TEXTS, 300)).eval()


@pytest.mark.parametrize("k", [1, 4])
def test_frame_tokens_carry_lape_time_and_grid_position(k):
    """Frames at 0, 1, 2, 3 s of a 4 s clip sit on time anchors 0..3 of 5; a 2 x 2 grid's cell centres
    1/4 and 3/4 sit on width/height anchors 1 and 3 of 5. With the tiny model's tied embeddings each
    eq. 5 term is one token's embedding: token (r, c) of frame f gets E<t_f> + E<x_{1+2c}> + E<y_{1+2r}>.
    A single token per frame (K = 1) is no grid: time only."""
    m = grid_model(k)
    c = clip(4, 0)
    proj: list = []
    hook = m.connector.projector.register_forward_hook(lambda mod, args, out: proj.append(out))
    try:
        with torch.no_grad():
            e = m.video_embeddings(replace(stack_clips([c]), times=torch.arange(4.0)[None],
                                           duration=torch.tensor([4.0])))[0]
    finally:
        hook.remove()
    E = m.llm.get_input_embeddings().weight
    tok = m.tokenizer.convert_tokens_to_ids
    assert e.shape == (1, 4, k, E.shape[1])
    for f in range(4):
        for j in range(k):
            want = E[tok(f"<t_{f}>")]
            if k == 4:
                r, col = divmod(j, 2)
                want = want + E[tok(f"<x_{1 + 2 * col}>")] + E[tok(f"<y_{1 + 2 * r}>")]
            assert torch.allclose(e[0, f, j] - proj[0][0, f, j], want, atol=1e-5)


def test_lape_grid_model_round_trips_and_keeps_propagation(tmp_path):
    m = grid_model(4)
    b = Collator.for_model(m)([(sample(0, spans=((1.5, 3.0),)), clip(6, 0))])
    m.save(tmp_path)
    m2 = DamoModel.load(tmp_path)
    with torch.no_grad():
        assert torch.allclose(m(b)["logits"], m2(b)["logits"], atol=1e-6)
    # a loss on <t_2>'s input row alone still reaches its neighbours, halving per anchor
    t = m2.time_ids
    m2.llm.get_input_embeddings()(torch.tensor([t[2]])).sum().backward()
    g = m2.llm.get_input_embeddings().weight.grad[t].sum(1) / m2.llm.get_input_embeddings().weight.shape[1]
    assert g.tolist() == pytest.approx([0.25, 0.5, 2.0, 0.5, 0.25])


def test_tiny_lape_model_with_boxes_trains(tmp_path):
    """A few steps of temporal grounding with time and box tokens on procedural where-and-when data:
    the loss falls, the coordinate rows train, and the model answers with a tube."""
    from damo.config import Stage
    from damo.data.dataset import ClipLoader, load_dataset
    from damo.train.loop import run_stage

    samples = load_dataset("synth://easy?n=4&seed=0&stvg=1")
    assert any(s.task == "stvg" for s in samples)
    m = grid_model(4).train()
    coord = sorted(m.axis_of)
    before = m.llm.get_input_embeddings().weight[coord].detach().clone()
    stage = Stage(name="ground", losses={"lm": 1.0, "grounding_bce": 1.0}, steps=6, batch=4, lr=3e-3, warmup=1,
                  trainable=["projector.*", "llm.*", "evidence.*"])
    got = run_stage(m, stage, samples, ClipLoader(processor_of(m), memory=True), 0, progress=False)
    assert got["lm"] < got["lm_start"]
    after = m.llm.get_input_embeddings().weight[coord].detach()
    assert (after - before).abs().sum(1).gt(0).all()
    m.save(tmp_path)
    assert DamoModel.load(tmp_path).coord_axes == m.coord_axes
