"""A split decoded once: every image through its pipeline's deterministic prefix, kept as uint8 in shared
memory, filled on first touch.

Decoding a PNG and resizing it cost more than a whole augmented sample from memory, and a training run
decodes every image once per epoch otherwise. The tensor sits in shared memory, so whichever process
reads an image first (a DataLoader worker, forked or spawned, or the main process) decodes it and
stores it for all the others: the first epoch decodes as before, in the workers and beside compute,
and no later epoch decodes at all. Nothing is decoded up front but one image, which gives the shape.

A split is cached only when the tensor fits the budget (`data.cache_mb`, capped by the free space of
/dev/shm, which Docker keeps small unless told otherwise); an image whose prepared shape differs from
the first's is decoded per item each time, as is every image of a split that is not cached.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

logger = logging.getLogger(__name__)

MB = 1024 * 1024
SHM = Path("/dev/shm")


def decode(path: str | Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def shared_memory_free_mb() -> float | None:
    """Free space of /dev/shm, where shared tensors live on Linux; None where there is none to check."""
    try:
        stats = os.statvfs(SHM)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize / MB


class DecodedCache:
    """uint8 images [N, H, W, 3] and a filled flag per image, both in shared memory."""

    def __init__(self, images: torch.Tensor, filled: torch.Tensor) -> None:
        self.images, self.filled = images, filled

    @property
    def megabytes(self) -> float:
        return self.images.numel() / MB

    @classmethod
    def allocate(
        cls, count: int, first: torch.Tensor, budget_mb: float, what: str = "split", sharers: int = 1
    ) -> DecodedCache | None:
        """Room for `count` images shaped like `first` (stored as image 0), or None, saying why, when it
        does not fit `budget_mb` or this process's share of the free shared memory (half of it, split
        between `sharers` processes allocating at once: loader workers pass their batches through it too)."""
        needed = first.numel() * count / MB
        free = shared_memory_free_mb()
        limit, limit_name = budget_mb, f"data.cache_mb={budget_mb:g}"
        if free is not None and free / 2 / max(1, sharers) < limit:
            limit = free / 2 / max(1, sharers)
            limit_name = f"half the free {SHM} ({free:.0f} MB) shared by {max(1, sharers)} process(es)"
        if count == 0 or needed > limit:
            logger.info("%s: not cached in memory (%.0f MB > %s); decoded per item", what, needed, limit_name)
            return None
        try:
            images = torch.empty((count, *first.shape), dtype=torch.uint8).share_memory_()
            filled = torch.zeros(count, dtype=torch.uint8).share_memory_()
        except RuntimeError as error:  # no shared memory to be had here
            logger.info("%s: not cached in memory (%s); decoded per item", what, str(error).splitlines()[0])
            return None
        cache = cls(images, filled)
        cache.store(0, first)
        return cache

    def store(self, index: int, prepared: torch.Tensor) -> None:
        if prepared.shape == self.images.shape[1:]:
            self.images[index] = prepared
            self.filled[index] = 1  # after the pixels: a reader that sees the flag sees them

    def get(self, index: int, load: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Image `index`, loaded (and stored for every process) if no process has yet."""
        if self.filled[index]:
            return self.images[index]
        prepared = load()
        self.store(index, prepared)
        return prepared
