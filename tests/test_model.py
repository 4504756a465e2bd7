"""Tensor contracts of the model parts, evidence decoding, losses and save/load."""
from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from damo.data.collate import Collator
from damo.model.batch import Batch
from damo.model.processing import DamoProcessor, frame_targets, response_text
from damo.model.encoders import TinyAudioEncoder, TinyViT
from damo.model.evidence import salient_frames
from damo.model.fuseformer import TemporalFuseformer
from damo.model.modeling_damo import DamoModel
from damo.model.residual import GlobalResidual
from damo.model.tokenizer import EVI, train_tokenizer
from damo.data.schema import Sample
from damo.train import losses
from damo.pipeline import DamoPipeline, processor_of
from helpers import clip, tiny_cfg

TEXTS = ["when does the red square appear?", "the high tone plays", "It happens in", "The relevant event happens in",
         "what colour is the shape?", "red", "a low tone", "describe the events with their times."] * 20


@pytest.fixture(scope="module")
def model() -> DamoModel:
    torch.manual_seed(0)
    return DamoModel(tiny_cfg(), train_tokenizer(TEXTS, 300)).eval()


def sample(i: int, task: str = "grounding", spans=((1.0, 3.0),)) -> Sample:
    return Sample(id=str(i), video=f"v{i}", duration=6.0, task=task, query="when does the red square appear?",
                  answer="red", spans=[list(s) for s in spans])


def test_encoder_shapes():
    v = TinyViT(32, 8, 64, 1, 2)(torch.rand(2, 3, 3, 32, 32))
    assert v.shape == (2, 3, 17, 64)
    a = TinyAudioEncoder(32, 25, 5, 48, 1, 2)(torch.randn(2, 3, 25, 32))
    assert a.shape == (2, 3, 6, 48)
    with pytest.raises(ValueError, match="multiple of patch"):
        TinyViT(30, 8)


def test_global_residual_pools_and_adds_global():
    r = GlobalResidual(16, 8, tokens=4, grid=True)
    x = torch.randn(2, 3, 1 + 16, 16)
    y = r(x)
    assert y.shape == (2, 3, 4, 8)
    # changing only the global (CLS) token shifts every pooled token by the same FFN output
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    d = r(x2) - y
    assert torch.allclose(d, d[:, :, :1].expand_as(d), atol=1e-6)
    # 1-D pooling for audio
    assert GlobalResidual(16, 8, tokens=2, grid=False)(torch.randn(1, 2, 7, 16)).shape == (1, 2, 2, 8)
    with pytest.raises(ValueError, match="square"):
        GlobalResidual(16, 8, tokens=3, grid=True)


def test_fuseformer_shapes_and_padding_invariance():
    torch.manual_seed(0)
    f = TemporalFuseformer(d=32, blocks=2, heads=4, visual_queries=4, audio_queries=2, fusion_tokens=3,
                           frame_tokens=2).eval()
    v, a = torch.randn(1, 3, 4, 32), torch.randn(1, 3, 2, 32)
    fr, fu = f(v, a, torch.ones(1, 3, dtype=torch.bool))
    assert fr.shape == (1, 3, 2, 32) and fu.shape == (1, 3, 32)
    # the same clip padded with 2 garbage frames gives the same outputs on its real frames
    vp = torch.cat([v, torch.randn(1, 2, 4, 32)], 1)
    ap = torch.cat([a, torch.randn(1, 2, 2, 32)], 1)
    mask = torch.tensor([[True, True, True, False, False]])
    frp, fup = f(vp, ap, mask)
    assert torch.allclose(frp[:, :3], fr, atol=1e-5) and torch.allclose(fup, fu, atol=1e-5)


def test_frame_targets_mark_window_centres_inside_span():
    assert frame_targets([[2.0, 5.0]], 8, 1.0).tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert frame_targets([[1.0, 2.0], [6.0, 8.0]], 8, 1.0).tolist() == [0, 1, 0, 0, 0, 0, 1, 1]
    # a span shorter than one window still marks its nearest frame
    assert frame_targets([[3.2, 3.4]], 8, 1.0).tolist() == [0, 0, 0, 1, 0, 0, 0, 0]


