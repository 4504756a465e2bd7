"""1-fps frame sampling: ``damo.media.decode_clip`` against decord 0.6.0, the loader the papers' code uses.

Every shared video (and, with ``--minutes``, two generated 640x360 30 fps H.264 videos, one with a
keyframe every 8 s and one every second). Both readers return, for each window centre
(i + 0.5) / fps, the frame nearest to it at size x size; "same" counts the windows where both chose
the frame with the same timestamp (to 1 ms, after the constant offset between decord's clock, which
starts at the video stream's first pts, and ours, which starts at the container's start).

Two jobs per video. "video only" is the comparable one: ``decode_clip(audio=False)`` reads the
frames alone, as decord does. "with sound" is what the data pipeline asks for: the same frames plus
the audio track decoded to 16 kHz mono, which decord does not read at all. "libavcodec alone" opens
the file and decodes exactly the packets ``decode_clip`` sends its decoder, with the same NONREF
skips and unread streams discarded, on one thread, and does nothing else (no picking, scaling,
checks or sound): it is ours with all of its own work taken away, so "decord/alone" is as far as
trimming ours could take a one-thread decode. The four calls run interleaved, in rotating order,
for ``--rounds`` rounds and then on until each has taken ``--min-seconds`` in all (a 2-ms file gets
hundreds), after one warm-up call each; the table gives medians of wall time and of process CPU
time (CPU is steadier when other processes share the machine), and the machine's load average
after each video. Ratios pair calls of the same round (decord's time over ours, then the median
over rounds): the machine's speed drifts (20 % and more from one run to the next), and a pair run
back to back shares it.
decord runs with ``num_threads=1``; ours takes ``--threads`` decoder threads, by default the cores
idle when each decode starts (``DAMO_THREADS`` unset), and the "thr" column shows the range it
took. decord decodes on a thread of its own beside the caller's, so even at ``num_threads=1`` it
spends more CPU than wall time; ``--cpu N`` runs everything on core N, as when data-loader workers
keep every core busy. Needs the bench extra: ``pip install decord==0.6.0``.

    python bench/decode.py [--rounds 7] [--min-seconds 3] [--fps 1] [--size 64] [--threads N] [--cpu N] [--minutes 0] [--videos DIR]
    python bench/decode.py --threads-sweep    # one against two decoder threads: the evidence for decoder_threads
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import av
import numpy as np

import damo.media.decode as decode_mod
from damo.media import decode_clip

REPO = Path(__file__).resolve().parents[1]


def make_video(path: Path, seconds: float, keyframe_s: float, width: int = 640, height: int = 360, crf: int = 28,
               noise: int = 0, rate: int = 30) -> Path:
    """A textured scene panning sideways with a moving bar, so every frame differs; ``noise`` adds
    fresh grain of that amplitude to every frame, which raises the bitrate as a camera's grain does."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height // 8, (width + 4 * rate * 10) // 8, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(texture, 8, axis=0), 8, axis=1)  # (h, W', 3) blocky texture
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    gop = int(round(keyframe_s * rate))
    stream.codec_context.gop_size = gop
    stream.options = {"preset": "veryfast", "keyint": str(gop), "min-keyint": str(gop), "scenecut": "0",
                      "crf": str(crf)}
    span = texture.shape[1] - width
    for i in range(int(seconds * rate)):
        x = (4 * i) % span
        img = texture[:, x:x + width].copy()  # (h, w, 3)
        img[:, (7 * i) % width] = 255
        if noise:
            img = np.clip(img + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
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


def packet_plan(path: Path, fps: float, size: int) -> list[tuple[int | None, bool]]:
    """The video packets ``decode_clip`` sends its decoder, in order, each with its NONREF flag."""
    sent: list[tuple[int | None, bool]] = []
    send = decode_mod._Video._send

    def recording(self, packet, skip):
        if packet is not None and not (skip and self._left_out(packet)):
            sent.append((packet.pts, skip))
        return send(self, packet, skip)

    with patch.object(decode_mod._Video, "_send", recording):
        decode_clip(path, fps=fps, size=size, audio=False)
    return sent


def libavcodec_alone(path: Path, plan: list[tuple[int | None, bool]]):
    """Open, demux and decode exactly the planned packets on one thread, nothing else: no picking,
    scaling, checks or audio (see the module doc)."""
    wanted = dict(plan)

    def call():
        container = decode_mod._open(path)
        stream = container.streams.video[0]
        stream.thread_count = 1
        for other in container.streams:
            if other is not stream:
                other.discard = av.stream.Discard.all
        cc, mode = stream.codec_context, "DEFAULT"
        for packet in container.demux(stream):
            if packet.size and packet.pts in wanted:
                skip = "NONREF" if wanted[packet.pts] else "DEFAULT"
                if skip != mode:
                    cc.skip_frame = mode = skip
                cc.decode(packet)
        cc.skip_frame = "DEFAULT"
        cc.decode(None)
        container.close()
    return call


def timed(fn) -> tuple[float, float, object]:
    """Wall and process-CPU seconds of one call, and its result."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def run(path: Path, fps: float, size: int, rounds: int, min_seconds: float = 0.0) -> dict:
    threads_used: list[int] = []
    rule = decode_mod.decoder_threads

    def recorded(*args) -> int:
        threads_used.append(rule(*args))
        return threads_used[-1]

    def ours(audio: bool):
        def call():
            with patch.object(decode_mod, "decoder_threads", recorded):  # the threads the decoder chose
                return decode_clip(path, fps=fps, size=size, audio=audio)
        return call

    clip = ours(False)()  # warm-up (and the reference for frame agreement)
    has_audio = ours(True)().has_audio
    theirs = lambda: decord_sample(path, fps, size, clip.duration)  # noqa: E731
    try:
        _, stamps = theirs()
    except Exception as e:  # decord rejects some files; the table says so instead of stopping
        print(f"decord cannot open {path.name}: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
        theirs, stamps = None, None
    jobs = {"sound": ours(True), "video": ours(False), "decord": theirs,
            "floor": libavcodec_alone(path, packet_plan(path, fps, size))}
    jobs = {k: fn for k, fn in jobs.items() if fn is not None}
    wall: dict[str, list[float]] = {k: [] for k in jobs}
    cpu: dict[str, list[float]] = {k: [] for k in jobs}
    names = list(jobs)
    r = 0
    while r < rounds or min(sum(ws) for ws in wall.values()) < min_seconds:
        for who in names[r % len(names):] + names[:r % len(names)]:
            w, c, _ = timed(jobs[who])
            wall[who].append(w)
            cpu[who].append(c)
        r += 1
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    same, dt = "-", float("nan")
    if stamps is not None and len(stamps) == clip.num_frames:
        # decord counts time from the video stream's first pts, we from the container start: a constant
        # offset (3 ms in the WebM) that does not change which frame is chosen
        diff = stamps - clip.times
        same = f"{int((np.abs(diff - np.median(diff)) < 1e-3).sum())}/{clip.num_frames}"
        dt = float(np.median(diff))
    row = {"file": path.name, "frames": clip.num_frames, "audio": has_audio, "same": same, "offset": dt,
           "threads": "-".join(str(n) for n in sorted({min(threads_used), max(threads_used)})),
           "load": os.getloadavg()[0]}
    for k in ("sound", "video", "decord", "floor"):
        row[k + "_w"], row[k + "_c"] = med(wall.get(k, [])), med(cpu.get(k, []))
        # decord's time over this call's in the same round, then the median over rounds: a pair
        # runs back to back, so the machine's slow and fast spells cancel out of each ratio
        for clock, times in (("w", wall), ("c", cpu)):
            pairs = [d / o for d, o in zip(times.get("decord", []), times[k])] if k in times else []
            row[f"{k}_r{clock}"] = med(pairs)
    return row


def thread_sweep(videos: list[Path], fps: float, size: int, min_seconds: float) -> None:
    """``decode_clip`` at one and at two decoder threads on each video, alternating, and what
    :func:`~damo.media.decode.decoder_threads` chooses for it (its frame size and the first GOP's
    mean packet size): the evidence for that rule. Run it on an idle machine."""
    rule = decode_mod.decoder_threads
    os.environ["DAMO_THREADS"] = "2"   # the rule's choice with two idle cores
    seen: list[tuple[int, int, float]] = []
    forced = [1]

    def forcing(*args) -> int:
        seen.append(args)
        return forced[0]

    print(f"{'file':<28} {'size':>9} {'bytes/frame':>11} | {'1 thread':>9} {'2 threads':>9} {'1/2':>5} | "
          f"{'rule':>4} {'faster':>6}")
    with patch.object(decode_mod, "decoder_threads", forcing):
        for path in videos:
            seen.clear()
            decode_clip(path, fps=fps, size=size, audio=False)
            w, h, frame_bytes = seen[0]
            times: dict[int, list[float]] = {1: [], 2: []}
            r = 0
            while r < 3 or min(map(sum, times.values())) < min_seconds:
                for n in ((1, 2) if r % 2 else (2, 1)):
                    forced[0] = n
                    times[n].append(timed(lambda: decode_clip(path, fps=fps, size=size, audio=False))[0])
                r += 1
            one, two = (1e3 * statistics.median(times[n]) for n in (1, 2))
            print(f"{path.name:<28} {f'{w}x{h}':>9} {frame_bytes:>11.0f} | {one:>9.1f} {two:>9.1f} "
                  f"{one / two:>5.2f} | {rule(w, h, frame_bytes):>4} {1 if one < two else 2:>6}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-seconds", type=float, default=3.0,
                    help="more rounds until every call has run this long in all (short files get many rounds)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--threads", type=int, help="our decoder threads (sets DAMO_THREADS; default: the idle cores)")
    ap.add_argument("--cpu", type=int, help="run everything on this one core (both readers and all their threads)")
    ap.add_argument("--minutes", type=float, default=0.0, help="also generate two long videos of this length")
    ap.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "data" / "videos")
    ap.add_argument("--threads-sweep", action="store_true",
                    help="instead: one against two decoder threads on the shared videos and generated H.264 "
                         "files of four sizes and three bitrates, and which the decoder's rule picks")
    args = ap.parse_args()
    if args.threads_sweep:
        with tempfile.TemporaryDirectory() as tmp:
            made = [make_video(Path(tmp) / f"h264_{w}x{h}_crf{crf}.mp4", 5.0, 5.0, w, h, crf, noise=6)
                    for w, h in ((176, 144), (320, 240), (400, 300), (640, 360)) for crf in (12, 20, 28)]
            thread_sweep(sorted(args.videos.iterdir()) + made, args.fps, args.size, args.min_seconds)
        return
    if args.threads is not None:
        os.environ["DAMO_THREADS"] = str(args.threads)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    load0 = os.getloadavg()
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} on {os.cpu_count()} cores; "
          f"our decoder threads: {os.environ.get('DAMO_THREADS', 'the idle cores')}; decord: 1", flush=True)
    paths = sorted(args.videos.iterdir())
    rows = [run(path, args.fps, args.size, args.rounds, args.min_seconds) for path in paths]
    if args.minutes > 0:
        with tempfile.TemporaryDirectory() as tmp:
            for keyframe_s in (8.0, 1.0):
                path = make_video(Path(tmp) / f"long_{args.minutes:g}min_kf{keyframe_s:g}s.mp4", 60 * args.minutes,
                                  keyframe_s)
                rows.append(run(path, args.fps, args.size, max(1, args.rounds // 3)))
    load1 = os.getloadavg()
    print("milliseconds, medians of wall (process CPU); decord/ours: median over rounds of decord's time over ours "
          "in the same round, wall (CPU)")
    head = (f"{'file':<28} {'frames':>6} {'sound':>5} {'thr':>3} | {'ours, with sound':>17} {'ours, video only':>17} "
            f"{'decord (video)':>15} {'libavcodec alone':>17} | {'decord/ours video':>17} {'decord/ours sound':>17} "
            f"{'decord/alone':>13} | {'same':>5} "
            f"{'offset s':>8} {'load':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        t = lambda k: f"{1e3 * r[k + '_w']:.1f} ({1e3 * r[k + '_c']:.1f})"  # noqa: E731
        ratio = lambda k: f"{r[k + '_rw']:.2f} ({r[k + '_rc']:.2f})"  # noqa: E731
        print(f"{r['file']:<28} {r['frames']:>6} {str(r['audio']):>5} {r['threads']:>3} | {t('sound'):>17} "
              f"{t('video'):>17} {t('decord'):>15} {t('floor'):>17} | {ratio('video'):>17} {ratio('sound'):>17} "
              f"{ratio('floor'):>13} | {r['same']:>5} "
              f"{r['offset']:>8.4f} {r['load']:>5.2f}")
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
