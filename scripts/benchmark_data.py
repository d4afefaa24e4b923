"""`python scripts/benchmark_data.py ...` is `leafnet bench data ...` (leafnet/commands/bench_data.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import bench_data

if __name__ == "__main__":
    run_command(bench_data)
