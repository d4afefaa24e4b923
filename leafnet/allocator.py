"""Keeps freed memory in the process for reuse, where the C library is glibc.

A CPU training step allocates and frees the same large tensors every batch (activations, gradients, the
staged augmentation's images). glibc's malloc maps a large block afresh until one is freed (its mmap
threshold then rises to that block's size), and whenever the free space at the top of its heap exceeds
the trim threshold (twice the mmap threshold by then) it hands that space back to the kernel: a batch's
temporaries, freed together, exceed it, so the next batch faults the same memory in again, page by page,
zeroed by the kernel (docs/training.md, tests/test_allocator.py). A trim threshold of 1 GiB keeps that
space in the process for the next batch, and a fixed mmap threshold of 32 MiB (glibc's largest) serves
blocks up to that size from the heap from the first batch on. Larger blocks are still mapped each time.
The price is memory: the process keeps up to its peak. Another allocator (musl's, or jemalloc preloaded)
is left as it is.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound on 64-bit systems: larger values are refused
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Sets glibc's thresholds as above; False, saying what stayed as it was, where that cannot be done."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The trim threshold first: it is what keeps the memory; the mmap threshold only does so from the first batch.
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        logger.info("the C library refused mallopt's trim threshold: freed memory goes back to the kernel as before")
        return False
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) != 1:
        logger.info(
            "the C library refused a %d-byte mmap threshold: large blocks are mapped as before", MMAP_THRESHOLD_MAX
        )
    return True
