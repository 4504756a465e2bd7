"""``damo serve``: a small web demo on Python's own HTTP server (no web framework to install).

The page (``static/``) lists generated example videos, takes uploads, sends the question to a
JSON endpoint and shows the answer, the timeline picture and an HTML5 player that jumps to a span
when it is clicked. Routes::

    GET  /                      the page          GET  /api/examples   example videos + queries
    POST /api/upload            raw file body     POST /api/ground     {"video": id, "query": q}
    GET  /media/<id>            a video, with HTTP Range support so the player can seek
    GET  /api/limits            upload size and answer time limits, checked by the page first

Safety by default: it binds to 127.0.0.1; uploads must declare their size and are refused above
``max_upload_mb`` before any byte is read; slow clients time out (``socket_timeout``); files are
addressed only by server-made ids, never by client paths; only the newest ``max_uploads`` uploads
are kept, in a temporary folder removed at shutdown.

Hostile input:

- Every request must name the bound address in ``Host`` (``localhost`` too when bound to a loopback
  address; any IP literal when bound to all interfaces), so a DNS-rebound name is refused. POSTs
  with an ``Origin`` must come from the same origin, and must declare their body: JSON for
  ``/api/ground``, ``application/octet-stream`` or ``video/*`` for ``/api/upload``. A cross-origin
  page can therefore only send them after a CORS preflight, which this server never grants.
- Uploads are served by the content type of the container the decoder found (MP4, WebM,
  Matroska, AVI, Ogg, MPEG, MPEG-TS, FLV, ASF), never by the uploaded name; other containers are
  refused. Media responses carry ``X-Content-Type-Options: nosniff``, ``Content-Disposition`` with a
  server-made file name and a sandboxing Content-Security-Policy; the page has a strict one.
- ``Range`` and ``Content-Length`` accept at most 15 digits; a malformed ``Range`` is ignored.
- Every request gets an answer: a body that is not JSON or is nested too deep is a 400, an error
  this server did not foresee a 500. An upload cut off, reset or stalled past ``socket_timeout`` is
  deleted (400 or 408).
- An upload is checked in a child process (:mod:`damo.app.uploads`) limited to
  ``upload_memory_mb`` of address space and ``upload_seconds``: it is probed and decoded whole
  there, so a hostile file costs the server neither its memory nor its grounding worker, which
  only ever decodes uploads that passed.
- At most ``max_jobs`` questions wait or run; one more gets 503 with ``Retry-After``.
- One grounding runs at a time. A request waits at most ``max_seconds`` for its answer, and its
  job is stopped too: a check before every forward pass of the model's parts (vision, audio,
  LLM: one per generated token) ends a job past its deadline, so decoding the video is the only
  step that runs to its end (it is bounded by the upload size and the model's frame limit).
- Uploads and their decoded-clip cache entries are deleted when an upload is evicted and at any
  shutdown: ``server_close`` (Ctrl+C, SIGTERM and SIGHUP all end :func:`run` through it).
"""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from damo.api import Grounder, check_query
from damo.app.uploads import container_type
from damo.media import MediaError
from damo.textio import loads

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/static/app.js": ("app.js", "text/javascript"),
         "/static/style.css": ("style.css", "text/css")}
_RANGE = re.compile(r"^bytes=([0-9]{0,15})-([0-9]{0,15})$")
_LENGTH = re.compile(r"^[0-9]{1,15}$")
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MEDIA_CSP = "default-src 'none'; sandbox"
RETRY_AFTER_S = 5       # what a 503 for a full job queue asks the client to wait


@dataclass
class Video:
    id: str
    name: str
    path: Path
    duration: float
    queries: tuple[str, ...] = ()
    ctype: str = "video/webm"
    cache_entry: Path | None = None     # its decoded-clip cache file (uploads only), deleted with it


