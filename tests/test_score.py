"""score(): peer-format and canonical predictions, misses, and the predicted-only subset."""
from __future__ import annotations

import json

import pytest

from damo.eval.score import score


def test_qvhighlights_submission_matches_official(shared_data):
    d = shared_data / "qvhighlights"
    m = score("qvhighlights", d / "highlight_val_release.jsonl", d / "sample_val_preds.jsonl")
    assert m["brief"] == json.loads((d / "sample_val_preds_metrics_raw.json").read_text())["brief"]


def test_charades_canonical_misses_and_subset(shared_data, tmp_path):
    d = shared_data / "charades_sta"
    gt, dur = d / "charades_sta_test.txt", d / "Charades_v1_test.csv"
    from damo.data import formats
    (s, e), = formats.load("charades-sta", gt, durations=dur)[0][0].spans  # sample "0", after span cleaning
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"id": "0", "spans": [[s, e + (e - s)]]}) + "\n")  # IoU 0.5 (up to rounding)
    allm = score("charades-sta", gt, pred, durations=dur)
    assert allm["n"] == 3720 and allm["R1@0.3"] == pytest.approx(1 / 3720)
    sub = score("charades-sta", gt, pred, durations=dur, subset="predicted")
    assert sub["n"] == 1 and sub["R1@0.3"] == 1.0 and sub["R1@0.7"] == 0.0 and sub["mIoU"] == pytest.approx(0.5)
    assert score("charades-sta", gt, pred, durations=dur, subset="predicted", convention=">")["R1@0.3"] == 1.0


def test_score_rejects_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        score("kinetics", tmp_path / "a", tmp_path / "b")


def _first_past_end(shared_data):
    """The first Charades-STA test query whose txt span ends after the video's CSV length."""
    d = shared_data / "charades_sta"
    from damo.data.formats.common import read_durations
    lengths = read_durations(d / "Charades_v1_test.csv")
    for n, line in enumerate((d / "charades_sta_test.txt").read_text().splitlines()):
        vid, s, e = line.split("##")[0].split()
        if float(e) > lengths[vid]:
            return str(n), float(s), float(e), lengths[vid]
    raise AssertionError("no span past the end")


def test_charades_scores_raw_spans_by_default_and_clips_on_request(shared_data, tmp_path):
    d = shared_data / "charades_sta"
    gt = d / "charades_sta_test.txt"
    sid, s, e, length = _first_past_end(shared_data)
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"id": sid, "spans": [[s, e]]}) + "\n")   # exactly the txt's span
    raw = score("charades-sta", gt, pred, subset="predicted")
    assert raw["mIoU"] == 1.0 and raw["R1@0.7"] == 1.0
    clipped = score("charades-sta", gt, pred, subset="predicted", clip_gt=True)
    assert clipped["mIoU"] == pytest.approx((length - s) / (e - s))
    # conversion still clips and counts
    from damo.data import formats
    assert formats.load("charades-sta", gt)[1]["end_past_duration"] == 562
    assert formats.load("charades-sta", gt, raw_spans=True)[1]["end_past_duration_kept"] == 562


def test_charades_raw_mean_iou_hand_worked(tmp_path):
    # video V is 10 s long; the txt's gt runs past it to 12 s. No CSV is needed to score raw spans.
    gt = tmp_path / "sta.txt"
    gt.write_text("V 2.0 12.0##a person opens a door.\nV 0.0 4.0##a person sits.\n")
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"id": "0", "spans": [[2.0, 10.0]]}) + "\n" + json.dumps({"id": "1", "spans": [[1.0, 4.0]]}) + "\n")
    # raw: IoUs 8/10 and 3/4 -> mIoU 0.775; clipped to 10 s: 8/8 and 3/4 -> 0.875
    assert score("charades-sta", gt, pred)["mIoU"] == pytest.approx(0.775)
    (tmp_path / "len.csv").write_text("id,length\nV,10.0\n")
    m = score("charades-sta", gt, pred, durations=tmp_path / "len.csv", clip_gt=True)
    assert m["mIoU"] == pytest.approx(0.875) and m["R1@0.7"] == 1.0
    with pytest.raises(ValueError, match="durations"):
        score("charades-sta", gt, pred, clip_gt=True)
