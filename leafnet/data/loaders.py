"""DataLoaders that are correct under DDP and fast on a small machine.

Training shards with DistributedSampler (also for one process, so `set_epoch` always reshuffles
the same way) and tags every index with a seed drawn from (seed, epoch, index): the dataset seeds its
augmentations from that tag, so a batch's pixels depend on neither the worker that made it, nor the
number of workers, nor whether the run was resumed; persistent workers would otherwise carry their
random state from epoch to epoch. An epoch resumed mid-way skips its consumed samples in the sampler,
so they are never decoded. Evaluation shards with `EvalShardSampler`, which pads nothing, so every
sample is counted exactly once when metrics are summed across ranks. Memory is pinned only when
batches go to CUDA.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
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


class SeededSampler(Sampler[tuple[int, int]]):
    """Wraps a sampler to yield (index, seed) pairs; `ManifestDataset` seeds its transform with it."""

    def __init__(self, sampler: DistributedSampler, seed: int) -> None:
        self.sampler, self.seed, self.epoch, self.start = sampler, seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Selects the epoch's order; `start` skips that many of this rank's first samples, for an epoch
        resumed mid-way. The skip drops indices, so the skipped images are never read nor decoded."""
        if start < 0 or start > len(self.sampler):
            raise ValueError(f"cannot start epoch {epoch} at sample {start} of {len(self.sampler)}")
        self.epoch, self.start = epoch, start
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # The order (DistributedSampler's, from seed + epoch) and the seeds (from seed, epoch, index)
        # are those of the whole epoch, so the remaining samples are exactly an uninterrupted run's.
        for index in itertools.islice(self.sampler, self.start, None):
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return len(self.sampler) - self.start


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that differs for every (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


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
        shards = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed)
        sampler: Sampler = SeededSampler(shards, config.seed)
    else:
        sampler = EvalShardSampler(len(dataset), rank, world_size)
    workers = config.workers
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=workers,
        generator=torch.Generator().manual_seed(config.seed + rank),  # anything else random in workers
        persistent_workers=workers > 0,
        prefetch_factor=config.prefetch_factor if workers > 0 else None,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=train and len(dataset) >= 2 * config.batch_size * world_size,
    )
