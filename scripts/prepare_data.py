"""Prepare a data set: `python scripts/prepare_data.py source=synthetic|kaggle|imagefolder input=... output=...`."""

from leafnet.cli import run
from leafnet.config import load_config
from leafnet.data.prepare import PrepareConfig, prepare


def main(argv: list[str]) -> None:
    prepare(load_config(PrepareConfig, argv))


if __name__ == "__main__":
    run(main, PrepareConfig(), __doc__)