def test_salient_run_and_interval_decoding():
    s = np.array([0.1, 0.7, 0.9, 0.65, 0.2, 0.95, 0.1])
    # threshold 0.6 x 0.95 = 0.57 keeps frames 1-3 (mean 0.75, sum 2.25) and frame 5 (0.95)
    assert salient_frames(s, 0.6) == (5, 5)                  # official find_and_merge: highest mean
    assert salient_frames(s, 0.6, "sum") == (1, 3)           # highest sum: the longer run wins
    tok = train_tokenizer(["a b"], 300)
    proc = DamoProcessor(tok)
    assert proc.run_span(*salient_frames(s, 0.6, "sum"), 1, 6.5) == [1.0, 4.0]     # frames 1-3: their windows
    # a high threshold keeps only the peak; the end is clipped to the duration
    assert proc.run_span(*salient_frames(s, 0.99), 1, 5.5) == [5.0, 5.5]
    # at 2 fps a frame covers half a second
    assert DamoProcessor(tok, fps=2.0).run_span(*salient_frames(s, 0.6, "sum"), 1, 10.0) == [0.5, 2.0]
    with pytest.raises(ValueError, match="decode"):
        salient_frames(s, 0.6, "max")


def test_grounding_bce_and_consistency_by_hand():
    out = {"logits": torch.zeros(1, 2, 3), "evi_logits": torch.tensor([[0.0, 2.0, -1.0]]),
           "evi_features": torch.tensor([[1.0, 2.0], [1.5, 1.0]])}
    batch = Batch(evi_mask=torch.tensor([[True, True, False]]), evi_batch=torch.tensor([0]),
                  evi_targets=torch.tensor([[0.0, 1.0, 1.0]]), cons_pairs=torch.tensor([[0, 1]]))
    # padded third frame excluded: mean(-log(1 - s(0)), -log(s(2)))
    want = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert float(losses.grounding_bce(losses.LossInputs(out, batch))) == pytest.approx(want, rel=1e-6)
    assert float(losses.consistency(losses.LossInputs(out, batch))) == pytest.approx((0.5 + 1.0) / 2)


def test_lm_loss_ignores_prompt_tokens():
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 2] = 5.0   # position 1 predicts token at position 2
    batch = Batch(labels=torch.tensor([[-100, -100, 2]]))
    want = -math.log(math.exp(5) / (math.exp(5) + 3))
    assert float(losses.lm(losses.LossInputs({"logits": logits}, batch))) == pytest.approx(want, rel=1e-6)


def test_response_format_follows_grounding_then_answering():
    assert response_text("grounding", "", [[1, 2]], []) == "<evi> </evi> It happens in <evi>."
    assert response_text("grounding", "the red square is on screen", [[1, 2]], []) == \
        "<evi> </evi> the red square is on screen in <evi>."
    assert response_text("grounded_qa", "red", [[1, 2], [4, 5]], []) == \
        "<evi> <evi> </evi> red. The relevant event happens in <evi> and <evi>."
    assert response_text("dense_caption", "", [[1, 2], [3, 4]], ["a beep", "a red square"]) == \
        "<evi> <evi> </evi> <evi>, a beep. <evi>, a red square."


