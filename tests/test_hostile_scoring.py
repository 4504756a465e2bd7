"""Hostile scoring inputs: a ground-truth qid seen twice, prediction files nested 100,000 deep, ids
of the wrong type, lines too long. Each is an error naming the file and line."""
from __future__ import annotations

import json

import pytest

from damo.eval.score import score
from damo.textio import MAX_LINE_BYTES

GT = {"query": "q", "duration": 150, "vid": "v", "relevant_windows": [[0, 10]], "relevant_clip_ids": [0],
      "saliency_scores": [[1, 2, 3]]}


def jsonl(path, *rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def gt(tmp_path):
    return jsonl(tmp_path / "gt.jsonl", GT | {"qid": 2579}, GT | {"qid": 7, "relevant_windows": [[20, 30]]})


@pytest.mark.parametrize("repeat", [2579, "2579"])
def test_a_repeated_gt_qid_is_an_error_naming_both_lines(tmp_path, repeat):
    gt = jsonl(tmp_path / "gt.jsonl", GT | {"qid": 2579}, GT | {"qid": 7}, GT | {"qid": repeat})
    pred = jsonl(tmp_path / "p.jsonl", {"qid": 2579, "pred_relevant_windows": [[0, 10, 1.0]]})
    with pytest.raises(ValueError, match=rf"{gt}:3: qid {repeat!r} appears again \(first at {gt}:1\)"):
        score("qvhighlights", gt, pred)


def test_a_prediction_qid_as_text_names_the_same_query(gt, tmp_path):
    as_text = jsonl(tmp_path / "p.jsonl", {"qid": "2579", "pred_relevant_windows": [[0, 10, 1.0]]},
                    {"qid": 7, "pred_relevant_windows": [[20, 30, 1.0]]})
    assert score("qvhighlights", gt, as_text)["brief"]["MR-full-R1@0.5"] == 100.0
    both = jsonl(tmp_path / "q.jsonl", {"qid": 2579, "pred_relevant_windows": [[0, 10, 1.0]]},
                 {"qid": "2579", "pred_relevant_windows": [[50, 60, 1.0]]})
    with pytest.raises(ValueError, match=rf"{both}:2: qid 2579 appears again \(first at {both}:1\)"):
        score("qvhighlights", gt, both)


@pytest.mark.parametrize("qid", [[2579], {"a": 1}, None, True, 1.5])
def test_a_qid_that_is_not_a_number_or_text_names_the_line(gt, tmp_path, qid):
    pred = jsonl(tmp_path / "p.jsonl", {"qid": 7, "pred_relevant_windows": [[20, 30, 1.0]]},
                 {"qid": qid, "pred_relevant_windows": [[0, 10, 1.0]]})
    with pytest.raises(ValueError, match=rf"{pred}:2: qid must be a number or text, got "):
        score("qvhighlights", gt, pred)
    bad_gt = jsonl(tmp_path / "g.jsonl", GT | {"qid": 7}, GT | {"qid": qid})
    with pytest.raises(ValueError, match=rf"{bad_gt}:2: qid must be a number or text"):
        score("qvhighlights", bad_gt, pred)


@pytest.mark.parametrize("task, suffix", [("qvhighlights", ".jsonl"), ("charades-sta", ".jsonl"),
                                          ("activitynet-captions", ".json")])
def test_deeply_nested_predictions_name_the_file_and_line(tmp_path, task, suffix):
    deep = "[" * 100_000 + "]" * 100_000
    pred = tmp_path / f"p{suffix}"
    pred.write_text('{"qid": 7, "pred_relevant_windows": [[0, 10, 1]]}\n{"qid": 8, "x": ' + deep + "}\n")
    gt = jsonl(tmp_path / "gt.jsonl", GT | {"qid": 7})
    with pytest.raises(ValueError, match=rf"{pred}:2: JSON nested more than 64 levels deep"):
        score(task, gt, pred)
    whole = tmp_path / "whole.json"
    whole.write_text('{"results": ' + deep + "}")
    with pytest.raises(ValueError, match=rf"{whole}:1: JSON nested more than 64 levels deep"):
        score(task, gt, whole)


def test_deep_or_huge_gt_lines_name_the_file_and_line(tmp_path):
    pred = jsonl(tmp_path / "p.jsonl", {"qid": 7, "pred_relevant_windows": [[0, 10, 1.0]]})
    deep = jsonl(tmp_path / "deep.jsonl", GT | {"qid": 7}, '{"qid": 8, "x": ' + "[" * 100_000 + "}")
    with pytest.raises(ValueError, match=rf"{deep}:2: JSON nested more than 64 levels deep"):
        score("qvhighlights", deep, pred)
    huge = jsonl(tmp_path / "huge.jsonl", GT | {"qid": 7}, GT | {"qid": 8, "query": "q" * MAX_LINE_BYTES})
    with pytest.raises(ValueError, match=rf"{huge}:2: line 2 is longer than 1,048,576 bytes"):
        score("qvhighlights", huge, pred)
    nested_json = tmp_path / "anet.json"
    nested_json.write_text('{"v": ' + "{" * 100_000 + "}")
    with pytest.raises(ValueError, match=rf"{nested_json}: JSON nested more than 64 levels deep"):
        score("activitynet-captions", nested_json, tmp_path / "p.jsonl")
