"""Scoring and conversion against hostile files: every problem is an error naming the file and line
(or record), or a counted quirk where the official evaluators tolerate it."""
from __future__ import annotations

import json

import pytest

from damo.data import formats
from damo.eval.score import score

STA = "V 2.0 8.0##a person opens a door.\nV 0.0 4.0##a person sits.\n"


@pytest.fixture
def sta(tmp_path):
    gt = tmp_path / "sta.txt"
    gt.write_text(STA)
    (tmp_path / "len.csv").write_text("id,length\nV,10.0\n")
    return gt


def jsonl(path, *rows) -> object:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ canonical predictions

@pytest.mark.parametrize("row, message", [
    ('{"id": "0", "spans": [[2.0, NaN]]}', "span end must be a finite number"),
    ('{"id": "0", "spans": [[-Infinity, 8.0]]}', "span start must be a finite number"),
    ({"id": "0", "spans": [["two", 8.0]]}, "span start must be a number, got 'two'"),
    ({"id": "0", "spans": [[2.0, True]]}, "span end must be a number, got True"),
    ({"id": "0", "spans": [[2.0]]}, "a span must be 2 or 3 numbers"),
    ({"id": "0", "spans": "2-8"}, "spans must be a list"),
    ({"id": "0"}, "missing required key"),
    ({"id": "0", "spans": [], "answer": 5}, "'answer' must be text"),
    ("[1, 2]", "expected a JSON object per line"),
    ("{not json", "not valid JSON"),
])
def test_malformed_canonical_prediction_names_file_and_line(sta, tmp_path, row, message):
    pred = jsonl(tmp_path / "pred.jsonl", {"id": "1", "spans": [[0.0, 4.0]]}, row)
    with pytest.raises(ValueError, match=message) as e:
        score("charades-sta", sta, pred)
    assert f"{pred}:2" in str(e.value)


def test_empty_prediction_files_are_errors(sta, tmp_path):
    for text in ("", "\n\n  \n", "[]"):
        (tmp_path / "p.jsonl").write_text(text)
        with pytest.raises(ValueError, match="empty|no predictions"):
            score("charades-sta", sta, tmp_path / "p.jsonl")


def test_duplicate_ids_error_unless_a_policy_is_chosen(sta, tmp_path):
    pred = jsonl(tmp_path / "pred.jsonl", {"id": "0", "spans": [[2.0, 8.0]]}, {"id": "1", "spans": [[0.0, 4.0]]},
                 {"id": "0", "spans": [[50.0, 60.0]]})
    with pytest.raises(ValueError, match=rf"{pred}:3: prediction id '0' appears again \(first at {pred}:1\)"):
        score("charades-sta", sta, pred)
    first = score("charades-sta", sta, pred, duplicates="first")
    last = score("charades-sta", sta, pred, duplicates="last")
    assert first["mIoU"] == 1.0 and last["mIoU"] == 0.5          # (1 + 1) / 2 and (0 + 1) / 2
    assert first["prediction_quirks"] == last["prediction_quirks"] == {"duplicate_id": 1}
    with pytest.raises(ValueError, match="duplicates must be one of"):
        score("charades-sta", sta, pred, duplicates="any")


def test_reversed_predicted_span_is_a_counted_miss(sta, tmp_path):
    # TimeChat's iou() and ours both give a span with end < start no overlap: IoU 0, as the official scores it
    pred = jsonl(tmp_path / "pred.jsonl", {"id": "0", "spans": [[8.0, 2.0]]}, {"id": "1", "spans": []})
    m = score("charades-sta", sta, pred)
    assert m["mIoU"] == 0.0 and m["n_predicted"] == 2 and m["prediction_quirks"] == {"pred_reversed": 1}


def test_txt_prediction_with_non_finite_time(sta, tmp_path):
    (tmp_path / "ok.txt").write_text("V 2.0 8.0##a person opens a door.\nV 0.0 2.0##a person sits.\n")
    assert score("charades-sta", sta, tmp_path / "ok.txt", durations=tmp_path / "len.csv")["mIoU"] == 0.75
    (tmp_path / "pred.txt").write_text("V 2.0 8.0##a person opens a door.\nV nan 4.0##a person sits.\n")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'pred.txt'}:2: start must be a finite number"):
        score("charades-sta", sta, tmp_path / "pred.txt", durations=tmp_path / "len.csv")


# ------------------------------------------------------------------ peer prediction formats

QVH_GT = {"qid": 7, "query": "q", "duration": 150, "vid": "v", "relevant_windows": [[0, 10]],
          "relevant_clip_ids": [0], "saliency_scores": [[1, 1, 1]]}


