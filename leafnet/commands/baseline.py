"""Pixel-level linear baseline (logistic regression on 32x32 grey): `leafnet baseline data=...`."""

from leafnet.baseline import BaselineConfig, run_baseline
from leafnet.config import load_config


def main(argv: list[str]) -> None:
    run_baseline(load_config(BaselineConfig, argv))


CONFIG = BaselineConfig  # the options and their defaults (`leafnet baseline --help` lists them)
