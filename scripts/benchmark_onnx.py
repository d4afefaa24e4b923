"""`python scripts/benchmark_onnx.py ...` is `leafnet bench onnx ...` (leafnet/commands/bench_onnx.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import bench_onnx

if __name__ == "__main__":
    run_command(bench_onnx)
