"""Metrics: hand-worked examples that pin each convention, and parity with official outputs."""
from __future__ import annotations

import numpy as np
import pytest

from damo.eval import captions, etbench
from damo.eval.didemo import didemo_metrics
from damo.eval.grounding import grounding_metrics
from damo.eval.qvhighlights import qvhighlights_metrics


# --------------------------------------------------------------------------- grounding

GT = [[[0.0, 10.0]], [[0.0, 10.0]], [[0.0, 10.0]], [[0.0, 10.0]]]
# IoUs 0.3, 0.5, 0.7 exactly (3/10, 5/10, 7/10 round to the same doubles as the literals), and a miss.
PRED = [[[0.0, 3.0]], [[0.0, 5.0, 0.9]], [[3.0, 10.0]], []]


def test_grounding_ge_counts_equal_iou():
    m = grounding_metrics(GT, PRED, convention=">=")
    assert m == {"R1@0.3": 0.75, "R1@0.5": 0.5, "R1@0.7": 0.25, "mIoU": pytest.approx(1.5 / 4)}


def test_grounding_gt_excludes_equal_iou():
    m = grounding_metrics(GT, PRED, convention=">")
    assert m == {"R1@0.3": 0.5, "R1@0.5": 0.25, "R1@0.7": 0.0, "mIoU": pytest.approx(1.5 / 4)}


def test_grounding_topk_and_multi_gt():
    gt = [[[0.0, 10.0], [20.0, 30.0]], [[0.0, 10.0]]]
    # sample 0: top-1 misses both gts, rank 2 hits the second gt exactly; sample 1: rank 6 would hit (outside top-5)
    pred = [[[40, 50], [20, 30], [0, 1]],
            [[50, 60], [50, 60], [50, 60], [50, 60], [50, 60], [0, 10]]]
    m = grounding_metrics(gt, pred, thresholds=(0.5,), topk=(1, 5))
    assert m == {"R1@0.5": 0.0, "R5@0.5": 0.5, "mIoU": 0.0}


def test_grounding_rejects_bad_input():
    with pytest.raises(ValueError, match="convention"):
        grounding_metrics(GT, PRED, convention="=>")
    with pytest.raises(ValueError, match="one .* prediction list per gt sample"):
        grounding_metrics(GT, PRED[:2])


# --------------------------------------------------------------------------- QVHighlights

def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, prefix + k + "/")
        else:
            yield prefix + k, v


def test_qvhighlights_parity_with_official_output(shared_data):
    import json
    from damo.data.schema import read_jsonl
    d = shared_data / "qvhighlights"
    got = qvhighlights_metrics(list(read_jsonl(d / "highlight_val_release.jsonl")),
                                 list(read_jsonl(d / "sample_val_preds.jsonl")))
    want = json.loads((d / "sample_val_preds_metrics_raw.json").read_text())
    got_flat, want_flat = dict(_flat(got)), dict(_flat(want))
    assert got_flat.keys() == want_flat.keys()
    for k, v in want_flat.items():
        assert got_flat[k] == v, k
    assert list(got) == list(want) and list(got["brief"]) == list(want["brief"])


QVH_GT = [
    {"qid": 1, "duration": 8, "relevant_windows": [[0, 10], [20, 30]],
     "relevant_clip_ids": [1, 2], "saliency_scores": [[4, 2, 0], [2, 2, 0]]},
    {"qid": 2, "duration": 150, "relevant_windows": [[30, 100]],
     "relevant_clip_ids": [15], "saliency_scores": [[1, 1, 1]]},
]
# qid 1: rank 2 duplicates rank 1 (a false positive); rank 3 has IoU 6/10 = 0.6 exactly with gt 2.
# Clips 2 (positive) and 3 (negative) tie at 0.5. qid 2 is missing (a miss).
QVH_PRED = [{"qid": 1, "pred_relevant_windows": [[0, 10, 0.9], [0, 10, 0.8], [20, 26, 0.7]],
             "pred_saliency_scores": [0.1, 0.9, 0.5, 0.5]}]


