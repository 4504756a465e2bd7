"""The `damo demo` pipeline end to end at toy size, and `damo eval` on our own predictions."""
from __future__ import annotations

import json

from damo.cli import main

TOY = ["model.vision.width=32", "model.vision.layers=1", "model.audio.width=32", "model.fuser.width=32",
       "model.fuser.blocks=1", "model.llm.hidden=32", "model.llm.layers=2", "model.llm.intermediate=64",
       "stages.0.steps=2", "stages.1.steps=2", "stages.2.steps=2", "stages.3.steps=3", "stages.4.steps=2",
       "stages.0.batch=4", "stages.1.batch=4", "stages.2.batch=4", "stages.3.batch=4", "stages.4.batch=4"]


def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path, capsys):
    args = ["demo", "--workdir", str(tmp_path), "--n-train", "6", "--n-test", "2"]
    for o in TOY:
        args += ["--set", o]
    assert main(args) == 0
    first = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    overall = report["metrics"]["overall"]
    assert {"R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "n"} <= set(overall) and overall["n"] > 0
    assert all(0.0 <= overall[k] <= 1.0 for k in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU"))
    assert any(k.startswith("modality/") for k in report["metrics"])
    ex = report["example"]
    assert ex["query"] and ex["truth"] and "answer" in ex   # a 3-step model may not emit any <evi> yet
    assert all(0 <= sp["start"] <= sp["end"] <= ex["duration"] for sp in ex["spans"])
    assert (tmp_path / "model" / "model.safetensors").is_file()
    preds = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == len((tmp_path / "data" / "test.jsonl").read_text().splitlines())
    # the table prints README's rows, the two audio-visual kinds apart
    table = first.split("IoU >= t):")[1].split("example:")[0]
    labels = [line.split(" n=")[0].strip() for line in table.strip().splitlines()]
    assert labels[0] == "overall" and set(labels) <= {
        "overall", "visual only", "audio only", "audio-visual: flash with the beep", "audio-visual: composite",
        "multi-moment queries", "grounded QA evidence spans"}
    # the model's card: procedural data, and the metrics it reached
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["trained_on"] == "procedural" and card["metrics"]["overall"] == overall
    assert ex["model"]["trained_on"] == "procedural" and "warning" not in ex   # a procedural test file
    # a second run reuses the data and the trained model, and keeps the first run's report
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "reusing data" in out and "reusing trained model" in out
    kept = [json.loads(f.read_text()) for f in (tmp_path / "reports").glob("report-*.json")]
    assert len(kept) == 2 and report in kept and json.loads((tmp_path / "report.json").read_text()) in kept

    # damo eval runs the saved model on the test split and writes metrics
    assert main(["eval", "--data", str(tmp_path / "data" / "test.jsonl"), "--model", str(tmp_path / "model"),
                 "--out", str(tmp_path / "eval")]) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["overall"] == overall
