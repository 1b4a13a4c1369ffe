"""Every torch.distributed collective of the package, run on the device the backend accepts.

NCCL, which `accelerate launch --multi_gpu` starts on GPUs, takes CUDA tensors only ("No backend type
associated with device type cpu"), while statistics such as PPO's advantage whitening and metric
sums are computed on CPU tensors. So each function here moves its tensor to `device` (the
accelerator's device; None: the current CUDA device under NCCL, else where the tensor already is),
runs the collective there and writes the result back into the caller's tensor. Tensors already on
that device (gradients of a model on the GPU) are not copied.

No other module calls torch.distributed's collectives (tests/test_collectives.py checks the source),
so a new caller cannot bring the CPU-tensor crash back. Every function is a no-op in a single
process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

Device = torch.device | str | None


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _device(tensor: torch.Tensor, device: Device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum_(tensor: torch.Tensor, device: Device = None) -> torch.Tensor:
    """Sum `tensor` over all processes, in place; returns it."""
    return all_reduce_sum_many_([tensor], device)[0]


def all_reduce_sum_many_(tensors: Sequence[torch.Tensor], device: Device = None) -> Sequence[torch.Tensor]:
    """Sum each tensor over all processes, in place; the reductions run concurrently (async)."""
    if world_size() == 1:
        return tensors
    moved = [t.to(_device(t, device)) for t in tensors]
    handles = [dist.all_reduce(m, async_op=True) for m in moved]
    for handle in handles:
        handle.wait()
    for tensor, on_device in zip(tensors, moved):
        if on_device is not tensor:  # .to returns the tensor itself when it is already there
            tensor.copy_(on_device)
    return tensors


def broadcast_(tensor: torch.Tensor, src: int = 0, device: Device = None) -> torch.Tensor:
    """Overwrite `tensor` on every process with process `src`'s, in place; returns it."""
    if world_size() == 1:
        return tensor
    on_device = tensor.to(_device(tensor, device))
    dist.broadcast(on_device, src=src)
    if on_device is not tensor:
        tensor.copy_(on_device)
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's `obj` (picklable), in process order. torch sends the pickles on the current
    CUDA device under NCCL (accelerate sets it per process), so no device is needed here."""
    size = world_size()
    if size == 1:
        return [obj]
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, obj)
    return gathered


__all__ = ["all_gather_object", "all_reduce_sum_", "all_reduce_sum_many_", "broadcast_", "world_size"]
