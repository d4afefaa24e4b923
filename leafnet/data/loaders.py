"""DataLoaders that are correct under DDP and fast on a small machine.

Training shards with DistributedSampler (also for one process, so `set_epoch` always reshuffles
the same way); evaluation shards with `EvalShardSampler`, which pads nothing, so every sample is
counted exactly once when metrics are summed across ranks. Workers are seeded from one generator,
persistent, and pin memory only when batches go to CUDA.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class EvalShardSampler(Sampler[int]):
    """Rank r takes indices r, r + world, r + 2·world, ...: disjoint, covering, no padding."""

    def __init__(self, dataset_size: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.indices = range(rank, dataset_size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class LoaderConfig:
    batch_size: int = 64
    workers: int = 2
    prefetch_factor: int = 4
    seed: int = 0


def build_loader(
    dataset: Dataset,
    config: LoaderConfig,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> DataLoader:
    if train:
        sampler: Sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed, drop_last=False
        )
    else:
        sampler = EvalShardSampler(len(dataset), rank, world_size)
    workers = config.workers
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=workers,
        # Random augmentations in workers draw from seeds derived from this generator (torch, random, numpy).
        generator=torch.Generator().manual_seed(config.seed + rank),
        persistent_workers=workers > 0,
        prefetch_factor=config.prefetch_factor if workers > 0 else None,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=train and len(dataset) >= 2 * config.batch_size * world_size,
    )
