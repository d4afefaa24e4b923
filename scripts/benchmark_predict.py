"""`python scripts/benchmark_predict.py ...` is `leafnet bench predict ...` (leafnet/commands/bench_predict.py):
an alias, as every command has one."""

from leafnet.cli import run_command
from leafnet.commands import bench_predict

if __name__ == "__main__":
    run_command(bench_predict)
