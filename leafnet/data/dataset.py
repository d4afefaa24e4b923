"""A Dataset over one split of a prepared directory (leafnet.data.prepared), labels in class-index order."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from leafnet.data.cache import DecodedCache, decode
from leafnet.data.prepared import PreparedData
from leafnet.data.split import SPLITS
from leafnet.data.transforms import ImagePipeline
from leafnet.errors import LeafnetError


class ManifestDataset(Dataset):
    """Images of one split of a prepared directory, as (transformed image, class index)."""

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None) -> None:
        if split not in SPLITS:
            raise LeafnetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.root = Path(root)
        data = PreparedData(self.root)
        self.classes = data.classes()
        self.samples = data.samples(split)
        self.split = split
        self.transform = transform
        self.cache: DecodedCache | None = None

    def cache_in_memory(self, budget_mb: float, sharers: int = 1) -> bool:
        """Keeps each image, once decoded through the transform's deterministic prefix, in shared memory
        (`leafnet.data.cache`): later reads, in any process, skip decoding. False when the transform has
        no prefix to cache (not an ImagePipeline) or the split does not fit `budget_mb` (or its share of the
        free shared memory, split between `sharers` processes caching at once)."""
        if not isinstance(self.transform, ImagePipeline) or not self.samples:
            return False
        first = self._prepared(0)
        self.cache = DecodedCache.allocate(len(self.samples), first, budget_mb, f"{self.split} split", sharers)
        return self.cache is not None

    def _prepared(self, index: int):
        return self.transform.prepare(decode(self.samples[index][0]))

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        """`dataset[i]`, or `dataset[(i, seed)]` to draw the random transform from `seed`."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        if self.cache is not None:
            prepared = self.cache.get(index, lambda: self._prepared(index))
            with seeded_rng(seed) if seed is not None else contextlib.nullcontext():
                return self.transform.item(prepared), label
        image = decode(path)
        if self.transform is None:
            return image, label
        if seed is None:
            return self.transform(image), label
        with seeded_rng(seed):
            return self.transform(image), label


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seeds torch's CPU generator, Python's `random` (timm's crops) and numpy's global generator
    (timm's RandAugment) for one block, then restores all three; CUDA generators are not touched."""
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
