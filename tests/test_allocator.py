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

STAGED_BATCHES = """
import resource, sys, torch
from leafnet.allocator import keep_freed_memory
from leafnet.data.staged import RotateCropResize
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
staged = RotateCropResize(56, [0.5] * 3, [0.25] * 3, [0, 0, 0], "bilinear", 20.0, (0.7, 1.0), (0.9, 1.1), 0.5)
images = torch.arange(3, dtype=torch.uint8).expand(64, 128, 128, 3)  # colour: every channel resampled
params = torch.stack([staged.sample(128, 128, torch.Generator().manual_seed(i)) for i in range(64)])
for _ in range(3):  # the first batches grow the heap to what a batch needs
    staged.apply(images, params)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    staged.apply(images, params)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    """Minor page faults over three staged batches in a fresh process (malloc's state is per process), with
    glibc's defaults: no malloc tuning from the environment, no other allocator preloaded."""
    tuning = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")
    env = {key: value for key, value in os.environ.items() if key not in tuning}
    run = subprocess.run(
        [sys.executable, "-c", STAGED_BATCHES, mode], capture_output=True, text=True, check=True, env=env
    )
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; elsewhere nothing is changed")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 1000  # three batches' temporaries, mapped and unmapped again and again (4 KiB pages)
    assert kept < default / 4  # seen: 13,800 to 24,700 against 0 to 1,800 (heap layout varies from run to run)


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
