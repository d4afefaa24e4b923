"""Export a checkpoint: `python scripts/export.py checkpoint=runs/leafnet/checkpoints/best.pt [output=exports/leafnet]`.

Writes TorchScript, ONNX and quantized variants with export.json to exports/<run name>/, checked against
the eager model (gates in config/export.yaml), and the served variants as .mar archives in model_store/.
"""

from pathlib import Path

from leafnet.cli import run
from leafnet.config import load_config
from leafnet.export.config import ExportConfig
from leafnet.export.exporter import export_checkpoint

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "export.yaml"  # wherever it runs from


def main(argv: list[str]) -> None:
    defaults = [DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else []
    export_checkpoint(load_config(ExportConfig, argv, files=defaults))


if __name__ == "__main__":
    run(main, ExportConfig(), __doc__)
