"""Print an export's calibration and unknown detection: `leafnet calibration [export=exports/leafnet]`.

The summary export logs, read back from its export.json: the temperature and test ECE, NLL and Brier score
before and after it, what the unknown threshold accepts and flags (per generated family), the scores
compared, each variant's figures, and whether the targets of docs/calibration.md hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from leafnet.config import load_config
from leafnet.errors import LeafnetError
from leafnet.export.summary import log_calibration


@dataclass
class CalibrationSummaryConfig:
    export: str = "exports/leafnet"  # an export directory (its export.json)


def main(argv: list[str]) -> None:
    config = load_config(CalibrationSummaryConfig, argv)
    record = Path(config.export) / "export.json"
    try:
        report = json.loads(record.read_text())
    except FileNotFoundError:
        raise LeafnetError(
            f"{record} not found: pass export= an export directory (leafnet export writes one)"
        ) from None
    if "calibration" not in report:
        raise LeafnetError(f"{record} has no calibration: it was exported before calibration; export it again")
    print(f"calibration of {config.export} ({report['model']}, version {report['version']}):")
    log_calibration(report, print)


CONFIG = CalibrationSummaryConfig  # the options and their defaults (`leafnet calibration --help` lists them)
