"""DataLoaders that are correct under DDP and fast on a small machine.

Training shards with DistributedSampler (also for one process, so `set_epoch` always reshuffles
the same way) and tags every index with a seed drawn from (seed, epoch, index): the dataset seeds its
augmentations from that tag, so a batch's pixels depend on neither the worker that made it, nor the
number of workers, nor whether the run was resumed; persistent workers would otherwise carry their
random state from epoch to epoch. An epoch resumed mid-way skips its consumed samples in the sampler,
so they are never decoded. Evaluation shards with `EvalShardSampler`, which pads nothing, so every
sample is counted exactly once when metrics are summed across ranks. Memory is pinned only when
batches go to CUDA. `BalancedSampler` replaces DistributedSampler for class-balanced training
(`train.balanced_sampling`), sharded and resumable the same way.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from leafnet.data.seed_sequence import generate_states


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


class BalancedSampler(Sampler[int]):
    """Class-balanced training samples, sharded over ranks like DistributedSampler.

    Each epoch is one draw from (seed, epoch), the same on every rank: ceil(N / world) x world samples
    (N = the dataset's size, so an epoch keeps its length), an equal quota per class (the remainder to
    classes picked at random), each class's quota filled from shuffled passes over its images (an image
    repeats only once all of its class has been drawn), the whole shuffled. Rank r takes positions r,
    r + world, ...: disjoint shares of the one draw, the same number on every rank. An image drawn more
    than once has its repeat number in `shard()`, so each copy gets its own augmentation seed.
    """

    def __init__(self, targets: list[int], num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside world of {num_replicas}")
        self.targets = np.asarray(targets, dtype=np.int64)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = -(-len(self.targets) // num_replicas)
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's whole draw over all ranks: dataset indices and each one's repeat number (0 the
        first time an index appears in the draw, 1 the second, ...)."""
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1], self._cached[2]
        total = self.num_samples * self.num_replicas
        rng = np.random.default_rng([self.seed, self.epoch])
        classes = np.unique(self.targets)
        quotas = np.full(len(classes), total // max(len(classes), 1))
        quotas[rng.permutation(len(classes))[: total - quotas.sum()]] += 1
        picks = [np.empty(0, dtype=np.int64)]
        for label, quota in zip(classes, quotas, strict=True):
            members = np.flatnonzero(self.targets == label)
            passes = [rng.permutation(members) for _ in range(-(-quota // len(members)))]
            picks.append(np.concatenate(passes)[:quota])
        indices = rng.permutation(np.concatenate(picks))
        order = np.argsort(indices, kind="stable")  # positions grouped by index, in draw order
        runs = np.flatnonzero(np.r_[True, np.diff(indices[order]) != 0])
        run_start = np.repeat(runs, np.diff(np.r_[runs, len(indices)]))
        repeats = np.empty_like(indices)
        repeats[order] = np.arange(len(indices)) - run_start
        self._cached = (self.epoch, indices, repeats)
        return indices, repeats

    def shard(self) -> list[tuple[int, int]]:
        """This rank's (index, repeat) pairs, in order."""
        indices, repeats = self.draw()
        rank, world = self.rank, self.num_replicas
        return list(zip(indices[rank::world].tolist(), repeats[rank::world].tolist(), strict=True))

    def __iter__(self) -> Iterator[int]:
        return (index for index, _ in self.shard())

    def __len__(self) -> int:
        return self.num_samples


class SeededSampler(Sampler[tuple[int, int]]):
    """Wraps a sampler to yield (index, seed) pairs; `ManifestDataset` seeds its transform with it."""

    def __init__(self, sampler: DistributedSampler | BalancedSampler, seed: int) -> None:
        self.sampler, self.seed, self.epoch, self.start = sampler, seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Selects the epoch's order; `start` skips that many of this rank's first samples, for an epoch
        resumed mid-way. The skip drops indices, so the skipped images are never read nor decoded."""
        if start < 0 or start > len(self.sampler):
            raise ValueError(f"cannot start epoch {epoch} at sample {start} of {len(self.sampler)}")
        self.epoch, self.start = epoch, start
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # The order (the sampler's, from seed + epoch) and the seeds (from seed, epoch, index, repeat)
        # are those of the whole epoch, so the remaining samples are exactly an uninterrupted run's.
        balanced = isinstance(self.sampler, BalancedSampler)
        draws = self.sampler.shard() if balanced else zip(self.sampler, itertools.repeat(0))
        pairs = list(itertools.islice(draws, self.start, None))
        indices = [index for index, _ in pairs]
        seeds = sample_seeds(self.seed, self.epoch, indices, [repeat for _, repeat in pairs])
        yield from zip(indices, seeds, strict=True)

    def __len__(self) -> int:
        return len(self.sampler) - self.start


def sample_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> int:
    """A 63-bit seed that differs for every (seed, epoch, index, repeat); repeat counts the earlier draws
    of the same index in the epoch (only a balanced sampler repeats one)."""
    entropy = [seed, epoch, index, repeat] if repeat else [seed, epoch, index]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def sample_seeds(seed: int, epoch: int, indices: list[int], repeats: list[int]) -> list[int]:
    """`sample_seed` for each (index, repeat), computed for all of them at once (the same numbers)."""
    words = [seed, epoch, *indices, *repeats]
    if min(words) < 0 or max(words) >= 2**32:  # not one entropy word each: numpy's own, one at a time
        return [sample_seed(seed, epoch, index, repeat) for index, repeat in zip(indices, repeats, strict=True)]
    if not indices:
        return []
    table = np.array([[seed, epoch, index, repeat] for index, repeat in zip(indices, repeats, strict=True)])
    repeated = table[:, 3] != 0  # a first draw's entropy has three words, a repeat's four (as sample_seed's)
    seeds = np.empty(len(indices), dtype=np.uint64)
    for length, rows in ((3, ~repeated), (4, repeated)):
        seeds[rows] = generate_states(table[rows, :length], 2).view(np.uint64)[:, 0] >> np.uint64(1)
    return seeds.tolist()


def auto_workers(cached: bool, local_processes: int = 1, cores: int | None = None, in_process: bool = False) -> int:
    """Loader workers per training process for data.workers=-1.
    - `in_process`: the batch is cheapest built in the training process itself (a cached split augmented a
      batch at a time, `leafnet.data.batch_augment.BatchAugment`, on a CPU that also computes the steps):
      no worker, so no process competes with the step's threads for the cores (docs/training.md measures it).
    - A cached split otherwise: a sample is a slice and one transform, and one worker keeps up.
    - Decoding per item needs more: half of this process's share of the cores, between 2 and 8."""
    if in_process:
        return 0
    if cached:
        return 1
    share = max(1, (cores or os.cpu_count() or 1) // max(1, local_processes))
    return min(8, max(2, share // 2))


@dataclass
class LoaderConfig:
    batch_size: int = 64
    workers: int = 2
    prefetch_factor: int = 4
    seed: int = 0
    balanced: bool = False  # training: BalancedSampler instead of DistributedSampler


def build_loader(
    dataset: Dataset,
    config: LoaderConfig,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> DataLoader:
    if train:
        if config.balanced:
            shards = BalancedSampler(dataset.targets, world_size, rank, config.seed)
        else:
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
