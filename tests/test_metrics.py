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