def test_qvhighlights_hand_worked():
    m = qvhighlights_metrics(QVH_GT, QVH_PRED)
    # qid 1 AP: thresholds <= 0.6 (>= counts the equal IoU): P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1
    # -> 1/2 * 1 + 1/2 * 2/3 = 5/6; thresholds 0.65..0.95: 1/2. Mean over 10 thresholds = 0.6.
    short = m["short"]["MR-mAP"]
    assert short["0.6"] == 83.33 and short["0.65"] == 50.0 and short["average"] == 60.0
    assert m["short"]["MR-R1"]["0.95"] == 100.0
    assert m["full"]["MR-mAP"]["average"] == 30.0       # qid 2 missing: AP 0
    assert m["full"]["MR-R1"]["0.5"] == 50.0
    assert m["long"]["MR-mAP"]["average"] == 0.0
    assert np.isnan(m["middle"]["MR-mAP"]["average"])    # no gt window in (10, 30]: official prints nan
    # Fair, annotators 0 and 1 see clips 1, 2 positive. Ranked: clip 1 (+), {clip 2 (+), clip 3 (-)} tied,
    # clip 0: operating points P = 1 at R = 1/2 and P = 2/3 at R = 1 -> AP 5/6; annotator 2 has none -> 0.
    assert m["HL-min-Fair"] == {"HL-mAP": round(100 * (5 / 6 * 2) / 6, 2), "HL-Hit1": 50.0}
    assert m["HL-min-Good"] == {"HL-mAP": 16.67, "HL-Hit1": 50.0}
    assert m["brief"]["HL-min-VeryGood-mAP"] == 16.67 and m["brief"]["MR-short-mAP"] == 60.0


# --------------------------------------------------------------------------- E.T. Bench

def _favour_a(a, b):
    """A stand-in SentSim that always prefers option (A)."""
    return np.array([1.0 if s.startswith("(A)") else 0.0 for s in b])


TVG = [{"a": "The event happens in 0 - 7 seconds.", "tgt": [0, 10]},   # IoU 0.7 -> 0.699999988 in float32
       {"a": "00:12 - 00:20", "tgt": [12, 20]},                         # official reads 12 - 00 -> [0, 12]
       {"a": "no idea", "tgt": [0, 10]}]


def test_etbench_parser_quirks_and_strict():
    assert etbench.parse_spans("00:12 - 00:20") == [[0.0, 12.0]]
    assert etbench.parse_spans("00:12 - 00:20", "strict") == [[12.0, 20.0]]
    assert etbench.parse_spans("It starts at 1:05 and ends at 1:30.") is None
    assert etbench.parse_spans("It starts at 1:05 and ends at 1:30.", "strict") == [[65.0, 90.0]]
    assert etbench.parse_spans("starts at 00:01:05\nends at 00:01:30") == [[0.0, 0.0]]
    assert etbench.parse_spans("From 3.5 to 9 seconds") == [[3.5, 9.0]]
    assert etbench.parse_spans("ends at 9, starts at 4") is None          # one keyword sentence, one number read
    assert etbench.parse_captions("start time 0, end time 10, a man cooks food.") == (None, None)
    assert etbench.parse_captions("start time 0, end time 10, a man cooks food.", "strict") == (
        [[0.0, 10.0]], ["a man cooks food."])
    assert etbench.parse_captions("0 - 10 seconds, a man cooks. 10 - 20 seconds, he eats the food.") == (
        [[0.0, 10.0], [10.0, 20.0]], ["a man cooks.", "he eats the food."])


def test_etbench_tvg_float32_iou_and_parser_modes():
    assert etbench.etbench_task_metrics("tvg", TVG) == {
        "Total": 3, "Failed": 1, "mIoU": 0.23333, "F1@0.1": 0.33333, "F1@0.3": 0.33333, "F1@0.5": 0.33333,
        "F1@0.7": 0.0, "F1": 0.25}
    m = etbench.etbench_task_metrics("tvg", TVG, parser="strict")
    assert m["F1@0.7"] == 0.33333 and m["F1"] == 0.58333 and m["mIoU"] == 0.56667


