"""Frozen towers cost what inference costs: no autograd state, and only a batch's real frames."""
from __future__ import annotations

from damo.model.modeling_damo import DamoModel
from damo.model.processing import stack_clips
from damo.model.tokenizer import train_tokenizer
from damo.train.loop import set_trainable
from helpers import clip, tiny_cfg


def test_a_frozen_tower_sees_only_real_frames_without_gradients():
    model = DamoModel(tiny_cfg(), train_tokenizer(["when does the red square appear?"] * 4, 300))
    seen = []
    model.video.vision.register_forward_hook(lambda m, args, out: seen.append((args[0].shape[:2], out.requires_grad)))
    batch = stack_clips([clip(3, 0), clip(6, 1)])                    # 9 real frames padded to 2 x 6
    set_trainable(model, ["video.residual_v.*", "video.fuseformer.*"])
    fr, _ = model.video(batch.frames, batch.mel, batch.frame_mask)
    assert seen == [((1, 9), False)]                                 # one pass over the real frames, no graph
    fr.sum().backward()
    assert model.video.residual_v.local.weight.grad is not None
    # a tower that trains keeps its gradients
    seen.clear()
    set_trainable(model, ["video.vision.*"])
    model.video(batch.frames, batch.mel, batch.frame_mask)[0].sum().backward()
    assert seen == [((1, 9), True)] and all(p.grad is not None for p in model.video.vision.parameters())
