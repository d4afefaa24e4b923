"""Training throughput of config variants side by side:
`leafnet bench train 'variants={base: [], r18: [model.name=resnet18]}' steps=20`.

Each variant runs the real training step on the real loader and on a batch in memory (pure compute).
"""

from leafnet.bench.train import TrainBenchConfig, run_train_benchmark
from leafnet.config import load_config
from leafnet.fsutil import write_json


def main(argv: list[str]) -> None:
    config = load_config(TrainBenchConfig, argv)
    result = run_train_benchmark(config)
    write_json(config.output, result)
    print(f"wrote {config.output}")


CONFIG = TrainBenchConfig  # the options and their defaults (`leafnet bench train --help` lists them)
