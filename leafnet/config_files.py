"""config/train.yaml and config/export.yaml: the defaults of each stage's dataclasses with their
descriptions, for reading and copying. `python -m leafnet.config_files` (make config-docs) writes them;
a test fails when they differ from what the dataclasses render."""

from __future__ import annotations

from pathlib import Path

from leafnet.config import config_file_text
from leafnet.export.config import ExportConfig
from leafnet.train_config import TrainConfig

FILES = {
    "config/train.yaml": (TrainConfig, "leafnet/train_config.py"),
    "config/export.yaml": (ExportConfig, "leafnet/export/config.py"),
}


def render(name: str) -> str:
    schema, source = FILES[name]
    return config_file_text(schema(), source)


def main() -> None:
    for name in FILES:
        Path(name).write_text(render(name))
        print(f"wrote {name}")


if __name__ == "__main__":
    main()
