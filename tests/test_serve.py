"""The web demo: HTTP endpoints and limits, then the page in a real headless Chromium.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package;
when they are missing it fails and says what to install.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import damo
from damo.app.serve import DemoServer, make_examples
from helpers import CHROMEDRIVER, CHROMIUM
from test_ground import build_scripted_model

REPO = Path(__file__).resolve().parents[1]
Q = "when does the beep sound?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_scripted_model(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    tmp = tmp_path_factory.mktemp("serve")
    g = damo.load(model_dir, cache_dir=tmp / "cache")
    srv = DemoServer(g, make_examples(tmp / "examples", count=1), port=0, max_upload_mb=1, max_uploads=2)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    assert not srv.upload_dir.exists()   # uploads are removed at shutdown


def url(server: DemoServer, path: str) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}{path}"


BODY_TYPES = {"/api/ground": "application/json", "/api/upload": "application/octet-stream"}


def call(server, path: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict | bytes]:
    """GET, or POST ``data`` with the body type the page sends unless ``headers`` says otherwise."""
    headers = {"Content-Type": BODY_TYPES.get(path, "application/octet-stream"), **(headers or {})}
    req = urllib.request.Request(url(server, path), data=data, headers=headers,
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            body, status, ctype = r.read(), r.status, r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        body, status, ctype = e.read(), e.code, e.headers["Content-Type"]
    return status, json.loads(body) if ctype.startswith("application/json") else body


def test_binds_to_localhost_by_default(server):
    assert server.server_address[0] == "127.0.0.1"


def test_examples_and_grounding(server):
    status, examples = call(server, "/api/examples")
    assert status == 200 and [e["id"] for e in examples] == ["example-0"]
    assert Q in examples[0]["queries"]
    status, r = call(server, "/api/ground", json.dumps({"video": "example-0", "query": Q}).encode())
    assert status == 200
    assert r["answer"] == "red" and len(r["spans"]) == 1 and r["duration"] == pytest.approx(13.0, abs=0.05)
    assert r["timeline"].startswith("data:image/png;base64,")


def test_upload_then_ground_and_limits(server, clip_mkv, tmp_path):
    status, v = call(server, "/api/upload", clip_mkv.read_bytes(), {"X-Filename": "my%20clip.mkv"})
    assert status == 200 and v["name"] == "my clip.mkv" and v["duration"] == pytest.approx(13.0)
    status, r = call(server, "/api/ground", json.dumps({"video": v["id"], "query": Q}).encode())
    assert status == 200 and r["answer"] == "red"
    # too large: refused from the declared length, before reading the body
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.putrequest("POST", "/api/upload")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(2 * 2**20))
    conn.endheaders()   # no body sent: the answer must come from the header alone
    resp = conn.getresponse()
    assert resp.status == 413 and "at most 1 MB" in json.loads(resp.read())["error"]
    conn.close()
    assert call(server, "/api/limits")[1] == {"max_upload_mb": 1.0, "max_seconds": 300.0}
    # not a video: refused with the file's name and no server path
    status, r = call(server, "/api/upload", b"hello, not a video", {"X-Filename": "notes.mp4"})
    assert status == 422 and r["error"].startswith("notes.mp4: not a readable media file")
    assert str(server.upload_dir) not in r["error"]
    status, r = call(server, "/api/ground", json.dumps({"video": "example-0", "query": "  "}).encode())
    assert status == 400 and "query is empty" in r["error"]
    status, r = call(server, "/api/ground", json.dumps({"video": "../../etc/passwd", "query": Q}).encode())
    assert status == 404 and "unknown video" in r["error"]
    status, r = call(server, "/api/ground", b"{not json")
    assert status == 400
    # only the newest uploads are kept
    ids = [call(server, "/api/upload", clip_mkv.read_bytes(), {"X-Filename": "c.mkv"})[1]["id"] for _ in range(3)]
    assert [k for k in server.videos if k.startswith("upload-")] == ids[1:]
    assert len(list(server.upload_dir.iterdir())) == 2


def test_media_supports_ranges_and_only_known_ids(server):
    size = server.videos["example-0"].path.stat().st_size
    req = urllib.request.Request(url(server, "/media/example-0"), headers={"Range": "bytes=10-109"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 206 and r.headers["Content-Range"] == f"bytes 10-109/{size}" and len(r.read()) == 100
        assert r.headers["Content-Type"] == "video/webm"
    for path in ["/media/nothing", "/media/../../etc/passwd", "/static/../serve.py"]:
        assert call(server, path)[0] == 404


def chromium_driver(tmp_path: Path):
    """A headless Chromium under selenium (a run without the browser stops before any test: conftest.py),
    or a failure that says what to install."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the browser test needs selenium: pip install 'damo[browser-test]' (selenium>=4.20)")
    os.environ["SE_OFFLINE"] = "true"   # never let selenium look for drivers online
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1200,1400",
                 "--autoplay-policy=no-user-gesture-required"]:
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


