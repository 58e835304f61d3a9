"""Data-parallel training under `torchrun`: process group set-up from the environment, and the few
collectives the trainer needs. Single-process runs go through the same calls, which then do nothing.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT); the process group uses NCCL on CUDA
and gloo on CPU (NCCL has no CPU tensors).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job. device: where its model lives (cuda:LOCAL_RANK on GPUs)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, evaluates and saves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class DeviceError(ValueError):
    """A device name torch does not know, or a CUDA device on a machine without one."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" → cuda:LOCAL_RANK when CUDA is available, else cpu; "cuda" → cuda:LOCAL_RANK; else as given.
    DeviceError for a name that is no device, or CUDA where there is none."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    except RuntimeError:
        raise DeviceError(f"{name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{name!r}: no CUDA device is available here; use cpu (or auto)")
    return device


def init_distributed(device_name: str) -> DistContext:
    """Read torchrun's environment and, with WORLD_SIZE > 1, join the process group. Call once per process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Rank 0 evaluates and saves after every epoch while the others wait in a barrier; a large
        # validation set can take longer than the default collective timeout (10 min for NCCL).
        kwargs: dict[str, Any] = {
            "backend": backend, "rank": rank, "world_size": world_size, "timeout": timedelta(hours=2),
        }  # fmt: skip
        if device.type == "cuda":
            kwargs["device_id"] = device  # binds NCCL to this GPU up front (no guess at the first barrier)
        dist.init_process_group(**kwargs)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def cleanup(ctx: DistContext, *, wait: bool = True) -> None:
    """Leave the process group, after waiting for every rank when `wait` (not after an error: the other
    ranks may never arrive, and torchrun stops them when this one exits)."""
    if ctx.distributed and dist.is_initialized():
        if wait:
            barrier(ctx)
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; unchanged in single-process runs)."""
    out = values.detach().clone()
    if ctx.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_min_int(ctx: DistContext, value: int) -> int:
    """The smallest of one integer over ranks (e.g. steps every rank can take, so none waits forever)."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def gather_ints(ctx: DistContext, value: int) -> list[int]:
    """One integer from every rank, in rank order (e.g. images each rank trained on)."""
    if not ctx.distributed:
        return [value]
    t = torch.tensor([value], dtype=torch.int64, device=ctx.device)
    out = [torch.zeros_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t)
    return [int(x.item()) for x in out]


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (picklable objects)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
