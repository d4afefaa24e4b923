"""Export a checkpoint: `python scripts/export.py checkpoint=runs/leafnet/checkpoints/best.pt [output=exports/leafnet]`.

Writes TorchScript, ONNX and quantized variants with export.json to exports/<run name>/, checked against
the eager model (gates.*), and the served variants as .mar archives in model_store/. Defaults are
leafnet.export.config's (config/export.yaml lists them).
"""

from leafnet.cli import run
from leafnet.config import load_config
from leafnet.export.config import ExportConfig
from leafnet.export.exporter import export_checkpoint


def main(argv: list[str]) -> None:
    export_checkpoint(load_config(ExportConfig, argv))


if __name__ == "__main__":
    run(main, ExportConfig(), __doc__)
