"""Factorized preference optimisation (D²VLM section 4): log-probabilities, loss, one-forward pair batches."""
from __future__ import annotations

import copy
import math
from dataclasses import replace
import random

import pytest
import torch

from damo.config import load_recipe
from damo.data.collate import Collator
from damo.model.processing import ClipTensors, DamoProcessor
from damo.data.preference import validate_pair
from damo.model.modeling_damo import DamoModel
from damo.pipeline import processor_of
from damo.model.tokenizer import train_tokenizer
from damo.train import losses
from damo.train.losses import LossInputs, fpo
from damo.train.fpo import (FPOSettings, batch_logprob, chosen_view, focus_masks, fpo_loss, fpo_result,
                            interval_logprob, pair_batch, sequence_logprob, split_pairs, token_logprob)
from helpers import clip, tiny_cfg


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_interval_logprob_by_hand_on_four_frames():
    logits = torch.tensor([[2.0, -1.0, 0.0, 3.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # the fourth frame is padding and must not count
    mask = torch.tensor([[True, True, True, False]])
    want = math.log(sig(2.0)) + math.log(sig(-1.0)) + math.log(1 - sig(0.0))
    got = interval_logprob(logits, targets, mask)
    assert got.shape == (1,) and float(got) == pytest.approx(want, rel=1e-6)
    # with every frame valid, frame 4 is outside the interval: + log(1 - s(3))
    full = interval_logprob(logits, targets, torch.ones(1, 4, dtype=torch.bool))
    assert float(full) == pytest.approx(want + math.log(1 - sig(3.0)), rel=1e-6)
    # a confident correct grounding stays finite and near 0 where naive log(1 - sigmoid) underflows
    conf = interval_logprob(torch.tensor([[60.0, -60.0]]), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2))
    assert torch.isfinite(conf).all() and float(conf) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        interval_logprob(logits, targets[:, :3], mask)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interval_logprob(logits, targets * 2, mask)


def test_interval_logprob_soft_targets_mix_the_two_cases():
    # a frame 1 s outside the interval with the official code's decayed target alpha^1 = 0.5
    x = torch.tensor([[1.0, -2.0, 0.5]], requires_grad=True)
    y = torch.tensor([[1.0, 0.5, 0.0]])
    got = interval_logprob(x, y, torch.ones(1, 3, dtype=torch.bool))
    want = math.log(sig(1.0)) + math.log(0.5 * sig(-2.0) + 0.5 * (1 - sig(-2.0))) + math.log(1 - sig(0.5))
    assert float(got.detach()) == pytest.approx(want, rel=1e-6)
    got.sum().backward()
    # d/dx log s = 1 - s inside, d/dx log(1 - s) = -s outside; the 50/50 frame has no preference
    assert x.grad.tolist()[0] == pytest.approx([1 - sig(1.0), 0.0, -sig(0.5)], abs=1e-7)


def test_sequence_logprob_matches_a_loop_over_tokens():
    g = torch.Generator().manual_seed(0)
    B, L, V, T = 2, 6, 5, 4
    logits = torch.randn(B, L, V, generator=g)
    labels = torch.tensor([[-100, -100, 3, 1, 4, -100],     # row 0 padded at the end
                           [-100, 2, 2, 0, 1, 3]])
    evi_logits = torch.randn(3, T, generator=g)
    evi_targets = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.float)
    evi_batch = torch.tensor([0, 1, 1])
    frame_mask = torch.tensor([[True, True, True, False], [True, True, True, True]])

    want = []
    for b in range(B):
        total = 0.0
        for i in range(1, L):                      # token i is predicted from position i - 1
            if labels[b, i] == -100:
                continue
            p = torch.softmax(logits[b, i - 1], -1)[labels[b, i]]
            total += math.log(float(p))
        for n in range(3):
            if evi_batch[n] != b:
                continue
            for t in range(T):
                if not frame_mask[b, t]:
                    continue
                s = sig(float(evi_logits[n, t]))
                total += math.log(s if evi_targets[n, t] else 1 - s)
        want.append(total)
    got = sequence_logprob(logits, labels, evi_logits, evi_targets, evi_batch, frame_mask)
    assert got.tolist() == pytest.approx(want, rel=1e-5)
    # without evidence tokens only the text term remains
    text = token_logprob(logits, labels)
    assert sequence_logprob(logits, labels, None, torch.zeros(0, T), torch.zeros(0, dtype=torch.long),
                            frame_mask).tolist() == pytest.approx(text.tolist())


def test_fpo_loss_values_reference_free_and_dpo():
    lc, lr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    r = fpo_loss(lc, lr, beta=0.5)
    # -log sigmoid(0.5 * 1) and -log sigmoid(0.5 * -3), averaged
    want = (-math.log(sig(0.5)) - math.log(sig(-1.5))) / 2
    assert float(r.loss) == pytest.approx(want, rel=1e-6)
    assert r.margin == pytest.approx((0.5 - 1.5) / 2) and r.accuracy == 0.5
    # reference-free is DPO with a zero reference
    z = torch.zeros(2)
    assert float(fpo_loss(lc, lr, 0.5, z, z).loss) == pytest.approx(want, rel=1e-6)
    # DPO: rewards are measured against the reference
    rc, rr = torch.tensor([-2.0, -6.0]), torch.tensor([-4.0, -1.0])
    d = fpo_loss(lc, lr, 0.5, rc, rr)
    # pair 0: (-3 + 2) - (-4 + 4) = -1; pair 1: (-5 + 6) - (-2 + 1) = 2
    assert float(d.loss) == pytest.approx((-math.log(sig(-0.5)) - math.log(sig(1.0))) / 2, rel=1e-6)
    assert d.chosen_reward.tolist() == pytest.approx([-0.5, 0.5]) and d.accuracy == 0.5
    assert set(d.stats()) == {"fpo", "fpo_margin", "fpo_accuracy", "fpo_chosen", "fpo_rejected"}
    with pytest.raises(ValueError, match="beta"):
        fpo_loss(lc, lr, 0.0)
    with pytest.raises(ValueError, match="both reference"):
        fpo_loss(lc, lr, 0.1, rc, None)
    with pytest.raises(ValueError, match=r"\(P,\)"):
        fpo_loss(lc, lr[:1], 0.1)


def test_fpo_gradient_raises_chosen_and_lowers_rejected():
    lc = torch.tensor([-3.0], requires_grad=True)
    lr = torch.tensor([-3.5], requires_grad=True)
    fpo_loss(lc, lr, beta=0.2).loss.backward()
    # d loss / d lc = -beta * (1 - sigmoid(beta * (lc - lr))); the rejected gradient is its negative
    g = -0.2 * (1 - sig(0.2 * 0.5))
    assert float(lc.grad) == pytest.approx(g, rel=1e-6) and float(lr.grad) == pytest.approx(-g, rel=1e-6)
    # gradient descent therefore moves the chosen log-prob up and the rejected one down
    assert float(lc.grad) < 0 < float(lr.grad)


def test_split_pairs_needs_chosen_then_rejected_rows():
    c, r = split_pairs(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert c.tolist() == [1.0, 2.0] and r.tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="even"):
        split_pairs(torch.tensor([1.0, 2.0, 3.0]))


# ----------------------------------------------------------------------------- end to end
TEXTS = ["when does the red square appear?", "It happens in", "The relevant event happens in", "red", "blue",
         "what colour is the shape while the beep sounds?", "describe the events with their times.",
         "a red square appears", "a beep sounds", "a high tone plays"] * 20


def tiny_model() -> DamoModel:
    torch.manual_seed(0)
    return DamoModel(tiny_cfg(), train_tokenizer(TEXTS, 300))


def make_pair(i: int, task: str, answer: str, spans, rejected: dict, factor: str, subfactor: str,
              captions=(), query="when does the red square appear?") -> dict:
    s = {"id": f"s{i}", "video": f"v{i}", "duration": 6.0, "task": task, "query": query, "answer": answer,
         "spans": [list(x) for x in spans], "captions": list(captions), "source": "test", "meta": {}}
    p = {"id": f"s{i}", "sample": s, "rejected": rejected, "factor": factor, "subfactor": subfactor, "events": [0]}
    validate_pair(p)
    return p


PAIRS = [
    make_pair(0, "grounding", "", [[1.0, 3.0]], {"answer": "", "spans": [[3.0, 5.0]], "captions": []},
              "temporal", "shift"),
    make_pair(1, "grounded_qa", "red", [[0.0, 2.0]], {"answer": "blue", "spans": [[0.0, 2.0]], "captions": []},
              "textual", "distort", query="what colour is the shape while the beep sounds?"),
    make_pair(2, "dense_caption", "a red square appears; a beep sounds.", [[0.0, 2.0], [3.0, 5.0]],
              {"answer": "a red square appears; a red square appears.", "spans": [[0.0, 2.0], [3.0, 5.0]],
               "captions": ["a red square appears", "a red square appears"]},
              "textual", "repeat", captions=["a red square appears", "a beep sounds"],
              query="describe the events with their times."),
]


def test_pair_batch_puts_chosen_rows_first_and_shares_clips():
    fetched = []

    def clip_of(video: str) -> ClipTensors:
        fetched.append(video)
        return clip(6, int(video[1:]))

    items = pair_batch(PAIRS, clip_of)
    assert [s.id for s, _ in items] == ["s0", "s1", "s2", "s0#rejected", "s1#rejected", "s2#rejected"]
    assert fetched == ["v0", "v1", "v2"] and items[0][1] is items[3][1]
    assert items[3][0].spans == [[3.0, 5.0]] and items[4][0].answer == "blue"
    assert items[0][0].spans == [[1.0, 3.0]]
    with pytest.raises(ValueError, match="at least one"):
        pair_batch([], clip_of)


def test_fpo_steps_on_a_tiny_model_widen_the_preference_margin():
    model = tiny_model()
    col = Collator(DamoProcessor(model.tokenizer, video_tokens=model.cfg.bridge_tokens, frame_tokens=1, fps=1.0, layout="video_first"))
    clips = {f"v{i}": clip(6, i) for i in range(3)}
    batch = col(pair_batch(PAIRS, clips.__getitem__), random.Random(0))
    assert batch.input_ids.shape[0] == 6
    # the rejected shift row is supervised with its own (wrong) interval
    first_rej = int((batch.evi_batch == 3).nonzero()[0])
    assert batch.evi_targets[first_rej].tolist() == [0.125, 0.25, 0.5, 1, 1, 0.5]

    def margin() -> float:
        model.eval()
        with torch.no_grad():
            return fpo_result(model(batch), batch, beta=0.1).margin

    def grounding() -> torch.Tensor:
        """The eq. 6 part of log pi(R) per row: total minus the text tokens' part."""
        with torch.no_grad():
            out = model(batch)
        return batch_logprob(out, batch) - token_logprob(out["logits"], batch.labels)    # (6,)

    # the supervised losses on the chosen rows alone equal those of a chosen-only batch
    chosen_only = col(pair_batch(PAIRS, clips.__getitem__)[:3], random.Random(0))
    model.eval()
    with torch.no_grad():
        o, b = chosen_view(model(batch), batch)
        o2 = model(chosen_only)
    assert b.labels.shape[0] == 3 and len(b.evi_batch) == len(chosen_only.evi_batch)
    assert torch.equal(b.cons_pairs, chosen_only.cons_pairs)
    for name in ("lm", "grounding_bce", "consistency"):
        fn = losses.LOSSES[name].fn
        assert float(fn(LossInputs(o, b))) == pytest.approx(float(fn(LossInputs(o2, chosen_only))), rel=1e-4)

    before = margin()
    g0 = grounding()
    ref = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(4):
        loss = fpo(LossInputs(model(batch), batch, settings=FPOSettings(focus="sequence")))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = margin()
    assert after > before + 0.1
    # DPO mode against the untrained copy: the trained policy now prefers chosen more than the reference
    with torch.no_grad():
        r = fpo_result(model(batch), batch, beta=0.1, ref_out=ref(batch))
    assert r.margin == pytest.approx(after - before, rel=1e-3, abs=1e-4)
    # the shift pair differs only in where its <evi> tokens point: training moved its interval
    # term (eq. 6) towards the chosen span
    g1 = grounding()
    assert float(g1[0] - g1[3]) > float(g0[0] - g0[3])
    assert float(g1[0]) > float(g1[3])


def test_fpo_on_synthesized_pairs_of_rendered_synthetic_videos():
    from damo.data.dataset import ClipLoader
    from damo.data.preference import make_pairs
    from damo.data.synthetic import synth_samples

    pairs, _ = make_pairs(synth_samples("synth://easy?n=2&seed=0"), seed=0)
    first = {}
    for p in pairs:
        first.setdefault(p["subfactor"], p)
    chosen = [first[k] for k in ("shift", "add", "distort", "repeat")]
    model = tiny_model()
    col = Collator(DamoProcessor(model.tokenizer, video_tokens=model.cfg.bridge_tokens, frame_tokens=1, fps=1.0, layout="video_first"))
    batch = col(pair_batch(chosen, ClipLoader(processor_of(model))), random.Random(0))
    assert batch.input_ids.shape[0] == 8

    def margin() -> float:
        model.eval()
        with torch.no_grad():
            return fpo_result(model(batch), batch, beta=0.1).margin

    before = margin()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):
        loss = fpo(LossInputs(model(batch), batch, settings=FPOSettings(focus="sequence")))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert margin() > before


