"""1-fps frame sampling: ``damo.media.decode_clip`` against decord 0.6.0, the loader the papers' code uses.

Every shared video (and, with ``--minutes``, two generated 640x360 30 fps H.264 videos, one with a
keyframe every 8 s and one every second). Both readers return, for each window centre
(i + 0.5) / fps, the frame nearest to it at size x size; "same" counts the windows where both chose
the frame with the same timestamp (to 1 ms, after the constant offset between decord's clock, which
starts at the video stream's first pts, and ours, which starts at the container's start).

The two readers run interleaved, in alternating order, for several rounds after one warm-up call
each; the table gives medians of wall time and of process CPU time (CPU is steadier when other
processes share the machine). The machine's load average is printed before and after, since a
busy machine slows both. Our time includes decoding the audio track unless ``--no-audio``
(decord reads video only). One decoder thread each (decord's ``num_threads=1``; ours follows
``DAMO_THREADS``, default 1). Needs the bench extra: ``pip install decord==0.6.0``.

    python bench/decode.py [--rounds 7] [--fps 1] [--size 64] [--no-audio] [--minutes 0] [--videos DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from damo.media import decode_clip

REPO = Path(__file__).resolve().parents[1]


def make_long_video(path: Path, minutes: float, keyframe_s: float, rate: int = 30) -> Path:
    """A textured scene panning sideways with a moving bar, so every frame differs."""
    w, h = 640, 360
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (h // 8, (w + 4 * rate * 10) // 8, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(texture, 8, axis=0), 8, axis=1)  # (h, W', 3) blocky texture
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    gop = int(round(keyframe_s * rate))
    stream.codec_context.gop_size = gop
    stream.options = {"preset": "veryfast", "keyint": str(gop), "min-keyint": str(gop), "scenecut": "0", "crf": "28"}
    span = texture.shape[1] - w
    for i in range(int(minutes * 60 * rate)):
        x = (4 * i) % span
        img = texture[:, x:x + w].copy()  # (h, w, 3)
        img[:, (7 * i) % w] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        out.mux(stream.encode(frame))
    out.mux(stream.encode())
    out.close()
    return path


def decord_sample(path: Path, fps: float, size: int, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """decord's equivalent: all frame timestamps, nearest to each centre, one batched read."""
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=size, height=size, num_threads=1)
    stamps = vr.get_frame_timestamp(np.arange(len(vr)))[:, 0]  # (N,) start time of each frame
    centres = (np.arange(max(1, int(np.ceil(duration * fps - 1e-6)))) + 0.5) / fps
    gap = np.round(np.abs(stamps[None, :] - centres[:, None]), 6)  # (T, N), ties to 1 us as in decode_clip
    idx = gap.argmin(axis=1)  # (T,) first minimum = the earlier frame on ties
    frames = vr.get_batch(idx).asnumpy()  # (T, size, size, 3)
    return frames, stamps[idx]


def timed(fn) -> tuple[float, float, object]:
    """Wall and process-CPU seconds of one call, and its result."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def run(path: Path, fps: float, size: int, rounds: int, audio: bool) -> dict:
    ours_fn = lambda: decode_clip(path, fps=fps, size=size, audio=audio)  # noqa: E731
    clip = ours_fn()  # warm-up (and the reference for frame agreement)
    theirs_fn = lambda: decord_sample(path, fps, size, clip.duration)  # noqa: E731
    try:
        _, stamps = theirs_fn()
    except Exception as e:  # decord rejects some files; the table says so instead of stopping
        print(f"decord cannot open {path.name}: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
        theirs_fn, stamps = None, None
    ours_w, ours_c, dec_w, dec_c = [], [], [], []
    for r in range(rounds):
        order = [("ours", ours_fn), ("decord", theirs_fn)]
        for who, fn in (order if r % 2 == 0 else order[::-1]):
            if fn is None:
                continue
            w, c, _ = timed(fn)
            (ours_w if who == "ours" else dec_w).append(w)
            (ours_c if who == "ours" else dec_c).append(c)
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    same, dt = "-", float("nan")
    if stamps is not None and len(stamps) == clip.num_frames:
        # decord counts time from the video stream's first pts, we from the container start: a constant
        # offset (3 ms in the WebM) that does not change which frame is chosen
        diff = stamps - clip.times
        same = f"{int((np.abs(diff - np.median(diff)) < 1e-3).sum())}/{clip.num_frames}"
        dt = float(np.median(diff))
    return {"file": path.name, "frames": clip.num_frames, "audio": clip.has_audio,
            "ours_w": med(ours_w), "decord_w": med(dec_w), "ours_c": med(ours_c), "decord_c": med(dec_c),
            "same": same, "max_dt": dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--no-audio", action="store_true", help="decode video only, as decord does")
    ap.add_argument("--minutes", type=float, default=0.0, help="also generate two long videos of this length")
    ap.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "data" / "videos")
    args = ap.parse_args()

    load0 = os.getloadavg()
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} on {os.cpu_count()} cores; "
          f"DAMO_THREADS={os.environ.get('DAMO_THREADS', 'unset (1)')}", flush=True)
    rows = []
    for path in sorted(args.videos.iterdir()):
        rows.append(run(path, args.fps, args.size, args.rounds, not args.no_audio))
        print(f"  {path.name}: load {os.getloadavg()[0]:.2f}", flush=True)
    if args.minutes > 0:
        with tempfile.TemporaryDirectory() as tmp:
            for keyframe_s in (8.0, 1.0):
                path = make_long_video(Path(tmp) / f"long_{args.minutes:g}min_kf{keyframe_s:g}s.mp4", args.minutes,
                                       keyframe_s)
                rows.append(run(path, args.fps, args.size, max(1, args.rounds // 3), not args.no_audio))
    load1 = os.getloadavg()
    head = (f"{'file':<32} {'frames':>6} {'audio':>5} | {'ours s':>7} {'decord s':>8} {'decord/ours':>11} | "
            f"{'ours cpu':>8} {'decord cpu':>10} {'ratio':>5} | {'same':>7} {'offset s':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['file']:<32} {r['frames']:>6} {str(r['audio']):>5} | {r['ours_w']:>7.3f} {r['decord_w']:>8.3f} "
              f"{r['decord_w'] / r['ours_w']:>11.2f} | {r['ours_c']:>8.3f} {r['decord_c']:>10.3f} "
              f"{r['decord_c'] / r['ours_c']:>5.2f} | {r['same']:>7} {r['max_dt']:>8.4f}")
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
