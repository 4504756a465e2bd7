"""TimeLens-Bench scored as TimeLens' evaluation/compute_metrics.py scores it (hand-worked numbers), from canonical
predictions, from answers read as its eval_dataloader.py reads them, and from its own prediction files."""
from __future__ import annotations

import json

import pytest

from damo.cli import main

GT = {"v0": {"duration": 30, "spans": [[0, 10], [10, 20]], "queries": ["a man opens a door.", "he sits  down"]},
      "v1": {"duration": 20, "spans": [[2, 6]], "queries": ["a dog barks"]},
      "v2": {"duration": 12, "spans": [[3, 14]], "queries": ["the light goes out"]}}   # ends past the video: kept


def run(tmp_path, capsys, preds: list[dict] | str, *options: str) -> dict:
    gt = tmp_path / "charades-timelens.json"
    gt.write_text(json.dumps(GT))
    pred = tmp_path / "pred.jsonl"
    pred.write_text(preds if isinstance(preds, str) else "".join(json.dumps(p) + "\n" for p in preds))
    capsys.readouterr()
    assert main(["eval", "--task", "timelens", "--gt", str(gt), "--pred", str(pred), *options]) == 0
    return json.loads(capsys.readouterr().out)


def test_spans_scored_as_compute_metrics(tmp_path, capsys):
    preds = [{"id": "v0#0", "spans": [[0, 5], [0, 10]]},          # first pair only: IoU 0.5
             {"id": "v0#1", "spans": [[12, 20]]},                  # 0.8
             {"id": "v1#0", "spans": []},                          # no time: 0
             {"id": "v2#0", "spans": [[4, 14]]}]                   # against [3, 14] as written: 10/11
    m = run(tmp_path, capsys, preds)
    assert m == {"n": 4, "failed": 1, "IOU 0.3": 75.0, "IOU 0.5": 75.0, "IOU 0.7": 50.0,
                 "mIOU": pytest.approx((0.5 + 0.8 + 0 + 10 / 11) * 100 / 4, abs=1e-12)}
    # the official counts only the queries its file holds
    m = run(tmp_path, capsys, preds[:2], "--subset", "predicted")
    assert (m["n"], m["IOU 0.7"], m["mIOU"]) == (2, 50.0, pytest.approx(65.0))


def test_answers_read_as_eval_dataloader_and_as_lmms_eval(tmp_path, capsys):
    preds = [{"id": "v0#0", "spans": [], "answer": "The event happens in 0.4 - 10.5 seconds."},
             {"id": "v0#1", "spans": [], "answer": "no idea"},
             {"id": "v1#0", "spans": [], "answer": "00:02 - 00:06.4"},
             {"id": "v2#0", "spans": [], "answer": "from 3 to 13"}]
    # whole seconds, halves to even: [0, 10] (1.0), [duration + 10, duration + 20] (0), [2, 6] (1.0), [3, 13] (10/11)
    m = run(tmp_path, capsys, preds, "--parser", "timelens")
    assert (m["failed"], m["IOU 0.3"], m["IOU 0.7"]) == (0, 75.0, 75.0)
    assert m["mIOU"] == pytest.approx((1 + 0 + 1 + 10 / 11) * 100 / 4, abs=1e-12)
    # lmms-eval does not round: [0.4, 10.5] gives 9.6 / 10.5, [2, 6.4] gives 4 / 4.4; no time fails
    m = run(tmp_path, capsys, preds, "--parser", "lmms-timelens")
    assert (m["failed"], m["timelens_IOU@7"]) == (1, 75.0)
    assert m["timelens_mIOU"] == pytest.approx((9.6 / 10.5 + 0 + 4 / 4.4 + 10 / 11) * 100 / 4, abs=1e-12)


def test_timelens_own_prediction_file(tmp_path, capsys):
    """Lines as eval_dataloader.py dumps them: one key per query, its timestamps (already rounded) and answer."""
    dump = {"v0.mp4>>>a man opens a door>>>[0, 10]": {"timestamps": [[0, 5], [0, 10]], "answers": "0 - 5"},
            "v0.mp4>>>he sits down>>>[10, 20]": {"timestamps": [[12, 20]], "answers": "12 - 20"},
            "v2.mp4>>>the light goes out>>>[3, 14]": {"timestamps": [[4, 14]], "answers": "4 - 14", "duration": 12}}
    lines = "".join(json.dumps({k: v}) + "\n" for k, v in dump.items())
    m = run(tmp_path, capsys, lines, "--subset", "predicted")
    assert (m["n"], m["IOU 0.7"]) == (3, pytest.approx(200 / 3))
    assert m["mIOU"] == pytest.approx((0.5 + 0.8 + 10 / 11) * 100 / 3, abs=1e-12)
    bad = lines.replace("he sits down", "he stands up")
    with pytest.raises(SystemExit, match="no query of the gt file has key 'v0.mp4>>>he stands up>>>"):
        run(tmp_path, capsys, bad)


def test_a_repeated_query_counts_once_with_its_last_answer(tmp_path, capsys):
    GT["v1"]["spans"].append([2, 6])
    GT["v1"]["queries"].append("a dog barks.")
    try:
        m = run(tmp_path, capsys, [{"id": "v1#0", "spans": [[2, 6]]}, {"id": "v1#1", "spans": [[2, 4]]}],
                "--subset", "predicted")
    finally:
        GT["v1"]["spans"].pop()
        GT["v1"]["queries"].pop()
    assert (m["n"], m["mIOU"]) == (1, 50.0)


def test_parsers_are_named_per_benchmark(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--task timelens reads answers with --parser spans or timelens or "
                                         "lmms-timelens, got 'lmms-charades'"):
        run(tmp_path, capsys, [{"id": "v1#0", "spans": []}], "--parser", "lmms-charades")
    with pytest.raises(SystemExit, match="--parser reads each prediction's 'answer'; the prediction for 'v1#0' has"):
        run(tmp_path, capsys, [{"id": "v1#0", "spans": []}], "--parser", "timelens")
