"""``damo serve``: a small web demo on Python's own HTTP server (no web framework to install).

The page (``static/``) lists generated example videos, takes uploads, sends the question to a
JSON endpoint and shows the answer, the timeline picture and an HTML5 player that jumps to a span
when it is clicked. Routes::

    GET  /                      the page          GET  /api/examples   example videos + queries
    POST /api/upload            raw file body     POST /api/ground     {"video": id, "query": q}
    GET  /media/<id>            a video, with HTTP Range support so the player can seek
    GET  /api/limits            upload size and answer time limits, checked by the page first

Safety by default: it binds to 127.0.0.1; uploads must declare their size and are refused above
``max_upload_mb`` before any byte is read; slow clients time out (``socket_timeout``); one
grounding runs at a time and a request waits at most ``max_seconds`` for its answer; files are
addressed only by server-made ids, never by client paths; only the newest ``max_uploads`` uploads
are kept, in a temporary folder removed at shutdown.
"""
from __future__ import annotations

import base64
import json
import mimetypes
import re
import secrets
import shutil
import sys
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass
from fractions import Fraction
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from damo.api import Grounder, check_query
from damo.media import MediaError, probe

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/static/app.js": ("app.js", "text/javascript"),
         "/static/style.css": ("style.css", "text/css")}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Video:
    id: str
    name: str
    path: Path
    duration: float
    queries: tuple[str, ...] = ()


def write_example(spec, path: Path, size: int = 128) -> Path:
    """Encode a procedural video as WebM (VP8 + Opus), which every browser plays, at 8 fps."""
    import av

    from damo.data import synthetic
    from damo.media import SAMPLE_RATE

    fps = synthetic.FILE_FPS
    n = int(spec.duration * fps)
    frames = synthetic.render_frames(spec, np.arange(n) / fps, size)            # (n, size, size, 3)
    audio = synthetic.render_audio(spec).astype(np.float32)                     # (S,) at 16 kHz
    tmp = path.with_name(path.name + ".tmp.webm")
    with av.open(str(tmp), "w", format="webm") as out:
        vs = out.add_stream("libvpx", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": "10", "b:v": "1M", "threads": "1"}
        aus = out.add_stream("libopus", rate=48000, layout="mono")
        for j in range(n):
            f = av.VideoFrame.from_ndarray(frames[j], format="rgb24")
            f.pts, f.time_base = j, Fraction(1, fps)
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        src = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
        src.sample_rate, src.pts, src.time_base = SAMPLE_RATE, 0, Fraction(1, SAMPLE_RATE)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for frame in resampler.resample(src) + resampler.resample(None):
            for p in aus.encode(frame):
                out.mux(p)
        for p in aus.encode():
            out.mux(p)
    tmp.replace(path)
    return path


def make_examples(folder: Path, count: int = 3, seed: int = 0) -> list[Video]:
    """Generated example videos (test split, so never seen in training) with their own queries."""
    from damo.data import synthetic

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        spec = synthetic.generate_spec("standard", seed, "test", i)
        path = folder / f"example_{seed}_{i}.webm"
        if not path.is_file():
            write_example(spec, path)
        queries = tuple(dict.fromkeys(s.query for s in synthetic.video_samples(spec)))
        out.append(Video(id=f"example-{i}", name=f"example {i + 1} ({spec.duration} s)", path=path,
                         duration=float(spec.duration), queries=queries))
    return out


class DemoServer(ThreadingHTTPServer):
    """The HTTP server plus its state: the grounder, the videos it may serve, the limits."""

    daemon_threads = True

    def __init__(self, grounder: Grounder, examples: list[Video], host: str = "127.0.0.1", port: int = 7860,
                 max_upload_mb: float = 200.0, max_seconds: float = 300.0, socket_timeout: float = 30.0,
                 max_uploads: int = 20):
        if max_upload_mb <= 0 or max_seconds <= 0 or max_uploads < 1:
            raise ValueError("max_upload_mb and max_seconds must be positive and max_uploads at least 1")
        self.grounder = grounder
        self.videos: OrderedDict[str, Video] = OrderedDict((v.id, v) for v in examples)
        self.examples = [v.id for v in examples]
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.max_seconds, self.socket_timeout, self.max_uploads = max_seconds, socket_timeout, max_uploads
        self.upload_dir = Path(tempfile.mkdtemp(prefix="damo-uploads-"))
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ground")
        self.lock = threading.Lock()
        super().__init__((host, port), Handler)

    def add_upload(self, video: Video) -> None:
        with self.lock:
            self.videos[video.id] = video
            uploads = [k for k in self.videos if k not in self.examples]
            for old in uploads[: max(0, len(uploads) - self.max_uploads)]:
                self.videos.pop(old).path.unlink(missing_ok=True)

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.upload_dir, ignore_errors=True)


