"""Train a classifier: `python scripts/train.py key=value ...` or `torchrun --nproc_per_node=N scripts/train.py ...`.

Defaults are leafnet.train_config's (config/train.yaml lists them), then `--config FILE` and `key=value`
overrides, e.g. model.name=resnet34 schedule.epochs=50.
"""

from leafnet.cli import run
from leafnet.config import load_config
from leafnet.train import main as train
from leafnet.train_config import TrainConfig


def main(argv: list[str]) -> None:
    train(load_config(TrainConfig, argv))


if __name__ == "__main__":
    run(main, TrainConfig(), __doc__)
