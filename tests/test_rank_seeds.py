"""Each micro-batch draws its dropout masks from its own seed (seed, step, its index over all processes):
two processes then differ from each other and together equal one process accumulating both."""
from __future__ import annotations


import torch

from damo.config import Recipe
from damo.train.loop import micro_seed
from damo.train.recipe import run_recipe
from helpers import train_on_two_ranks
from test_paper_models import tiny_stand_in


def recipe(grad_accum: int) -> dict:
    model = tiny_stand_in("d2vlm", 600)
    model["llm"]["lora"]["dropout"] = 0.5                      # masks that matter
    return {"model": model, "seed": 0, "parallel": "ddp", "data": {"train": "synth://easy?n=8&seed=0"},
            "stages": [{"name": "lora", "losses": {"lm": 1.0}, "steps": 2, "batch": 4, "lr": 1e-2, "warmup": 1,
                        "grad_accum": grad_accum, "trainable": ["llm.*lora_*"]}]}


def test_micro_batch_seeds_differ_by_micro_batch_and_step_only():
    seeds = {micro_seed(0, step, m) for step in range(3) for m in range(4)}
    assert len(seeds) == 12 and micro_seed(0, 1, 2) == micro_seed(0, 1, 2) != micro_seed(1, 1, 2)


def test_two_processes_with_dropout_equal_one_process(tmp_path):
    train_on_two_ranks(recipe(1), tmp_path, tmp_path / "two")
    from damo.model.modeling_damo import DamoModel

    two = DamoModel.load(tmp_path / "two" / "model").state_dict()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run_recipe(Recipe.from_dict(recipe(2)), tmp_path / "one", progress=False, log=lambda *_: None).state_dict()
    finally:
        torch.set_num_threads(n)
    lora = [k for k in one if "lora_" in k]
    assert lora
    for k in lora:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-5, msg=k)
