"""torchrun with 2 CPU processes (gloo) equals one process with the same global batch."""
from __future__ import annotations


import pytest
import torch

from damo.config import Recipe
from damo.train.distributed import micro_batches
from damo.train.recipe import build_model, dataset_samples, run_recipe
from helpers import TINY_MODEL, train_on_two_ranks


def recipe(grad_accum: int, parallel: str = "ddp") -> dict:
    return {"model": TINY_MODEL, "seed": 0, "parallel": parallel, "data": {"train": "synth://easy?n=12&seed=0"},
            "stages": [
                {"name": "align", "tasks": ["dense_caption"], "losses": {"contrastive": 1.0}, "steps": 3, "batch": 6,
                 "grad_accum": grad_accum, "trainable": ["vision.*", "audio.*", "residual_*", "fuseformer.*",
                                                         "text_encoder.*", "align_video.*", "logit_scale"]},
                {"name": "ground", "losses": {"lm": 1.0, "grounding_bce": 5.0, "consistency": 1.0}, "steps": 4,
                 "batch": 6, "lr": 3e-3, "warmup": 2, "grad_accum": grad_accum},
            ]}


def test_micro_batches_are_disjoint_and_cover_the_batch():
    parts = micro_batches(list(range(7)), 3)
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="raise the stage's batch"):
        micro_batches([1, 2], 4)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one_process(tmp_path, parallel):
    train_on_two_ranks(recipe(1, parallel), tmp_path, tmp_path / "two")
    from damo.model.modeling_damo import DamoModel

    two = DamoModel.load(tmp_path / "two" / "model")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:   # one process, two micro-batches per step: the same global batch split the same way
        one = run_recipe(Recipe.from_dict(recipe(2)), tmp_path / "one", progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(n)
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys()
    changed = 0
    r = Recipe.from_dict(recipe(2))     # the untrained model both runs started from
    start = build_model(r.model, dataset_samples(r.data["train"], r, None, lambda *_: None), r.seed).state_dict()
    for k in a:   # FSDP's reduce-scatter sums gradients in another order: float noise up to a few 1e-5
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=3e-5, msg=k)
        changed += not torch.equal(a[k], start[k])
    assert changed > 20            # training moved many tensors, and both runs moved them alike