# ------------------------------------------------------------------ event focus, settings, stages
def focused_batch(model: DamoModel) -> tuple[dict, int]:
    col = Collator(DamoProcessor(model.tokenizer, video_tokens=model.cfg.bridge_tokens, frame_tokens=1, fps=1.0,
                                 layout="video_first"))
    batch = col(pair_batch(PAIRS, {f"v{i}": clip(6, i) for i in range(3)}.__getitem__), random.Random(0))
    evi = model.evi_id
    return replace(batch, **focus_masks(batch, PAIRS, evi)), evi


def test_event_focus_marks_only_the_perturbed_parts():
    model = tiny_model()
    b, evi = focused_batch(model)
    tok, w, eb = b.fpo_tokens, b.fpo_evi, b.evi_batch
    # pair 0 (temporal shift of the only event): both rows' <evi> of both stages, no text
    assert w[(eb == 0) | (eb == 3)].tolist() == [1.0] * 4 and not tok[0].any() and not tok[3].any()
    # textual pairs: no <evi>; the text from the first differing token to the next <evi> (or the end)
    assert not w[(eb == 1) | (eb == 2) | (eb == 4) | (eb == 5)].any()
    for c, r in ((1, 4), (2, 5)):
        resp = [(b.labels[x] != -100).nonzero().flatten() for x in (c, r)]
        first = [int(q[0]) for q in (tok[c].nonzero().flatten(), tok[r].nonzero().flatten())]
        start = [int((q == f).nonzero()) for q, f in zip(resp, first)]
        assert start[0] == start[1] and start[0] > 0
        before = [b.labels[x, q[:st]].tolist() for x, q, st in zip((c, r), resp, start)]
        assert before[0] == before[1]                                          # identical up to the difference
        assert int(b.labels[c, first[0]]) != int(b.labels[r, first[1]])  # marking starts at it
        for x in (c, r):
            marked = tok[x].nonzero().flatten()
            assert (marked == torch.arange(int(marked[0]), int(marked[-1]) + 1)).all()      # one stretch
            assert evi not in b.labels[x, marked].tolist()
            after = int(marked[-1]) + 1
            assert after == b.labels.shape[1] or int(b.labels[x, after]) in (evi, -100)
    # "red" -> "blue" in a grounded QA answer: the stretch ends right before the answer's <evi>
    assert int(b.labels[1, int(tok[1].nonzero()[-1]) + 1]) == evi
    # the repeated second caption: the stretch runs to the end of the response
    assert int(tok[2].nonzero()[-1]) == int((b.labels[2] != -100).nonzero()[-1])


