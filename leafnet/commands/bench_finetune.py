"""Whether pretraining pays, proven on generated data: `leafnet bench finetune budget_s=20`.

Pretrains a backbone on most of the synthetic species, publishes it as a timm-format model.safetensors
without its head (with a config.json of its preprocessing), then trains a new task (the held-out
species, 4 images each) from scratch, as a linear probe, fully fine-tuned and fully fine-tuned with
layer decay, each arm at the same wall-clock budget; writes finetune.{json,md} (docs/finetune.md).
"""

from leafnet.bench.finetune import FinetuneBenchConfig, run_finetune_benchmark, write_results
from leafnet.config import load_config


def main(argv: list[str]) -> None:
    config = load_config(FinetuneBenchConfig, argv)
    write_results(config, run_finetune_benchmark(config))


CONFIG = FinetuneBenchConfig  # the options and their defaults (`leafnet bench finetune --help` lists them)