class JobStopped(Exception):
    """Raised inside a grounding job that passed its deadline (or whose server is closing)."""


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def make_examples(folder: Path, count: int = 3, seed: int = 0) -> list[Video]:
    """Generated example videos (test split, so never seen in training) with their own queries."""
    from damo.data import synthetic

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        spec = synthetic.generate_spec("standard", seed, "test", i)
        path = folder / f"example_{seed}_{i}.webm"
        if not path.is_file():
            synthetic.write_video(spec, path, size=128)    # WebM (VP8 + Opus): every browser plays it
        queries = tuple(dict.fromkeys(s.query for s in synthetic.video_samples(spec)))
        out.append(Video(id=f"example-{i}", name=f"example {i + 1} ({spec.duration} s)", path=path,
                         duration=float(spec.duration), queries=queries, ctype=container_type(path)[0]))
    return out


class DemoServer(ThreadingHTTPServer):
    """The HTTP server plus its state: the grounder, the videos it may serve, the limits."""

    daemon_threads = True

    def __init__(self, grounder: Grounder, examples: list[Video], host: str = "127.0.0.1", port: int = 7860,
                 max_upload_mb: float = 200.0, max_seconds: float = 300.0, socket_timeout: float = 30.0,
                 max_uploads: int = 20, max_jobs: int = 8, upload_memory_mb: int = 1024, upload_seconds: float = 120.0):
        if min(max_upload_mb, max_seconds, upload_memory_mb, upload_seconds) <= 0 or min(max_uploads, max_jobs) < 1:
            raise ValueError("max_upload_mb, max_seconds, upload_memory_mb and upload_seconds must be positive, "
                             "max_uploads and max_jobs at least 1")
        self.grounder = grounder
        self.videos: OrderedDict[str, Video] = OrderedDict((v.id, v) for v in examples)
        self.examples = [v.id for v in examples]
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.max_seconds, self.socket_timeout, self.max_uploads = max_seconds, socket_timeout, max_uploads
        self.max_jobs, self.upload_memory_mb, self.upload_seconds = max_jobs, upload_memory_mb, upload_seconds
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ground")
        self.jobs = 0                                 # grounding jobs queued or running
        self.lock = threading.Lock()
        self.closing = False
        self.stopped_jobs = 0                         # jobs ended by their deadline or by shutdown
        self._deadlines: dict[threading.Thread, float] = {}
        self._cache_entries: set[Path] = set()        # of every upload ever decoded, deleted at shutdown
        self._hooks: list = []
        self.upload_dir = Path(tempfile.mkdtemp(prefix="damo-uploads-"))
        super().__init__((host, port), Handler)      # a failed bind calls server_close, which removes the folder
        self._hooks = [m.register_forward_pre_hook(self._check_deadline) for m in grounder.model.children()]

    # ---------------------------------------------------------------- jobs
    def _check_deadline(self, *_) -> None:
        """Forward pre-hook on each part of the model: ends the calling job once it is past its deadline."""
        deadline = self._deadlines.get(threading.current_thread())
        if deadline is not None and (self.closing or time.monotonic() > deadline):
            raise JobStopped("the answer took longer than allowed")

    def run_job(self, deadline: float, fn, *args):
        """Run ``fn(*args)`` on the calling (worker) thread under ``deadline`` (``time.monotonic()``)."""
        me = threading.current_thread()
        self._deadlines[me] = deadline
        try:
            self._check_deadline()                   # it may have waited in the queue past its deadline
            return fn(*args)
        except JobStopped:
            self.stopped_jobs += 1
            raise
        finally:
            del self._deadlines[me]

    def submit(self, fn, *args):
        """Queue a grounding job, or refuse it (503) when ``max_jobs`` are already queued or running."""
        with self.lock:
            if self.jobs >= self.max_jobs:
                raise ClientError(HTTPStatus.SERVICE_UNAVAILABLE, f"the server is busy ({self.jobs} questions "
                                  "waiting); try again in a few seconds", {"Retry-After": str(RETRY_AFTER_S)})
            self.jobs += 1
        future = self.pool.submit(self.run_job, time.monotonic() + self.max_seconds, fn, *args)
        future.add_done_callback(self._job_done)
        return future

    def _job_done(self, _) -> None:
        with self.lock:
            self.jobs -= 1

    def check_upload(self, path: Path) -> dict:
        """Probe an upload and decode it whole at the model's frame rate and size in a child process
        limited to ``upload_memory_mb`` of address space and ``upload_seconds``; ValueError says why
        it is refused."""
        c = self.grounder.clips.processor.config
        root = str(Path(__file__).resolve().parents[2])    # the child imports this same damo
        # two malloc arenas: glibc's default of 8 per core reserves address space the limit would count
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
               "MALLOC_ARENA_MAX": "2"}
        cmd = [sys.executable, "-m", "damo.app.uploads", str(path), str(c.fps),
               "native" if c.image_size is None else str(c.image_size), str(c.max_frames), str(self.upload_memory_mb)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=self.upload_seconds, env=env)
        except subprocess.TimeoutExpired:
            raise ValueError(f"decoding it took longer than {self.upload_seconds:g} s") from None
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            raise ValueError(f"it could not be decoded within {self.upload_memory_mb} MB of memory")
        result = json.loads(lines[-1])
        if "error" in result:
            raise ValueError(result["error"].split(": ", 1)[-1] if result["error"].startswith(str(path))
                             else result["error"])
        return result

    # ---------------------------------------------------------------- hosts
    def host_allowed(self, value: str) -> bool:
        """``Host`` names this server: its bound address (plus ``localhost`` on loopback, any IP literal
        on a wildcard bind), with its port. Anything else is a foreign name, e.g. a DNS-rebound one."""
        try:
            parts = urlsplit("//" + value)
            name, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            return False
        bound, bound_port = self.server_address[:2]
        if port != bound_port and not (port is None and bound_port == 80):
            return False
        addr = ipaddress.ip_address(bound)
        if name == str(bound).lower() or (name == "localhost" and (addr.is_loopback or addr.is_unspecified)):
            return True
        if addr.is_loopback:
            return _is_ip(name) and ipaddress.ip_address(name).is_loopback
        return addr.is_unspecified and _is_ip(name)

    # ---------------------------------------------------------------- uploads
    def add_upload(self, video: Video) -> None:
        with self.lock:
            self.videos[video.id] = video
            if video.cache_entry is not None:
                self._cache_entries.add(video.cache_entry)
            uploads = [k for k in self.videos if k not in self.examples]
            for old in uploads[: max(0, len(uploads) - self.max_uploads)]:
                self._remove(self.videos.pop(old))

    @staticmethod
    def _remove(video: Video) -> None:
        video.path.unlink(missing_ok=True)
        if video.cache_entry is not None:
            video.cache_entry.unlink(missing_ok=True)

    def cache_entry(self, path: Path) -> Path | None:
        """Where the grounder's clip cache keeps the decoded frames of ``path`` (the loader's own key:
        its fps, sampling phase and frame size)."""
        return self.grounder.clips.cache_file(str(path))

    def server_close(self) -> None:
        """Stop serving, end the running job, then delete every upload and its cache entries."""
        self.closing = True                            # the running job stops at its next forward pass
        super().server_close()
        self.pool.shutdown(wait=True, cancel_futures=True)   # a job's cache write must land before the sweep
        for h in self._hooks:
            h.remove()
        self._hooks = []
        with self.lock:
            for entry in self._cache_entries:
                entry.unlink(missing_ok=True)
            self._cache_entries.clear()
        shutil.rmtree(self.upload_dir, ignore_errors=True)


