"""Multi-process training on PyTorch's own engine: ``torchrun`` + DDP or FSDP.

Launch any recipe with torchrun and the same code runs data-parallel::

    torchrun --nproc_per_node 8 -m damo.cli train --recipe damo_smollm2                     # one node
    torchrun --nnodes 2 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
             --nproc_per_node 8 -m damo.cli train --recipe ...                                   # each node

The backend is NCCL when CUDA is present and gloo on CPU. ``parallel: ddp`` replicates the
model (DistributedDataParallel); ``parallel: fsdp`` shards weights, gradients and optimizer
state (FSDP2 ``fully_shard`` per LLM decoder layer and encoder layer) for LLMs that do not fit
one device.

Data: every rank draws the same global batch for a step (RNG seeded by seed and step), splits it
into ``world x grad_accum`` micro-batches and takes its own disjoint share, so a run on N
processes equals a 1-process run with ``grad_accum`` N times larger (up to float summation order).
"""
from __future__ import annotations

import copy
from itertools import chain
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from damo.ranks import DistInfo, barrier, gather_dicts, init_distributed  # noqa: F401  (the training loop's names for them)

T = TypeVar("T")
PARALLEL = ("ddp", "fsdp")


def micro_batches(items: Sequence[T], parts: int) -> list[list[T]]:
    """Split a global batch into ``parts`` contiguous micro-batches whose sizes differ by at most one."""
    if len(items) < parts:
        raise ValueError(f"a global batch of {len(items)} cannot feed {parts} micro-batches (processes x grad_accum); "
                         "raise the stage's batch or lower grad_accum")
    q, r = divmod(len(items), parts)
    out, i = [], 0
    for m in range(parts):
        n = q + (m < r)
        out.append(list(items[i:i + n]))
        i += n
    return out


def mean_across(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor over processes (logging: every rank then reports the global loss)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Modules sharded as their own FSDP units: each layer of every ``*layers`` list (HF decoders and encoders)."""
    return [layer for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and name.endswith("layers")
            for layer in m]


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers lie on the meta device (shapes, no storage), the
    rest (configs, tokenizer, hooks, ``requires_grad``) copied as :func:`copy.deepcopy` copies it. FSDP
    shards this copy (:func:`wrap`), so no process holds a second host copy of the weights."""
    memo: dict[int, torch.Tensor] = {}
    for t in chain(module.parameters(), module.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(module, memo)


def wrap(module: nn.Module, parallel: str, info: DistInfo,
         values: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, list[nn.Parameter]]:
    """Wrap a module whose ``forward`` computes the whole training loss for the chosen strategy.

    Returns the wrapped module and the parameters kept whole on every rank whose gradients the
    caller averages with :func:`average_grads` (FSDP2 cannot shard 0-dim parameters, such as a
    contrastive temperature).
    ``ddp``: ``find_unused_parameters`` because stages freeze and skip parts of the model
    (e.g. no ``<evi>`` in a micro-batch leaves the evidence head without gradients).
    ``fsdp``: ``module`` lies on the meta device (:func:`meta_copy`) and ``values`` holds its state dict and
    buffers by name (CPU tensors; the state dict's are read on rank 0 only): ``fully_shard`` shards the meta
    module, each process allocates only its shards on its device, and torch's state-dict API broadcasts rank
    0's values one whole tensor at a time, each process copying its shard in place, so neither a GPU nor the
    host ever holds a second whole model.
    """
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    if info.world == 1:
        return module, []
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True), []
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard

    scalars = {p for p in module.parameters() if p.dim() == 0}
    for unit in fsdp_units(module):
        fully_shard(unit)
    fully_shard(module, ignored_params=scalars)
    module.to_empty(device=info.device)                     # the shards, the buffers and the 0-dim parameters
    full = {k: values[k] for k in module.state_dict()} if info.main else {}
    set_model_state_dict(module, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    with torch.no_grad():               # buffers outside the state dict (an image tower's constant mean and std)
        for name, b in module.named_buffers():
            b.copy_(values[name])
    return module, [p for p in scalars if p.requires_grad]


def gather_trained(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights of the FSDP-sharded ``module``, whole, on rank 0's CPU (the other processes get
    an empty dict): torch's state-dict API gathers them one tensor at a time (``cpu_offload``), so no GPU
    holds more than one whole tensor. Frozen weights did not change in training and are left out."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                 ignore_frozen_params=True))


def broadcast_from_main(tensors: list[torch.Tensor], device: torch.device) -> None:
    """Copy rank 0's values of ``tensors`` (CPU) into every process's, one tensor at a time through ``device``
    (NCCL moves device memory only)."""
    with torch.no_grad():
        for t in tensors:
            buf = t.detach().to(device)
            dist.broadcast(buf, 0)
            t.copy_(buf)


def average_grads(params: list[nn.Parameter]) -> None:
    """Average the gradients of parameters that FSDP left whole (see :func:`wrap`) over processes."""
    if not params or not dist.is_initialized():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()
