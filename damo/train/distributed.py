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


def wrap(module: nn.Module, parallel: str, info: DistInfo) -> tuple[nn.Module, list[nn.Parameter]]:
    """Wrap a module whose ``forward`` computes the whole training loss for the chosen strategy.

    Returns the wrapped module and the parameters kept whole on every rank whose gradients the
    caller averages with :func:`average_grads` (FSDP2 cannot shard 0-dim parameters, such as a
    contrastive temperature).
    ``ddp``: ``find_unused_parameters`` because stages freeze and skip parts of the model
    (e.g. no ``<evi>`` in a micro-batch leaves the evidence head without gradients).
    ``fsdp``: shards in place (FSDP2); call on a module that is not needed unsharded later. The
    module may lie on the CPU: ``fully_shard`` moves each unit to the device as it shards it, so no
    GPU ever holds the whole model; the 0-dim parameters it leaves whole are moved here.
    """
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    if info.world == 1:
        return module, []
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True), []
    from torch.distributed.fsdp import fully_shard

    scalars = {p for p in module.parameters() if p.dim() == 0}
    for unit in fsdp_units(module):
        fully_shard(unit)
    fully_shard(module, ignored_params=scalars)
    for p in scalars:
        p.data = p.data.to(info.device)
    return module, [p for p in scalars if p.requires_grad]


def average_grads(params: list[nn.Parameter]) -> None:
    """Average the gradients of parameters that FSDP left whole (see :func:`wrap`) over processes."""
    if not params or not dist.is_initialized():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()
