"""DDP under torchrun: the process group from the environment torchrun sets, and gathers."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_type: str) -> DistContext:
    """Joins the process group when started by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on
    CUDA. A plain run gets a one-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)  # NCCL collectives run on this process's own GPU
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=local_rank)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_rows(ctx: DistContext, rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (n_r, k) tensor (n_r may differ) in rank order."""
    if not ctx.enabled:
        return rows
    n = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    dist.all_gather(counts, n)
    most = int(max(c.item() for c in counts))
    padded = rows.new_zeros((most,) + tuple(rows.shape[1:]))
    padded[:rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:int(c.item())] for g, c in zip(gathered, counts)])


def all_reduce_sum(ctx: DistContext, value: torch.Tensor) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(value)
    return value
