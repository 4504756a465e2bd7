"""D²VLM's ablation switches: response format (Table 4) and evidence level (Table 6)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from damo.data.collate import Collator
from damo.model.configuration_damo import DamoConfig
from damo.model.modeling_damo import DamoModel
from damo.model.processing import DamoProcessor, evidence_targets, pair_frames, response_text, text_spans
from damo.model.tokenizer import train_tokenizer
from damo.train.recipe import corpus
from damo.pipeline import DamoPipeline, processor_of

from helpers import clip, tiny_cfg
from test_model import TEXTS, sample


def test_response_formats_for_every_task():
    one, two = [[1.0, 3.0]], [[1.0, 2.0], [4.0, 6.5]]
    assert response_text("grounding", "the red square is on screen", one, [], response="coupled") == \
        "the red square is on screen in 1.0 - 3.0 seconds."
    assert response_text("grounding", "the red square is on screen", one, [], response="decomposed") == \
        "<evi> </evi> the red square is on screen in 1.0 - 3.0 seconds."
    assert response_text("multi_grounding", "the beep sounds", two, [], response="coupled") == \
        "the beep sounds in 1.0 - 2.0 seconds and 4.0 - 6.5 seconds."
    assert response_text("grounded_qa", "red", two, [], response="decomposed") == \
        "<evi> <evi> </evi> red. The relevant event happens in 1.0 - 2.0 seconds and 4.0 - 6.5 seconds."
    assert response_text("dense_caption", "", two, ["a beep", "a red square"], response="coupled") == \
        "1.0 - 2.0 seconds, a beep. 4.0 - 6.5 seconds, a red square."
    # frame-level evidence: a (start, end) pair of <evi> per event, in both stages
    assert response_text("grounding", "", one, [], level="frame") == "<evi> <evi> </evi> It happens in <evi> <evi>."
    assert response_text("dense_caption", "", two, ["a beep", "a red square"], level="frame") == \
        "<evi> <evi> <evi> <evi> </evi> <evi> <evi>, a beep. <evi> <evi>, a red square."
    with pytest.raises(ValueError, match="response must be one of"):
        response_text("grounding", "", one, [], response="tangled")


def test_frame_level_targets_mark_the_start_and_end_frames():
    ys = evidence_targets([[1.5, 4.0]], 4, 6, 1.0, level="frame")
    assert [int(np.argmax(y)) for y in ys] == [1, 3, 1, 3]       # start in frame 1, end (exclusive 4 s) in frame 3
    assert all(y.sum() == 1 for y in ys)
    ys = evidence_targets([[0.0, 2.0], [3.0, 6.0]], 4, 6, 1.0, level="frame")
    assert [int(np.argmax(y)) for y in ys] == [0, 1, 3, 5]
    ev = evidence_targets([[1.5, 4.0]], 2, 6, 1.0)                # event level: the span's frames
    assert ev[0].tolist() == ev[1].tolist() == [0, 1, 1, 1, 0, 0]


@pytest.fixture(scope="module")
def frame_model() -> DamoModel:
    cfg = tiny_cfg()
    cfg.evidence.level = "frame"
    torch.manual_seed(0)
    return DamoModel(cfg, train_tokenizer(TEXTS, 300)).eval()


def test_frame_level_collate_pairs_and_forward(frame_model):
    m = frame_model
    col = Collator(DamoProcessor(m.tokenizer, video_tokens=m.cfg.bridge_tokens, frame_tokens=1, fps=1.0, layout="query_first", evidence_level="frame"))
    b = col([(sample(0, spans=((1.0, 3.0),)), clip(6, 0))])
    assert b.evi_batch.tolist() == [0, 0, 0, 0]
    assert b.evi_targets.argmax(1).tolist() == [1, 2, 1, 2] and (b.evi_targets == 1).sum().item() == 4
    assert b.evi_targets[0].tolist() == [0.5, 1, 0.5, 0.25, 0.125, 0.0625]   # 2^-distance from the one frame
    assert b.cons_pairs.tolist() == [[0, 2], [1, 3]]          # start with start, end with end
    out = m(b)
    assert out["evi_logits"].shape == (4, 6)


def test_decomposed_collate_grounds_only_the_first_stage():
    tok = train_tokenizer(TEXTS, 300)
    col = Collator(DamoProcessor(tok, video_tokens=8, frame_tokens=1, fps=1.0, layout="query_first", response="decomposed"))
    b = col([(sample(0, "multi_grounding", ((0, 1), (2, 4))), clip(6, 0))])
    assert len(b.evi_batch) == 2 and len(b.cons_pairs) == 0
    col = Collator(DamoProcessor(tok, video_tokens=8, frame_tokens=1, fps=1.0, layout="query_first", response="coupled"))
    b = col([(sample(0), clip(6, 0))])
    assert len(b.evi_batch) == 0


def test_pairing_frame_evidence_into_spans():
    s = np.zeros(6)
    ev = [{"stage": 1, "scores": s, "span": [2.0, 3.0, 0.8]}, {"stage": 1, "scores": s, "span": [4.0, 5.0, 0.6]},
          {"stage": 2, "scores": s, "span": [5.0, 6.0, 0.5]}, {"stage": 2, "scores": s, "span": [1.0, 2.0, 0.7]},
          {"stage": 2, "scores": s, "span": [3.0, 4.0, 0.9]}]
    got = pair_frames(ev)
    assert [e["span"] for e in got] == [[2.0, 5.0, pytest.approx(0.7)], [1.0, 6.0, pytest.approx(0.6)],
                                        [3.0, 4.0, 0.9]]                    # end before start: swapped; odd one alone
    assert [e["stage"] for e in got] == [1, 2, 2]


def test_frame_level_answer_writes_one_span_per_pair(frame_model):
    m = frame_model
    ids = [m.evi_id, m.evi_id, m.evi_end_id] + m.tokenizer(" red", add_special_tokens=False)["input_ids"] + \
        [m.evi_id, m.evi_id]
    ev = [{"stage": 1, "scores": None, "span": [1.0, 4.0, 0.5]}, {"stage": 2, "scores": None, "span": [1.0, 4.0, 0.5]}]
    assert processor_of(m).render(ids, ev) == "red 1.0 - 4.0 seconds"


def test_text_timestamps_are_parsed_and_clipped():
    a = "the beep sounds in 1.0 - 2.5 seconds and 9 - 4 seconds, then 30.0 - 40.0 seconds."
    assert text_spans(a, 35.0) == [[1.0, 2.5, 1.0], [4.0, 9.0, 1.0], [30.0, 35.0, 1.0]]
    assert text_spans("no times here", 10.0) == []


def test_coupled_model_answers_with_text_spans():
    """A coupled model has no <evi>: its spans come from the timestamps it writes."""
    cfg = tiny_cfg()
    cfg.response = "coupled"
    s = sample(0)
    tok = train_tokenizer(TEXTS + corpus([s], "coupled") * 20, 300)
    torch.manual_seed(0)
    m = DamoModel(cfg, tok)
    col = Collator(DamoProcessor(tok, video_tokens=cfg.bridge_tokens, frame_tokens=1, fps=1.0, layout=cfg.layout, response="coupled"))
    c = clip(6, 0)
    batch = col([(s, c)])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    from damo.train.losses import LossInputs, lm
    for _ in range(400):                # memorise one answer
        opt.zero_grad()
        loss = lm(LossInputs(m(batch), batch))
        if loss.item() < 0.01:
            break
        loss.backward()
        opt.step()
    r = DamoPipeline(m.eval()).answer([c], [s.query])[0]
    assert r["answer"] == "red in 1.0 - 3.0 seconds."
    assert r["spans"] == [[1.0, 3.0, 1.0]] and r["evidence"] == []


def test_bad_switch_values_are_rejected():
    with pytest.raises(ValueError, match="model.response"):
        DamoConfig.from_dict({"response": "tangled"})
    with pytest.raises(ValueError, match="evidence.level"):
        DamoConfig.from_dict({"evidence": {"level": "pixel"}})