class ClientError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


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
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json({"error": message}, status)

    # ----------------------------------------------------------------- routes
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path in PAGES:
                name, ctype = PAGES[path]
                self._send(200, (STATIC / name).read_bytes(), ctype, {"Cache-Control": "no-cache"})
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
            if path == "/api/upload":
                self._upload()
            elif path == "/api/ground":
                self._ground()
            else:
                raise ClientError(HTTPStatus.NOT_FOUND, f"no endpoint at {path}")
        except ClientError as e:
            self._error(e.status, str(e))

    def _length(self, limit: int) -> int:
        n = self.headers.get("Content-Length")
        if n is None or not n.isdigit():
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
        name = Path(unquote(self.headers.get("X-Filename", "upload"))).name or "upload"   # percent-encoded by the page
        suffix = "".join(c for c in Path(name).suffix.lower() if c.isalnum() or c == ".")[:8]
        vid = "upload-" + secrets.token_hex(8)
        path = self.server.upload_dir / f"{vid}{suffix}"
        left = n
        with open(path, "wb") as f:
            while left:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    path.unlink(missing_ok=True)
                    raise ClientError(HTTPStatus.BAD_REQUEST, "the upload stopped before the declared length")
                f.write(chunk)
                left -= len(chunk)
        try:
            info = probe(path)
        except MediaError as e:
            path.unlink(missing_ok=True)
            raise ClientError(HTTPStatus.UNPROCESSABLE_ENTITY,
                              f"{name}: {str(e).split(': ', 1)[-1]}") from None
        self.server.add_upload(Video(id=vid, name=name, path=path, duration=float(info["duration"])))
        self._json({"id": vid, "name": name, "duration": round(info["duration"], 3), "url": f"/media/{vid}"})

    def _ground(self) -> None:
        n = self._length(64 * 1024)
        try:
            req = json.loads(self.rfile.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ClientError(HTTPStatus.BAD_REQUEST, 'send JSON like {"video": "example-0", "query": "when ...?"}')
        if not isinstance(req, dict):
            raise ClientError(HTTPStatus.BAD_REQUEST, 'send JSON like {"video": "example-0", "query": "when ...?"}')
        video = self.server.videos.get(str(req.get("video")))
        if video is None:
            raise ClientError(HTTPStatus.NOT_FOUND, "unknown video; choose an example or upload a file first")
        try:
            query = check_query(req.get("query"))
        except ValueError as e:
            raise ClientError(HTTPStatus.BAD_REQUEST, str(e)) from None
        future = self.server.pool.submit(self._work, video, query)
        try:
            result = future.result(timeout=self.server.max_seconds)
        except FutureTimeout:
            future.cancel()
            raise ClientError(HTTPStatus.GATEWAY_TIMEOUT, f"no answer within {self.server.max_seconds:g} s "
                                                          "(the server is busy or the video is long); try again")
        except (MediaError, ValueError) as e:
            message = str(e).replace(str(video.path), video.name)   # never show server paths
            raise ClientError(HTTPStatus.UNPROCESSABLE_ENTITY, message) from None
        self._json(result)

    def _work(self, video: Video, query: str) -> dict:
        g = self.server.grounder.explain(video.path, query)
        out = {**g.to_dict(), "video": video.id, "query": query, "timeline": None}
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
        ctype = mimetypes.guess_type(video.path.name)[0] or "application/octet-stream"
        if video.path.suffix == ".mkv":
            ctype = "video/x-matroska"
        start, end, status = 0, size - 1, 200
        m = _RANGE.match(self.headers.get("Range", ""))
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:   # "bytes=-N": the last N bytes
                start = max(0, size - int(m.group(2)))
            if start > end or start >= size:
                self._send(416, b"", ctype, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
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
    """Generate the examples, then serve until interrupted."""
    server = DemoServer(grounder, make_examples(examples_dir, examples), host, port, **limits)
    h, p = server.server_address[:2]
    print(f"damo serve: http://{h}:{p}/  (Ctrl+C to stop)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
