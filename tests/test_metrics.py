"""Metrics: hand-worked examples that pin each convention, and parity with official outputs."""
from __future__ import annotations

import numpy as np
import pytest

from damo.eval import metrics as M


# --------------------------------------------------------------------------- span_iou

def test_span_iou_hand_worked():
    a = np.array([[0.0, 10.0], [2.0, 4.0]])
    b = np.array([[5.0, 15.0], [20.0, 30.0], [0.0, 10.0]])
    want = np.array([[5 / 15, 0.0, 1.0],
                     [0.0, 0.0, 0.2]])
    np.testing.assert_allclose(M.span_iou(a, b), want)


def test_span_iou_touching_and_empty_are_zero():
    assert M.span_iou([[0, 5]], [[5, 9]])[0, 0] == 0.0
    assert M.span_iou([[3, 3]], [[3, 3]])[0, 0] == 0.0


# --------------------------------------------------------------------------- grounding

GT = [[[0.0, 10.0]], [[0.0, 10.0]], [[0.0, 10.0]], [[0.0, 10.0]]]
# IoUs 0.3, 0.5, 0.7 exactly (3/10, 5/10, 7/10 round to the same doubles as the literals), and a miss.
PRED = [[[0.0, 3.0]], [[0.0, 5.0, 0.9]], [[3.0, 10.0]], []]


def test_grounding_ge_counts_equal_iou():
    m = M.grounding_metrics(GT, PRED, convention=">=")
    assert m == {"R1@0.3": 0.75, "R1@0.5": 0.5, "R1@0.7": 0.25, "mIoU": pytest.approx(1.5 / 4)}


def test_grounding_gt_excludes_equal_iou():
    m = M.grounding_metrics(GT, PRED, convention=">")
    assert m == {"R1@0.3": 0.5, "R1@0.5": 0.25, "R1@0.7": 0.0, "mIoU": pytest.approx(1.5 / 4)}


def test_grounding_topk_and_multi_gt():
    gt = [[[0.0, 10.0], [20.0, 30.0]], [[0.0, 10.0]]]
    # sample 0: top-1 misses both gts, rank 2 hits the second gt exactly; sample 1: rank 6 would hit (outside top-5)
    pred = [[[40, 50], [20, 30], [0, 1]],
            [[50, 60], [50, 60], [50, 60], [50, 60], [50, 60], [0, 10]]]
    m = M.grounding_metrics(gt, pred, thresholds=(0.5,), topk=(1, 5))
    assert m == {"R1@0.5": 0.0, "R5@0.5": 0.5, "mIoU": 0.0}


def test_grounding_rejects_bad_input():
    with pytest.raises(ValueError, match="convention"):
        M.grounding_metrics(GT, PRED, convention="=>")
    with pytest.raises(ValueError, match="one .* prediction list per gt sample"):
        M.grounding_metrics(GT, PRED[:2])


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
    got = M.qvhighlights_metrics(list(read_jsonl(d / "highlight_val_release.jsonl")),
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
    m = M.qvhighlights_metrics(QVH_GT, QVH_PRED)
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
