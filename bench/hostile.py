"""Hostile files against the whole command and the web demo: wall time and peak memory.

For each case a fresh ``python -m damo.cli ground FILE QUESTION --model M --quiet`` runs under
``/usr/bin/time -v`` (peak resident memory of the whole process, model and imports included), with
its own empty media cache; ``decode s`` is ``load_clip`` alone in a process without the model (the
part a hostile file controls: the rest is starting Python, torch and the model). The model is a tiny untrained one with the default config's widths
(its answers mean nothing; the decoding path is what is measured). Cases (each built in a
temporary folder by ``tests/hostile_media.py``):

* ``mp4-tables``: a 1.5 KB MP4 whose sample tables claim 50 million samples;
* ``h264-8192``: a real 8192 x 8192 H.264 stream (two grey frames; 15360 x 15360 would need
  gigabytes just to encode here), over the 4096 x 2304 pixel limit;
* ``mkv-tiny-packets``: ``--packets`` (3,000,000) one-byte MPEG-4 packets, none a keyframe;
* ``flac-hours``: one MJPEG frame then ``--audio-hours`` (10) of 192 kHz 7.1 FLAC, no duration;
* ``backwards``: frames at 0, 20, 5, 25, 1, 29 s;
* ``reference``: a shared real video (chaplin.mp4), grounded.

Then the web demo: a server in a child process; while each hostile file is uploaded (and refused
or accepted by the upload check), a normal question about the example video is asked, and the
time to its answer is printed.

    nice -n 19 python bench/hostile.py [--packets 3000000] [--audio-hours 10] [--skip-web]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import hostile_media as H  # noqa: E402  (the test builders)


def make_model(path: Path) -> Path:
    from damo.model.configuration_damo import DamoConfig
    from damo.model.modeling_damo import DamoModel
    from damo.model.tokenizer import train_tokenizer

    cfg = DamoConfig()
    DamoModel(cfg, train_tokenizer(["when does the door open?"] * 20, cfg.llm.vocab_size)).save(path)
    return path


def build(folder: Path, packets: int, audio_hours: float) -> dict[str, Path]:
    shared = REPO.parent / "shared" / "data" / "videos" / "chaplin.mp4"
    return {"mp4-tables": H.mp4_sample_table_bomb(folder / "tables.mp4"),
            "h264-8192": H.h264_frames(folder / "huge.mkv", 8192),
            "mkv-tiny-packets": H.mkv_many_packets(folder / "tiny.mkv", packets),
            "flac-hours": H.one_frame_then_audio(folder / "hours.mkv", audio_hours * 3600),
            "backwards": H.mjpeg_at(folder / "backwards.mkv", [0, 20, 5, 25, 1, 29]),
            "reference": shared}


def ground(video: Path, model: Path, cache: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "damo.cli", "ground", str(video), "when does it start?",
           "--model", str(model), "--quiet"]
    env = {"PYTHONPATH": str(REPO), "DAMO_CACHE": str(cache), "DAMO_THREADS": "1", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.monotonic() - t0
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) / 1024
    said = [line for line in out.stderr.splitlines() if line.startswith(("error:", "warning:"))]
    return {"exit": out.returncode, "wall_s": round(wall, 1), "peak_mb": round(peak), "said": said[:1],
            "cached": len(list(cache.glob("*.npz")))}


def decode_only(video: Path, cache: Path) -> float:
    """Seconds ``load_clip`` takes in a process that imports only the media package (no model)."""
    code = ("import sys, time\nfrom damo.media import MediaError, load_clip\nt = time.monotonic()\n"
            "try:\n    load_clip(sys.argv[1], 1.0, 32, sys.argv[2])\nexcept MediaError:\n    pass\n"
            "print(time.monotonic() - t)\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(video), str(cache)], capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO), "DAMO_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return float(out.stdout.strip().splitlines()[-1])


def open_peak(video: Path, max_pixels: int | None) -> float:
    """Peak resident MB of a process that only opens ``video`` with PyAV (FFmpeg may decode a frame to
    learn the stream's parameters), with or without the decoders' ``max_pixels`` option."""
    options = {"max_pixels": str(max_pixels)} if max_pixels else {}
    code = (f"import av, sys\nav.open(sys.argv[1], options={options!r}).close()\n"
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n")
    out = subprocess.run([sys.executable, "-c", code, str(video)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def web(files: dict[str, Path], model: Path, folder: Path) -> dict[str, dict]:
    script = ("import sys, damo\nfrom pathlib import Path\nfrom damo.app.serve import DemoServer, make_examples\n"
              "srv = DemoServer(damo.load(sys.argv[1], cache_dir=sys.argv[2]), make_examples(Path(sys.argv[3]), 1),"
              " port=0, max_upload_mb=400)\nprint('port', srv.server_address[1], flush=True)\nsrv.serve_forever()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(model), str(folder / "cache"), str(folder / "ex")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(REPO),
                            env={"PYTHONPATH": str(REPO), "DAMO_THREADS": "1", "OMP_NUM_THREADS": "1",
                                 "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    try:
        port = int(proc.stdout.readline().split()[1])
        base = f"http://127.0.0.1:{port}"

        def post(path: str, body: bytes, ctype: str) -> tuple[int, dict]:
            req = urllib.request.Request(base + path, data=body, headers={"Content-Type": ctype})
            try:
                with urllib.request.urlopen(req, timeout=600) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        question = json.dumps({"video": "example-0", "query": "when does the beep sound?"}).encode()
        post("/api/ground", question, "application/json")        # warm: the example's clip is cached
        rows = {}
        for name, path in files.items():
            result: dict = {}
            t = threading.Thread(target=lambda: result.update(
                upload=post("/api/upload", path.read_bytes(), "application/octet-stream")))
            t0 = time.monotonic()
            t.start()
            time.sleep(0.2)                                      # the upload is being received or checked
            t1 = time.monotonic()
            status, _ = post("/api/ground", question, "application/json")
            answer_s = time.monotonic() - t1
            t.join()
            rows[name] = {"upload": result["upload"][0], "upload_s": round(time.monotonic() - t0, 1),
                          "question": status, "answer_s": round(answer_s, 2)}
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=3_000_000)
    ap.add_argument("--audio-hours", type=float, default=10.0)
    ap.add_argument("--skip-web", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = make_model(folder / "model")
        files = build(folder, args.packets, args.audio_hours)
        print(f"{'case':18s} {'size':>10s} {'exit':>4s} {'wall s':>7s} {'peak MB':>8s} {'cached':>6s} "
              f"{'decode s':>8s}  message")
        for name, path in files.items():
            r = ground(path, model, folder / f"cache-{name}")
            d = decode_only(path, folder / f"decode-{name}")
            print(f"{name:18s} {path.stat().st_size:>10,d} {r['exit']:>4d} {r['wall_s']:>7.1f} {r['peak_mb']:>8d} "
                  f"{r['cached']:>6d} {d:>8.2f}  {(r['said'] or [''])[0][:100]}", flush=True)
        from damo.media import MediaLimits
        limit = MediaLimits().max_pixels
        print(f"\nopening h264-8192 alone: peak {open_peak(files['h264-8192'], None):.0f} MB without the decoders' "
              f"max_pixels, {open_peak(files['h264-8192'], limit):.0f} MB with max_pixels={limit:,}")
        if not args.skip_web:
            print(f"\n{'upload':18s} {'status':>6s} {'upload s':>8s} {'question':>8s} {'answer s':>8s}")
            for name, r in web(files, model, folder).items():
                print(f"{name:18s} {r['upload']:>6d} {r['upload_s']:>8.1f} {r['question']:>8d} {r['answer_s']:>8.2f}")


if __name__ == "__main__":
    main()