def test_collate_placeholders_labels_and_evidence_targets(model):
    col = Collator(DamoProcessor(model.tokenizer, video_tokens=model.cfg.bridge_tokens, frame_tokens=1, fps=1.0, layout="video_first"))
    b = col([(sample(0), clip(6, 0)), (sample(1, "multi_grounding", ((0, 1), (2, 4))), clip(4, 1))])
    vid = model.video_id
    assert (b.input_ids[0] == vid).sum() == 8 + 6 and (b.input_ids[1] == vid).sum() == 8 + 4
    # 2 <evi> for the first sample (grounding + answer), 4 for the second
    assert b.evi_batch.tolist() == [0, 0, 1, 1, 1, 1]
    assert all(int(b.input_ids[bi, p]) == model.evi_id for bi, p in zip(b.evi_batch, b.evi_pos))
    # soft targets (official D²VLM): 1 on the span's frames, 2^-distance elsewhere
    assert b.evi_targets[0].tolist() == [0.5, 1, 1, 0.5, 0.25, 0.125]
    assert b.evi_targets[3].tolist() == [0.25, 0.5, 1, 1, 0, 0]  # padded frames stay 0
    hard = Collator(DamoProcessor(model.tokenizer, video_tokens=model.cfg.bridge_tokens, frame_tokens=1, fps=1.0,
                                  layout="video_first", evidence_targets="hard"))
    bh = hard([(sample(0), clip(6, 0)), (sample(1, "multi_grounding", ((0, 1), (2, 4))), clip(4, 1))])
    assert bh.evi_targets[0].tolist() == [0, 1, 1, 0, 0, 0]
    assert bh.evi_targets[3].tolist() == [0, 0, 1, 1, 0, 0]
    assert b.cons_pairs.tolist() == [[0, 1], [2, 4], [3, 5]]
    # labels cover exactly the response (after <|assistant|>) and the final <eos>
    ids, lab = b.input_ids[0], b.labels[0]
    resp = (lab != -100).nonzero().flatten()
    assert int(ids[resp[-1]]) == model.tokenizer.eos_token_id
    assert int(ids[resp[0]]) == model.evi_id
    assert b.frame_pos[1].flatten().tolist() == [9, 10, 11, 12, 0, 0]  # padded frames point at 0


def test_forward_grounds_every_evidence_token(model):
    col = Collator(DamoProcessor(model.tokenizer, video_tokens=model.cfg.bridge_tokens, frame_tokens=1, fps=1.0, layout="video_first"))
    b = col([(sample(0), clip(6, 0)), (sample(1), clip(4, 1))])
    out = model(b)
    assert out["evi_logits"].shape == (4, 6)
    assert out["logits"].shape[:2] == b.input_ids.shape
    total = sum(f(losses.LossInputs(out, b)) for f in (losses.lm, losses.grounding_bce, losses.consistency))
    total.backward()
    assert model.video.vision.patchify.weight.grad is not None and model.evidence.query[0].weight.grad is not None
    model.zero_grad()


def test_placeholder_mismatch_is_reported(model):
    with pytest.raises(ValueError, match="placeholders"):
        model.scatter_video(torch.tensor([[model.video_id] * 3]), torch.zeros(1, 4, 1, 32), torch.zeros(1, 8, 32), [4])


def test_save_load_round_trip_gives_identical_outputs(model, tmp_path):
    col = Collator(DamoProcessor(model.tokenizer, video_tokens=model.cfg.bridge_tokens, frame_tokens=1, fps=1.0, layout="video_first"))
    b = col([(sample(0), clip(6, 0))])
    with torch.no_grad():
        a = model(b)
    model.save(tmp_path / "m")
    m2 = DamoModel.load(tmp_path / "m")
    with torch.no_grad():
        c = m2(b)
    assert torch.equal(a["logits"], c["logits"]) and torch.equal(a["evi_logits"], c["evi_logits"])
    c6 = clip(6, 0)
    assert DamoPipeline(model).answer([c6], ["when does the red square appear?"])[0]["spans"] == \
        DamoPipeline(m2).answer([c6], ["when does the red square appear?"])[0]["spans"]
    with pytest.raises(FileNotFoundError, match="not a DaMO model"):
        DamoModel.load(tmp_path)


def test_encode_keeps_special_tokens_single(model):
    p = processor_of(model)
    ids = p.encode(f"{EVI} </evi> It happens in {EVI}.")
    assert ids[0] == p.evi_id and ids[1] == p.evi_end_id and ids.count(p.evi_id) == 2


