"""Frame and audio encoders.

Contracts (B batch, T frames on the 1/fps timeline):
- vision: :class:`VisionTower` (frames ``(B, T, 3, H, W)`` float in [0, 1] -> ``(B, T, 1 + P, Dv)``, a
  global token first, then a square grid of patches);
- audio: per-frame log-mel windows ``(B, T, F, M)`` -> ``(B, T, 1 + A, Da)`` (a global token first).

The tiny encoders train from scratch on CPU and are registered by name in :data:`VISION_ENCODERS`
and :data:`AUDIO_ENCODERS`. Real backbones (SigLIP / CLIP vision towers, the Whisper encoder) keep
the same contracts through their wrappers in :mod:`damo.model.backbones`. A new vision tower is a
:class:`VisionTower` subclass in its own file plus one line in :data:`VISION_ENCODERS`; ``vision.kind``
then names it.
"""
from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Pre-norm transformer block (self-attention + MLP)."""

    def __init__(self, d: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, int(d * mlp_ratio)), nn.GELU(), nn.Linear(int(d * mlp_ratio), d))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class VisionTower(nn.Module):
    """What the model reads from a vision tower (DaMO section 3.1's frame encoder):

    - ``forward(frames)``: frames ``(B, T, 3, H, W)`` float in [0, 1] -> tokens ``(B, T, 1 + P, width)``: a
      global token first (CLS, or the patches' mean for a tower without one), then ``P = side^2`` patch
      tokens of a square grid in row-major order, which DaMO's global residual pools on that grid;
    - ``width``: the tokens' width ``Dv`` (the model sizes the visual residual to it).

    A tower in :data:`VISION_ENCODERS` is built from the ``vision`` config's plain fields as keywords:
    ``image_size``, ``patch``, ``width``, ``layers``, ``heads``."""

    width: int

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TinyViT(VisionTower):
    """A small ViT over each frame independently (patchify -> CLS + patches -> blocks)."""

    def __init__(self, image_size: int = 32, patch: int = 8, width: int = 64, layers: int = 2, heads: int = 2):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} must be a multiple of patch {patch}")
        self.image_size = image_size
        self.num_patches = (image_size // patch) ** 2
        self.patchify = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, 1 + self.num_patches, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.width = width

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        B, T = frames.shape[:2]
        x = frames.flatten(0, 1)                                  # (B*T, 3, H, W)
        x = (x - 0.5) / 0.25
        x = self.patchify(x).flatten(2).transpose(1, 2)           # (B*T, P, Dv)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos  # (B*T, 1+P, Dv)
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x).unflatten(0, (B, T))                    # (B, T, 1+P, Dv)


class TinyAudioEncoder(nn.Module):
    """Encodes each frame window's log-mel patch into tokens.

    The window's F mel frames are grouped into A chunks of ``patch`` frames; each chunk
    becomes one token, and a learned global token summarises the window (the per-segment
    global feature DaMO takes as the mean of Whisper tokens; here it is learned).
    """

    def __init__(self, n_mels: int = 32, frames: int = 25, patch: int = 5, width: int = 64, layers: int = 1,
                 heads: int = 2):
        super().__init__()
        if frames % patch:
            raise ValueError(f"audio frames per window {frames} must be a multiple of patch {patch}")
        self.patch, self.num_tokens = patch, frames // patch
        self.proj = nn.Linear(patch * n_mels, width)
        self.glob = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, 1 + self.num_tokens, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.width = width

    def forward(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Frames are encoded one by one, so a batch's padding (``mask``) cannot reach real frames."""
        B, T, F, M = mel.shape
        x = mel.flatten(0, 1).reshape(B * T, self.num_tokens, self.patch * M)  # (B*T, A, patch*M)
        x = self.proj((x + 4.0) / 4.0)                                          # (B*T, A, Da); log-mel centred
        x = torch.cat([self.glob.expand(x.shape[0], -1, -1), x], 1) + self.pos  # (B*T, 1+A, Da)
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x).unflatten(0, (B, T))                                  # (B, T, 1+A, Da)


def build_tiny_audio(n_mels: int, frames: int, patch: int, width: int, layers: int, heads: int,
                     **_: object) -> nn.Module:
    return TinyAudioEncoder(n_mels, frames, patch, width, layers, heads)


# vision.kind -> its tower (hf_vision, a transformers tower, is built in damo.model.backbones)
VISION_ENCODERS: dict[str, type[VisionTower]] = {"tiny_vit": TinyViT}
AUDIO_ENCODERS = {"tiny_mel": build_tiny_audio}
