"""`python scripts/benchmark_train.py ...` is `leafnet bench train ...` (leafnet/commands/bench_train.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import bench_train

if __name__ == "__main__":
    run_command(bench_train)
