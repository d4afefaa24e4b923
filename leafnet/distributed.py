"""torchrun environment detection, process-group setup and teardown, exact metric reduction.

One process without torchrun is a world of size 1, and every helper here works the same way in it,
so the training code has no "if distributed" branches beyond wrapping the model.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def detect() -> DistInfo:
    """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK (also set by multi-node launchers)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def select_device(requested: str, info: DistInfo) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device(requested)


def init(info: DistInfo, device: torch.device, backend: str = "auto", timeout_s: int = 1800) -> None:
    if not info.enabled or dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums a tensor over ranks in place (a no-op for one process); used for counts, never means,
    so that ranks with unequal shards still give the exact global metric."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copies rank `src`'s buffers (BatchNorm running statistics) to every rank. Each rank updates
    its own statistics from its own batches, so without this the ranks evaluate different models."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)
