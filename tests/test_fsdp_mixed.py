"""FSDP on two gloo processes whose micro-batches differ in kind: one rank's sample has <evi> tokens
(semantic capture pass, evidence head, grounding loss), the other's has none. Every rank must issue
the same all-gathers and reduce-scatters; the run equals one process with the same global batch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace

import torch
import yaml

from damo.config import Recipe
from damo.data.dataset import load_dataset
from damo.data.schema import load_samples, write_jsonl
from damo.train.recipe import build_model, run_recipe
from helpers import RUNNER, TINY_MODEL


def recipe(data, grad_accum: int) -> dict:
    # a global batch of two: each of the two processes gets one sample, the one with <evi> or the one without
    return {"model": TINY_MODEL, "seed": 0, "parallel": "fsdp", "data": {"train": str(data)},
            "stages": [{"name": "ground", "losses": {"lm": 1.0, "grounding_bce": 5.0, "consistency": 1.0}, "steps": 3,
                        "batch": 2, "lr": 3e-3, "warmup": 1, "grad_accum": grad_accum}]}


def test_fsdp_with_and_without_evidence_tokens_on_different_ranks_equals_one_process(tmp_path):
    g = next(s for s in load_dataset("synth://easy?n=4&seed=0") if s.task == "grounding")
    plain = replace(g, id="no-evi", task="grounded_qa", answer="a red square", spans=[])   # answered without <evi>
    data = tmp_path / "train.jsonl"
    write_jsonl(data, [g.to_dict(), plain.to_dict()])
    rfile = tmp_path / "recipe.yaml"
    rfile.write_text(yaml.safe_dump(recipe(data, 1)))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(tmp_path / "runner.py"), str(rfile), str(tmp_path / "two")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:                 # ranks that issue different collectives wait for each other forever
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("the two FSDP processes hung") from None
    assert proc.returncode == 0, err[-3000:]
    from damo.model.modeling_damo import DamoModel

    two = DamoModel.load(tmp_path / "two" / "model")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run_recipe(Recipe.from_dict(recipe(data, 2)), tmp_path / "one", progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(n)
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys()
    start = build_model(Recipe.from_dict(recipe(data, 2)).model, load_samples(data), 0).state_dict()   # as the runs begin
    for k in a:   # FSDP's reduce-scatter sums gradients in another order: float noise up to a few 1e-5
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=3e-5, msg=k)
    moved = {k for k in a if not torch.equal(a[k], start[k])}
    assert any(k.startswith("evidence.") for k in moved) and any(k.startswith("llm.") for k in moved)
