"""A map over worker processes for the per-image stages: prepare's decoding and the synthetic leaves' drawing."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

MIN_ITEMS = 64  # below this many items, starting a pool costs more than it saves


def ordered_map(function: Callable, items: list, workers: int = 0) -> Iterator:
    """`function` over `items`, results in their order: in `workers` processes (0: one per CPU core), or in
    this process when that is one worker or there are too few items for a pool to pay."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(items) < MIN_ITEMS:
        yield from map(function, items)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(function, items, chunksize=16)