def test_qvhighlights_submission_checks(tmp_path):
    gt = jsonl(tmp_path / "gt.jsonl", QVH_GT)
    bad = jsonl(tmp_path / "a.jsonl", {"qid": 7, "pred_relevant_windows": [[0, 10, "NaN"]]})
    with pytest.raises(ValueError, match=rf"{bad}:1: span score must be a finite number"):
        score("qvhighlights", gt, bad)
    bad = jsonl(tmp_path / "b.jsonl", {"qid": 7, "pred_relevant_windows": [[0, 10]]})
    with pytest.raises(ValueError, match=rf"{bad}:1: a span must be 3 numbers"):
        score("qvhighlights", gt, bad)
    bad = jsonl(tmp_path / "c.jsonl", {"qid": 7, "pred_relevant_windows": [[0, 10, 1]], "pred_saliency_scores": [1, None]})
    with pytest.raises(ValueError, match=rf"{bad}:1: saliency score must be a number, got None"):
        score("qvhighlights", gt, bad)
    dup = jsonl(tmp_path / "d.jsonl", {"qid": 7, "pred_relevant_windows": [[0, 10, 1]]},
                {"qid": 7, "pred_relevant_windows": [[100, 110, 1]]})
    with pytest.raises(ValueError, match=rf"{dup}:2: qid 7 appears again"):
        score("qvhighlights", gt, dup)
    assert score("qvhighlights", gt, dup, duplicates="first")["brief"]["MR-full-R1@0.5"] == 100.0
    assert score("qvhighlights", gt, dup, duplicates="last")["brief"]["MR-full-R1@0.5"] == 0.0


def test_activitynet_results_checks(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"v": {"duration": 20, "timestamps": [[0, 10]], "sentences": ["a man cooks"]}}))
    cases = {
        '{"results": {"v": [{"timestamp": [0, Infinity], "sentence": "x"}]}}': "results\\['v'\\]\\[0\\]: span end must be a finite",
        '{"results": {"v": [{"timestamp": [0], "sentence": "x"}]}}': "a span must be 2 numbers",
        '{"results": {"v": [{"timestamp": [0, 5], "sentence": 3}]}}': "'sentence' must be text",
        '{"results": {"v": [{"sentence": "x"}]}}': "missing required key",
        '{"results": {"v": "0-5 x"}}': "expected a list",
        '{"results": {}}': "holds no proposals",
        '{"results": {"v": [{"timestamp": [0, 5], "sentence": "x"}], "v": []}}': "key 'v' appears twice",
    }
    for text, message in cases.items():
        (tmp_path / "p.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            score("activitynet-captions", gt, tmp_path / "p.json")


def test_etbench_record_checks(tmp_path):
    gt = tmp_path / "gt.json"
    rec = {"task": "tvg", "source": "charades", "idx": 0, "video": "v", "duration": 20, "tgt": [0, 10], "q": "q"}
    gt.write_text(json.dumps([rec]))
    for rows, message in [([{**rec, "a": None}], r"record 0: the answer 'a' must be text"),
                          ([{**rec, "a": "0 - 10"}, {**rec, "a": "5 - 6"}], r"record 1: record .* appears again")]:
        (tmp_path / "p.json").write_text(json.dumps(rows))
        with pytest.raises(ValueError, match=message):
            score("etbench", gt, tmp_path / "p.json")
    assert score("etbench", gt, tmp_path / "p.json", duplicates="first")["tvg"]["charades"]["mIoU"] == 1.0


# ------------------------------------------------------------------ annotation files (conversion)

@pytest.mark.parametrize("csv, message", [
    ("id,length\nV,nan\n", r"len.csv:2: length must be a finite number"),
    ("id,length\nV,-3\n", r"len.csv:2: length must be positive"),
    ("id,length\nV,0\n", r"len.csv:2: length must be positive"),
    ("id,length\nV,inf\n", r"len.csv:2: length must be a finite number"),
])
def test_bad_durations_name_the_line(sta, tmp_path, csv, message):
    (tmp_path / "len.csv").write_text(csv)
    with pytest.raises(ValueError, match=message):
        formats.load("charades-sta", sta, durations=tmp_path / "len.csv")


def test_non_finite_gt_times_and_durations(tmp_path):
    (tmp_path / "sta.txt").write_text("V 2.0 inf##a person opens a door.\n")
    (tmp_path / "len.csv").write_text("id,length\nV,10\n")
    with pytest.raises(ValueError, match=r"sta.txt:1: end must be a finite number"):
        formats.load("charades-sta", tmp_path / "sta.txt", durations=tmp_path / "len.csv")
    with pytest.raises(ValueError, match=r"sta.txt:1: end must be a finite number"):
        score("charades-sta", tmp_path / "sta.txt", jsonl(tmp_path / "p.jsonl", {"id": "0", "spans": []}))
    anet = tmp_path / "anet.json"
    anet.write_text('{"v": {"duration": NaN, "timestamps": [[0, 1]], "sentences": ["x"]}}')
    with pytest.raises(ValueError, match=r"anet.json: video 'v'.*duration must be a finite number"):
        formats.load("activitynet-captions", anet)
    qvh = jsonl(tmp_path / "qvh.jsonl", {**QVH_GT, "duration": -150})
    with pytest.raises(ValueError, match=r"qvh.jsonl:1: duration must be positive"):
        formats.load("qvhighlights", qvh)
    qvh = jsonl(tmp_path / "qvh.jsonl", {**QVH_GT, "relevant_windows": [[0, "1e999"]]})
    with pytest.raises(ValueError, match=r"qvh.jsonl:1: span end must be a finite number"):
        formats.load("qvhighlights", qvh)
