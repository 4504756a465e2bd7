"""A training micro-step does not make the host wait for the device.

On a GPU the host queues kernels ahead of the device until something reads a value back: ``.item()``,
``int()``, ``bool()`` of a device tensor (``aten._local_scalar_dense``), an op whose output size depends on
values (``nonzero``, boolean indexing), or a tensor built on the host and copied over (PyTorch waits for
a blocking host-to-device copy). Two checks on the CPU:

- with values: a forward and backward under a dispatch mode that records value reads and value-sized ops:
  none is ours (the vision tower selects a batch's real frames by the counts the collator knows).
  transformers' sdpa mask builder reads whether a padded 2-D mask is all ones, two values per LLM pass; a
  config with its own 4-D mask, as paper-d2vlm's bidirectional video attention, has no read at all;
- on the meta device, standing in for the GPU: no op our code issues takes a tensor that lies on the
  host (the few index lists peft's trainable-token layers copy in each forward are theirs).
"""
from __future__ import annotations

import random
import traceback
from pathlib import Path

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from damo.config import Stage, load_recipe
from damo.data.collate import Collator
from damo.data.dataset import ClipLoader, load_dataset
from damo.model.configuration_damo import DamoConfig
from damo.pipeline import processor_of
from damo.plan import build_meta, probe_batch
from damo.train.loop import StageLoss, set_trainable
from damo.train.recipe import build_model
from helpers import TINY_MODEL
from test_paper_models import tiny_stand_in

DAMO = str(Path(__file__).resolve().parents[1] / "damo")
TRANSFORMERS = str(Path(transformers.__file__).parent)
VALUE_SIZED = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_consecutive", "unique_dim",
               "repeat_interleave"}
GROUND = Stage(name="ground", losses={"lm": 1.0, "grounding_bce": 5.0, "consistency": 1.0}, steps=1)
ALIGN = Stage(name="align", losses={"contrastive": 1.0}, steps=1, tasks=["dense_caption"],
              trainable=["video.*", "alignment.*"])


def caller() -> str:
    """Who issued the op being dispatched: ``backward:<autograd node>`` in a backward pass, else
    ``<file>:<function>`` of the innermost frame outside torch."""
    node = torch._C._current_autograd_node()
    if node is not None:
        return f"backward:{node.name()}"
    f = next(f for f in reversed(traceback.extract_stack()) if "/torch/" not in f.filename and f.filename != __file__)
    return f"{f.filename}:{f.name}"


class Record(TorchDispatchMode):
    """Every op ``hit(func, args)`` selects, with who issued it (:func:`caller`)."""

    def __init__(self, hit):
        super().__init__()
        self.hit, self.seen = hit, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.hit(func, args, kwargs or {}):
            self.seen.append((func.overloadpacket.__name__, caller()))
        return func(*args, **(kwargs or {}))


def value_read(func, args, kwargs) -> bool:
    """A value the host reads, or an op sized by values: ``x[mask]`` with a bool mask is ``index`` with one."""
    name = func.overloadpacket.__name__
    return name in VALUE_SIZED or (name in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
        isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in args[1]))


def host_tensor(func, args, kwargs) -> bool:
    """A tensor made from host data, or one on the host (not a 0-dim scalar) meeting the device's."""
    return func.overloadpacket.__name__ == "lift_fresh" or any(
        isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0 for t in tree_flatten((args, kwargs))[0])



def micro_step(model, stage: Stage, batch, hit) -> list[tuple[str, str]]:
    set_trainable(model, stage.trainable)
    model.train()
    with Record(hit) as rec:
        StageLoss(model, stage)(batch)[0].backward()
    return rec.seen


def real_batch(model, stage: Stage):
    samples = load_dataset("synth://easy?n=8&seed=0")
    task = (lambda s: s.task == "dense_caption") if stage.tasks else (lambda s: s.task == "grounding")
    chosen = [s for s in samples if task(s)][:1] + [s for s in samples if not task(s)][:1]   # two lengths: padded
    if stage.tasks:
        chosen = [s for s in samples if task(s)][:2]
    proc = processor_of(model)
    clips = ClipLoader(proc, memory=True)
    return Collator.for_processor(proc)([(s, clips(s.video)) for s in chosen], random.Random(0))


def ours(seen: list[tuple[str, str]]) -> set[str]:
    return {f for _, f in seen if f.startswith((DAMO, "backward:"))}


@pytest.mark.parametrize("stage", [GROUND, ALIGN], ids=lambda s: s.name)
def test_the_default_model_reads_no_value_in_a_micro_step(stage):
    """The towers train in both stages (their backward runs too)."""
    samples = load_dataset("synth://easy?n=8&seed=0")
    model = build_model(DamoConfig.from_dict(TINY_MODEL), samples, 0)
    seen = micro_step(model, stage, real_batch(model, stage), value_read)
    assert not ours(seen), seen
    # transformers' sdpa mask: two reads per LLM pass on a padded batch (the capture pass and the main one)
    passes = 0 if stage.tasks else 1 + model.cfg.evidence.semantic_capture
    assert [f for _, f in seen] == [f"{TRANSFORMERS}/masking_utils.py:_ignore_causal_mask_sdpa"] * 2 * passes, seen


def test_the_d2vlm_stand_in_reads_no_value_in_a_micro_step():
    """paper-d2vlm builds its own 4-D mask (bidirectional attention over the video): no read at all, with
    its frozen towers, semantic capture (its first pass up to layer 1 of 2), the evidence head and both losses."""
    samples = load_dataset("synth://easy?n=8&seed=0")
    model = build_model(DamoConfig.from_dict(tiny_stand_in("d2vlm", 600)), samples, 0)
    stage = next(s for s in load_recipe("paper-d2vlm").stages if s.name == "instruct")
    assert micro_step(model, stage, real_batch(model, stage), value_read) == []


@pytest.mark.parametrize("name,stage", [("default", "ground"), ("default", "align"), ("d2vlm", "instruct"),
                                        ("llava-st", "content")])
def test_a_micro_step_builds_nothing_on_the_host(name, stage):
    """The model and batch on the meta device stand in for a GPU: a mask or index our code built on the
    host would meet them as a CPU tensor (LLaVA-ST's packer regions, LAPE's anchors, the propagation
    matrix, a label fill value), and a value read would fail (meta tensors have none)."""
    cfg = DamoConfig.from_dict(TINY_MODEL if name == "default" else tiny_stand_in(name, 600))
    model = build_meta(cfg)
    stages = [GROUND, ALIGN] if name == "default" else load_recipe(f"paper-{name}").stages
    st = next(s for s in stages if s.name == stage)
    batch = probe_batch(model, st, 6, 24)
    assert batch.input_ids.is_meta
    model.video.compressor.eval()          # the budget's largest K, as damo plan: no random draw on meta
    seen = micro_step(model, st, batch, host_tensor)
    assert not ours(seen) and all("/peft/" in f for _, f in seen), seen
