"""One process or many: torchrun's environment variables decide (RANK, WORLD_SIZE, LOCAL_RANK).

gloo on CPU, nccl on GPU; each process drives one device (``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a process on its own."""
    return int(os.environ.get("RANK", "0")) == 0


def init_runtime(device: str = "auto") -> Runtime:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device, local_rank if world_size > 1 else None)
    if world_size > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30), device_id=chosen if chosen.type == "cuda" else None)
    return Runtime(rank, world_size, chosen)


def resolve_device(device: str | None, local_rank: int | None = None) -> torch.device:
    """``auto`` (or None): CUDA when available, else the CPU."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} requested but CUDA is not available")
        if local_rank is not None:
            chosen = torch.device("cuda", local_rank)
    return chosen


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Sum over processes (in place; a no-op with one process)."""
    if runtime.distributed:
        dist.all_reduce(tensor)
    return tensor


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()