def test_query_first_prompt_puts_the_question_before_the_frames(model):
    proc = DamoProcessor(model.tokenizer, video_tokens=2, layout="query_first")
    ids = proc.prompt("when does the red square appear?", [0.5, 1.5, 2.5])
    first_video = ids.index(model.video_id)
    assert ids[first_video:] [:6] == [model.video_id] * 5 + [ids[-1]]
    assert model.tokenizer.decode(ids[1:first_video]).strip().endswith("when does the red square appear?")
    col = Collator(DamoProcessor(model.tokenizer, video_tokens=model.cfg.bridge_tokens, frame_tokens=1, fps=1.0, layout="query_first"))
    b = col([(sample(0), clip(6, 0))])
    fp = b.frame_pos[0, :, 0]
    assert (b.input_ids[0, fp] == model.video_id).all()
    assert int(fp[0]) == b.input_ids[0].tolist().index(model.video_id) + model.cfg.bridge_tokens


def test_windowed_stream_attention_matches_global_for_short_videos_and_stays_local():
    from damo.model.encoders import Block
    from damo.model.fuseformer import windowed
    torch.manual_seed(0)
    blk = Block(16, 2).eval()
    x = torch.randn(2, 10 * 3, 16)                          # 10 frames x 3 tokens
    pad = torch.zeros(2, 30, dtype=torch.bool)
    pad[1, 21:] = True                                      # second clip has 7 frames
    with torch.no_grad():
        assert torch.allclose(windowed(blk, x, pad, 3, 16), blk(x, pad), atol=1e-6)
        y = windowed(blk, x, pad, 3, 4)                     # windows of 4 frames: [0-3], [4-7], [8-9]
        x2 = x.clone()
        x2[:, 12:] += 1.0                                   # change frames 4..9
        y2 = windowed(blk, x2, pad, 3, 4)
    assert torch.equal(y[:, :12], y2[:, :12])               # the first window does not see them
    assert not torch.isnan(y).any()                         # the all-padding window of clip 2 is harmless


def test_contrastive_uses_a_hard_negative_from_the_same_video(model):
    dense = Sample(id="d", video="v", duration=6.0, task="dense_caption", query="describe", answer="",
                   spans=[[0.0, 2.0], [3.0, 5.0]], captions=["a red square appears", "a blue square appears"])
    col = Collator(DamoProcessor(model.tokenizer, video_tokens=model.cfg.bridge_tokens, frame_tokens=1, fps=1.0, layout="query_first"))
    import random
    b = col([(dense, clip(6, 0)), (sample(1), clip(6, 1))], random.Random(0))
    pos, neg = b.align_span_mask[0].tolist(), b.align_neg_mask[0].tolist()
    assert sum(pos) == 2 and sum(neg) == 2 and not any(p and n for p, n in zip(pos, neg))
    assert not b.align_neg_mask[1].any()          # a one-span sample has no negative
    out = model(replace(b, input_ids=None))
    loss = losses.contrastive(losses.LossInputs(out, b, model))
    assert torch.isfinite(loss) and loss > 0


@pytest.mark.parametrize("kind", ["pool", "tome", "prune", "stp"])
def test_each_compressor_in_front_of_the_fuser_runs_and_round_trips(kind, tmp_path):
    cfg = tiny_cfg()
    cfg.fuser.visual_tokens = 16
    cfg.compressor.kind, cfg.compressor.placement, cfg.compressor.budget, cfg.compressor.k_max = kind, "fuser", 24, 9
    torch.manual_seed(0)
    m = DamoModel(cfg, train_tokenizer(TEXTS, 300)).eval()
    b = Collator.for_model(m)([(sample(0), clip(6, 0))])
    assert (b.input_ids[0] == m.video_id).sum() == cfg.bridge_tokens + 6      # fuser.frame_tokens per frame
    with torch.no_grad():
        fr, _ = m.video(b.frames, b.mel, b.frame_mask)
        v = m.video.compressor(torch.zeros(1, 6, 16, cfg.fuser.width), b.frame_mask)
        out = m(b)
    assert v.shape[2] <= 24 // 6 and fr.shape == (1, 6, 1, cfg.fuser.width)
    m.save(tmp_path / kind)
    with torch.no_grad():
        again = DamoModel.load(tmp_path / kind)(b)
    assert torch.equal(out["evi_logits"], again["evi_logits"])


