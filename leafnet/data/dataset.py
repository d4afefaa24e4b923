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

from leafnet.data.batch_augment import BatchAugment, channels_equal
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
        self._grey: dict[int, bool] = {}  # cached images' channels_equal, looked at once per process

    def cache_in_memory(self, budget_mb: float, sharers: int = 1) -> bool:
        """Keeps each image, once decoded through the transform's deterministic prefix, in shared memory
        (`leafnet.data.cache`): later reads, in any process, skip decoding. False when the transform has
        no prefix to cache (not an ImagePipeline) or the split does not fit `budget_mb` (or its share of the
        free shared memory, split between `sharers` processes caching at once)."""
        if not isinstance(self.transform, ImagePipeline) or not self.samples:
            return False
        self._grey.clear()  # about the images a previous cache held
        first = self._prepared(0)
        self.cache = DecodedCache.allocate(len(self.samples), first, budget_mb, f"{self.split} split", sharers)
        return self.cache is not None

    def _prepared(self, index: int):
        return self.transform.prepare(decode(self.samples[index][0]))

    def _cached(self, index: int) -> torch.Tensor:
        return self.cache.get(index, lambda: self._prepared(index))

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
            return self._item(self._cached(index), seed), label
        if isinstance(self.transform, ImagePipeline):
            return self._item(self.transform.prepare(decode(path)), seed), label
        image = decode(path)
        if self.transform is None:
            return image, label
        with seeded_rng(seed) if seed is not None else contextlib.nullcontext():
            return self.transform(image), label

    def _item(self, prepared: torch.Tensor, seed: int | None) -> torch.Tensor:
        """The pipeline's per-item step on a prepared image, its randomness drawn from `seed`."""
        item = self.transform.item
        if isinstance(item, BatchAugment):  # draws from a generator of its own: no global state to swap
            return item(prepared, _generator(seed))
        with seeded_rng(seed) if seed is not None else contextlib.nullcontext():
            return item(prepared)

    def __getitems__(self, keys: list) -> list[tuple[torch.Tensor, int]]:
        """A batch of samples, exactly as `[self[key] for key in keys]` gives them. A cached split whose per-item
        step works on a batch renders the images of one size together: a batch augmentation
        (`leafnet.data.batch_augment.BatchAugment`: the warp, the staged pipeline, the supersampled warp) draws
        each sample's parameters from its own seed as always, then renders them in one call; the eval transform's
        to-tensor and normalisation are element-wise, so a batch of them is the same numbers. A DataLoader (which
        calls this for each batch) then costs a fraction of the per-item path, cheap enough to run in the training
        process itself (`leafnet.data.loaders.auto_workers`)."""
        if not self.batches_items:
            return [self[key] for key in keys]
        item = self.transform.item
        augment = isinstance(item, BatchAugment)  # else the eval step: nothing drawn
        generator = torch.Generator()  # reseeded per sample: a fresh generator's numbers, without making one
        images, params, labels, grey = [], [], [], []
        for key in keys:
            index, seed = key if isinstance(key, tuple) else (key, None)
            image = self._cached(index)
            images.append(image)
            if augment:
                draws = generator.manual_seed(seed) if seed is not None else None
                params.append(item.sample(image.shape[1], image.shape[0], draws))
                grey.append(self._is_grey(index, image))
            labels.append(self.samples[index][1])
        by_size: dict[tuple, list[int]] = {}  # a split's cached images share a size; a few may not
        for position, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(position)
        rendered: list[torch.Tensor | None] = [None] * len(keys)
        for positions in by_size.values():
            stacked = torch.stack([images[p] for p in positions])
            if augment:
                batch = item.apply(
                    stacked, torch.stack([params[p] for p in positions]), all(grey[p] for p in positions)
                )
            else:
                batch = item.batch(stacked)
            for position, tensor in zip(positions, batch, strict=True):
                rendered[position] = tensor
        return list(zip(rendered, labels, strict=True))

    def _is_grey(self, index: int, image: torch.Tensor) -> bool:
        grey = self._grey.get(index)
        if grey is None:
            grey = self._grey[index] = channels_equal(image)
        return grey

    @property
    def batches_augment(self) -> bool:
        """True when `__getitems__` augments a batch at once: the split is cached and its step is a BatchAugment."""
        return self.cache is not None and isinstance(getattr(self.transform, "item", None), BatchAugment)

    @property
    def batches_items(self) -> bool:
        """True when `__getitems__` renders a batch at once: a batch augmentation, or a cached split's eval step."""
        item = getattr(self.transform, "item", None)
        return self.batches_augment or (self.cache is not None and getattr(item, "batchable", False))


def _generator(seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(seed) if seed is not None else None


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
