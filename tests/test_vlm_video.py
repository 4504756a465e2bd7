"""Video inputs of the Qwen VLMs: our frames, sizing rule and patch rows against transformers' PIL image
processor on real videos."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from damo.media.decode import decode_clip
from damo.model.vlm_video import HALF, VideoSpec, frame_count, pick_frames, pixel_bounds, smart_resize, video_pixels

QWEN25 = VideoSpec(fps=1.0, max_frames=8, min_pixels=16 * 28 * 28, max_pixels=64 * 28 * 28)
QWEN3 = VideoSpec(patch=16, mean=HALF, std=HALF, fps=1.0, max_frames=8, min_pixels=16 * 32 * 32,
                  max_pixels=64 * 32 * 32, total_pixels=4 * 64 * 32 * 32)


def reference(frames: np.ndarray, spec: VideoSpec) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """transformers' PIL image processor on each frame (it repeats a still image over the temporal
    patch); a video's temporal patch holds two consecutive frames instead, so frame 2k's half of each
    row comes from frame 2k's output and frame 2k+1's half from frame 2k+1's."""
    lo, hi = pixel_bounds(len(frames), spec)
    proc = Qwen2VLImageProcessorPil(min_pixels=lo, max_pixels=hi, patch_size=spec.patch, merge_size=spec.merge,
                                    temporal_patch_size=spec.temporal_patch, image_mean=list(spec.mean),
                                    image_std=list(spec.std))
    out = proc(images=list(frames), return_tensors="pt")
    grids = out["image_grid_thw"]
    assert (grids == grids[0]).all()
    n = int(grids[0].prod())
    rows = out["pixel_values"].reshape(len(frames), n, 3, spec.temporal_patch, spec.patch, spec.patch)
    video = torch.stack([rows[k::spec.temporal_patch, :, :, k] for k in range(spec.temporal_patch)], 3)
    video = video.reshape(len(frames) // spec.temporal_patch * n, -1)           # (t * gh * gw, C * tp * p * p)
    return video, (len(frames) // spec.temporal_patch, int(grids[0, 1]), int(grids[0, 2]))


@pytest.mark.parametrize("name,spec", [("charades_0F7LW.mp4", QWEN25), ("bikes.mp4", QWEN3),
                                       ("big_buck_bunny_0_30.webm", QWEN25)])
def test_pixels_and_grid_equal_the_pil_image_processor(shared_data, name, spec):
    clip = decode_clip(shared_data / "videos" / name, fps=spec.fps, size=None, audio=False)
    ours = video_pixels(clip.frames, clip.times, clip.duration, spec)
    frames = clip.frames[pick_frames(clip.num_frames, frame_count(clip.duration, spec))]
    ref, grid = reference(frames, spec)
    assert ours.grid_thw == grid
    assert ours.pixel_values.shape == ref.shape
    torch.testing.assert_close(ours.pixel_values, ref, rtol=0, atol=0)
    assert len(ours.times) == len(frames) <= spec.max_frames


def test_smart_resize_is_qwens_rule():
    for h, w in [(360, 640), (240, 320), (1080, 1920), (50, 700), (28, 28), (1000, 37)]:
        for lo, hi in [(56 * 56, 28 * 28 * 1280), (128 * 28 * 28, 768 * 28 * 28), (4 * 28 * 28, 16 * 28 * 28)]:
            assert smart_resize(h, w, 28, lo, hi) == hf_smart_resize(h, w, 28, lo, hi)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000, 28, 56 * 56, 28 * 28 * 1280)


def test_frame_limits_and_budget():
    spec = VideoSpec(fps=2.0, min_frames=4, max_frames=768)
    assert frame_count(0.5, spec) == 4             # too short: at least min_frames
    assert frame_count(4.9, spec) == 8             # 9.8 frames at 2 fps, down to whole temporal patches
    assert frame_count(30.65, spec) == 60          # 61.3 frames: 60, as qwen-vl-utils takes for this clip
    assert frame_count(5000, spec) == 768
    assert list(pick_frames(3, 4)) == [0, 1, 1, 2]                # fewer decoded than fed: a frame repeats
    assert list(pick_frames(62, 60)[[0, 1, -1]]) == [0, 1, 61]     # first to last
    # a long clip shares the total budget: 768 frames of at most 128000 * 0.9 * 784 * 2 / 768 pixels each
    lo, hi = pixel_bounds(768, spec)
    assert (lo, hi) == (128 * 784, int(128000 * 28 * 28 * 0.9 / 768 * 2))
    assert pixel_bounds(4, spec)[1] == 768 * 784   # a short one is capped by max_pixels
    tight = VideoSpec(total_pixels=1000)
    assert pixel_bounds(8, tight)[1] == int(128 * 784 * 1.05)


def test_times_follow_the_frames_fed(shared_data):
    clip = decode_clip(shared_data / "videos" / "charades_0F7LW.mp4", fps=1.0, size=64, audio=False)
    v = video_pixels(clip.frames, clip.times, clip.duration, QWEN25)
    idx = pick_frames(clip.num_frames, frame_count(clip.duration, QWEN25))
    np.testing.assert_allclose(v.times, clip.times[idx])
    assert v.patch_times() == pytest.approx([(clip.times[idx][i] + clip.times[idx][i + 1]) / 2
                                             for i in range(0, len(idx), 2)])
    assert v.second_per_grid == pytest.approx(2 * clip.duration / len(idx))
