"""Checks on values the host does not hold: a training step checks them without waiting for the device."""
from __future__ import annotations

import torch


def require(cond: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless the bool tensor ``cond`` is true, without a host sync: on an
    accelerator a device-side assert (``torch._assert_async``) checks it when the kernels run, so the host
    queues the next work instead of waiting for the value (a failure stops the process with ``message``);
    on the CPU it is checked at once. Meta tensors (``damo plan``) carry no values and are not checked."""
    if cond.is_meta:
        return
    try:
        torch._assert_async(cond, message)
    except RuntimeError:
        raise ValueError(message) from None
