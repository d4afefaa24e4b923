"""Evaluate a checkpoint: `leafnet evaluate checkpoint=runs/leafnet/checkpoints/best.pt split=test`."""

from leafnet.config import load_config
from leafnet.evaluation import EvalConfig, evaluate_checkpoint


def main(argv: list[str]) -> None:
    evaluate_checkpoint(load_config(EvalConfig, argv))


CONFIG = EvalConfig  # the options and their defaults (`leafnet evaluate --help` lists them)
