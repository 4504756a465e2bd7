"""Model cards: written with every trained model, carried in the grounding JSON, and the warning a
model trained only on procedural videos gives when asked about a real video (CLI, API, web demo)."""
from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from pathlib import Path

import pytest

import damo
from damo import card as model_card
from damo.app.serve import DemoServer, make_examples
from damo.cli import main
from damo.config import Recipe
from damo.data import synthetic
from damo.train.recipe import run_recipe
from helpers import TINY_MODEL
from test_ground import build_scripted_model
from test_serve import chromium_driver

SPEC = "synth://easy?n=8&seed=0"
QUERY = "when does the person open the door?"


def tiny_recipe() -> Recipe:
    """Two short stages on procedural data only."""
    return Recipe.from_dict({
        "name": "tiny", "model": TINY_MODEL, "seed": 0, "data": {"train": SPEC},
        "stages": [{"name": "align", "tasks": ["dense_caption"], "losses": {"contrastive": 1.0}, "steps": 2,
                    "batch": 4, "trainable": ["vision.*", "audio.*", "fuseformer.*", "text_encoder.*", "align_video.*"]},
                   {"name": "ground", "losses": {"lm": 1.0, "grounding_bce": 5.0}, "steps": 2, "batch": 4}]})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("card")
    run_recipe(tiny_recipe(), work, progress=False, log=lambda *_: None)
    return work


def test_run_recipe_writes_a_card_for_every_stage_and_the_model(workdir):
    card = model_card.read_card(workdir / "model")
    assert card["trained_on"] == "procedural" and card["recipe"] == "tiny"
    assert card["data"] == [{"spec": SPEC, "kind": "procedural"}] and card["stages"] == ["align", "ground"]
    assert "red" in card["vocabulary"]["colours"] and "beep" in card["vocabulary"]["sounds"]
    assert model_card.read_card(workdir / "stages" / "align")["stages"] == ["align"]
    assert model_card.read_card(workdir / "stages" / "ground") == card


def test_a_card_says_what_data_was_real():
    assert model_card.make_card("r", ["s"], [{"spec": "charades.jsonl", "kind": "real"}], {})["trained_on"] == "real"
    mixed = model_card.make_card("r", ["s"], [{"spec": SPEC, "kind": "procedural"},
                                               {"spec": "charades.jsonl", "kind": "real"}], {"shapes": []})
    assert mixed["trained_on"] == "procedural and real" and "vocabulary" not in mixed


