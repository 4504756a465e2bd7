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
