"""Span arithmetic (``damo.spans``): hand-worked values for every helper."""
from __future__ import annotations

import numpy as np

from damo.spans import clip, gaps, hull, merge, overlap, span_iou, time_key, with_rank_scores


def test_span_iou_hand_worked():
    a = np.array([[0.0, 10.0], [2.0, 4.0]])
    b = np.array([[5.0, 15.0], [20.0, 30.0], [0.0, 10.0]])
    want = np.array([[5 / 15, 0.0, 1.0],
                     [0.0, 0.0, 0.2]])
    np.testing.assert_allclose(span_iou(a, b), want)


def test_span_iou_touching_reversed_and_empty_are_zero():
    assert span_iou([[0, 5]], [[5, 9]])[0, 0] == 0.0
    assert span_iou([[3, 3]], [[3, 3]])[0, 0] == 0.0
    assert span_iou([[8, 2]], [[0, 10]])[0, 0] == 0.0      # end before start: no intersection
    assert span_iou([], [[0, 1]]).shape == (0, 1)


def test_overlap_and_hull():
    assert overlap([0, 10], [4, 12]) == 6
    assert overlap([0, 4], [6, 9]) == 0.0
    assert overlap([5, 1], [0, 10]) == 0.0
    assert hull([[4, 6], [1, 2], [5, 9]]) == [1, 9]


def test_merge_joins_overlapping_and_close_spans_in_time_order():
    spans = [[10, 12], [0, 3], [2, 5], [5.5, 7]]
    assert merge(spans) == [[0.0, 5.0], [5.5, 7.0], [10.0, 12.0]]
    assert merge(spans, gap=0.5) == [[0.0, 7.0], [10.0, 12.0]]
    assert merge([[0, 4], [4, 6]]) == [[0.0, 6.0]]              # touching spans join
    assert merge([]) == []


def test_gaps_are_what_no_span_covers():
    assert gaps([[2, 4], [3, 6], [8, 10]], 12) == [[0.0, 2.0], [6.0, 8.0], [10.0, 12.0]]
    assert gaps([[0, 12]], 12) == []
    assert gaps([], 5) == [[0.0, 5.0]]


def test_clip_keeps_the_part_inside_the_video():
    assert clip([-1.5, 4], 10) == [0.0, 4]
    assert clip([8, 14], 10) == [8, 10]
    assert clip([10, 14], 10) is None
    assert clip([-3, 0], 10) is None


def test_rank_scores_keep_given_scores_and_best_first_order():
    assert with_rank_scores([[1, 2], [3, 4, 0.7], [5, 6]]) == [[1.0, 2.0, 1.0], [3.0, 4.0, 0.7], [5.0, 6.0, 1 / 3]]


def test_time_key():
    assert [time_key(t) for t in (2.5, 3, 0.1234, 12.0004)] == ["2.5", "3", "0.123", "12"]
