"""The benchmark registry: one object per benchmark drives ``damo eval --task``, its help and its option checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from damo.cli import build_parser, main
from damo.data.schema import Prediction, QuirkReport, Sample, load_predictions, load_samples, save_samples
from damo.eval import BENCHMARKS
from damo.eval.benchmark import Benchmark, Option, options_of, samples_and_predictions
from damo.eval.predictions import PredictionFile
from damo.eval.score import score


def eval_help(capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    return capsys.readouterr().out


def test_help_lists_every_benchmark_with_its_options(capsys):
    text = eval_help(capsys)
    listing = text[text.index("benchmarks (--task NAME)"):].splitlines()
    for b in BENCHMARKS.values():
        row = next(line for line in listing if line.split() and line.split()[0] == b.name)
        assert row.split()[1:] == ([o.cli for o in b.options] or ["(none)"])
        assert f"{b.evaluator}; annotations: --format {b.reader.NAME}" in text
    for o in options_of(list(BENCHMARKS.values())).values():
        assert o.cli in text
    assert BENCHMARKS["tacos"].options == BENCHMARKS["charades-sta"].options[1:2]    # --convention only


def test_an_option_the_benchmark_does_not_take_is_an_error_naming_its_options(tmp_path, capsys):
    gt, pred = tmp_path / "gt.json", tmp_path / "pred.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["eval", "--task", "tacos", "--gt", str(gt), "--pred", str(pred), "--durations", "len.csv"])
    assert str(e.value) == "damo eval: --task tacos takes no --durations; its options: --convention"
    with pytest.raises(ValueError, match="--task qvhighlights takes no --parser; its options: none"):
        score("qvhighlights", gt, pred, parser="strict")
    with pytest.raises(ValueError, match="--convention must be one of >=, >, got '=>'"):
        score("charades-sta", gt, pred, convention="=>")


def test_two_benchmarks_naming_one_option_must_mean_the_same_one():
    a = Option("window", "which end", ("start", "end"), "start")
    b = Option("window", "which end", ("start",), "start")
    make = lambda name, o: Benchmark(name, "x", BENCHMARKS["tacos"].reader, lambda *a, **k: {}, (o,))  # noqa: E731
    assert options_of([make("a", a), make("b", a)]) == {"window": a}
    with pytest.raises(ValueError, match="benchmark 'b' declares option --window unlike another"):
        options_of([make("a", a), make("b", b)])


# ---------------------------------------------------------------- a new benchmark: one object, one registry line

class CanonicalReader:
    """A toy benchmark's annotations: canonical sample JSONL, predictions canonical too."""
    NAME = "canonical"

    @staticmethod
    def load(path: str | Path, report: QuirkReport, durations: str | Path | None = None) -> list[Sample]:
        return load_samples(path)

    @staticmethod
    def read_predictions(path: str | Path, samples: list[Sample]) -> dict[str, Prediction]:
        return load_predictions(path)


BOUNDARY = Option("boundary", "which boundary of the top-1 span must lie within 1 s of the gt's", ("start", "end"),
                  "start")


def score_boundary(gt_path: str | Path, preds: PredictionFile, subset: str, boundary: str) -> dict:
    samples, by_id = samples_and_predictions(CanonicalReader, gt_path, preds, subset)
    k = 0 if boundary == "start" else 1
    hits = [s.id in by_id and bool(by_id[s.id].spans) and abs(by_id[s.id].spans[0][k] - s.spans[0][k]) <= 1.0
            for s in samples]
    return {"n": len(samples), "hit": sum(hits) / len(samples)}


TOY = Benchmark(name="boundary-toy", evaluator="this test", reader=CanonicalReader, scorer=score_boundary,
                options=(BOUNDARY,))


def test_a_new_benchmark_is_one_object_and_one_registry_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(BENCHMARKS, TOY.name, TOY)                  # the registry line
    gt, pred, out = tmp_path / "gt.jsonl", tmp_path / "pred.jsonl", tmp_path / "m.json"
    save_samples(gt, [Sample(id=str(i), video="v.mp4", duration=30.0, task="grounding", query="q",
                             spans=[[10.0 * i, 10.0 * i + 5.0]]) for i in range(3)])
    # sample 0: start off by 0.5 s, end by 3 s; sample 1: start off by 2 s, end by 0.5 s; sample 2: no prediction
    pred.write_text("".join(json.dumps(p) + "\n" for p in ({"id": "0", "spans": [[0.5, 8.0]]},
                                                          {"id": "1", "spans": [[12.0, 15.5]]})))

    assert "boundary-toy" in eval_help(capsys)
    assert main(["eval", "--task", "boundary-toy", "--gt", str(gt), "--pred", str(pred), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"n": 3, "hit": pytest.approx(1 / 3)}        # start: sample 0 only
    assert main(["eval", "--task", "boundary-toy", "--gt", str(gt), "--pred", str(pred), "--boundary", "end",
                 "--subset", "predicted", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"n": 2, "hit": 0.5}                        # end: sample 1 of the two
    with pytest.raises(SystemExit, match="takes no --convention; its options: --boundary"):
        main(["eval", "--task", "boundary-toy", "--gt", str(gt), "--pred", str(pred), "--convention", ">"])
