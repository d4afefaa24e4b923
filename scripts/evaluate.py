"""Evaluate a checkpoint: `python scripts/evaluate.py checkpoint=runs/leafnet/checkpoints/best.pt split=test`."""

from leafnet.cli import run
from leafnet.config import load_config
from leafnet.evaluation import EvalConfig, evaluate_checkpoint


def main(argv: list[str]) -> None:
    evaluate_checkpoint(load_config(EvalConfig, argv))


if __name__ == "__main__":
    run(main, EvalConfig(), __doc__)
