"""How the LLM attends over the prompt's video placeholders (``model.video_attention``): each entry
turns the token ids and the 2-D padding mask into the mask the LLM takes."""
from __future__ import annotations

import torch


def causal_attention(input_ids: torch.Tensor, attention_mask: torch.Tensor, video_id: int) -> torch.Tensor:
    """The LLM's own causal attention: its 2-D padding mask ``(B, L)`` passes unchanged."""
    return attention_mask


def bidirectional_video(input_ids: torch.Tensor, attention_mask: torch.Tensor, video_id: int) -> torch.Tensor:
    """``(B, 1, L, L)`` boolean (True: may attend): causal attention over the non-padding tokens, and
    every video placeholder also attends to every other one, later ones included; no other token sees
    a later one. D²VLM's stage-3 and FPO scripts run with ``--bi_attention True``, which zeroes the
    causal mask over the image span (nusnlp/d2vlm 756d340, d2vlm/model/d2vlm_arch.py
    ``D2VLMMetaModel._update_causal_mask``; scripts/train_stage_3.sh, scripts/train_fpo.sh). A padding
    row attends to itself only (its output is never read), so no row is empty. A mask already 4-D (one
    prepared by the caller, as ``damo plan`` does on the meta device) passes as given."""
    if attention_mask.dim() == 4:
        return attention_mask
    L = input_ids.shape[1]
    v = input_ids == video_id                                       # (B, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()
    allowed = (causal[None] | (v[:, :, None] & v[:, None, :])) & attention_mask.bool()[:, None, :]
    return (allowed | torch.eye(L, dtype=torch.bool, device=input_ids.device))[:, None]   # (B, 1, L, L)


# How the LLM attends over the prompt's video placeholders: ``model.video_attention``.
VIDEO_ATTENTION = {"causal": causal_attention, "bidirectional": bidirectional_video}