def test_focused_log_probabilities_on_a_tiny_model():
    model = tiny_model().eval()
    b, _ = focused_batch(model)
    with torch.no_grad():
        out = model(b)
    got = batch_logprob(out, b, "event")
    logp = out["logits"].float().log_softmax(-1)
    for row in (1, 2, 4, 5):          # textual: the marked tokens' log-probs, each predicted from the position before
        want = sum(float(logp[row, i - 1, b.labels[row, i]]) for i in b.fpo_tokens[row].nonzero().flatten().tolist())
        assert float(got[row]) == pytest.approx(want, rel=1e-5)
    ivl = interval_logprob(out["evi_logits"], b.evi_targets, b.evi_mask[b.evi_batch])
    for row in (0, 3):                # temporal: the shifted event's <evi> intervals only
        assert float(got[row]) == pytest.approx(float(ivl[b.evi_batch == row].sum()), rel=1e-5)
    # tokens before the first difference have the same log-prob on both sides: leaving them out
    # of the focus changes no chosen-minus-rejected margin
    for c, r in ((1, 4), (2, 5)):
        start = int(b.fpo_tokens[c].nonzero()[0])
        lc = token_logprob(out["logits"][c:c + 1, :start], b.labels[c:c + 1, :start])
        lr = token_logprob(out["logits"][r:r + 1, :start], b.labels[r:r + 1, :start])
        assert float(lc) == pytest.approx(float(lr), rel=1e-5)
    # sequence focus scores more: every token and every <evi>
    assert not torch.allclose(batch_logprob(out, b, "sequence"), got)
    with pytest.raises(ValueError, match="focus_masks"):
        batch_logprob(out, replace(b, fpo_tokens=None, fpo_evi=None), "event")


