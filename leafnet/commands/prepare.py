"""Prepare a data set: `leafnet prepare source=synthetic|kaggle|imagefolder input=... output=...`."""

from leafnet.config import load_config
from leafnet.data.prepare import PrepareConfig, prepare


def main(argv: list[str]) -> None:
    prepare(load_config(PrepareConfig, argv))


CONFIG = PrepareConfig  # the options and their defaults (`leafnet prepare --help` lists them)
