"""Evidence tokens as D²VLM's official code runs them (d2vlm/model/d2vlm_arch.py), on worked examples."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from damo.data import formats
from damo.model.evidence import EvidenceHead, capture_weights, salient_frames, soft_targets
from damo.model.configuration_damo import DamoConfig
from damo.model.modeling_damo import DamoModel
from damo.model.processing import response_text
from damo.model.tokenizer import train_tokenizer


# ------------------------------------------------------------------------- find_and_merge
@pytest.mark.parametrize("scores, first_last", [
    # threshold 0.6 x 1.0: runs [1, 2] (mean 0.875) and [4] (0.75): the higher mean wins, not the longer run
    ([0.5, 0.75, 1.0, 0.0, 0.75], (1, 2)),
    # a lone peak beats a long plateau just under it
    ([0.0, 0.75, 0.75, 0.75, 0.75, 0.0, 1.0], (6, 6)),
    # two runs with the same mean: find_and_merge covers both (first index to last index of the maximum)
    ([1.0, 0.25, 1.0], (0, 2)),
    # everything above the threshold: one run
    ([0.75, 1.0, 0.875], (0, 2)),
])
def test_salient_frames_as_find_and_merge(scores, first_last):
    assert salient_frames(np.array(scores), 0.6) == first_last


def test_sum_ranking_keeps_the_longest_and_earliest_run():
    assert salient_frames(np.array([0.0, 0.75, 0.75, 0.75, 0.75, 0.0, 1.0]), 0.6, "sum") == (1, 4)
    assert salient_frames(np.array([1.0, 0.25, 1.0]), 0.6, "sum") == (0, 0)


# ------------------------------------------------------------------------- soft targets
def test_soft_targets_decay_as_two_to_the_distance_from_the_span():
    # official: 1 inside [start, end], alpha^-min(|i - start|, |i - end|) outside, alpha = 2
    y = np.array([0, 0, 1, 1, 1, 0, 0, 0, 0], np.float32)
    assert soft_targets(y, 2.0).tolist() == [0.25, 0.5, 1, 1, 1, 0.5, 0.25, 0.125, 0.0625]
    # a span at the video's first frame, and alpha 4
    assert soft_targets(np.array([1, 0, 0], np.float32), 4.0).tolist() == [1, 0.25, 0.0625]
    # two spans: the nearer one counts
    assert soft_targets(np.array([1, 0, 0, 0, 1], np.float32), 2.0).tolist() == [1, 0.5, 0.25, 0.5, 1]
    # pooled tokens keep their partial coverage; no span at all stays zero
    assert soft_targets(np.array([0, 0.5, 0], np.float32), 2.0).tolist() == [0.5, 0.5, 0.5]
    assert soft_targets(np.zeros(4, np.float32), 2.0).tolist() == [0, 0, 0, 0]


def test_capture_averages_the_span_frames_whatever_the_targets():
    soft = torch.tensor([[0.5, 1.0, 1.0, 0.5, 0.25], [0.25, 0.5, 1.0, 0.5, 0.25]])
    assert capture_weights(soft).tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 0, 0]]
    pooled = torch.tensor([[0.0, 1 / 3, 2 / 3, 0.0]])          # tokens pooled from 3 frames each
    assert capture_weights(pooled).tolist() == [[0, 0, 1, 0]]
    assert capture_weights(torch.zeros(1, 3)).tolist() == [[0, 0, 0]]


def test_official_head_shape():
    head = EvidenceHead(64)
    assert [type(m).__name__ for m in head.query] == ["LayerNorm", "Linear", "GELU", "Linear"]
    assert (head.query[1].in_features, head.query[1].out_features, head.query[3].out_features) == (64, 32, 64)
    assert head.scale == pytest.approx(64 ** -0.5)
    plain = EvidenceHead(64, d=16, hidden=64, norm=False)
    assert [type(m).__name__ for m in plain.frame] == ["Linear", "GELU", "Linear"] and plain.scale == 0.25


# ------------------------------------------------------------------------- D²VLM records
# The three annotation examples of D²VLM's appendix (Fig. 1 there), in the official layout.
RECORDS = [
    {"video": "activitynet/v_6uhLrPgbpUA.mp4", "duration": 46.333,
     "time_gt": {"evidence_grounding": [[6.337, 12.098], [21.172, 24.413], [29.238, 38.095]],
                 "interleaved_response": [[6.337, 12.098], [21.172, 24.413], [29.238, 38.095]]},
     "conversations": [
         {"from": "human", "value": "<image>\nLocate all instances of the action 'bmx' in the video and give me "
                                    "the timestamps for each occurrence."},
         {"from": "gpt", "value": "<evi> <evi> <evi> </evi> The action happens in <evi>, <evi>, and <evi>."}]},
    {"video": "how_to_step/-Yt51vMDbo0.mp4", "duration": 128.395,
     "time_gt": {"evidence_grounding": [[75, 83], [120, 128], [126, 128]],
                 "interleaved_response": [[75, 83], [120, 128], [126, 128]]},
     "conversations": [
         {"from": "human", "value": "<image>\nLocalize a series of action steps in the given video, output the "
                                    "timestamps for each step, and briefly describe the step."},
         {"from": "gpt", "value": "<evi> <evi> <evi> </evi> <evi>, remove the skin and meat pieces easily by running "
                                  "the knife along the base or cutting them off. <evi>, cut and dice the mango to use "
                                  "in smoothies, salads, or other dishes. <evi>, enjoy your mangoes!."}]},
    {"video": "ego_timeqa/45ad1f4b-11f0-4ee2-aaf8-f06584d434c9_5_155.mp4", "duration": 150,
     "time_gt": {"evidence_grounding": [8.823, 11.311], "interleaved_response": [8.823, 11.311]},
     "conversations": [
         {"from": "human", "value": "<image>\nWatch the video carefully and answer the question: 'What did I do with "
                                    "the chopping sticks?'. Your response should mention the timestamps as a "
                                    "reference. For example: '<answer>. The event happens in <evi>.'"},
         {"from": "gpt", "value": "<evi> </evi> Picked them up. The relevant event happens in <evi>."}]},
]


def test_d2vlm_records_train_on_their_own_response(tmp_path):
    """A D²VLM answer that already holds its <evi> references is the response as written; no second
    "The relevant event happens in <evi>" is appended (that gave 6 evidence tokens where there are 4)."""
    path = tmp_path / "d2vlm.json"
    path.write_text(json.dumps(RECORDS))
    samples, report = formats.load("d2vlm", path)
    assert len(samples) == 3 and not report.get("evi_count_mismatch")
    for s, rec in zip(samples, RECORDS):
        want = rec["conversations"][1]["value"]
        got = response_text(s.task, s.answer, s.spans, s.captions)
        assert got == want
        assert got.count("<evi>") == 2 * len(s.spans)
    # an answer whose references do not match its spans one to one is refused, not misaligned
    with pytest.raises(ValueError, match="refers to 2 events"):
        response_text("grounded_qa", "in <evi> and <evi>", [[1, 2]], [])
    bad = [dict(RECORDS[2], conversations=[RECORDS[2]["conversations"][0],
                                           {"from": "gpt", "value": "<evi> </evi> Up. In <evi> and <evi>."}])]
    path.write_text(json.dumps(bad))
    samples, report = formats.load("d2vlm", path)
    assert samples == [] and report["evi_refs_rejected"] == 1


# ------------------------------------------------------------------------- semantic capture
def tiny(**evidence) -> DamoModel:
    cfg = DamoConfig.from_dict({"llm": {"hidden": 32, "layers": 3, "intermediate": 64},
                                "fuser": {"width": 32, "blocks": 1}, "evidence": evidence})
    torch.manual_seed(0)
    return DamoModel(cfg, train_tokenizer(["when does the red square appear?", "It happens in"] * 20, 300))


def grounding_batch(model: DamoModel) -> dict:
    from damo.data.collate import Collator
    from damo.data.schema import Sample
    from damo.model.processing import ClipTensors
    g = torch.Generator().manual_seed(0)
    clip = ClipTensors(frames=torch.randint(0, 255, (6, 32, 32, 3), generator=g, dtype=torch.uint8),
                       mel=torch.randn(6, 25, 32, generator=g).half(), times=torch.arange(6) + 0.5, duration=6.0)
    s = Sample(id="a", video="v", duration=6.0, task="grounding", query="when does the red square appear?",
               spans=[[1.0, 3.0]])
    return Collator.for_model(model)([(s, clip)], random.Random(0))


def test_capture_pass_keeps_gradients_and_reads_the_named_layer():
    grads = {}
    for name, kw in {"grad": {}, "no_grad": {"capture_grad": False}, "layer1": {"capture_layer": 1}}.items():
        model = tiny(**kw)
        batch = grounding_batch(model)
        out = model(batch)
        out["logits"].float().logsumexp(-1).mean().backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.llm.parameters() if p.grad is not None])
        if name == "grad":
            logits = out["logits"].detach()
        if name == "layer1":
            assert not torch.allclose(out["logits"].detach(), logits)   # another layer's states are captured
    # the gradient of the capture pass reaches the LLM on top of the main pass's
    assert grads["grad"].shape == grads["no_grad"].shape and not torch.allclose(grads["grad"], grads["no_grad"])
    with pytest.raises(ValueError, match="capture_layer 7"):
        tiny(capture_layer=7)
