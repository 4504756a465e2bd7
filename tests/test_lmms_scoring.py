"""``damo eval --parser lmms-charades`` and ``--parser lmms-timelens`` give the numbers lmms-eval 0.7.3's own
``process_results`` and aggregation functions give on the same answers."""
from __future__ import annotations

import json

import pytest

from damo.cli import main
from damo.eval.charades_sta import lmms_charades_spans
from damo.model.presets import timelens_spans
from lmms_tasks import task_utils

charades = task_utils("charades_sta")
timelens = task_utils("timelens")

# (gt span, answer): no time, one time, clock times, several spans, reversed, words holding "to", en dashes
ANSWERS = [
    ((24.3, 30.4), "The event happens in the 24.3 - 30.4 seconds."),
    ((24.3, 30.4), "I cannot tell."),
    ((0.0, 6.9), "It starts at 12 seconds."),
    ((0.0, 6.9), "The event starts at 00:00:01 and ends at 00:00:07."),
    ((12.0, 31.5), "The event happens from 0:12 to 0:31.5."),
    ((12.0, 31.5), "It happens in 14 - 20 seconds and again in 25 - 30 seconds."),
    ((3.0, 9.0), "start time: 9.0, end time: 3.0"),
    ((3.0, 9.0), "The person stops at the tomato stand 4 to 8.5 seconds in."),
    ((1.5, 4.0), "First, 1.5s – 4s, then nothing"),
    ((1.5, 4.0), "The event happens at 2.5.\nStart: 1.0\nEnd: 4.0"),
    ((10.0, 20.0), "Between 01:00:10 and 01:00:20."),
    ((10.0, 20.0), "10 20 30"),
    ((10.0, 20.0), "from 8 to 21 seconds; 0:05 - 0:09"),
    ((5.0, 8.0), "5s-8s"),
    ((5.0, 8.0), "happens at 7"),
]


def lmms_numbers(utils, process, aggregate, docs: list[dict], answers: list[str]) -> list[float]:
    results = [getattr(utils, process)(doc, [a]) for doc, a in zip(docs, answers)]
    metric = next(iter(results[0]))
    prefix = metric[:metric.index("IOU")]
    return [getattr(utils, f"{aggregate}_{name}")([r[f"{prefix}{key}"] for r in results], None)
            for name, key in (("iou3", "IOU@3"), ("iou5", "IOU@5"), ("iou7", "IOU@7"), ("miou", "mIOU"))]


def damo_numbers(tmp_path, capsys, task: str, gt, preds: list[dict], parser: str) -> dict:
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(p) + "\n" for p in preds))
    capsys.readouterr()
    assert main(["eval", "--task", task, "--gt", str(gt), "--pred", str(pred), "--parser", parser]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("answer", [a for _, a in ANSWERS] + ["", "to 5", "1:00 - 2:00 and 3 - 4"])
def test_the_parsers_read_answers_as_lmms_eval_does(answer):
    assert lmms_charades_spans(answer) == [list(sp) for sp in charades.extract_time(answer)]
    assert timelens_spans(answer) == [list(sp) for sp in timelens.extract_time(answer)]


def charades_numbers(tmp_path, capsys, gt, docs: list[dict], answers: list[str]) -> tuple[list, list]:
    """Our Charades-STA R@0.3/0.5/0.7, mIoU and sample count of ``answers`` through the lmms parser, and
    lmms-eval's own aggregation of the same answers about ``docs``."""
    got = damo_numbers(tmp_path, capsys, "charades-sta", gt,
                       [{"id": str(i), "spans": [], "answer": a} for i, a in enumerate(answers)], "lmms-charades")
    want = lmms_numbers(charades, "temporal_grounding_process_results_generation", "temporal_grounding_aggregate",
                        docs, answers)
    return [got[k] for k in ("charades_sta_IOU@3", "charades_sta_IOU@5", "charades_sta_IOU@7", "charades_sta_mIOU",
                             "n")], want


def test_charades_lmms_parser_equals_lmms_eval_aggregation(tmp_path, capsys):
    rows = ANSWERS + [ANSWERS[0]]
    lines = [f"V{i % 4} {s} {e}##person number {i} sits." for i, ((s, e), _) in enumerate(ANSWERS)]
    gt = tmp_path / "charades_sta_test.txt"
    gt.write_text("\n".join(lines + lines[:1]) + "\n")             # the same video, query and span twice: one key
    lines = gt.read_text().splitlines()
    docs = [{"video": line.split()[0], "caption": line.split("##")[1], "timestamp": [s, e]}
            for line, ((s, e), _) in zip(lines, rows)]
    answers = [a for _, a in rows[:-1]] + ["The event happens in 25 - 30 seconds."]
    got, want = charades_numbers(tmp_path, capsys, gt, docs, answers)
    assert got[:4] == want
    assert got[4] == len(rows) - 1 and 0 < want[1] < want[0] < 100


def test_charades_lmms_parser_on_the_real_test_file(shared_data, tmp_path, capsys):
    gt = shared_data / "charades_sta" / "charades_sta_test.txt"
    lines = gt.read_text().splitlines()
    docs, answers = [], []
    for i, line in enumerate(lines):
        vid, s, e = line.split("##")[0].split()
        s, e = float(s), float(e)
        docs.append({"video": vid, "caption": line.split("##")[1], "timestamp": [s, e]})
        answers.append(ANSWERS[i % len(ANSWERS)][1] if i % 3 else f"The event happens in {s + i % 5} - {e - i % 4} s.")
    got, want = charades_numbers(tmp_path, capsys, gt, docs, answers)
    assert got[:4] == want
    assert got[4] == 3720


def test_timelens_lmms_parser_equals_lmms_eval_aggregation(tmp_path, capsys):
    bench: dict = {}
    docs = []
    for i, ((s, e), _) in enumerate(ANSWERS):
        rec = bench.setdefault(f"v{i % 3}", {"duration": 40.0, "spans": [], "queries": []})
        rec["spans"].append([s, e])
        rec["queries"].append(f"a person does thing {i}")
        docs.append({"video_path": f"v{i % 3}.mp4", "query": f"a person does thing {i}", "span": [[s, e]]})
    gt = tmp_path / "charades-timelens.json"
    gt.write_text(json.dumps(bench))
    ids = {f"a person does thing {i}": f"v{i % 3}#{len([j for j in range(i) if j % 3 == i % 3])}"
           for i in range(len(ANSWERS))}
    answers = [a for _, a in ANSWERS]
    got = damo_numbers(tmp_path, capsys, "timelens", gt,
                       [{"id": ids[d["query"]], "spans": [], "answer": a} for d, a in zip(docs, answers)],
                       "lmms-timelens")
    want = lmms_numbers(timelens, "timelens_process_results", "timelens_aggregate", docs, answers)
    assert [got[k] for k in ("timelens_IOU@3", "timelens_IOU@5", "timelens_IOU@7", "timelens_mIOU")] == want
    assert 0 < want[1] < want[0] < 100