class ClientError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class Handler(BaseHTTPRequestHandler):
    server: DemoServer
    server_version = "damo-serve"

    def setup(self) -> None:
        self.timeout = self.server.socket_timeout   # slow or stalled clients are dropped
        super().setup()

    def log_message(self, format: str, *args) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    # ---------------------------------------------------------------- replies
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _common_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Referrer-Policy", "no-referrer")

    def _error(self, status: HTTPStatus, message: str, headers: dict | None = None) -> None:
        try:
            self._send(status, json.dumps({"error": message}, ensure_ascii=False).encode(),
                       "application/json; charset=utf-8", headers)
        except OSError:
            self.close_connection = True     # the client is gone (reset, or stalled past the timeout)

    # ----------------------------------------------------------------- checks
    def _check_host(self) -> None:
        if not self.server.host_allowed(self.headers.get("Host", "")):
            self.close_connection = True
            raise ClientError(HTTPStatus.MISDIRECTED_REQUEST,
                              "this server answers only to its own address (Host header); open it by that address")

    def _check_post(self, types: tuple[str, ...], expected: str) -> None:
        """Same origin (or no Origin at all: a non-browser client) and a declared, allowed body type."""
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{self.headers.get('Host', '')}".lower():
            raise ClientError(HTTPStatus.FORBIDDEN, "cross-origin requests are refused")
        if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            raise ClientError(HTTPStatus.FORBIDDEN, "cross-site requests are refused")
        ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if not any(ctype.startswith(t) and len(ctype) > len(t) if t.endswith("/") else ctype == t for t in types):
            raise ClientError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"send the body as {expected}")

    # ----------------------------------------------------------------- routes
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            self._check_host()
            if path in PAGES:
                name, ctype = PAGES[path]
                self._send(200, (STATIC / name).read_bytes(), ctype,
                           {"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY"})
            elif path == "/api/examples":
                self._json([{"id": v.id, "name": v.name, "duration": v.duration, "queries": list(v.queries),
                             "url": f"/media/{v.id}"} for v in (self.server.videos[k] for k in self.server.examples)])
            elif path == "/api/limits":
                self._json({"max_upload_mb": self.server.max_upload / 2**20, "max_seconds": self.server.max_seconds})
            elif path.startswith("/media/"):
                self._media(path[len("/media/"):])
            else:
                raise ClientError(HTTPStatus.NOT_FOUND, f"no page at {path}")
        except ClientError as e:
            self._error(e.status, str(e))

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            self._check_host()
            if path == "/api/upload":
                self._check_post(("application/octet-stream", "video/"), "application/octet-stream (the raw file)")
                self._upload()
            elif path == "/api/ground":
                self._check_post(("application/json",), 'JSON (Content-Type: application/json)')
                self._ground()
            else:
                raise ClientError(HTTPStatus.NOT_FOUND, f"no endpoint at {path}")
        except ClientError as e:
            self.close_connection = True   # an unread body must not be parsed as the next request
            self._error(e.status, str(e), e.headers)
        except Exception as e:             # every request gets an answer, even one that found a bug
            self.close_connection = True
            self.log_message("error on %s: %s: %s", path, type(e).__name__, e)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "the server failed on this request; see its log")

    def _length(self, limit: int) -> int:
        n = self.headers.get("Content-Length")
        if n is None or not _LENGTH.match(n):
            raise ClientError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length header")
        if int(n) > limit:
            self.close_connection = True   # the unread body must not be parsed as the next request
            raise ClientError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              f"the file is {int(n) / 2**20:.1f} MB; this server accepts at most "
                              f"{limit / 2**20:.0f} MB (start it with a larger --max-upload-mb)")
        return int(n)

    def _upload(self) -> None:
        n = self._length(self.server.max_upload)
        if n == 0:
            raise ClientError(HTTPStatus.BAD_REQUEST, "the uploaded file is empty (0 bytes)")
        # percent-encoded by the page; only ever shown as text, never used as a path
        name = Path(unquote(self.headers.get("X-Filename", "upload"))).name[:200] or "upload"
        vid = "upload-" + secrets.token_hex(8)
        path = self.server.upload_dir / vid
        try:                                 # nothing of a refused or broken upload is kept
            self._receive(path, n)
            try:
                info = self.server.check_upload(path)
            except ValueError as e:
                raise ClientError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{name}: {e}") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        path = path.rename(path.with_suffix(info["suffix"]))     # the suffix of what the decoder found
        self.server.add_upload(Video(id=vid, name=name, path=path, duration=float(info["duration"]),
                                     ctype=info["ctype"], cache_entry=self.server.cache_entry(path)))
        self._json({"id": vid, "name": name, "duration": round(info["duration"], 3), "url": f"/media/{vid}"})

    def _receive(self, path: Path, n: int) -> None:
        """Write the ``n``-byte body to ``path``; a body cut short, reset or stalled past
        ``socket_timeout`` is a ClientError (400 or 408)."""
        left = n
        with open(path, "wb") as f:
            while left:
                try:
                    chunk = self.rfile.read(min(left, 1 << 20))
                except OSError:        # reset, or stalled past the timeout (TimeoutError is an OSError)
                    raise ClientError(HTTPStatus.REQUEST_TIMEOUT, "the upload stopped before the declared "
                                      "length (connection reset or stalled)") from None
                if not chunk:
                    raise ClientError(HTTPStatus.BAD_REQUEST, "the upload stopped before the declared length")
                f.write(chunk)
                left -= len(chunk)

    def _ground(self) -> None:
        n = self._length(64 * 1024)
        try:
            req = loads(self.rfile.read(n).decode("utf-8"), "the request")
        except ValueError:     # not UTF-8, not JSON, or nested too deep
            raise ClientError(HTTPStatus.BAD_REQUEST, 'send JSON like {"video": "example-0", "query": "when ...?"}') from None
        if not isinstance(req, dict):
            raise ClientError(HTTPStatus.BAD_REQUEST, 'send JSON like {"video": "example-0", "query": "when ...?"}')
        video = self.server.videos.get(str(req.get("video")))
        if video is None:
            raise ClientError(HTTPStatus.NOT_FOUND, "unknown video; choose an example or upload a file first")
        try:
            query = check_query(req.get("query"))
        except ValueError as e:
            raise ClientError(HTTPStatus.BAD_REQUEST, str(e)) from None
        future = self.server.submit(self._work, video, query)
        try:
            result = future.result(timeout=self.server.max_seconds)
        except (FutureTimeout, JobStopped):
            future.cancel()   # not started yet: dropped; running: it stops at its next forward pass
            raise ClientError(HTTPStatus.GATEWAY_TIMEOUT, f"no answer within {self.server.max_seconds:g} s "
                                                          "(the server is busy or the video is long); try again")
        except (MediaError, ValueError) as e:
            message = str(e).replace(str(video.path), video.name)   # never show server paths
            raise ClientError(HTTPStatus.UNPROCESSABLE_ENTITY, message) from None
        self._json(result)

    def _work(self, video: Video, query: str) -> dict:
        g = self.server.grounder.explain(video.path, query)
        out = {**g.to_dict(), "video": video.id, "query": query, "timeline": None}
        if video.id in self.server.examples:
            out.pop("warning", None)    # the examples are procedural (files cached before they were tagged, too)
        try:
            from damo.app.timeline import plot_timeline
            out["timeline"] = "data:image/png;base64," + base64.b64encode(plot_timeline(g)).decode()
        except ImportError as e:
            out["note"] = str(e)
        return out

    def _media(self, vid: str) -> None:
        video = self.server.videos.get(vid)
        if video is None or not video.path.is_file():
            raise ClientError(HTTPStatus.NOT_FOUND, "unknown video")
        size = video.path.stat().st_size
        ctype = video.ctype
        media_headers = {"Content-Disposition": f'inline; filename="{video.id}{video.path.suffix}"',
                         "Content-Security-Policy": MEDIA_CSP}
        start, end, status = 0, size - 1, 200
        m = _RANGE.match(self.headers.get("Range", ""))
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:   # "bytes=-N": the last N bytes
                start = max(0, size - int(m.group(2)))
            if start > end or start >= size:
                self._send(416, b"", ctype, {"Content-Range": f"bytes */{size}", **media_headers})
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self._common_headers()
        for k, v in media_headers.items():
            self.send_header(k, v)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(video.path, "rb") as f:   # streamed: a 200 MB file never sits in memory
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(left, 1 << 18))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return   # the player moved on (seeking cancels requests)
                left -= len(chunk)


def run(grounder: Grounder, examples_dir: Path, host: str = "127.0.0.1", port: int = 7860, examples: int = 3,
        **limits) -> None:
    """Generate the examples, then serve until interrupted (Ctrl+C, SIGTERM or SIGHUP); uploads are deleted."""
    server = DemoServer(grounder, make_examples(examples_dir, examples), host, port, **limits)
    h, p = server.server_address[:2]

    def stop(signum, frame):
        raise KeyboardInterrupt   # unwinds serve_forever into the finally below

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    print(f"damo serve: http://{h}:{p}/  (Ctrl+C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
