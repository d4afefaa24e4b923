"""`python scripts/benchmark_serving.py ...` is `leafnet bench serving ...` (leafnet/commands/bench_serving.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import bench_serving

if __name__ == "__main__":
    run_command(bench_serving)
