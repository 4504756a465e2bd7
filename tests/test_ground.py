"""`damo ground` and the Python API on real files: JSON shape, timeline picture, truth, batch mode.

The model is tiny and untrained, with its output layer scripted so that greedy decoding writes
``<evi> </evi> red <eos>``: the answer is meaningless, but every stage of the path (decode ->
model -> evidence scores -> spans -> JSON / picture) runs on real tensors and is checked.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import damo
from damo.api import Grounder, parse_spans
from damo.cli import main
from damo.data import synthetic
from damo.model import tokenizer as tk
from damo.model.modeling_damo import DamoModel
from damo.pipeline import DamoPipeline
from helpers import tiny_cfg

TEXTS = ["when does the red square appear?", "the high tone plays", "It happens in", "what colour is the shape?",
         "red", "a low tone", "describe the events with their times."] * 20
SCRIPT = [tk.ASSISTANT, tk.EVI, tk.EVI_END, "Ġred", tk.EOS]   # greedy decoding walks this chain


def build_scripted_model(path: Path) -> Path:
    """Save a tiny untrained model whose greedy output is ``<evi> </evi> red <eos>``.

    Output logits are ``norm(h) @ E.T`` with tied embeddings ``E``. Link ``k`` of the chain gets
    its own hidden dimension ``k``: token ``k`` carries ``+a`` there and token ``k+1`` carries
    ``-a``; the final norm's weight ``-2**k`` on dimension ``k`` (0 elsewhere) makes the successor's
    logit the largest (``2**k a^2`` against at most ``2**(k-1) a^2`` for the predecessor), whatever
    the small random layers add.
    """
    torch.manual_seed(0)
    model = DamoModel(tiny_cfg(), tk.train_tokenizer(TEXTS, 300))
    ids = model.tokenizer.convert_tokens_to_ids(SCRIPT)
    assert model.tokenizer.unk_token_id not in ids and len(set(ids)) == len(ids)
    with torch.no_grad():
        E = model.llm.get_input_embeddings().weight
        links = len(ids) - 1
        E[:, :links] = 0.0
        for k in range(links):
            E[ids[k], k] = 3.0
            E[ids[k + 1], k] = -3.0
        g = model.llm.model.norm.weight
        g.zero_()
        g[:links] = -(2.0 ** torch.arange(links))
    DamoPipeline(model).save(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_scripted_model(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def grounder(model_dir, tmp_path_factory) -> Grounder:
    return damo.load(model_dir, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def video(clip_mkv) -> tuple[Path, synthetic.VideoSpec]:
    return clip_mkv, synthetic.generate_spec("standard", 0, "test", 0)


def test_ground_returns_answer_and_spans_in_seconds(grounder, video):
    path, spec = video
    r = grounder.ground(path, "when does the green triangle appear?")
    assert set(r) == {"answer", "spans", "evidence", "duration", "model"}
    assert r["model"] == {"trained_on": "unknown"}     # a model saved without a card: nothing known, no warning
    assert r["answer"] == "red"
    assert r["duration"] == pytest.approx(spec.duration, abs=0.05)
    assert len(r["spans"]) == 1 and len(r["evidence"]) == 1
    sp = r["spans"][0]
    assert set(sp) == {"start", "end", "score"}
    assert 0 <= sp["start"] <= sp["end"] <= r["duration"] and 0 < sp["score"] <= 1
    json.dumps(r)   # JSON-ready


def test_explain_carries_curves_and_thumbnails(grounder, video):
    path, spec = video
    g = grounder.explain(path, "when does the beep sound?")
    T = spec.duration
    assert g.times.shape == (T,) and np.allclose(g.times, np.arange(T) + 0.5, atol=0.07)
    assert len(g.scores) == 1 and g.scores[0].shape == (T,)
    assert g.frames.shape[0] == T and g.frames.dtype == np.uint8
    # the decoded span is the best contiguous run of frames scoring >= 0.6 x max
    s = g.scores[0]
    keep = np.flatnonzero(s >= 0.6 * s.max())
    assert g.spans[0][0] <= keep[0] + 0.5 <= g.spans[0][1]


def test_query_is_validated_before_decoding(grounder):
    for q in ["", "   \n", None]:
        with pytest.raises(ValueError, match="query"):
            grounder.ground("/nonexistent.mp4", q)


def test_parse_spans():
    assert parse_spans("1-2.5, 3.5 - 7") == [[1.0, 2.5], [3.5, 7.0]]
    assert parse_spans("9-4") == [[9.0, 4.0]]   # reversed pairs are fixed later, against the duration
    for bad in ["", "3", "a-b", "1-2;3-4", "-1-2"]:
        with pytest.raises(ValueError, match="start-end"):
            parse_spans(bad)


def test_cli_ground_plot_and_truth(model_dir, video, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DAMO_CACHE", str(tmp_path / "cache"))
    path, spec = video
    png = tmp_path / "timeline.png"
    rc = main(["ground", str(path), "when does the green triangle appear?", "--model", str(model_dir),
               "--plot", str(png), "--truth", "1-5,12-40,9-6", "--out", str(tmp_path / "r.json"), "--json"])
    out = capsys.readouterr()
    assert rc == 0
    r = json.loads(out.out)
    assert r == json.loads((tmp_path / "r.json").read_text())
    # 12-40 is clipped to the 13 s video, 9-6 is swapped; both reported
    assert r["truth"] == [[1.0, 5.0], [12.0, 13.0], [6.0, 9.0]]
    assert r["truth_fixed"] == {"end_past_duration": 1, "reversed": 1}
    assert 0.0 <= r["iou"] <= 1.0
    assert "end past duration" in out.err and "reversed" in out.err
    assert "decode" in out.err and "answer" in out.err   # progress bars went to stderr
    from PIL import Image
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width >= 800 and im.height >= 400
        px = np.asarray(im.convert("RGB"))
    # the picture holds the predicted (orange) and truth (green) bars
    assert (np.abs(px.astype(int) - (217, 72, 15)).sum(-1) < 60).sum() > 100
    assert (np.abs(px.astype(int) - (43, 138, 62)).sum(-1) < 60).sum() > 100


def test_cli_ground_errors_are_one_line(model_dir, tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("these are my notes, not a video\n")
    assert main(["ground", str(bad), "what happens?", "--model", str(model_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "Traceback" not in err
    with pytest.raises(SystemExit, match="start-end"):
        main(["ground", str(bad), "q", "--model", str(model_dir), "--truth", "five to six"])
    with pytest.raises(SystemExit, match="no trained model"):
        main(["ground", str(bad), "q", "--model", str(tmp_path / "nothing")])


def test_batch_folder_keeps_going_and_reports(model_dir, video, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DAMO_CACHE", str(tmp_path / "cache"))
    path, _ = video
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mkv").write_bytes(path.read_bytes())
    (folder / "b.mp4").write_bytes(b"")                       # zero bytes
    (folder / "c.avi").write_text("not a video")
    (folder / "readme.txt").write_text("ignored: not a video suffix")
    out = tmp_path / "results.jsonl"
    rc = main(["ground", "--batch", str(folder), "--query", "when does the beep sound?", "--out", str(out),
               "--model", str(model_dir)])
    assert rc == 1   # some requests failed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["video"]).name for r in rows] == ["a.mkv", "b.mp4", "c.avi"]
    assert rows[0]["answer"] == "red" and rows[0]["query"] == "when does the beep sound?"
    assert "empty" in rows[1]["error"] and "b.mp4" in rows[1]["error"]
    assert "c.avi" in rows[2]["error"]
    err = capsys.readouterr().err
    assert "1 of 3 requests grounded" in err and "2 failed" in err and "b.mp4" in err


def test_batch_jsonl_canonical_samples(model_dir, video, tmp_path, monkeypatch):
    """Canonical samples work as requests; relative paths resolve next to the JSONL."""
    monkeypatch.setenv("DAMO_CACHE", str(tmp_path / "cache"))
    path, spec = video
    (tmp_path / "clip.mkv").write_bytes(path.read_bytes())
    samples = synthetic.video_samples(spec, video="clip.mkv")[:2]
    lines = [json.dumps(s.to_dict()) for s in samples]
    lines.append(json.dumps({"video": "clip.mkv", "query": "when?", "spans": [[20, 2], [11, 99]]}))
    lines.append(json.dumps({"video": "clip.mkv"}))           # no query and no --query
    lines.append("{not json")
    src = tmp_path / "requests.jsonl"
    src.write_text("\n".join(lines) + "\n\n")
    out = tmp_path / "results.jsonl"
    assert main(["ground", "--batch", str(src), "--out", str(out), "--model", str(model_dir), "--quiet"]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5
    assert [r["id"] for r in rows[:2]] == [s.id for s in samples]
    assert rows[0]["truth"] == samples[0].spans and "iou" in rows[0]
    # a span reversed and past the 13 s end: swapped and clipped; a span starting after the end: dropped
    assert rows[2]["truth"] == [[2.0, 13.0], [11.0, 13.0]]
    assert rows[2]["truth_fixed"] == {"reversed": 1, "end_past_duration": 2}
    assert rows[3]["line"] == 4 and "query must be text" in rows[3]["error"]
    assert rows[4]["line"] == 5 and "not valid JSON" in rows[4]["error"]


def test_batch_needs_a_query_for_a_folder(model_dir, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert main(["ground", "--batch", str(tmp_path / "in"), "--out", str(tmp_path / "r.jsonl"),
                 "--model", str(model_dir)]) == 2
    assert "--query" in capsys.readouterr().err


def test_one_bad_item_never_stops_a_batch(model_dir, video, tmp_path, capsys, monkeypatch):
    """Whatever an item raises (a TypeError from spans that are a number, an over-long query, a
    folder or a dangling link named like a video) is that item's failure; the rest are grounded."""
    monkeypatch.setenv("DAMO_CACHE", str(tmp_path / "cache"))
    path, _ = video
    (tmp_path / "clip.mkv").write_bytes(path.read_bytes())
    lines = [{"video": "clip.mkv", "query": "when?", "spans": 5},
             {"video": "clip.mkv", "query": "when " * 1000},
             {"video": "clip.mkv", "query": "when does the beep sound?"}]
    src = tmp_path / "requests.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out" / "results.jsonl"
    assert main(["ground", "--batch", str(src), "--out", str(out), "--model", str(model_dir), "--quiet"]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "TypeError" in rows[0]["error"]
    assert "tokens long" in rows[1]["error"] and "shorter question" in rows[1]["error"]
    assert rows[2]["answer"] == "red"
    assert not (tmp_path / "out" / "results.jsonl.partial").exists()
    assert "1 of 3 requests grounded" in capsys.readouterr().err

    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mkv").write_bytes(path.read_bytes())
    (folder / "x.mp4").mkdir()
    (folder / "y.webm").symlink_to(tmp_path / "nowhere.webm")
    assert main(["ground", "--batch", str(folder), "--query", "when?", "--out", str(tmp_path / "r.jsonl"),
                 "--model", str(model_dir), "--quiet"]) == 1
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [Path(r["video"]).name for r in rows] == ["a.mkv", "x.mp4", "y.webm"]
    assert "answer" in rows[0] and "is a folder" in rows[1]["error"] and "link to nothing" in rows[2]["error"]


def test_batch_output_may_not_overwrite_its_input(model_dir, tmp_path):
    src = tmp_path / "requests.jsonl"
    src.write_text("{}\n")
    with pytest.raises(SystemExit, match="input"):
        main(["ground", "--batch", str(src), "--out", str(src), "--model", str(model_dir)])
    (tmp_path / "videos").mkdir()
    with pytest.raises(SystemExit, match="input"):
        main(["ground", "--batch", str(tmp_path / "videos"), "--query", "q", "--out",
              str(tmp_path / "videos" / "r.jsonl"), "--model", str(model_dir)])
    assert src.read_text() == "{}\n"


def test_printed_spans_never_pass_the_printed_duration():
    from damo.api import Grounding

    g = Grounding(video="v.mp4", query="q", answer="a", spans=[[3.004, 14.977, 0.51234]], evidence=[[0.0, 14.977, 0.5]],
                  duration=14.977, times=np.arange(15) + 0.5)
    d = g.to_dict()
    assert d["spans"] == [{"start": 3.0, "end": 14.977, "score": 0.5123}] and d["duration"] == 14.977
    assert d["evidence"] == [[0.0, 14.977, 0.5]]
