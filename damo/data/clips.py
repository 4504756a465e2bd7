"""Clip loading for training and inference: one place that turns a sample's ``video`` into tensors.

``synth://`` URIs are rendered procedurally (no codec); files go through the media decoder and
its disk cache. Frames are resized to the model's image size and audio becomes per-frame
log-mel windows. A :class:`ClipStore` memoises clips in memory for the life of a run, so a
video is prepared once however many samples and stages use it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from damo.data import synthetic
from damo.data.collate import ClipTensors
from damo.data.schema import Sample, load_samples
from damo.media import SAMPLE_RATE, Clip
from damo.media.audio import log_mel
from damo.media.cache import load_clip


def load_dataset(spec: str) -> list[Sample]:
    """A dataset spec: ``synth://DIFFICULTY?n=..&seed=..&split=..`` or a canonical JSONL path."""
    if spec.startswith("synth://"):
        return synthetic.synth_samples(spec)
    if not Path(spec).is_file():
        raise FileNotFoundError(f"dataset {spec!r} is neither a synth:// spec nor an existing JSONL file")
    return load_samples(spec)


def clip_tensors(clip: Clip, image_size: int, n_mels: int, mel_frames: int) -> ClipTensors:
    fr = torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    if fr.shape[-1] != image_size or fr.shape[-2] != image_size:
        fr = F.interpolate(fr, size=(image_size, image_size), mode="area")
    fr = fr.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)                      # (T, S, S, 3)
    hop = int(round(SAMPLE_RATE / clip.fps / mel_frames))
    win = 1 << (hop.bit_length() - 1)   # power-of-two FFT <= hop (512 for a 40 ms hop): fast, barely any gap
    mel = log_mel(clip.audio, SAMPLE_RATE, clip.fps, clip.num_frames, n_mels=n_mels, hop=hop, win=win)
    mel = torch.from_numpy(mel[:, :mel_frames]).to(torch.float16)                         # (T, F, M)
    return ClipTensors(frames=fr, mel=mel, times=torch.from_numpy(clip.times).float(), duration=clip.duration)


class ClipStore:
    def __init__(self, fps: float, image_size: int, n_mels: int, mel_frames: int, render_size: int = 64,
                 cache_dir: str | Path | None = None):
        self.fps, self.image_size, self.n_mels, self.mel_frames = fps, image_size, n_mels, mel_frames
        self.render_size, self.cache_dir = render_size, cache_dir
        self._mem: dict[str, ClipTensors] = {}

    def raw(self, video: str) -> Clip:
        if synthetic.is_synth_uri(video):
            return synthetic.render_clip(video, self.fps, self.render_size)
        return load_clip(video, self.fps, self.render_size, self.cache_dir)

    def get(self, video: str) -> ClipTensors:
        if video not in self._mem:
            self._mem[video] = clip_tensors(self.raw(video), self.image_size, self.n_mels, self.mel_frames)
        return self._mem[video]
