"""The variants export writes and their files, and the one rule that names archives: <archive_name>.mar
holds the first served variant, and <archive_name>-<variant>.mar each other one. Export writes by it;
leafnet serve and the serving benchmark find archives by it: `python -m leafnet.export.naming onnx-int8
[key=value ...]` prints the file name under the export defaults and the overrides (archive_name=...,
served=[...])."""

from __future__ import annotations

from dataclasses import dataclass

from leafnet.config import load_config
from leafnet.export.config import ExportConfig


# The variants export writes, each in its own file of the export directory.
@dataclass(frozen=True)
class Variant:
    name: str
    file: str
    quantized: bool


VARIANTS = (
    Variant("torchscript", "model.ts.pt", quantized=False),
    Variant("torchscript-dynq", "model.dynq.ts.pt", quantized=True),
    Variant("onnx", "model.onnx", quantized=False),
    Variant("onnx-dynq", "model.dynq.onnx", quantized=True),
    Variant("onnx-int8", "model.int8.onnx", quantized=True),
)
VARIANT_BY_NAME = {v.name: v for v in VARIANTS}


def archive_names(archive_name: str, served: list[str]) -> list[str]:
    """The archive file of each served variant, in `served` order."""
    return [archive_file(archive_name, served, variant) for variant in served]


def archive_file(archive_name: str, served: list[str], variant: str) -> str:
    """The archive file that holds `variant` (the name it would get, when it is not served)."""
    return f"{archive_name}.mar" if served and variant == served[0] else f"{archive_name}-{variant}.mar"


def default_archive(variant: str) -> str:
    """The archive of `variant` under the export defaults."""
    defaults = ExportConfig()
    return archive_file(defaults.archive_name, defaults.served, variant)


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m leafnet.export.naming VARIANT [key=value ...]")
    config = load_config(ExportConfig, argv[1:])
    print(archive_file(config.archive_name, config.served, argv[0]))


if __name__ == "__main__":
    from leafnet.cli import run

    run(main, ExportConfig(), __doc__)