def test_etbench_grounding_tasks_hand_worked():
    tem = [{"a": "starts at 20 and ends at 25", "tgt": [[0, 10], [20, 30]]}]
    assert etbench.etbench_task_metrics("tem", tem)["Failed"] == 1
    assert etbench.etbench_task_metrics("tem", tem, parser="strict") == {
        "Total": 1, "Failed": 0, "mIoU": 0.5, "R@0.1": 1.0, "R@0.3": 1.0, "R@0.5": 1.0, "R@0.7": 0.0, "mRec": 0.75}
    tal = [{"a": "0 - 10, 40 - 50", "tgt": [[0, 10], [20, 30]]}]
    assert etbench.etbench_task_metrics("tal", tal)["F1"] == 0.5
    evs = [{"a": "0 - 5 seconds", "tgt": [[0, 10]]}, {"a": "none", "tgt": [[0, 10]]}]
    assert etbench.etbench_task_metrics("evs", evs) == {"Total": 2, "Failed": 1, "F1": 0.66667}  # failures leave the mean
    vhd = [{"a": "The highlight is at 12 seconds", "tgt": [[[0, 5]], [[10, 20]]]}, {"a": "-", "tgt": [[0, 5]]}]
    assert etbench.etbench_task_metrics("vhd", vhd) == {"Total": 2, "Failed": 1, "F1": 0.5}


def test_etbench_choice_wrong_letter_falls_through_to_similarity():
    recs = [{"a": "(B) the man", "o": ["w", "x", "y", "z"], "p": 0},
            {"a": "a. the dog", "o": ["w", "x", "y", "z"], "p": 0},
            {"a": "", "o": ["w", "x", "y", "z"], "p": 0}]
    assert etbench.etbench_task_metrics("rvq", recs, sentsim=_favour_a) == {"Total": 3, "Failed": 1, "Acc": 0.66667}
    assert etbench.etbench_task_metrics("rvq", recs, parser="strict", sentsim=_favour_a)["Acc"] == 0.33333
    gvq = [{"a": "(B) 3 - 9", "o": ["w", "x", "y", "z"], "p": 1, "tgt": [2, 10]}]
    assert etbench.etbench_task_metrics("gvq", gvq, sentsim=_favour_a) == {
        "Total": 1, "Failed": 0, "mIoU": 0.75, "R@0.1": 1.0, "R@0.3": 1.0, "R@0.5": 1.0, "R@0.7": 1.0,
        "mRec": 1.0, "Acc": 1.0}


def test_etbench_rejects_unknown_task_and_parser():
    with pytest.raises(ValueError, match="unknown E.T. Bench task"):
        etbench.etbench_task_metrics("xyz", TVG)
    with pytest.raises(ValueError, match="parser"):
        etbench.etbench_task_metrics("tvg", TVG, parser="loose")


def test_sentence_similarity_matches_sentence_transformers_cosine():
    s = etbench.sentence_similarity(["a man opens the door", "a dog"], ["a man opens the door", "quantum physics"])
    assert s[0] == pytest.approx(1.0, abs=1e-5) and s[1] < 0.3


# --------------------------------------------------------------------------- DiDeMo

def test_didemo_top3_annotator_rules():
    gt = [[[0, 0], [0, 0], [0, 1], [2, 2]], [[1, 1], [1, 1], [1, 1], [3, 3]]]
    pred = [[[0, 0], [0, 1], [2, 2], [3, 3]], [[1, 1], [0, 0]]]
    # query 1: ranks 1, 1, 2, 3 -> mean of best three 4/3 (> 1, <= 5); IoUs 1, 1, 1/2, 0 -> 2.5 / 3
    m = didemo_metrics(gt, pred)
    assert m["Rank@1"] == 0.5 and m["Rank@5"] == 1.0
    assert m["mIoU"] == pytest.approx((2.5 / 3 + 1.0) / 2)


# --------------------------------------------------------------------------- dense captioning (starts the JVM)

DVC_GT = {"v1": {"timestamps": [[0, 10], [10, 20]], "sentences": ["a man cooks food", "he eats the food"]},
          "v2": {"timestamps": [[0, 5]], "sentences": ["nobody predicted this"]}}
DVC_PRED = {"v1": [{"timestamp": [0, 10], "sentence": "a man cooks food"},
                   {"timestamp": [12, 20], "sentence": "he eats food"}]}


@pytest.fixture(scope="module")
def dvc():
    with captions.CaptionScorer() as c:
        yield (captions.dense_caption_metrics(DVC_GT, DVC_PRED, captioner=c), captions.soda_c(DVC_GT, DVC_PRED, captioner=c),
               c.meteor_matrix(["a man cooks food", "he eats the food"], ["a man cooks food", "he eats food"]))


