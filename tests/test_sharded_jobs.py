"""Corpus jobs under torchrun with 2 CPU processes (gloo): ``damo eval --data --model`` and ``damo data features``
write what one process writes, resume after a kill with any number of processes, and name a rank that fails."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from damo.cli import main
from damo.data import augment as A
from damo.data.schema import Sample, save_samples
from helpers import torchrun
from test_ground import build_scripted_model

VIDEOS = ("charades_0F7LW.mp4", "bikes.mp4", "chaplin.mp4", "carphone_pristine.mp4", "big_buck_bunny_0_30.webm")


@pytest.fixture(scope="module")
def job(shared_data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("jobs")
    model = build_scripted_model(root / "model")
    queries = ("when does the person move?", "when is the bike seen?", "when does he walk?", "the car drives by",
               "the bunny wakes up")
    (root / "broken.mp4").write_bytes(b"not a video")                # unreadable: a failure both runs list
    videos = [str(shared_data / "videos" / v) for v in VIDEOS] + [str(root / "broken.mp4")]
    samples = [Sample(id=f"q{i}", video=videos[i % 6], duration=10.0, task="grounding", query=queries[i % 5],
                      spans=[[1.0 + i % 3, 4.0 + i % 4]]) for i in range(11)]
    save_samples(root / "test.jsonl", samples)
    out = root / "one"
    assert main(["eval", "--data", str(root / "test.jsonl"), "--model", str(model), "--out", str(out),
                 "--batch-size", "3", "--device", "cpu"]) == 0
    return {"root": root, "model": model, "data": root / "test.jsonl", "one": out}


def read(out: Path) -> tuple[str, dict]:
    metrics = json.loads((out / "metrics.json").read_text())
    return (out / "predictions.jsonl").read_text(), metrics


def test_two_processes_write_what_one_writes(job):
    res = torchrun("-m", "damo.cli", "eval", "--data", str(job["data"]), "--model", str(job["model"]), "--out",
                   str(job["root"] / "two"), "--batch-size", "3", "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    preds_one, m_one = read(job["one"])
    preds_two, m_two = read(job["root"] / "two")
    assert preds_two == preds_one and len(preds_one.splitlines()) == 10         # q5 is on the unreadable video
    assert m_one.pop("run") == {"world_size": 1, "samples_per_rank": [11], "resumed": 0}
    assert m_two.pop("run") == {"world_size": 2, "samples_per_rank": [6, 5], "resumed": 0}
    assert m_two == m_one and [f["id"] for f in m_one["failed"]] == ["q5"]
    assert json.loads(res.stdout[res.stdout.index("{"):]) == {**m_one, "run": {"world_size": 2,
                                                                               "samples_per_rank": [6, 5],
                                                                               "resumed": 0}}
    assert not (job["root"] / "two" / "parts").exists()


def test_a_killed_run_resumes_on_another_number_of_processes(job):
    """A one-process run killed after four predictions, its last line half written, resumed by two processes."""
    out = job["root"] / "resumed"
    (out / "parts").mkdir(parents=True)
    lines = (job["one"] / "predictions.jsonl").read_text().splitlines(True)
    (out / "parts" / "rank-0.jsonl").write_text("".join(lines[:4]) + lines[4][:20])
    job_args = ["--data", str(job["data"]), "--model", str(job["model"]), "--out", str(out)]
    (out / "parts" / "job.json").write_text(json.dumps(
        {"data": str(job["data"].resolve()), "model": str(job["model"]), "preset": None, "dtype": None,
         "features": None, "video_root": None}))
    res = torchrun("-m", "damo.cli", "eval", *job_args, "--batch-size", "3", "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    preds, m = read(out)
    assert preds == read(job["one"])[0]
    assert m["run"] == {"world_size": 2, "samples_per_rank": [4, 3], "resumed": 4}


def test_a_failing_rank_is_named(job, tmp_path):
    """A question too long for the model lands on rank 1: both ranks stop with one line naming it (torchrun then
    reports the exits); rank 0's finished work is kept."""
    rows = [json.loads(line) for line in job["data"].read_text().splitlines()]
    rows[3]["query"] = "when " * 2000
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = torchrun("-m", "damo.cli", "eval", "--data", str(data), "--model", str(job["model"]), "--out", str(tmp_path / "out"),
                   "--batch-size", "2", "--device", "cpu")
    assert res.returncode != 0
    said = [line for line in res.stderr.splitlines() if line.startswith("damo eval: rank 1 of 2 failed: ValueError: "
                                                                         "the query is 10,000 bytes long")]
    assert len(said) == 2 and said[0] == said[1] and said[0].endswith("run the same command again to resume")
    kept = (tmp_path / "out" / "parts" / "rank-0.jsonl").read_text().splitlines()
    assert [json.loads(line).get("id", "failed") for line in kept][:2] == ["q0", "q2"]


def test_features_two_processes_write_the_folder_one_writes(job, tmp_path):
    args = ["data", "features", "--model", str(job["model"]), "--data", str(job["data"]), "--shard-videos", "2",
            "--device", "cpu"]
    videos = [json.loads(line)["video"] for line in job["data"].read_text().splitlines()]
    readable = job["data"].parent / "readable.jsonl"
    readable.write_text("".join(line + "\n" for line, v in zip(job["data"].read_text().splitlines(), videos)
                                if not v.endswith("broken.mp4")))
    args[args.index(str(job["data"]))] = str(readable)
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    res = torchrun("-m", "damo.cli", *args, "--out", str(tmp_path / "two"))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert (report["videos"], report["shards"], report["world_size"], report["videos_per_rank"]) == (5, 3, 2, [3, 2])
    (one,), (two,) = (tmp_path / "one").iterdir(), (tmp_path / "two").iterdir()
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir()) == [
        "index.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    for p in one.iterdir():
        assert (two / p.name).read_bytes() == p.read_bytes(), p.name


def test_augment_two_processes_and_a_resumed_run_write_what_one_writes(shared_data, tmp_path, capsys, monkeypatch):
    args = ["data", "augment", "--in", str(shared_data / "youcook2" / "yc2_val.json"), "--format", "youcook2",
            "--limit", "40"]
    assert main(args + ["--out", str(tmp_path / "one.jsonl")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert (one["world_size"], one["videos_per_rank"], one["resumed"]) == (1, [40], 0)
    res = torchrun("-m", "damo.cli", *args, "--out", str(tmp_path / "two.jsonl"))
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads(res.stdout[res.stdout.index("{"):])
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert two.pop("videos_per_rank") == [24, 16] and two.pop("world_size") == 2    # chunks 16, 16, 8: 0 and 2 | 1
    assert two | {"out": ""} == {k: v for k, v in one.items() if k not in ("videos_per_rank", "world_size")} | {
        "out": ""}
    assert not (tmp_path / "two.jsonl.parts").exists()
    # a run killed in its second chunk (a line of it half written) resumes with the first chunk kept
    videos = A.load_videos(shared_data / "youcook2" / "yc2_val.json", "youcook2")
    dies = videos[20].id
    real = A.RuleGenerator.generate

    def generate(self, vc):
        if vc.id == dies:
            raise KeyboardInterrupt
        return real(self, vc)

    monkeypatch.setattr(A.RuleGenerator, "generate", generate)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--out", str(tmp_path / "three.jsonl")])
    monkeypatch.undo()
    with (tmp_path / "three.jsonl.parts" / "rank-0.jsonl").open("a") as f:
        f.write('{"chunk": 1, "samp')
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "three.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["resumed"] == 16
    assert (tmp_path / "three.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
