"""Public annotation formats: exact counts on the real files, round trips to each peer's prediction
format, hand-made fixtures for the formats without a shared file, and bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from damo.data import formats as F
from damo.data.formats import activitynet, charades_sta, d2vlm, didemo, etbench, qvhighlights, tacos, youcook2
from damo.data.schema import Prediction, load_samples


def gt_preds(samples, with_answer=False):
    return {s.id: Prediction(id=s.id, spans=[list(sp) for sp in s.spans],
                             answer="\n".join(s.captions) if with_answer else None) for s in samples}


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# ---------------------------------------------------------------- registry

def test_registry_names_and_unknown_format():
    assert sorted(F.FORMATS) == sorted(["charades-sta", "qvhighlights", "activitynet-captions", "youcook2",
                                        "didemo", "tacos", "etbench", "d2vlm", "timelens"])
    with pytest.raises(ValueError, match="valid formats: charades-sta, qvhighlights"):
        F.load("charades", "x.txt")


def test_unknown_option_is_named(shared_data):
    with pytest.raises(ValueError, match=r"no option\(s\) \['mode'\]"):
        F.load("qvhighlights", shared_data / "qvhighlights/highlight_val_release.jsonl", mode="dense")
    with pytest.raises(ValueError, match="drop --durations"):
        F.load("qvhighlights", shared_data / "qvhighlights/highlight_val_release.jsonl",
               durations=shared_data / "charades_sta/Charades_v1_test.csv")


# ---------------------------------------------------------------- Charades-STA

def test_charades_train_counts_and_quirks(shared_data):
    samples, report = F.load("charades-sta", shared_data / "charades_sta/charades_sta_train.txt")
    assert len(samples) == 12405  # 12,408 lines minus 3 whose only span starts after the video ends
    assert len({s.video for s in samples}) == 5336  # 5,338 in the txt; LEOL6 and AKKWU lose every query
    assert sum(len(s.spans) for s in samples) == 12405
    assert dict(report) == {"end_past_duration": 1802, "reversed": 4, "start_past_duration": 3,
                            "sample_without_spans": 3}
    by_id = {s.id: s for s in samples}
    assert by_id["0"].video == "AO8RW" and by_id["0"].spans == [[0.0, 6.9]]
    assert by_id["8439"].spans == [[12.0, 20.9]]  # line 'IOL8Q 20.9 12.0' swapped
    assert {"8251", "9622", "9623"}.isdisjoint(by_id)  # reversed and past the end: rejected
    assert by_id["0"].duration == 33.67 and by_id["0"].task == "grounding"


def test_charades_test_counts_and_clipping(shared_data):
    csv = shared_data / "charades_sta/Charades_v1_test.csv"
    samples, report = F.load("charades-sta", shared_data / "charades_sta/charades_sta_test.txt", durations=csv)
    assert len(samples) == 3720 and len({s.video for s in samples}) == 1334
    assert dict(report) == {"end_past_duration": 562}
    s19 = samples[19]
    assert (s19.id, s19.video, s19.duration, s19.spans) == ("19", "AKO6M", 18.58, [[12.7, 18.58]])


def test_charades_missing_durations(shared_data, tmp_path):
    txt = shutil.copy(shared_data / "charades_sta/charades_sta_test.txt", tmp_path / "sta.txt")
    with pytest.raises(ValueError, match="pass --durations"):
        F.load("charades-sta", txt)
    wrong = write(tmp_path / "d.json", {"3MSZA": 30.96})
    with pytest.raises(ValueError, match="queries name videos with no duration"):
        F.load("charades-sta", txt, durations=wrong)


def test_charades_bad_lines(tmp_path):
    durs = write(tmp_path / "d.json", {"AAAAA": 20.0})
    bad = tmp_path / "bad.txt"
    bad.write_text("AAAAA 1.0 2.0 a person sits.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected 'VID start end##sentence'"):
        F.load("charades-sta", bad, durations=durs)
    bad.write_bytes(b"AAAAA 1.0 2.0##caf\xe9\n")
    with pytest.raises(ValueError, match="bad.txt: not UTF-8"):
        F.load("charades-sta", bad, durations=durs)
    bad.write_text("AAAAA 1.0 2.0##   \nAAAAA 3.0 3.0##sits.\nAAAAA 4.0 5.0##stands.\n", encoding="utf-8")
    samples, report = F.load("charades-sta", bad, durations=durs)
    assert [s.id for s in samples] == ["2"]
    assert dict(report) == {"text_stripped": 1, "empty_query": 1, "empty": 1, "sample_without_spans": 1}


def test_charades_prediction_round_trip(shared_data, tmp_path):
    samples, _ = F.load("charades-sta", shared_data / "charades_sta/charades_sta_test.txt")
    preds = gt_preds(samples)
    charades_sta.write_predictions(preds, samples, tmp_path / "preds.jsonl")
    lines = (tmp_path / "preds.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3720 and lines[19] == "AKO6M 12.7 18.58##the person takes a bag from the bottom cabinet."
    for path in (tmp_path / "preds.jsonl", tmp_path / "preds.txt"):
        back = charades_sta.read_predictions(path, samples)
        assert {k: p.spans for k, p in back.items()} == {k: p.spans for k, p in preds.items()}


# ---------------------------------------------------------------- QVHighlights

def test_qvhighlights_counts(shared_data):
    samples, report = F.load("qvhighlights", shared_data / "qvhighlights/highlight_val_release.jsonl")
    assert len(samples) == 1550 and len({s.video for s in samples}) == 1519
    assert sum(len(s.spans) for s in samples) == 2803
    assert dict(report) == {}
    s = samples[0]
    assert (s.id, s.video, s.duration, s.task, s.spans) == ("2579", "NUsG9BgSes0_210.0_360.0", 150.0,
                                                              "highlight", [[82.0, 150.0]])
    assert s.meta["relevant_clip_ids"][:2] == [41, 42] and s.meta["saliency_scores"][0] == [1, 1, 2]
    assert len(s.meta["relevant_clip_ids"]) == len(s.meta["saliency_scores"]) == 34


def test_qvhighlights_round_trip_and_real_predictions(shared_data, tmp_path):
    samples, _ = F.load("qvhighlights", shared_data / "qvhighlights/highlight_val_release.jsonl")
    out = tmp_path / "sub.jsonl"
    qvhighlights.write_predictions(list(gt_preds(samples).values()), samples, out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert set(rows[0]) == {"qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores"}
    assert rows[0]["qid"] == 2579 and len(rows[0]["pred_saliency_scores"]) == 75
    # the one window [82, 150] covers clips 41..74 exactly
    assert [i for i, v in enumerate(rows[0]["pred_saliency_scores"]) if v > 0] == list(range(41, 75))
    back = qvhighlights.read_predictions(out, samples)
    assert {k: [sp[:2] for sp in p.spans] for k, p in back.items()} == {s.id: s.spans for s in samples}

    real = qvhighlights.read_predictions(shared_data / "qvhighlights/sample_val_preds.jsonl", samples)
    assert len(real) == 1550
    assert real["2579"].spans[0] == [0.0, 70.0, 0.9986] and len(real["2579"].spans) == 10


def test_qvhighlights_bad_input(tmp_path):
    rec = {"qid": 1, "query": "a dog runs", "duration": 10, "vid": "v1", "relevant_windows": [[0, 4]]}
    path = tmp_path / "qv.jsonl"
    path.write_text(json.dumps({k: v for k, v in rec.items() if k != "vid"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qv.jsonl:1: missing required key\(s\) \['vid'\]"):
        F.load("qvhighlights", path)
    path.write_text("\n".join(json.dumps(r) for r in [
        {**rec, "query": "  "}, {**rec, "qid": 2, "relevant_windows": [[12, 14]]},
        {**rec, "qid": 3, "relevant_windows": [[-1, 4], [6, 12]]},
        {k: v for k, v in {**rec, "qid": 4}.items() if k != "relevant_windows"}]) + "\n", encoding="utf-8")
    samples, report = F.load("qvhighlights", path)
    assert [(s.id, s.spans) for s in samples] == [("3", [[0.0, 4.0], [6.0, 10.0]]), ("4", [])]
    assert dict(report) == {"text_stripped": 1, "empty_query": 1, "start_past_duration": 1,
                            "sample_without_spans": 1, "negative_start": 1, "end_past_duration": 1,
                            "unlabelled": 1}


# ---------------------------------------------------------------- ActivityNet Captions

def test_activitynet_dense_counts(shared_data):
    samples, report = F.load("activitynet-captions", shared_data / "activitynet_captions/val_1.json")
    assert len(samples) == 4917 and len({s.video for s in samples}) == 4917
    assert sum(len(s.spans) for s in samples) == 17505 == sum(len(s.captions) for s in samples)
    assert dict(report) == {"text_stripped": 11639, "line_break_in_text": 1, "end_past_duration": 134}
    s = samples[0]
    assert (s.id, s.task, s.spans) == ("v_uqiMw7tQ1Cc", "dense_caption", [[0.28, 55.15], [13.79, 54.32]])
    assert s.captions[1] == "The coach helps the guy in red with the proper body placement and lifting technique."


def test_activitynet_grounding_counts(shared_data):
    samples, report = F.load("activitynet-captions", shared_data / "activitynet_captions/val_1.json",
                             mode="grounding")
    assert len(samples) == 17505 and len({s.video for s in samples}) == 4917
    assert dict(report) == {"text_stripped": 11639, "line_break_in_text": 1, "end_past_duration": 134}
    assert samples[1].id == "v_uqiMw7tQ1Cc#1" and samples[1].spans == [[13.79, 54.32]]


def test_activitynet_round_trips(shared_data, tmp_path):
    path = shared_data / "activitynet_captions/val_1.json"
    dense, _ = F.load("activitynet-captions", path)
    out = tmp_path / "dense.json"
    activitynet.write_predictions(gt_preds(dense, with_answer=True), dense, out)
    sub = json.loads(out.read_text(encoding="utf-8"))
    assert set(sub) == {"version", "results", "external_data"}
    assert sub["results"]["v_uqiMw7tQ1Cc"][0] == {"sentence": "A weight lifting tutorial is given.",
                                                  "timestamp": [0.28, 55.15]}
    back = activitynet.read_predictions(out, dense)
    assert {k: (p.spans, p.answer.split("\n")) for k, p in back.items()} == \
        {s.id: (s.spans, s.captions) for s in dense}

    ground, _ = F.load("activitynet-captions", path, mode="grounding")
    activitynet.write_predictions(gt_preds(ground), ground, tmp_path / "g.json")
    back = activitynet.read_predictions(tmp_path / "g.json", ground)
    # includes the two pairs of identical sentences in one video (v_unI7FhokvbM, v_c-zbA4zixfE)
    assert {k: p.spans for k, p in back.items()} == {s.id: s.spans for s in ground}
    assert back["v_unI7FhokvbM#8"].spans == [[106.9, 125.03]]


def test_activitynet_bad_input(tmp_path):
    bad = tmp_path / "an.json"
    bad.write_bytes(b'{"v_a": {"duration": 10, "timestamps": [[0, 1]], "sentences": ["\xff"]}}')
    with pytest.raises(ValueError, match="an.json: not UTF-8"):
        F.load("activitynet-captions", bad)
    write(bad, {"v_a": {"duration": 10, "timestamps": [[0, 1]]}})
    with pytest.raises(ValueError, match=r"video 'v_a': missing required key\(s\) \['sentences'\]"):
        F.load("activitynet-captions", bad)
    write(bad, {"v_a": {"duration": 10, "timestamps": [[0, 1], [2, 3]], "sentences": ["one"]}})
    with pytest.raises(ValueError, match="2 timestamps but 1 sentences"):
        F.load("activitynet-captions", bad)
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="an.json:1:2: not valid JSON"):
        F.load("activitynet-captions", bad)
    write(bad, {"v_a": {"duration": 10, "timestamps": [[0, 1], [11, 12], [2, 3]], "sentences": ["one", "two", ""]},
                "v_b": {"duration": 5, "timestamps": [[6, 7]], "sentences": ["gone"]}})
    samples, report = F.load("activitynet-captions", bad)
    assert [(s.id, s.spans, s.captions, s.meta["event_ids"]) for s in samples] == [
        ("v_a", [[0.0, 1.0]], ["one"], [0])]
    assert dict(report) == {"start_past_duration": 2, "empty_caption": 1, "sample_without_spans": 1}
    with pytest.raises(ValueError, match="mode must be one of"):
        F.load("activitynet-captions", bad, mode="captions")


# ---------------------------------------------------------------- YouCook2

def test_youcook2_activitynet_style_counts(shared_data, tmp_path):
    path = shared_data / "youcook2/yc2_val.json"
    samples, report = F.load("youcook2", path)
    assert len(samples) == 457 and sum(len(s.spans) for s in samples) == 3492
    assert dict(report) == {"text_stripped": 3}
    assert samples[0].id == "v_xHr8X2Wpmno" and samples[0].spans[0] == [47.0, 60.0]
    assert samples[0].captions[0] == "pick the ends off the verdalago"
    ground, _ = F.load("youcook2", path, mode="grounding")
    assert len(ground) == 3492
    youcook2.write_predictions(gt_preds(ground), ground, tmp_path / "p.json")
    back = youcook2.read_predictions(tmp_path / "p.json", ground)
    assert {k: p.spans for k, p in back.items()} == {s.id: s.spans for s in ground}


YC2_ORIGINAL = {"database": {
    "GLd3aX16zBg": {"duration": 241.62, "subset": "training", "recipe_type": "113",
                    "video_url": "https://www.youtube.com/watch?v=GLd3aX16zBg",
                    "annotations": [{"segment": [90, 102], "id": 0, "sentence": "spread margarine on two slices of white bread"},
                                    {"segment": [114, 127], "id": 1, "sentence": "place a slice of cheese on the bread"},
                                    {"segment": [235, 250], "id": 2, "sentence": "cut the sandwich "}]},
    "xHr8X2Wpmno": {"duration": 206.86, "subset": "validation", "recipe_type": "205",
                    "annotations": [{"segment": [47, 60], "id": 0, "sentence": "pick the ends off the verdalago"}]},
}}


def test_youcook2_original_layout(tmp_path):
    path = write(tmp_path / "youcookii_annotations_trainval.json", YC2_ORIGINAL)
    samples, report = F.load("youcook2", path)
    assert [(s.id, len(s.spans)) for s in samples] == [("GLd3aX16zBg", 3), ("xHr8X2Wpmno", 1)]
    assert samples[0].spans[2] == [235.0, 241.62] and samples[0].captions[2] == "cut the sandwich"
    assert samples[0].meta == {"event_ids": [0, 1, 2], "subset": "training", "recipe_type": "113"}
    assert dict(report) == {"text_stripped": 1, "end_past_duration": 1}
    val, _ = F.load("youcook2", path, subset="validation", mode="grounding")
    assert [(s.id, s.spans) for s in val] == [("xHr8X2Wpmno#0", [[47.0, 60.0]])]
    del YC2_ORIGINAL["database"]["xHr8X2Wpmno"]["annotations"][0]["segment"]
    try:
        write(path, YC2_ORIGINAL)
        with pytest.raises(ValueError, match=r"annotations\[0\]: missing required key\(s\) \['segment'\]"):
            F.load("youcook2", path)
    finally:
        YC2_ORIGINAL["database"]["xHr8X2Wpmno"]["annotations"][0]["segment"] = [47, 60]


# ---------------------------------------------------------------- DiDeMo

DIDEMO = [  # the layout of LocalizingMoments' data/*_data.json
    {"annotation_id": 7364, "video": "10040143@N08_3140498452_3a1e0b2e70.mov",
     "times": [[2, 3], [2, 3], [2, 2], [1, 3]], "description": "the baby falls over",
     "download_link": "https://www.flickr.com/video_download.gne?id=3140498452", "num_segments": 6},
    {"annotation_id": 9012, "video": "20110211@N00_2381468743_1f4b8b5c9a.mov",
     "times": [[4, 4], [4, 5], [4, 4], [4, 4]], "description": "A man waves at the camera ",
     "download_link": "https://www.flickr.com/video_download.gne?id=2381468743", "num_segments": 5},
]


def test_didemo_fixture(tmp_path):
    path = write(tmp_path / "val_data.json", DIDEMO)
    samples, report = F.load("didemo", path)
    assert [s.id for s in samples] == ["7364", "9012"]
    assert samples[0].spans == [[10.0, 20.0], [10.0, 15.0], [5.0, 20.0]]  # consensus first
    assert samples[0].meta["times"] == [[2, 3], [2, 3], [2, 2], [1, 3]] and samples[0].duration == 30.0
    # 5 segments -> 25 s; annotator 2's [4, 5] ends at 30 s and is clipped
    assert samples[1].duration == 25.0 and samples[1].spans == [[20.0, 25.0]]
    assert dict(report) == {"duration_assumed": 2, "text_stripped": 1, "end_past_duration": 1}

    durs = write(tmp_path / "durs.json", {DIDEMO[0]["video"]: 28.2, DIDEMO[1]["video"]: 24.1})
    samples2, report2 = F.load("didemo", path, durations=durs)
    assert samples2[1].spans == [[20.0, 24.1]] and dict(report2) == {"text_stripped": 1, "end_past_duration": 4}

    didemo.write_predictions(gt_preds(samples), samples, tmp_path / "pred.json")
    ranked = json.loads((tmp_path / "pred.json").read_text())
    assert len(ranked) == 2 and all(len(r) == 21 for r in ranked)
    assert ranked[0][:3] == [[2, 3], [2, 2], [1, 3]] and ranked[1][0] == [4, 4]
    back = didemo.read_predictions(tmp_path / "pred.json", samples)
    assert back["7364"].spans[:3] == samples[0].spans and back["9012"].spans[0] == [20.0, 25.0]
    with pytest.raises(ValueError, match="have no prediction"):
        didemo.write_predictions({"7364": Prediction("7364", [[0, 5]])}, samples, tmp_path / "p2.json")


def test_didemo_bad_input(tmp_path):
    path = write(tmp_path / "d.json", [{"video": "v.mov", "times": [[0, 1]], "description": "x"}])
    with pytest.raises(ValueError, match=r"record 0: missing required key\(s\) \['annotation_id'\]"):
        F.load("didemo", path)
    path = write(tmp_path / "d.json", [{**DIDEMO[0], "times": [[0, 1, 2]]}])
    with pytest.raises(ValueError, match="'times' must be a list of"):
        F.load("didemo", path)
    durs = write(tmp_path / "durs.json", {"other.mov": 30})
    path = write(tmp_path / "d.json", DIDEMO)
    with pytest.raises(ValueError, match="is not in the durations file"):
        F.load("didemo", path, durations=durs)


# ---------------------------------------------------------------- TACoS

TACOS = {  # 2D-TAN data/TACoS/test.json layout: frame indices + fps + num_frames
    "s13-d21.avi": {"num_frames": 2940, "fps": 29.4, "timestamps": [[294, 588], [1470, 1176], [2646, 3234], [735, 735]],
                    "sentences": ["The person takes out a cutting board.", "He washes a carrot.",
                                  "He peels the carrot.", "He rinses it."]},
    "s27-d50.avi": {"num_frames": 588, "fps": 29.4, "timestamps": [[0, 147]], "sentences": [""]},
}


def test_tacos_fixture(tmp_path):
    path = write(tmp_path / "test.json", TACOS)
    samples, report = F.load("tacos", path)
    assert [s.id for s in samples] == ["s13-d21.avi#0", "s13-d21.avi#1", "s13-d21.avi#2"]
    assert samples[0].duration == pytest.approx(100.0) and samples[0].spans == [[10.0, 20.0]]
    assert samples[1].spans == [[40.0, 50.0]]  # reversed frames swapped
    assert samples[2].spans == [[90.0, pytest.approx(100.0)]] and samples[2].meta["frames"] == [2646, 3234]
    assert dict(report) == {"reversed": 1, "end_past_duration": 1, "empty": 1, "sample_without_spans": 1,
                            "empty_query": 1}
    tacos.write_predictions(gt_preds(samples), samples, tmp_path / "p.jsonl")
    back = tacos.read_predictions(tmp_path / "p.jsonl", samples)
    assert {k: p.spans for k, p in back.items()} == {s.id: s.spans for s in samples}
    write(path, {"s13-d21.avi": {"timestamps": [[0, 1]], "sentences": ["x"], "fps": 0, "num_frames": 10}})
    with pytest.raises(ValueError, match="fps must be positive"):
        F.load("tacos", path)


# ---------------------------------------------------------------- E.T. Bench

ETBENCH = [  # etbench_txt_v1.0.json layout (PolyU-ChenLab/ETBench docs/BENCHMARK.md)
    {"version": 1.0, "idx": 0, "task": "tvg", "source": "qvhighlights", "video": "qvhighlights/a.mp4",
     "duration": 35.0, "tgt": [15.0, 31.0], "q": "When does the dog jump? Answer with timestamps."},
    {"version": 1.0, "idx": 1, "task": "tal", "source": "thumos14", "video": "thumos14/b.mp4",
     "duration": 60.0, "tgt": [[1.5, 4.0], [20.0, 62.0]], "q": "Find every time the action 'pole vault' happens."},
    {"version": 1.0, "idx": 2, "task": "vhd", "source": "youtube_highlights", "video": "yth/c.mp4",
     "duration": 40.0, "tgt": [[[2.0, 4.0], [10.0, 12.0]], [[2.0, 4.0]]], "q": "Find the highlight."},
    {"version": 1.0, "idx": 3, "task": "dvc", "source": "youcook2", "video": "youcook2/d.mp4",
     "duration": 100.0, "tgt": [[5.0, 20.0], [120.0, 130.0], [40.0, 60.0]],
     "g": ["crack the eggs", "never seen", "whisk them"], "q": "Describe the steps with timestamps."},
    {"version": 1.0, "idx": 4, "task": "rar", "source": "ego4d", "video": "ego4d/e.mp4", "duration": 30.0,
     "src": [4.2, 8.8], "o": ["cut onion", "open door", "wash hands", "pour water"], "p": 2,
     "q": "What happens during <src>? Options: (A) cut onion (B) open door (C) wash hands (D) pour water."},
    {"version": 1.0, "idx": 5, "task": "gvq", "source": "qaego4d", "video": "qaego4d/f.mp4", "duration": 150.0,
     "tgt": [[8.8, 11.3]], "o": ["on the table", "in the sink", "in the bag", "on the floor"], "p": 0,
     "q": "Where did I put the knife? Give the option and the time."},
]


def test_etbench_fixture(tmp_path):
    path = write(tmp_path / "etbench_txt_v1.0.json", ETBENCH)
    samples, report = F.load("etbench", path)
    assert [(s.id, s.task) for s in samples] == [("0", "grounding"), ("1", "multi_grounding"), ("2", "highlight"),
                                                 ("3", "dense_caption"), ("4", "grounded_qa"), ("5", "grounded_qa")]
    by = {s.id: s for s in samples}
    assert by["0"].spans == [[15.0, 31.0]] and by["1"].spans == [[1.5, 4.0], [20.0, 60.0]]
    assert by["2"].spans == [[2.0, 4.0], [10.0, 12.0]]
    assert by["3"].spans == [[5.0, 20.0], [40.0, 60.0]] and by["3"].captions == ["crack the eggs", "whisk them"]
    assert by["4"].answer == "wash hands" and by["4"].spans == [] and by["4"].meta["src"] == [4.2, 8.8]
    assert by["5"].answer == "on the table" and by["5"].spans == [[8.8, 11.3]]
    assert by["0"].meta["source"] == "qvhighlights" and by["0"].meta["task"] == "tvg"
    assert dict(report) == {"end_past_duration": 1, "start_past_duration": 1}

    preds = gt_preds(samples)
    preds["4"] = Prediction("4", [], answer="(C) wash hands")
    del preds["5"]
    out = tmp_path / "etbench_pred.json"
    etbench.write_predictions(preds, samples, out)
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert [r["a"] for r in rows] == ["15.0 - 31.0 seconds", "1.5 - 4.0 seconds, 20.0 - 60.0 seconds",
                                      "2.0 - 4.0 seconds, 10.0 - 12.0 seconds",
                                      "5.0 - 20.0 seconds, 40.0 - 60.0 seconds", "(C) wash hands", ""]
    assert list(rows[4]) == ["version", "idx", "task", "source", "video", "duration", "src", "p", "o", "q", "a"]
    assert {k: v for k, v in rows[1].items() if k != "a"} == ETBENCH[1]
    back = etbench.read_predictions(out, samples)
    assert {k: p.spans for k, p in back.items() if k in "0123"} == {k: by[k].spans for k in "0123"}
    assert back["4"].answer == "(C) wash hands" and back["5"].spans == []

    # a dense-caption prediction with one caption per line becomes timed lines
    dense = {"3": Prediction("3", [[5.0, 20.0], [40.0, 60.0]], answer="crack eggs\nwhisk")}
    etbench.write_predictions(dense, samples, out)
    assert json.loads(out.read_text(encoding="utf-8"))[3]["a"] == \
        "5.0 - 20.0 seconds, crack eggs\n40.0 - 60.0 seconds, whisk"
    assert etbench.read_predictions(out)["3"].spans == [[5.0, 20.0], [40.0, 60.0]]
    tacos_samples, _ = F.load("tacos", write(tmp_path / "t.json", TACOS))
    with pytest.raises(ValueError, match="did not come from an E.T. Bench file"):
        etbench.write_predictions({}, tacos_samples, out)


def test_etbench_bad_input(tmp_path):
    path = write(tmp_path / "e.json", [{**ETBENCH[0], "task": "xyz"}])
    with pytest.raises(ValueError, match="unknown E.T. Bench task 'xyz'"):
        F.load("etbench", path)
    path = write(tmp_path / "e.json", [{k: v for k, v in ETBENCH[0].items() if k != "tgt"}])
    with pytest.raises(ValueError, match="task 'tvg' needs 'tgt'"):
        F.load("etbench", path)
    path = write(tmp_path / "e.json", [{**ETBENCH[4], "p": 7}])
    with pytest.raises(ValueError, match="p=7 is outside the 4 options"):
        F.load("etbench", path)
    path = write(tmp_path / "e.json", [ETBENCH[0]])
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['a'\]"):
        etbench.read_predictions(path)


# ---------------------------------------------------------------- D2VLM

D2VLM = [  # the three examples of the D2VLM paper, appendix B, figure 1
    {"video": "activitynet/v_6uhLrPgbpUA.mp4", "duration": 46.333,
     "time_gt": {"evidence_grounding": [[6.337, 12.098], [21.172, 24.413], [29.238, 38.095]],
                 "interleaved_response": [[6.337, 12.098], [21.172, 24.413], [29.238, 38.095]]},
     "conversations": [{"from": "human", "value": "<image>\nLocate all instances of the action 'bmx' in the video "
                                                   "and give me the timestamps for each occurrence."},
                       {"from": "gpt", "value": "<evi> <evi> <evi> </evi> The action happens in <evi>, <evi>, and <evi>."}]},
    {"video": "how_to_step/-Yt51vMDbo0.mp4", "duration": 128.395,
     "time_gt": {"evidence_grounding": [[75, 83], [120, 128], [126, 128]],
                 "interleaved_response": [[75, 83], [120, 128], [126, 128]]},
     "conversations": [{"from": "human", "value": "<image>\nLocalize a series of action steps in the given video, output "
                                                   "the timestamps for each step, and briefly describe the step."},
                       {"from": "gpt", "value": "<evi> <evi> <evi> </evi> <evi>, remove the skin and meat pieces easily. "
                                                "<evi>, cut and dice the mango. <evi>, enjoy your mangoes!."}]},
    {"video": "ego_timeqa/45ad1f4b-11f0-4ee2-aaf8-f06584d434c9_5_155.mp4", "duration": 150,
     "time_gt": {"evidence_grounding": [8.823, 11.311], "interleaved_response": [8.823, 11.311]},
     "conversations": [{"from": "human", "value": "<image>\nWatch the video carefully and answer the question: "
                                                   "'What did I do with the chopping sticks?'."},
                       {"from": "gpt", "value": "<evi> </evi> Picked them up. The relevant event happens in <evi>."}]},
]


def test_d2vlm_fixture(tmp_path):
    path = write(tmp_path / "d2vlm.json", D2VLM)
    samples, report = F.load("d2vlm", path)
    assert [s.id for s in samples] == ["0", "1", "2"] and dict(report) == {}
    assert samples[0].query == ("Locate all instances of the action 'bmx' in the video and give me the timestamps "
                                "for each occurrence.")
    assert samples[0].answer == "The action happens in <evi>, <evi>, and <evi>." and len(samples[0].spans) == 3
    assert samples[2].spans == [[8.823, 11.311]] and samples[2].meta["time_gt_flat"] is True
    assert samples[2].answer == "Picked them up. The relevant event happens in <evi>."
    assert samples[1].meta["response"] == D2VLM[1]["conversations"][1]["value"]

    # canonical -> D2VLM -> canonical keeps everything, and a single span is written flat as in the paper
    assert d2vlm.write_annotations(samples, tmp_path / "again.json") == 3
    rows = json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))
    assert rows[2]["time_gt"]["evidence_grounding"] == [8.823, 11.311]
    assert rows[0]["conversations"] == D2VLM[0]["conversations"]
    again, _ = F.load("d2vlm", tmp_path / "again.json")
    assert [(s.id, s.spans, s.answer, s.query) for s in again] == [(s.id, s.spans, s.answer, s.query) for s in samples]


def test_d2vlm_from_other_formats(tmp_path):
    tacos_samples, _ = F.load("tacos", write(tmp_path / "t.json", TACOS))
    et_samples, _ = F.load("etbench", write(tmp_path / "e.json", ETBENCH))
    d2vlm.write_annotations(tacos_samples[:1] + et_samples[3:4] + et_samples[5:], tmp_path / "d.json")
    rows = json.loads((tmp_path / "d.json").read_text(encoding="utf-8"))
    assert [r["conversations"][1]["value"] for r in rows] == [
        "<evi> </evi> The event happens in <evi>.",
        "<evi> <evi> </evi> <evi>, crack the eggs <evi>, whisk them",
        "<evi> </evi> on the table The relevant event happens in <evi>."]
    assert rows[0]["conversations"][0]["value"] == "<image>\nThe person takes out a cutting board."
    back, report = F.load("d2vlm", tmp_path / "d.json")
    assert [(s.id, s.task, s.spans) for s in back] == [(s.id, s.task, s.spans) for s in
                                                       tacos_samples[:1] + et_samples[3:4] + et_samples[5:]]
    assert back[1].captions == ["crack the eggs", "whisk them"] and dict(report) == {}


def test_d2vlm_predictions_and_quirks(tmp_path):
    samples, _ = F.load("d2vlm", write(tmp_path / "d2vlm.json", D2VLM))
    preds = {"0": Prediction("0", [[6.0, 12.0, 0.9]], answer="It happens in <evi>."), "2": Prediction("2", [[8.0, 200.0]])}
    d2vlm.write_predictions(preds, samples, tmp_path / "p.json")
    rows = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))
    assert [r["conversations"][1]["value"] for r in rows] == ["<evi> </evi> It happens in <evi>.",
                                                              "<evi> </evi> The event happens in <evi>."]
    back = d2vlm.read_predictions(tmp_path / "p.json", samples)
    et, _ = F.load("etbench", write(tmp_path / "e.json", ETBENCH))
    d2vlm.write_predictions({"3": Prediction("3", [[1.0, 2.0]], answer="stir")}, et, tmp_path / "dense.json")
    dense = json.loads((tmp_path / "dense.json").read_text(encoding="utf-8"))
    assert dense[0]["conversations"][1]["value"] == "<evi> </evi> <evi>, stir"  # never the ground-truth captions
    assert {k: p.spans for k, p in back.items()} == {"0": [[6.0, 12.0]], "2": [[8.0, 200.0]]}  # predictions are not clipped

    broken = [dict(D2VLM[2], duration=8), dict(D2VLM[0], conversations=[D2VLM[0]["conversations"][0],
                                                                          {"from": "gpt", "value": "<evi> </evi> x"}])]
    samples, report = F.load("d2vlm", write(tmp_path / "b.json", broken))
    assert [s.id for s in samples] == ["1"]
    assert dict(report) == {"start_past_duration": 2, "evidence_span_rejected": 1, "evi_count_mismatch": 1}
    no_end = [dict(D2VLM[2], conversations=[D2VLM[2]["conversations"][0], {"from": "gpt", "value": "<evi> x"}])]
    with pytest.raises(ValueError, match="no '</evi>'"):
        F.load("d2vlm", write(tmp_path / "n.json", no_end))


# ---------------------------------------------------------------- convert

def test_convert_writes_canonical_jsonl(shared_data, tmp_path):
    out = tmp_path / "qv.jsonl"
    counts = F.convert("qvhighlights", shared_data / "qvhighlights/highlight_val_release.jsonl", out)
    assert counts == {"videos": 1519, "samples": 1550, "spans": 2803, "quirks": {}}
    loaded = load_samples(out)
    assert len(loaded) == 1550 and loaded[0].spans == [[82.0, 150.0]] and loaded[0].meta["qid"] == 2579
    counts = F.convert("charades-sta", shared_data / "charades_sta/charades_sta_train.txt", tmp_path / "c.jsonl",
                       durations=shared_data / "charades_sta/Charades_v1_train.csv")
    assert counts == {"videos": 5336, "samples": 12405, "spans": 12405,
                      "quirks": {"end_past_duration": 1802, "reversed": 4, "start_past_duration": 3,
                                 "sample_without_spans": 3}}


def test_prediction_ids_must_match_samples(tmp_path):
    samples, _ = F.load("tacos", write(tmp_path / "t.json", TACOS))
    with pytest.raises(ValueError, match="match no sample"):
        tacos.write_predictions([Prediction("nope", [[0, 1]])], samples, tmp_path / "p.jsonl")



# The authors' training layout (nusnlp/d2vlm, d2vlm/train/train.py reads anno['tgt'], anno['src'],
# anno['conversations'], anno['task'], anno['duration']): flat span lists, E.T. Bench task names.
D2VLM_FLAT = [
    {"video": "charades/AO8RW.mp4", "duration": 10.0, "task": "tvg", "source": "charades_sta", "tgt": [3.0, 5.0],
     "conversations": [{"from": "human", "value": "<image>\nWhen does the person put a book on a shelf?"},
                       {"from": "gpt", "value": "<evi></evi>The event happens in <evi>."}]},
    {"video": "yc2/xHr8X2Wpmno.mp4", "task": "dvc", "tgt": [2, 9.5, 11, 20],
     "conversations": [{"from": "human", "value": "<image>\nLocalize the steps and describe them."},
                       {"from": "gpt", "value": "<evi> <evi></evi><evi>, crack the eggs. <evi>, whisk them."}]},
    {"video": "ego/q1.mp4", "duration": 60, "task": "rvq", "src": [10, 14], "tgt": [20, 25],
     "conversations": [{"from": "human", "value": "<image>\nWhat did I do after <evi>?"},
                       {"from": "gpt", "value": "<evi></evi>I washed the cup in <evi>."}]},
    {"video": "ego/q2.mp4", "duration": 60, "task": "rvq", "tgt": [20, 25, 30, 31],
     "conversations": [{"from": "human", "value": "<image>\nWhat did I do?"},
                       {"from": "gpt", "value": "<evi></evi>I washed the cup in <evi>."}]},
]


def test_d2vlm_reads_the_authors_flat_tgt_src_records(tmp_path):
    (tmp_path / "durations.json").write_text(json.dumps({"xHr8X2Wpmno": 30.0}))
    samples, report = F.load("d2vlm", write(tmp_path / "train.json", D2VLM_FLAT), durations=tmp_path / "durations.json")
    assert [(s.id, s.task, s.spans, s.duration) for s in samples] == [
        ("0", "grounding", [[3.0, 5.0]], 10.0), ("1", "dense_caption", [[2.0, 9.5], [11.0, 20.0]], 30.0),
        ("2", "grounded_qa", [[20.0, 25.0]], 60.0)]
    assert samples[0].answer == "The event happens in <evi>." and samples[0].query.startswith("When does")
    assert samples[1].captions == ["crack the eggs.", "whisk them."]
    # the question's own <evi> (a src span) reaches our model as text; src is kept
    assert samples[2].query == "What did I do after 10.0 - 14.0 seconds?" and samples[2].meta["src"] == [[10.0, 14.0]]
    # two spans but one reference in the answer: refused, and counted
    assert report["question_refs_as_text"] == 1 and report["evi_refs_rejected"] == 1


def test_d2vlm_flat_records_without_a_duration_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"record 1: no duration for video 'yc2/xHr8X2Wpmno.mp4'; pass --durations"):
        F.load("d2vlm", write(tmp_path / "train.json", D2VLM_FLAT))