def test_a_missing_browser_stops_the_run_before_any_test():
    tests = ["tests/test_serve.py::test_page_in_headless_chromium",
             "tests/test_threads.py::test_the_rule_rounds_the_idle_cores_and_stays_within_the_usable_ones"]
    code = ("import sys, pytest; sys.path.insert(0, 'tests'); import helpers; helpers.CHROMIUM = '/nowhere/chromium'; "
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *sys.argv[1:], *{tests!r}]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "browser tests need /nowhere/chromium" in out.stdout and "apt-get install chromium chromium-driver" in out.stdout
    assert "passed" not in out.stdout and "failed" not in out.stdout        # nothing ran
    rest = subprocess.run([sys.executable, "-c", code, "-m", "not browser"], cwd=str(REPO), capture_output=True,
                          text=True, timeout=300)
    assert rest.returncode == 0 and "1 passed, 1 deselected" in rest.stdout


@pytest.mark.browser
def test_page_in_headless_chromium(server, clip_mkv, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver(tmp_path)
    wait = WebDriverWait(driver, 90)
    try:
        driver.get(url(server, "/"))
        wait.until(lambda d: d.find_element(By.ID, "example").get_attribute("value") == "example-0")
        # 1. an example video: the page shows exactly what the server answers
        _, expected = call(server, "/api/ground", json.dumps({"video": "example-0", "query": Q}).encode())
        driver.find_element(By.ID, "query").send_keys(Q)
        driver.find_element(By.ID, "ask").click()
        wait.until(lambda d: d.find_element(By.ID, "answer").text)
        assert driver.find_element(By.ID, "answer").text == expected["answer"]
        buttons = driver.find_elements(By.CSS_SELECTOR, "#spans button.span")
        assert [(float(b.get_attribute("data-start")), float(b.get_attribute("data-end"))) for b in buttons] == \
            [(s["start"], s["end"]) for s in expected["spans"]]
        assert buttons[0].text.startswith(f"{expected['spans'][0]['start']:.1f} - {expected['spans'][0]['end']:.1f} s")
        wait.until(lambda d: d.execute_script("return document.getElementById('timeline').naturalWidth") > 0)
        # 2. clicking a span moves the player to its start
        wait.until(lambda d: d.execute_script("return document.getElementById('player').readyState") >= 1)
        driver.execute_script("document.getElementById('player').currentTime = 9.5")
        wait.until(lambda d: d.execute_script("return document.getElementById('player').currentTime") > 9)
        buttons[0].click()
        start = expected["spans"][0]["start"]
        wait.until(lambda d: abs(d.execute_script("return document.getElementById('player').currentTime") - start) < 1)
        assert "playing" in buttons[0].get_attribute("class")
        # 3. an uploaded file (written by the procedural generator) is grounded too
        driver.find_element(By.ID, "query").clear()
        driver.find_element(By.ID, "file").send_keys(str(clip_mkv))
        wait.until(lambda d: "my clip.mkv: 13.0 s" in d.find_element(By.ID, "upload-status").text)
        driver.execute_script("document.getElementById('answer').textContent = ''")
        driver.find_element(By.ID, "query").send_keys("when does the green triangle appear?")
        driver.find_element(By.ID, "ask").click()
        wait.until(lambda d: d.find_element(By.ID, "answer").text)
        assert driver.find_element(By.ID, "answer").text == "red"
        assert driver.find_elements(By.CSS_SELECTOR, "#spans button.span")
        assert driver.find_element(By.ID, "error").get_attribute("hidden") is not None
        shot = tmp_path / "demo.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
