"""Export a checkpoint: `leafnet export checkpoint=runs/leafnet/checkpoints/best.pt [output=exports/leafnet]`.

Writes TorchScript, ONNX and quantized variants with export.json to exports/<run name>/, checked against
the eager model (gates.*), and the served variants as .mar archives in model_store/. Defaults are
leafnet.export.config's (config/export.yaml lists them).
"""

from leafnet.config import load_config
from leafnet.export.config import ExportConfig
from leafnet.export.exporter import export_checkpoint


def main(argv: list[str]) -> None:
    export_checkpoint(load_config(ExportConfig, argv))


CONFIG = ExportConfig  # the options and their defaults (`leafnet export --help` lists them)
