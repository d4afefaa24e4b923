"""Keeps freed memory in the process for reuse, where the C library is glibc.

A CPU training step allocates and frees the same large tensors every batch (activations, gradients, the
staged augmentation's images). glibc's malloc serves each of more than a few hundred kilobytes with a
fresh mmap and hands it back to the kernel when it is freed, or trims the top of its heap, so every batch
faults the same memory in again, page by page, zeroed by the kernel (docs/training.md has the counts).
A fixed mmap threshold of 32 MiB (glibc's largest) and a trim threshold of 1 GiB keep such blocks in the
heap for the next batch. Tensors larger than 32 MiB are still mapped and unmapped each time.
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
    """Sets glibc's thresholds as above; False (and nothing changed) on another platform or C library."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        logger.info("the C library refused mallopt's thresholds: freed memory goes back to the kernel as before")
    return done