def test_ground_prints_the_answer_the_spans_and_the_cards_one_line(workdir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(workdir / "model", model)
    model_card.add_metrics(model, {"overall": {"n": 10, "R1@0.5": 0.5, "mIoU": 0.4}, "visual only": {"n": 4}})
    video = synthetic.write_video(synthetic.generate_spec("easy", 0, "test", 0), tmp_path / "p.mkv")
    out = tmp_path / "r.json"
    assert main(["ground", str(video), "when does the beep sound?", "--model", str(model), "--quiet",
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    full = json.loads(out.read_text())          # the file keeps the whole result, card included
    assert full["model"]["metrics"]["visual only"] == {"n": 4}
    assert [x.split(":")[0] for x in lines] == ["answer", "spans", "model"]
    assert lines[0] == f"answer: {full['answer']}"
    assert lines[2] == ("model:  trained on procedural data by recipe tiny (2 stages); "
                        "held-out test R@0.5 0.500 (n=10)")
    first = full["spans"][0] if full["spans"] else None
    assert (f"{first['start']:.1f}-{first['end']:.1f} s" in lines[1]) if first else lines[1] == "spans:  none"


def test_grounding_a_real_video_warns_once_and_the_json_carries_the_card(workdir, shared_data, tmp_path, capsys):
    video = shared_data / "videos" / "charades_0F7LW.mp4"
    out = tmp_path / "r.json"
    assert main(["ground", str(video), QUERY, "--model", str(workdir / "model"), "--quiet", "--out", str(out),
                 "--json"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "trained only on procedural videos" in warnings[0]
    result = json.loads(out.read_text())
    assert result == json.loads(captured.out)
    assert "trained only on procedural videos" in result["warning"]
    assert result["model"]["trained_on"] == "procedural"
    assert result["model"]["data"] == [{"spec": SPEC, "kind": "procedural"}]
    assert {"shapes", "colours", "sounds"} <= set(result["model"]["vocabulary"])


def test_a_procedural_video_file_gives_no_warning(workdir, tmp_path):
    path = synthetic.write_video(synthetic.generate_spec("easy", 0, "test", 0), tmp_path / "p.mkv")
    g = damo.load(workdir / "model", cache_dir=tmp_path / "cache")
    r = g.ground(path, "when does the beep sound?")
    assert "warning" not in r and r["model"]["trained_on"] == "procedural"
    assert "warning" not in g.ground("synth://easy/0/test/1", "when does the beep sound?")


def test_batch_warns_once_and_every_row_carries_it(workdir, shared_data, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("chaplin.mp4", "bikes.mp4"):
        shutil.copy(shared_data / "videos" / name, folder / name)
    out = tmp_path / "out.jsonl"
    assert main(["ground", "--batch", str(folder), "--query", QUERY, "--model", str(workdir / "model"),
                 "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2 and all("warning" in r and r["model"]["trained_on"] == "procedural" for r in rows)
    assert capsys.readouterr().err.count("warning: this model was trained only on procedural videos") == 1


def test_a_model_without_a_card_is_unknown_and_silent(workdir, shared_data, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(workdir / "model", bare)
    (bare / model_card.CARD).unlink()
    assert main(["ground", str(shared_data / "videos" / "bikes.mp4"), QUERY, "--model", str(bare), "--quiet",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    r = json.loads(captured.out)
    assert r["model"] == {"trained_on": "unknown"} and "warning" not in r
    assert main(["ground", str(shared_data / "videos" / "bikes.mp4"), QUERY, "--model", str(bare), "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "model:  " + model_card.headline(None)


def test_rerun_writes_the_card_of_a_model_trained_before_cards(workdir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(workdir, old)
    for folder in (old / "model", old / "stages" / "align", old / "stages" / "ground"):
        (folder / model_card.CARD).unlink()
    logs: list[str] = []
    run_recipe(tiny_recipe(), old, progress=False, log=logs.append)
    assert any("reusing trained model" in m for m in logs)
    assert model_card.read_card(old / "model") == model_card.read_card(workdir / "model")


@pytest.mark.browser
def test_web_demo_warns_on_a_real_upload_not_on_its_examples(shared_data, tmp_path):
    model_dir = build_scripted_model(tmp_path / "model")
    model_card.write_card(model_dir, model_card.make_card("demo", ["temporal"], [{"spec": SPEC, "kind": "procedural"}],
                                                          synthetic.vocabulary()))
    g = damo.load(model_dir, cache_dir=tmp_path / "cache")
    srv = DemoServer(g, make_examples(tmp_path / "examples", count=1), port=0, max_upload_mb=5)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    host, port = srv.server_address[:2]

    def post(path: str, body: bytes, ctype: str) -> dict:
        req = urllib.request.Request(f"http://{host}:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": ctype, "X-Filename": "chaplin.mp4"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    try:
        v = post("/api/upload", (shared_data / "videos" / "chaplin.mp4").read_bytes(), "application/octet-stream")
        real = post("/api/ground", json.dumps({"video": v["id"], "query": QUERY}).encode(), "application/json")
        example = post("/api/ground", json.dumps({"video": "example-0", "query": "when does the beep sound?"}).encode(),
                       "application/json")
        assert "trained only on procedural videos" in real["warning"] and real["model"]["trained_on"] == "procedural"
        assert "warning" not in example and example["model"]["trained_on"] == "procedural"
        shown = page_warnings(f"http://{host}:{port}/", shared_data / "videos" / "chaplin.mp4", tmp_path)
        assert shown == ["", real["warning"]]     # none under the example's answer; the real video's under its own
    finally:
        srv.shutdown()
        srv.server_close()


def page_warnings(page: str, upload: Path, tmp_path: Path) -> list[str]:
    """In headless Chromium: ask about the first example, then upload ``upload`` and ask about it; the
    text of the answer panel's warning (empty when hidden) after each answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver(tmp_path)
    wait = WebDriverWait(driver, 90)
    out = []
    try:
        driver.get(page)
        wait.until(lambda d: d.find_element(By.ID, "example").get_attribute("value") == "example-0")
        for step in ("example", "upload"):
            if step == "upload":
                driver.find_element(By.ID, "file").send_keys(str(upload))
                wait.until(lambda d: f"{upload.name}:" in d.find_element(By.ID, "upload-status").text)
            driver.execute_script("document.getElementById('answer').textContent = ''")
            driver.find_element(By.ID, "query").clear()
            driver.find_element(By.ID, "query").send_keys(QUERY)
            driver.find_element(By.ID, "ask").click()
            wait.until(lambda d: d.find_element(By.ID, "answer").text)
            out.append(driver.find_element(By.ID, "warning").text)   # a hidden element's text is ""
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
    return out
