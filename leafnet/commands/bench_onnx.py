"""Benchmark an export: `leafnet bench onnx exports/leafnet [batch_sizes=[1,8,32]] [threads=[1,2]]`.

Every variant (onnxruntime, TorchScript) and the eager model, at each batch size and thread count: latency
p50/p90/p99, images/s, speed-up vs fp32 ONNX, size, test top-1. Writes benchmark.json, .md and .png.
"""

from leafnet.bench.inference import InferenceBenchConfig, run_inference_benchmark
from leafnet.config import load_config


def main(argv: list[str]) -> None:
    # The export directory may come first without a key: benchmark_onnx.py exports/leafnet
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        argv = [f"export_dir={argv[0]}", *argv[1:]]
    run_inference_benchmark(load_config(InferenceBenchConfig, argv))


CONFIG = InferenceBenchConfig  # the options and their defaults (`leafnet bench onnx --help` lists them)
