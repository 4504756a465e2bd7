"""Long videos: decode and ground time and peak memory at 10, 30 and 60 minutes.

Writes one 1-fps 64x64 H.264 video with a 16 kHz AAC track per length (PyAV, into a temporary
folder; ``--no-audio`` leaves the track out), then for each
length runs, in a fresh child process so peaks do not mix:

* ``decode``: ``decode_clip`` at 1 fps, int16 audio as the cache keeps it (no cache);
* ``ground``: ``Grounder.explain`` with a tiny untrained model (the default config's widths, 48
  generated tokens), which decodes again and runs the model over all T frames.

Peak memory is the child's peak resident set size (``VmHWM``, reset once the imports and the model
are loaded) minus its resident size at that point, so it counts what the work itself holds. Time should grow linearly with the
length while memory per minute stays flat; the table prints both ratios against 10 minutes.

    nice -n 19 python bench/long_video.py [--minutes 10 30 60] [--skip-ground-above 60] [--llm-frames 64]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_long_video(path: Path, seconds: int, size: int = 64, audio: bool = True) -> Path:
    """1 fps H.264 (keyframe every 10 s) with a moving bar, so frames differ, and (``audio``) a
    16 kHz mono AAC track: a 440 Hz beep in the first 0.2 s of every 10 s, quiet noise between."""
    import av

    sr = 16_000
    rng = np.random.default_rng(0)
    beep = (0.3 * np.sin(2 * np.pi * 440 * np.arange(sr // 5) / sr)).astype(np.float32)
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=1)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 1)
        s.options = {"g": "10", "preset": "veryfast", "threads": "1"}
        a = None
        if audio:
            a = out.add_stream("aac", rate=sr)
            a.layout = "mono"
        img = np.zeros((size, size, 3), np.uint8)
        pending = np.zeros(0, np.float32)
        sent = 0
        for t in range(seconds):
            img[:] = 16
            img[:, t % size] = (255, 200, 40)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = t, Fraction(1, 1)
            for p in s.encode(f):
                out.mux(p)
            if a is not None:
                second = (0.003 * rng.standard_normal(sr)).astype(np.float32)
                if t % 10 == 0:
                    second[:beep.size] += beep
                pending = np.concatenate([pending, second])
                while pending.size >= 1024:
                    af = av.AudioFrame.from_ndarray(pending[None, :1024], format="fltp", layout="mono")
                    af.sample_rate, af.pts = sr, sent
                    sent, pending = sent + 1024, pending[1024:]
                    for p in a.encode(af):
                        out.mux(p)
        for p in s.encode():
            out.mux(p)
        if a is not None:
            for p in a.encode():
                out.mux(p)
    return path


def _status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in kB (Linux)."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def _reset_peak() -> int:
    """Reset the peak-RSS mark to the current resident size and return that size in kB.

    ``ru_maxrss`` cannot serve: a child's value starts at its parent's resident size at fork,
    and it never comes down after a transient peak while loading.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def child(task: str, video: str, model: str) -> None:
    """Run one measurement and print it as JSON (executed in a fresh process)."""
    import torch

    torch.set_num_threads(1)
    import damo
    from damo.media import decode_clip

    grounder = damo.load(model, cache_dir=tempfile.mkdtemp()) if task == "ground" else None
    base = _reset_peak()
    t0 = time.perf_counter()
    if task == "decode":
        clip = decode_clip(video, fps=1.0, size=64, audio_dtype="int16")  # as the cache keeps it
        frames = clip.num_frames
        phases = {}
    else:   # the real grounding path (Grounder.explain), its phases timed by wrapping its steps
        phases = {}

        def timed(name, fn):
            def run(*args):
                t = time.perf_counter()
                out = fn(*args)
                phases[name] = time.perf_counter() - t
                return out
            return run

        m = grounder.model
        grounder.clips.raw = timed("decode_s", grounder.clips.raw)
        proc = grounder.pipeline.processor
        proc.video_inputs = timed("features_s", proc.video_inputs)
        calls = []
        hook = m.llm.register_forward_hook(lambda *_: calls.append(time.perf_counter()))
        g = grounder.explain(video, "when does the bar reach the right edge?")
        hook.remove()
        T = len(g.times)
        phases["llm_video_tokens"] = m.cfg.bridge_tokens + -(-T // proc.group(T))
        phases["model_s"] = time.perf_counter() - t0 - phases["decode_s"] - phases["features_s"]
        phases["llm_prefill_s"] = calls[0] - (t0 + phases["decode_s"] + phases["features_s"]) if calls else 0.0
        phases["generate_s"] = calls[-1] - calls[0] if calls else 0.0
        frames = T
    wall = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    print(json.dumps({"wall_s": wall, "peak_mb": peak / 1024, "work_mb": (peak - base) / 1024, "frames": frames,
                      **phases}))


def make_model(path: Path, llm_frames: int = 0) -> Path:
    """The default tiny architecture, untrained: the cost of a real run without the training."""
    import torch

    from damo.model.configuration_damo import DamoConfig

    from damo.model.modeling_damo import DamoModel
    from damo.model.tokenizer import train_tokenizer

    torch.manual_seed(0)
    texts = ["when does the bar reach the right edge?", "It happens in", "a low tone", "red square"] * 50
    cfg = DamoConfig(llm_frames=llm_frames)
    DamoModel(cfg, train_tokenizer(texts, cfg.llm.vocab_size)).save(path)
    return path


def measure(task: str, video: Path, model: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", task, str(video), str(model)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=int, nargs="+", default=[10, 30, 60])
    ap.add_argument("--skip-ground-above", type=int, default=10**9, help="only decode longer videos")
    ap.add_argument("--llm-frames", type=int, default=0, help="the model's LLM frame budget (0: one token per frame)")
    ap.add_argument("--no-audio", action="store_true", help="write the videos without a sound track")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_model(tmp / "model", a.llm_frames)
        rows = []
        for m in a.minutes:
            t0 = time.perf_counter()
            video = write_long_video(tmp / f"long_{m}min.mp4", m * 60, audio=not a.no_audio)
            print(f"wrote {m} min ({video.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)
            d = measure("decode", video, model)
            g = measure("ground", video, model) if m <= a.skip_ground_above else None
            rows.append((m, d, g))
            print(f"  {m} min: decode {d['wall_s']:.1f} s" + (f", ground {g['wall_s']:.1f} s" if g else ""),
                  file=sys.stderr, flush=True)
    base_m, base_d, base_g = rows[0]
    print(f"\n{'min':>4} {'frames':>6} | {'decode s':>8} {'x':>5} {'MB':>6} {'MB/min':>6} | {'ground s':>8} {'x':>5} "
          f"{'MB':>6} {'MB/min':>6} | {'features':>8} {'prefill':>8} {'generate':>8} {'LLM video tokens':>16}")
    for m, d, g in rows:
        line = (f"{m:>4} {d['frames']:>6} | {d['wall_s']:>8.1f} {d['wall_s'] / base_d['wall_s']:>5.2f} "
                f"{d['work_mb']:>6.0f} {d['work_mb'] / m:>6.1f} |")
        if g:
            line += (f" {g['wall_s']:>8.1f} {g['wall_s'] / base_g['wall_s']:>5.2f} {g['work_mb']:>6.0f} "
                     f"{g['work_mb'] / m:>6.1f} | {g['features_s']:>8.1f} {g['llm_prefill_s']:>8.1f} "
                     f"{g['generate_s']:>8.1f} {g['llm_video_tokens']:>16}")
        print(line)
    print(f"\nlinear time means the x column tracks minutes / {base_m}; 'MB' is peak RSS above the process's "
          "resident size after imports.")


if __name__ == "__main__":
    main()
