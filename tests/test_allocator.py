"""leafnet/allocator.py: freed blocks stay in the process, so a batch does not fault its memory in again."""

from __future__ import annotations

import platform
import subprocess
import sys

STAGED_BATCHES = """
import resource, sys, torch
from leafnet.allocator import keep_freed_memory
from leafnet.data.staged import RotateCropResize
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
staged = RotateCropResize(56, [0.5] * 3, [0.25] * 3, [0, 0, 0], "bilinear", 20.0, (0.7, 1.0), (0.9, 1.1), 0.5)
images = torch.zeros(64, 128, 128, 3, dtype=torch.uint8)
params = torch.stack([staged.sample(128, 128, torch.Generator().manual_seed(i)) for i in range(64)])
for _ in range(3):  # the first batches grow the heap to what a batch needs
    staged.apply(images, params)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    staged.apply(images, params)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    """Minor page faults over three staged batches in a fresh process (malloc's state is per process)."""
    run = subprocess.run([sys.executable, "-c", STAGED_BATCHES, mode], capture_output=True, text=True, check=True)
    return int(run.stdout.split()[-1])


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    assert platform.libc_ver()[0] == "glibc"  # the C library this project's machines run; elsewhere it is a no-op
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 1000  # three batches' temporaries, mapped and unmapped again and again (4 KiB pages)
    assert kept < default / 10
