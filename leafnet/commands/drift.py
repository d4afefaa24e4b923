"""Drift report: `leafnet drift logs=runs/torchserve reference=exports/leafnet [fail_on_drift=true]`.

Compares the last `window` requests the handler logged (LEAFNET_DRIFT lines in TorchServe's
model_log.log) with the export's drift_reference.json; writes drift.json and drift.png to `output`.
Exit status: 0 when the report is written (drift or not), 3 on drift with fail_on_drift=true,
2 when no report can be made (no logs, no drift lines, too few requests, no reference).
"""

from leafnet.config import load_config
from leafnet.monitoring.report import DriftConfig, drift_report

EXIT_DRIFT = 3


def main(argv: list[str]) -> int:
    config = load_config(DriftConfig, argv)
    report = drift_report(config)
    return EXIT_DRIFT if config.fail_on_drift and report["drift"] else 0


CONFIG = DriftConfig  # the options and their defaults (`leafnet drift --help` lists them)
