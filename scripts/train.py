"""Train a classifier: `python scripts/train.py key=value ...` or `torchrun --nproc_per_node=N scripts/train.py ...`.

Reads config/train.yaml, then `--config FILE` and `key=value` overrides (e.g. model.name=resnet34 schedule.epochs=50).
"""

from pathlib import Path

from leafnet.cli import run
from leafnet.config import load_config
from leafnet.train import main as train
from leafnet.train_config import TrainConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "train.yaml"  # wherever it runs from


def main(argv: list[str]) -> None:
    defaults = [DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else []
    train(load_config(TrainConfig, argv, files=defaults))


if __name__ == "__main__":
    run(main, TrainConfig(), __doc__)
