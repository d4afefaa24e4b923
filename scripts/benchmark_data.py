"""Measure whether data loading keeps up with training: `python scripts/benchmark_data.py data=... workers=[0,1,2]`."""

import json
from pathlib import Path

from leafnet.bench.loader import LoaderBenchConfig, run_loader_benchmark
from leafnet.cli import run
from leafnet.config import load_config


def main(argv: list[str]) -> None:
    config = load_config(LoaderBenchConfig, argv)
    result = run_loader_benchmark(config)
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    Path(config.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {config.output}")


if __name__ == "__main__":
    run(main, LoaderBenchConfig(), __doc__)
