"""leafnet/allocator.py: freed blocks stay in the process, so a batch does not fault its memory in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from leafnet.bench.train import TrainBenchConfig, run_train_benchmark
from leafnet.commands import train as train_command
from leafnet.errors import LeafnetError

BATCH_OF_BLOCKS = """
import ctypes, resource, sys
from leafnet.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
BLOCK, COUNT = 4 << 20, 8  # a batch's temporaries: blocks of a few MB, all freed at its end

def batch():
    blocks = [libc.malloc(BLOCK) for _ in range(COUNT)]
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)  # touched, as a tensor's memory is
    for block in blocks:
        libc.free(block)

for _ in range(3):  # the first batch's blocks are mapped; glibc's defaults then move them to the heap
    batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    """Minor page faults over three batches of freed blocks in a fresh process (malloc's state is per process),
    with glibc's defaults: no malloc tuning from the environment, no other allocator preloaded. Plain malloc
    and free rather than a staged batch: which of a real batch's temporaries glibc trims depends on how its
    heap happens to be laid out (from thousands of faults to none between runs), these always trim."""
    tuning = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")
    env = {key: value for key, value in os.environ.items() if key not in tuning}
    run = subprocess.run(
        [sys.executable, "-c", BATCH_OF_BLOCKS, mode], capture_output=True, text=True, check=True, env=env
    )
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; elsewhere nothing is changed")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _page_faults("default"), _page_faults("keep")
    # glibc's defaults: freeing the batch leaves 32 MB free at the heap's top, over its trim threshold (twice the
    # largest block freed), so it goes back to the kernel and the next batch faults every page in again
    assert default >= 3 * 8 * (4 << 20) // 4096 * 0.9
    assert kept < 100


def test_the_train_command_keeps_freed_memory_as_configured_and_the_library_call_does_not(monkeypatch):
    calls = []
    monkeypatch.setattr(train_command, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setattr(train_command, "train", lambda cfg, clock: calls.append(cfg.train.keep_freed_memory))
    train_command.main([])
    train_command.main(["train.keep_freed_memory=false"])
    assert calls == ["kept", True, False]
    import leafnet.train

    assert "keep_freed_memory" not in vars(leafnet.train)  # a library caller's process keeps its allocator


def test_step_variants_must_agree_on_the_allocator_they_share_a_process():
    variants = {"kept": [], "trimmed": ["train.keep_freed_memory=false"]}
    with pytest.raises(LeafnetError, match="compare it with mode=run \\(here kept=True, trimmed=False\\)"):
        run_train_benchmark(TrainBenchConfig(variants=variants))
