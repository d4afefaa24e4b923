"""Pixel-level linear baseline (logistic regression on 32x32 grey): `python scripts/baseline_linear.py data=...`."""

from leafnet.baseline import BaselineConfig, run_baseline
from leafnet.cli import run
from leafnet.config import load_config


def main(argv: list[str]) -> None:
    run_baseline(load_config(BaselineConfig, argv))


if __name__ == "__main__":
    run(main, BaselineConfig(), __doc__)
