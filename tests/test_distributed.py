"""torchrun with 2 CPU processes (gloo) equals one process with the same global batch; every process ends with
the same weights, and no process copied the model's weights on the host to train it."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from damo.config import Recipe
from damo.train.distributed import micro_batches
from damo.train.recipe import build_model, dataset_samples, run_recipe
from helpers import TINY_MODEL, torchrun

# the training runner of each rank, recording what the test checks: parameters deep-copied with storage, the
# micro-batch each FSDP gradient reduction ran in, and the weights the rank ends with
RUNNER = """
import json, sys, torch
torch.set_num_threads(1)
from damo.config import load_recipe
from damo.train.recipe import run_recipe
copied = []                 # values of every parameter deep-copied with storage (a copy on the meta device has none)
deepcopy = torch.nn.Parameter.__deepcopy__
def counting(self, memo):
    if not self.is_meta:
        copied.append(self.numel())
    return deepcopy(self, memo)
torch.nn.Parameter.__deepcopy__ = counting
recipe = load_recipe(sys.argv[1])
micro = [0]                 # backward passes so far: one per micro-batch
backward = torch.Tensor.backward
def counting_backward(self, *args, **kwargs):
    micro[0] += 1
    return backward(self, *args, **kwargs)
torch.Tensor.backward = counting_backward
reduce_scatter = torch.distributed.reduce_scatter_single      # FSDP2's gradient reduction
scatters = []               # the micro-batch of its step (0 = first) each reduction ran in
def counting_scatters(*args, **kwargs):
    scatters.append((micro[0] - 1) % recipe.stages[0].grad_accum)
    return reduce_scatter(*args, **kwargs)
torch.distributed.reduce_scatter_single = counting_scatters
model = run_recipe(recipe, sys.argv[2], progress=False)
rank = torch.distributed.get_rank()
torch.save(model.state_dict(), f"{sys.argv[2]}/rank{rank}.pt")
with open(f"{sys.argv[2]}/rank{rank}.json", "w") as f:
    json.dump({"copied": sum(copied), "reduced_in": sorted(set(scatters))}, f)
"""


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


@pytest.mark.parametrize("parallel,grad_accum", [("ddp", 1), ("fsdp", 2)])
def test_two_processes_equal_one_process(tmp_path, parallel, grad_accum):
    """Two processes equal one with their micro-batches. FSDP runs with two micro-batches per process: it
    reduce-scatters once per step (the first micro-step keeps its gradients unsharded)."""
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe(grad_accum, parallel)))
    (tmp_path / "runner.py").write_text(RUNNER)
    res = torchrun(str(tmp_path / "runner.py"), str(tmp_path / "recipe.yaml"), str(tmp_path / "two"))
    assert res.returncode == 0, res.stderr[-3000:]
    from damo.model.modeling_damo import DamoModel

    two = DamoModel.load(tmp_path / "two" / "model")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:   # one process, all the micro-batches of a step: the same global batch split the same way
        one = run_recipe(Recipe.from_dict(recipe(2 * grad_accum)), tmp_path / "one", progress=False,
                         log=lambda *_: None)
    finally:
        torch.set_num_threads(n)
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys()
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for k in b:    # the saved model is rank 0's, and the other process holds the same weights
        assert torch.equal(ranks[0][k], b[k]) and torch.equal(ranks[1][k], b[k]), k
    r = Recipe.from_dict(recipe(2))     # the untrained model both runs started from
    start = build_model(r.model, dataset_samples(r.data["train"], r, None, lambda *_: None), r.seed).state_dict()
    for rank in (0, 1):
        counts = json.loads((tmp_path / "two" / f"rank{rank}.json").read_text())
        assert counts["copied"] == 0
        if parallel == "fsdp":   # gradients are reduced in the last micro-batch of each step only
            assert counts["reduced_in"] == [grad_accum - 1], counts
    # the saved stage (trained under torchrun) loads and equals the one-process stage
    one_align, two_align = (DamoModel.load(tmp_path / x / "stages" / "align").state_dict() for x in ("one", "two"))
    for k in one_align:
        torch.testing.assert_close(one_align[k], two_align[k], rtol=1e-4, atol=3e-5, msg=k)
    assert sum(not torch.equal(a[k], start[k]) for k in a) > 20      # training moved many tensors
    if grad_accum == 1:
        for k in a:   # reduced in another order, gradients differ by float noise: up to a few 1e-5 in the weights
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=3e-5, msg=k)
    else:   # four micro-batches sum in other orders, and where a gradient is near zero AdamW's g / sqrt(v) turns the
        # noise into a different step: all but 1 value in 10,000 within 3e-5, each within one step of the largest lr
        diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
        assert (diff > 3e-5).float().mean() < 1e-4 and diff.max() < max(st.lr for st in r.stages), diff.max()
