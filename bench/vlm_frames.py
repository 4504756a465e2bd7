"""Qwen VLM video inputs: DaMO's frames-to-patches path against transformers' PIL image processor.

For each shared video, decodes the frames once (native size, at the preset's fps), then times, round
after round, (a) :func:`damo.model.vlm_video.video_pixels` and (b) ``Qwen2VLImageProcessorPil`` on the
same frames with the same pixel bounds plus the regrouping of its per-image rows into video rows, and
checks both give the same tensor. Prints the median time per clip of each and their ratio.

    python bench/vlm_frames.py [--preset timelens] [--rounds 5] [--videos DIR]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from damo.media.decode import decode_clip
from damo.model.presets import get_preset
from damo.model.vlm import FAMILIES
from damo.model.vlm_video import VideoSpec, frame_count, pick_frames, pixel_bounds, video_pixels

PATCH = {"qwen2_5_vl": 14, "qwen3_vl": 16, "qwen2_5_omni_thinker": 14}


def peer(frames, spec: VideoSpec) -> torch.Tensor:
    """transformers' PIL image processor per frame, its rows regrouped into two-frame temporal patches."""
    lo, hi = pixel_bounds(len(frames), spec)
    proc = Qwen2VLImageProcessorPil(min_pixels=lo, max_pixels=hi, patch_size=spec.patch, merge_size=spec.merge,
                                    temporal_patch_size=spec.temporal_patch, image_mean=list(spec.mean),
                                    image_std=list(spec.std))
    out = proc(images=list(frames), return_tensors="pt", input_data_format="channels_last")
    n = int(out["image_grid_thw"][0].prod())
    rows = out["pixel_values"].reshape(len(frames), n, 3, spec.temporal_patch, spec.patch, spec.patch)
    video = torch.stack([rows[k::spec.temporal_patch, :, :, k] for k in range(spec.temporal_patch)], 3)
    return video.reshape(len(frames) // spec.temporal_patch * n, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="timelens")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--videos", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    preset = get_preset(args.preset)
    family = FAMILIES[preset.family]
    spec = VideoSpec(patch=PATCH[preset.family], mean=family.mean, std=family.std, **preset.video)
    print(f"preset {preset.name}: {spec.fps:g} fps, {spec.min_pixels}-{spec.max_pixels} pixels a frame, "
          f"{spec.total_pixels} a clip")
    print(f"{'video':<28}{'frames':>7}{'grid':>14}{'ours ms':>10}{'PIL proc ms':>13}{'ratio':>7}")
    for path in sorted(Path(args.videos).iterdir()):
        try:
            clip = decode_clip(path, fps=spec.fps, size=None, audio=False)
        except Exception as e:      # a shared file that does not decode is reported, not benchmarked
            print(f"{path.name:<28} skipped: {e}")
            continue
        frames = clip.frames[pick_frames(clip.num_frames, frame_count(clip.duration, spec))]
        ours_t, peer_t = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ours = video_pixels(clip.frames, clip.times, clip.duration, spec)
            t1 = time.perf_counter()
            ref = peer(frames, spec)
            t2 = time.perf_counter()
            ours_t.append(t1 - t0)
            peer_t.append(t2 - t1)
        if not torch.equal(ours.pixel_values, ref):
            raise SystemExit(f"{path.name}: the two paths disagree")
        a, b = statistics.median(ours_t) * 1e3, statistics.median(peer_t) * 1e3
        grid = "x".join(map(str, ours.grid_thw))
        print(f"{path.name:<28}{len(frames):>7}{grid:>14}{a:>10.1f}{b:>13.1f}{b / a:>7.2f}")


if __name__ == "__main__":
    main()