@pytest.mark.slow
def test_densevid_detection_conventions(dvc):
    m, _, _ = dvc
    # v1: the [12, 20] proposal has IoU 0.8 -> counts at 0.3/0.5/0.7, not at 0.9 (strict >); v2 unpredicted -> 0
    assert m["per_tiou"]["Precision"] == [0.5, 0.5, 0.5, 0.25]
    assert m["per_tiou"]["Recall"] == [0.5, 0.5, 0.5, 0.25]
    assert m["F1"] == pytest.approx(0.4375)
    assert 0 < m["METEOR"] < 1 and m["CIDEr"] > 0


@pytest.mark.slow
def test_soda_c_alignment(dvc):
    _, s, met = dvc
    # only v1 is scored (v2 has no prediction); the diagonal alignment IoU x METEOR is optimal
    total = 1.0 * met[0, 0] + 0.8 * met[1, 1]
    assert s["SODA_c"] == pytest.approx(total / 2)


# unmatched captions: one exact match, and one proposal far from every gt segment whose sentence is PDVC's
# fixed reference itself ("abc123!@#", one token after PTB tokenisation, like every reference)
UNMATCHED_GT = {"v": {"timestamps": [[0, 10]], "sentences": ["a man cooks food"]}}
UNMATCHED_PRED = {"v": [{"timestamp": [0, 10], "sentence": "a man cooks food"},
                        {"timestamp": [50, 60], "sentence": "abc123!@#"}]}


@pytest.fixture(scope="module")
def unmatched():
    with captions.CaptionScorer() as c:
        yield {mode: captions.dense_caption_metrics(UNMATCHED_GT, UNMATCHED_PRED, captioner=c, unmatched_caption=mode)
               for mode in captions.UNMATCHED_CAPTIONS}, c.score({0: ["a man cooks food"], 1: ["abc123!@#"]},
                                                          {0: ["a man cooks food"], 1: ["abc123!@#"]})


@pytest.mark.slow
def test_unmatched_caption_pdvc_fixed_string(unmatched):
    m, identical = unmatched
    # both pairs are identical after tokenisation: ROUGE-L 1 per pair, BLEU-n 1 (every n-gram matches, no
    # brevity penalty), METEOR that of two identical pairs
    assert m["abc123"]["ROUGE_L"] == pytest.approx(1.0)
    assert m["abc123"]["Bleu_1"] == pytest.approx(1.0) and m["abc123"]["Bleu_3"] == pytest.approx(1.0)
    assert m["abc123"]["METEOR"] == pytest.approx(identical["METEOR"]) and identical["METEOR"] > 0.9


@pytest.mark.slow
def test_unmatched_caption_random_letters(unmatched):
    m, identical = unmatched
    # the second reference is one word of 10-20 random letters, not "abc123!@#": ROUGE-L (1 + 0) / 2;
    # BLEU-1 4 of the 5 hypothesis words (both references together are 5 words: no brevity penalty)
    assert m["random"]["ROUGE_L"] == pytest.approx(0.5)
    assert m["random"]["Bleu_1"] == pytest.approx(4 / 5)
    assert 0 < m["random"]["METEOR"] < m["abc123"]["METEOR"]
    # detection ignores the reference strings
    assert m["random"]["per_tiou"]["Precision"] == m["abc123"]["per_tiou"]["Precision"] == [0.5] * 4


def test_unmatched_caption_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unmatched_caption"):
        captions.dense_caption_metrics(UNMATCHED_GT, UNMATCHED_PRED, unmatched_caption="zzz")


# --------------------------------------------------------------------------- display rounding

def test_round_span_never_passes_the_rounded_duration():
    from damo.data.schema import round_span

    # a span clipped at the end of a 14.977-s video: ends rounded to 0.01 would print 14.98 > 14.977
    assert round_span(3.004, 14.977, 14.977) == (3.0, 14.977, 14.977)
    assert round_span(-0.001, 2.004, 10.0) == (0.0, 2.0, 10.0)
    s, e, d = round_span(9.9996, 9.9999, 9.9994)   # duration rounds down below both rounded ends
    assert s <= e <= d == 9.999