def budget_model(kind: str, budget: int, k_max: int = 16, k_min: int = 1, **options) -> DamoModel:
    cfg = tiny_cfg()
    cfg.fuser.visual_tokens = 16                                   # a 4 x 4 fused grid per frame
    cfg.llm_frames = 0
    cfg.compressor.kind, cfg.compressor.budget, cfg.compressor.k_min, cfg.compressor.k_max = kind, budget, k_min, k_max
    cfg.compressor.options = options
    torch.manual_seed(0)
    return DamoModel(cfg, train_tokenizer(TEXTS, 300))


@pytest.mark.parametrize("kind,budget,T,per_frame,slow", [
    ("pool", 24, 6, 4, 0), ("pool", 60, 6, 9, 0), ("pool", 24, 12, 1, 0),    # squares: floor(sqrt(budget / T))^2
    ("tome", 24, 6, 4, 0), ("tome", 30, 6, 5, 0), ("prune", 60, 6, 10, 0), ("prune", 60, 12, 5, 0),
    ("identity", 24, 6, 16, 0),                                               # the uncompressed reference
    ("stp", 24, 6, 1, 3), ("stp", 60, 6, 1, 4), ("stp", 24, 12, 1, 2)])       # 1 fast + one s x s slow step per 4 frames
def test_the_llm_sees_exactly_the_budgets_visual_tokens(kind, budget, T, per_frame, slow):
    m = budget_model(kind, budget, stride=4) if kind == "stp" else budget_model(kind, budget)
    lay = processor_of(m).layout(T)
    assert (lay.group, lay.per_frame, lay.slow_side) == (1, per_frame, slow)
    visual = T * per_frame + -(-T // 4) * slow ** 2 * (kind == "stp")
    assert kind == "identity" or visual <= budget
    s = sample(0)
    s.duration = float(T)
    b = Collator.for_model(m)([(s, clip(T, 0))])
    assert int((b.input_ids[0] == m.video_id).sum()) == m.cfg.bridge_tokens + visual
    fp = b.frame_pos[0]                                         # (T, K): every frame owns its K placeholders
    assert fp.shape == (T, per_frame) and (b.input_ids[0, fp] == m.video_id).all()
    assert len(set(fp.flatten().tolist())) == T * per_frame
    with torch.no_grad():
        e, prefix, _ = m.video_embeddings(b)
        out = m(b)                                                 # placeholders and embeddings agree
    assert e.shape[1:3] == (T, per_frame) and prefix[0].shape[0] == m.cfg.bridge_tokens + visual - T * per_frame
    assert out["evi_logits"].shape == (2, T)


def test_long_videos_trade_tokens_per_frame_then_frames():
    p = processor_of(budget_model("pool", 64, k_max=9, k_min=4))
    assert [p.layout(T).per_frame for T in (4, 7, 8, 16)] == [9, 9, 4, 4]     # min(64 // T, 9) as a square
    lay = p.layout(40)                                             # at most 64 // 4 = 16 frame tokens
    assert lay.group == 3 and lay.per_frame == 4 and -(-40 // 3) * 4 <= 64


def test_pooling_to_one_token_is_the_fused_frame_summary():
    """The default (pool to 1 token per frame at the LLM) reads exactly the fuser's one-token summary."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    at_llm = DamoModel(cfg, train_tokenizer(TEXTS, 300)).eval()
    cfg = tiny_cfg()
    cfg.compressor = type(cfg.compressor)(kind="identity", placement="fuser")
    before = DamoModel(cfg, at_llm.tokenizer).eval()
    before.load_state_dict(at_llm.state_dict())
    b = Collator.for_model(at_llm)([(sample(0), clip(6, 0))])
    with torch.no_grad():
        grid = at_llm.video(b.frames, b.mel, b.frame_mask)[0]     # (1, 6, 4, D)
        one = before.video(b.frames, b.mel, b.frame_mask)[0]      # (1, 6, 1, D)
        e_llm = at_llm.video_embeddings(b)[0]
        e_fuser = before.video_embeddings(b)[0]
    assert grid.shape[2] == 4 and not torch.allclose(grid[:, :, :1], grid[:, :, 1:2])
    assert torch.allclose(grid.mean(2, keepdim=True), one, atol=1e-5)
    assert torch.allclose(e_llm, e_fuser, atol=1e-4)


def test_a_checkpoint_with_the_flat_module_names_loads(model, tmp_path):
    """Models saved before the submodules were grouped (``fuseformer.*``, ``projector.*``, ``logit_scale``)
    load into the grouped layout with the same outputs."""
    from safetensors.torch import load_file, save_file
    model.save(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    flat = {k.split(".", 1)[1] if k.startswith(("video.", "connector.", "alignment.")) else k: v
            for k, v in load_file(str(f)).items()}
    assert {"fuseformer.qv", "logit_scale", "bridge_queries"} <= set(flat)
    save_file(flat, str(f))
    b = Collator.for_model(model)([(sample(0), clip(6, 0))])
    with torch.no_grad():
        assert torch.equal(DamoModel.load(tmp_path / "m")(b)["evi_logits"], model(b)["evi_logits"])


def test_flat_trainable_globs_name_the_grouped_parameters():
    from damo.config import Stage, load_recipe
    st = Stage(name="s", losses={"lm": 1.0}, steps=1,
               trainable=["residual_*", "bridge*", "logit_scale", "fuseformer.*", "llm.*lora_*", "video.*", "*"])
    assert st.trainable == ["video.residual_*", "connector.bridge*", "alignment.logit_scale", "video.fuseformer.*",
                            "llm.*lora_*", "video.*", "*"]
    # a stage naming a whole group trains the compressor too (Dynamic-VLM's scorer, LLaVA-ST's packer)
    temporal = next(s for s in load_recipe("damo_4stage").stages if s.name == "temporal")
    assert "video.*" in temporal.trainable

def test_a_model_saved_before_the_placement_switch_reads_the_same_tokens(model, tmp_path):
    """Saved configs without ``compressor.placement`` compressed in front of the fuser; they still load so,
    and the old default there (identity, one fused token per frame) equals the new one (pool to 1 at the LLM)."""
    import json
    DamoPipeline(model).save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["compressor"] = {"kind": "identity", "budget": 4096, "k_min": 1, "k_max": 16, "seed": 0, "options": {}}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    proc = json.loads((tmp_path / "m" / "processor_config.json").read_text())
    del proc["budget"]
    (tmp_path / "m" / "processor_config.json").write_text(json.dumps(proc))
    old = DamoModel.load(tmp_path / "m")
    assert not old.video.at_llm and old.budget is None and DamoPipeline.load(tmp_path / "m").processor.budget is None
    b = Collator.for_model(model)([(sample(0), clip(6, 0))])
    with torch.no_grad():
        assert torch.allclose(old(b)["evi_logits"], model(b)["evi_logits"], atol=1e-4)


def test_stp_slow_stream_sits_in_front_of_the_frames_and_grounds_nothing():
    m = budget_model("stp", 60, stride=4).eval()
    lay = processor_of(m).layout(6)                                    # 1 fast token per frame, 2 slow steps of 4 x 4
    b = Collator.for_model(m)([(sample(0), clip(6, 0)), (sample(1), clip(3, 1))])
    ids = b.input_ids
    first = [row.tolist().index(m.video_id) for row in ids]
    # row 0: 8 fusion + 2 x 16 slow, then its 6 frames; row 1 (3 frames): one slow step
    assert int(b.frame_pos[0, 0, 0]) == first[0] + 8 + 2 * 16
    assert int(b.frame_pos[1, 0, 0]) == first[1] + 8 + 16 and b.num_frames == [6, 3]
    assert (lay.per_frame, lay.slow_side) == (1, 4)
    with torch.no_grad():
        e, prefix, _ = m.video_embeddings(b)
        out = m(b)
    assert prefix.shape[:2] == (2, 8 + 32)          # fusion + both slow steps; row 1's prompt keeps one step
    assert out["evi_logits"].shape[1] == 6
    # a batch (left-padded generation) gives every row what it gets alone: 6 and 5 frames share a layout
    assert processor_of(m).layout(5) == lay
    c0, c1 = clip(6, 0), clip(5, 1)
    q = ["when does the red square appear?", "what colour is the shape?"]
    both = m.generate(processor_of(m).generation_batch([c0, c1], q), 6)
    alone = [m.generate(processor_of(m).generation_batch([c], [x]), 6)[0] for c, x in zip((c0, c1), q)]
    assert [r["ids"] for r in both] == [r["ids"] for r in alone] and all(r["ids"] for r in both)
    with torch.no_grad():
        pair = m(Collator.for_model(m)([(sample(0), c0), (sample(1), c1)]))["evi_logits"]
        one = m(Collator.for_model(m)([(sample(1), c1)]))["evi_logits"]
    assert torch.allclose(pair[2:, :5], one, atol=1e-4)


@pytest.mark.parametrize("kind", ["identity", "pool", "tome", "prune", "stp"])
def test_each_compressor_at_the_llm_trains_and_round_trips(kind, tmp_path):
    from damo.config import Stage
    from damo.train.loop import run_stage
    m = budget_model(kind, 48)
    data = [sample(i) for i in range(4)]
    clips = {f"v{i}": clip(6, i) for i in range(4)}
    before = {k: v.clone() for k, v in m.named_parameters()}
    stage = Stage(name="t", losses={"lm": 1.0, "grounding_bce": 10.0}, steps=2, batch=2, lr=1e-3)
    run_stage(m, stage, data, lambda v: clips[v], seed=0, progress=False)
    moved = {".".join(k.split(".")[:2]) for k, v in m.named_parameters() if not torch.equal(before[k], v)}
    assert {"video.fuseformer", "connector.projector", "llm.model", "evidence.query"} <= moved
    if kind in ("prune", "stp"):
        assert "video.compressor" in moved                         # the scorer / the packer's attention learn
    m.eval()
    b = Collator.for_model(m)([(sample(0), clip(6, 0))])
    with torch.no_grad():
        out = m(b)
    m.save(tmp_path / kind)
    again = DamoModel.load(tmp_path / kind)
    with torch.no_grad():
        assert torch.equal(out["evi_logits"], again(b)["evi_logits"])
    assert DamoPipeline.load(tmp_path / kind).processor.layout(6) == processor_of(m).layout(6)


def test_query_aware_frame_tokens_depend_on_the_question(model):
    col = Collator(DamoProcessor(model.tokenizer, video_tokens=model.cfg.bridge_tokens, frame_tokens=1, fps=1.0, layout="query_first"))
    c = clip(6, 0)
    a, b = sample(0), sample(1)
    b.query = "what colour is the shape?"
    ba, bb = col([(a, c)]), col([(b, c)])
    with torch.no_grad():
        ea, eb = model.video_embeddings(ba)[0], model.video_embeddings(bb)[0]
    assert torch.equal(ea, eb)                       # zero-initialised: a no-op until trained
    torch.nn.init.normal_(model.connector.match_proj.weight)
    try:
        with torch.no_grad():
            ea, eb = model.video_embeddings(ba)[0], model.video_embeddings(bb)[0]
            none = model.video_embeddings(replace(ba, query_ids=None))[0]
        assert not torch.allclose(ea, eb) and not torch.allclose(ea, none)
        out = model(ba)
        (losses.lm(losses.LossInputs(out, ba)) + losses.grounding_bce(losses.LossInputs(out, ba))).backward()
        assert model.alignment.text_encoder.emb.weight.grad.abs().sum() > 0     # the question's embedding is trained
    finally:
        torch.nn.init.zeros_(model.connector.match_proj.weight)
        model.zero_grad()


def test_llm_budget_groups_frames():
    from damo.model.evidence import pool_groups
    from damo.model.processing import llm_group
    assert llm_group(30, 32) == 1 and llm_group(600, 32) == 19 and -(-600 // 19) <= 32 and llm_group(600, 0) == 1
    x = torch.tensor([[1.0, 3.0, 5.0, 7.0, 9.0], [2.0, 4.0, 6.0, 0.0, 0.0]])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    y, m = pool_groups(x, mask, 2)
    assert y.tolist() == [[2.0, 6.0, 9.0], [3.0, 6.0, 0.0]] and m.tolist() == [[True] * 3, [True, True, False]]


def test_llm_budget_keeps_long_videos_in_a_fixed_context():
    """A 10-minute video gets as many LLM frame tokens as a 30-second one under ``llm_frames``."""
    cfg = tiny_cfg()
    cfg.llm_frames = 4
    torch.manual_seed(0)
    m = DamoModel(cfg, train_tokenizer(TEXTS, 300)).eval()
    col = Collator(DamoProcessor(m.tokenizer, video_tokens=cfg.bridge_tokens, frame_tokens=1, fps=1.0, layout=cfg.layout, llm_frames=4))
    short, long_ = col([(sample(0), clip(4, 0))]), col([(sample(0), clip(10, 1))])
    assert short.input_ids.shape == long_.input_ids.shape                  # 4 frame tokens each
    # 10 frames in groups of 3 -> 4 tokens; the span 1-3 s holds frames 1 and 2: 2 of group 0's 3 frames,
    # and the tokens after it decay as 2^-distance
    assert long_.num_frames == [4] and long_.evi_targets[0].tolist() == pytest.approx([2 / 3, 1 / 2, 1 / 4, 1 / 8])
    with torch.no_grad():
        out = m(long_)
    assert out["evi_logits"].shape == (2, 4)
    r = DamoPipeline(m).answer([clip(10, 1)], ["when does the red square appear?"], 8)[0]
    assert all(0 <= s <= e <= 10.0 for s, e, _ in r["spans"]) and all(len(sc) == 10 for sc in r["scores"])


def test_max_len_is_a_model_setting(model):
    cfg = copy.deepcopy(model.cfg)
    cfg.max_len = 20
    proc = DamoProcessor.from_model_config(cfg, model.tokenizer)
    assert proc.config.max_len == 20
    with pytest.raises(ValueError, match="max_len 20"):
        Collator(proc)([(sample(0), clip(6, 0))])


def test_batch_rows_equal_collating_those_rows_alone(model):
    """``Batch.rows`` keeps every field consistent: per row, per ``<evi>``, consistency pairs."""
    import random
    from dataclasses import fields
    col = Collator.for_model(model)
    items = [(sample(i, "dense_caption", ((0.0, 2.0), (3.0, 5.0))), clip(6, i)) for i in range(3)]
    whole = col(items, random.Random(0)).rows(2)
    alone = col(items[:2], random.Random(0))
    assert len(alone.evi_batch) and len(alone.cons_pairs)
    for f in fields(Batch):
        a, b = getattr(whole, f.name), getattr(alone, f.name)
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), f.name
    moved = alone.to("meta")
    assert moved.input_ids.is_meta and moved.num_frames == alone.num_frames and moved.group == alone.group
