"""Measure whether data loading keeps up with training: `leafnet bench data data=... workers=[0,1,2]`."""

from leafnet.bench.loader import LoaderBenchConfig, run_loader_benchmark
from leafnet.config import load_config
from leafnet.fsutil import write_json


def main(argv: list[str]) -> None:
    config = load_config(LoaderBenchConfig, argv)
    result = run_loader_benchmark(config)
    write_json(config.output, result)
    print(f"wrote {config.output}")


CONFIG = LoaderBenchConfig  # the options and their defaults (`leafnet bench data --help` lists them)
