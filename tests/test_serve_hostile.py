"""The web demo against hostile clients: polyglot uploads, cross-origin and DNS-rebinding requests,
oversized header numbers, jobs past their deadline, and cleanup on SIGTERM."""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import damo
from damo.app.serve import PAGE_CSP, DemoServer, JobStopped, make_examples
from test_serve import Q, call, model_dir, server  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


def raw(server: DemoServer, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request with exactly these headers (Host included: http.client adds none)."""
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in {**headers, "Content-Length": str(len(body))}.items():
        conn.putheader(k, v)
    conn.endheaders(body or None)
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def host(server: DemoServer) -> str:
    return "%s:%d" % server.server_address[:2]


# ------------------------------------------------------------------ content types of uploads

def test_polyglot_upload_named_html_is_served_as_its_container(server, shared_data):
    polyglot = (shared_data / "videos" / "chaplin.mp4").read_bytes() + b"<script>alert(document.domain)</script>"
    status, v = call(server, "/api/upload", polyglot, {"X-Filename": "x.html"})
    assert status == 200 and v["name"] == "x.html"
    assert server.videos[v["id"]].path.suffix == ".mp4"          # stored under the decoder's suffix
    status, h, body = raw(server, "GET", v["url"], {"Host": host(server)})
    assert status == 200 and body == polyglot
    assert h["content-type"] == "video/mp4" and h["x-content-type-options"] == "nosniff"
    assert h["content-disposition"] == f'inline; filename="{v["id"]}.mp4"'
    assert "sandbox" in h["content-security-policy"]


def test_webm_example_and_image_upload(server, tmp_path):
    status, h, _ = raw(server, "GET", "/media/example-0", {"Host": host(server), "Range": "bytes=0-9"})
    assert status == 206 and h["content-type"] == "video/webm"
    from PIL import Image
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    status, r = call(server, "/api/upload", (tmp_path / "x.png").read_bytes(), {"X-Filename": "clip.mp4"})
    assert status == 422 and r["error"].startswith("clip.mp4: its container (png_pipe) is not one this demo serves")


# ------------------------------------------------------------------ page policy

def test_page_has_a_content_security_policy_it_can_live_with(server):
    status, h, body = raw(server, "GET", "/", {"Host": host(server)})
    assert status == 200 and h["content-security-policy"] == PAGE_CSP and h["x-frame-options"] == "DENY"
    assert "default-src 'none'" in PAGE_CSP and "script-src 'self'" in PAGE_CSP
    page = body.decode()
    # nothing inline that the policy would block: scripts come from files, no handlers or style attributes
    assert all('src="/static/' in tag for tag in re.findall(r"<script[^>]*>", page))
    assert not re.search(r"\son\w+=|\sstyle=", page)
    assert re.findall(r'<link[^>]*href="([^"]+)"', page) == ["/static/style.css"]


# ------------------------------------------------------------------ origin, body type, host

def test_cross_origin_and_undeclared_posts_are_refused(server):
    body = json.dumps({"video": "example-0", "query": Q}).encode()
    h = {"Host": host(server)}
    # the simple request a foreign page can send without a preflight
    status, _, r = raw(server, "POST", "/api/ground", {**h, "Content-Type": "text/plain"}, body)
    assert status == 415 and "application/json" in json.loads(r)["error"]
    status, _, r = raw(server, "POST", "/api/ground",
                       {**h, "Content-Type": "application/json", "Origin": "http://evil.example"}, body)
    assert status == 403 and "cross-origin" in json.loads(r)["error"]
    for origin in ("null", f"http://localhost:{server.server_address[1] + 1}"):
        assert raw(server, "POST", "/api/ground", {**h, "Content-Type": "application/json", "Origin": origin},
                   body)[0] == 403
    assert raw(server, "POST", "/api/ground", {**h, "Content-Type": "application/json",
                                               "Sec-Fetch-Site": "cross-site"}, body)[0] == 403
    for ctype in ("text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "video/"):
        assert raw(server, "POST", "/api/upload", {**h, "Content-Type": ctype}, b"x" * 10)[0] == 415
    status, _, r = raw(server, "POST", "/api/ground",
                       {**h, "Content-Type": "application/json; charset=utf-8", "Origin": f"http://{host(server)}",
                        "Sec-Fetch-Site": "same-origin"}, body)
    assert status == 200 and json.loads(r)["answer"] == "red"


def test_foreign_host_headers_are_refused(server):
    port = server.server_address[1]
    for bad in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", f"127.0.0.1.nip.io:{port}",
                "", "[::1", f"localhost:{port}:{port}"):
        status, _, r = raw(server, "GET", "/api/examples", {"Host": bad})
        assert status == 421, bad
    assert raw(server, "POST", "/api/ground", {"Host": f"evil.example:{port}", "Content-Type": "application/json"},
               b"{}")[0] == 421
    for good in (host(server), f"localhost:{port}", f"LOCALHOST:{port}"):
        assert raw(server, "GET", "/api/examples", {"Host": good})[0] == 200, good


def test_host_rules_for_other_binds():
    allowed = lambda bound, value: DemoServer.host_allowed(SimpleNamespace(server_address=bound), value)  # noqa: E731
    assert allowed(("0.0.0.0", 7860), "192.168.1.5:7860") and allowed(("0.0.0.0", 7860), "localhost:7860")
    assert not allowed(("0.0.0.0", 7860), "attacker.example:7860")
    assert allowed(("192.168.1.5", 80), "192.168.1.5") and not allowed(("192.168.1.5", 80), "10.0.0.1")
    assert allowed(("::1", 7860), "[::1]:7860") and not allowed(("::1", 7860), "[::2]:7860")


# ------------------------------------------------------------------ header numbers

def test_range_and_length_numbers_are_bounded(server):
    size = server.videos["example-0"].path.stat().st_size
    h = {"Host": host(server)}
    for rng in ("bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 16, "bytes=0-1,5-6", "bytes=x-y", "items=0-1"):
        status, headers, body = raw(server, "GET", "/media/example-0", {**h, "Range": rng})
        assert status == 200 and len(body) == size, rng          # ignored: the whole file
    status, headers, _ = raw(server, "GET", "/media/example-0", {**h, "Range": "bytes=999999999999999-"})
    assert status == 416 and headers["content-range"] == f"bytes */{size}"
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.putrequest("POST", "/api/ground")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", "9" * 5000)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411
    conn.close()


# ------------------------------------------------------------------ jobs past their deadline

def test_a_job_past_max_seconds_is_stopped(model_dir, tmp_path):
    g = damo.load(model_dir, cache_dir=tmp_path / "cache")
    srv = DemoServer(g, make_examples(tmp_path / "examples", count=1), port=0, max_seconds=0.3)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    forwards = []
    event = threading.Event()

    def slow(*_):   # every LLM step now takes 0.4 s, longer than the whole allowance
        forwards.append(1)
        event.wait(0.4)

    hook = g.model.llm.register_forward_hook(slow)
    try:
        status, r = call(srv, "/api/ground", json.dumps({"video": "example-0", "query": Q}).encode())
        at_reply = len(forwards)
        assert status == 504 and "no answer within 0.3 s" in r["error"]
        srv.pool.submit(int).result(timeout=120)      # the worker is free again: the job has ended
        assert srv.stopped_jobs == 1
        assert len(forwards) - at_reply <= 1           # at most the step in flight at the deadline
        assert len(forwards) <= 2                      # the answer needs more steps than that
        with pytest.raises(JobStopped):                # a job that waited past its deadline never starts
            srv.run_job(0.0, pytest.fail, "started after its deadline")
    finally:
        hook.remove()
        srv.shutdown()
        srv.server_close()
    assert not srv.upload_dir.exists()


# ------------------------------------------------------------------ cleanup

def test_evicted_uploads_lose_their_cache_entries(model_dir, tmp_path, clip_mkv, shared_data):
    cache = tmp_path / "cache"
    g = damo.load(model_dir, cache_dir=cache)
    srv = DemoServer(g, make_examples(tmp_path / "examples", count=1), port=0, max_uploads=1)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        status, v = call(srv, "/api/upload", clip_mkv.read_bytes(), {"X-Filename": "a.mkv"})
        assert call(srv, "/api/ground", json.dumps({"video": v["id"], "query": Q}).encode())[0] == 200
        entry = srv.videos[v["id"]].cache_entry
        assert entry.is_file() and entry.parent == cache
        call(srv, "/api/upload", (shared_data / "videos" / "bikes.mp4").read_bytes(), {})   # evicts the first
        assert v["id"] not in srv.videos and not entry.exists()
    finally:
        srv.shutdown()
        srv.server_close()
    assert not srv.upload_dir.exists() and not list(cache.glob("*.npz"))


@pytest.mark.slow
def test_sigterm_removes_uploads_and_their_cache_entries(model_dir, tmp_path, clip_mkv):
    tmp, cache = tmp_path / "tmp", tmp_path / "cache"
    tmp.mkdir()
    script = ("import sys, damo; from damo.app.serve import run; "
              f"run(damo.load({str(model_dir)!r}, cache_dir={str(cache)!r}), __import__('pathlib').Path("
              f"{str(tmp_path / 'examples')!r}), port=0, examples=1)")
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    found: list[re.Match] = []
    ready = threading.Event()

    def drain() -> None:   # read stderr to the end, so the server never blocks on a full pipe
        for line in proc.stderr:
            m = re.search(r"http://([\d.]+):(\d+)/", line)
            if m and not found:
                found.append(m)
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not ready.wait(300) or not found:
            pytest.fail(f"the server did not start (exit {proc.poll()})")
        srv = SimpleNamespace(server_address=(found[0].group(1), int(found[0].group(2))))
        status, v = call(srv, "/api/upload", clip_mkv.read_bytes(), {"X-Filename": "c.mkv"})
        assert status == 200
        before = set(cache.glob("*.npz"))
        assert call(srv, "/api/ground", json.dumps({"video": v["id"], "query": Q}).encode())[0] == 200
        added = set(cache.glob("*.npz")) - before
        assert len(added) == 1 and len(list(tmp.glob("damo-uploads-*/*"))) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not list(tmp.iterdir()) and not any(p.exists() for p in added)