def test_fpo_settings_are_checked():
    assert FPOSettings.from_dict({"beta": "0.5"}).beta == 0.5
    for bad, match in (({"beta": 0}, "beta"), ({"mode": "ipo"}, "mode"), ({"focus": "token"}, "focus"),
                       ({"temperature": 1}, "unknown")):
        with pytest.raises(ValueError, match=match):
            FPOSettings.from_dict(bad)
    from damo.config import Recipe
    stage = {"name": "fpo", "losses": {"fpo": 1.0}, "steps": 1, "fpo": {"mode": "bogus"}}
    with pytest.raises(ValueError, match="mode"):
        Recipe.from_dict({"stages": [stage]})
    with pytest.raises(ValueError, match="belong to a stage with the fpo loss"):
        Recipe.from_dict({"stages": [{"name": "t", "losses": {"lm": 1.0}, "steps": 1, "pairs": "p.jsonl"}]})


def fpo_stage(**kw):
    from damo.config import Stage
    return Stage(name="fpo", losses={"fpo": 1.0}, steps=kw.pop("steps", 2), batch=3, warmup=1, lr=1e-3,
                 trainable=["llm.*", "evidence.*"], **kw)


def test_dpo_mode_is_reachable_from_a_stage_and_starts_at_log_2():
    """With a frozen copy of the model as reference, the first step's policy equals the reference:
    every pair's margin is 0 and the loss is exactly -log sigmoid(0) = log 2."""
    from damo.train.loop import run_stage
    clips = {f"v{i}": clip(6, i) for i in range(3)}
    free = run_stage(tiny_model(), fpo_stage(), [], clips.__getitem__, 0, progress=False, pairs=PAIRS)
    dpo = run_stage(tiny_model(), fpo_stage(fpo={"mode": "dpo", "beta": 0.5}), [], clips.__getitem__, 0,
                    progress=False, pairs=PAIRS)
    assert dpo["fpo_start"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(free["fpo_start"] - math.log(2)) > 1e-3


def test_a_stage_trains_on_given_pairs_without_making_its_own(monkeypatch, tmp_path):
    import damo.data.preference as pref
    from damo.config import Recipe
    from damo.data.preference import save_pairs
    from damo.train.loop import run_stage
    from damo.train.recipe import stage_pairs

    def refuse(*a, **k):
        raise AssertionError("pairs were made although the stage was given some")

    monkeypatch.setattr(pref, "make_pairs", refuse)
    clips = {f"v{i}": clip(6, i) for i in range(3)}
    out = run_stage(tiny_model(), fpo_stage(steps=1), [], clips.__getitem__, 0, progress=False, pairs=PAIRS)
    assert math.isfinite(out["fpo"])
    with pytest.raises(ValueError, match="none of its 3 preference pairs"):
        run_stage(tiny_model(), fpo_stage(tasks=["dialogue"]), [], clips.__getitem__, 0, progress=False, pairs=PAIRS)
    # a `damo data prefs` file: videos found under the recipe's video root, missing ones skipped
    (tmp_path / "videos").mkdir()
    for i in (0, 2):
        (tmp_path / "videos" / f"v{i}.mp4").write_bytes(b"")
    save_pairs(tmp_path / "prefs.jsonl", PAIRS)
    rec = Recipe.from_dict({"stages": [{"name": "fpo", "losses": {"fpo": 1.0}, "steps": 1,
                                        "pairs": str(tmp_path / "prefs.jsonl")}],
                            "video_root": str(tmp_path / "videos"), "on_missing": "skip"})
    said = []
    got = stage_pairs(rec.stages[0].pairs, rec, said.append)
    assert [p["id"] for p in got] == ["s0", "s2"] and got[1]["sample"]["video"] == str(tmp_path / "videos" / "v2.mp4")
    assert "1 " in said[0] and PAIRS[0]["sample"]["video"] == "v0"      # the records themselves are untouched
    rec.on_missing = "error"
    with pytest.raises(FileNotFoundError, match="video"):
        stage_pairs(rec.stages[0].pairs, rec, said.append)


def test_a_pair_differing_in_two_places_is_scored_whole_by_the_authors_focus():
    """D²VLM's build_fpo_anno.py gives calculate_logps every label token and every <evi> of each side
    (``sequence``); our ``event`` focus scores a temporal pair on the moved events' <evi> only."""
    pair = make_pair(3, "dense_caption", "a red square appears; a beep sounds.", [[0.0, 2.0], [3.0, 5.0]],
                     {"answer": "a red square appears; a beep sounds.", "spans": [[1.0, 3.0], [4.0, 6.0]],
                      "captions": ["a red square appears", "a beep sounds"]},
                     "temporal", "shift", captions=["a red square appears", "a beep sounds"],
                     query="describe the events with their times.")
    model = tiny_model().eval()
    col = Collator(DamoProcessor(model.tokenizer, video_tokens=model.cfg.bridge_tokens, frame_tokens=1, fps=1.0,
                                 layout="video_first"))
    batch = col(pair_batch([pair], {"v3": clip(6, 3)}.__getitem__), random.Random(0))
    b = replace(batch, **focus_masks(batch, [pair], model.evi_id))
    assert b.fpo_evi.tolist() == [1.0] * 8 and not b.fpo_tokens.any()   # both events' <evi>, both stages, no text
    with torch.no_grad():
        out = model(b)
    (ec, er), (sc, sr) = (split_pairs(batch_logprob(out, b, f)) for f in ("event", "sequence"))
    # the text after each moved <evi> reads other frames (semantic capture): only sequence scores it
    assert abs(float((sc - sr) - (ec - er))) > 0.01
    stage = next(s for s in load_recipe("paper-d2vlm").stages if s.name == "fpo")
    assert FPOSettings.from_dict(stage.fpo).focus == "sequence"
