"""The drift report: served records from TorchServe's logs against the export's drift reference.

`drift_report(DriftConfig(...))` reads the logs, picks the window, runs the tests of
leafnet.monitoring.drift and writes `drift.json` and `drift.png` to `output`. A window it cannot judge
(no log, no drift line, too few records, a reference of other statistics or another model) is a
LeafnetError naming the fix, never a report on too little data.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from leafnet.errors import LeafnetError
from leafnet.fsutil import write_json
from leafnet.monitoring.drift import compare
from leafnet.monitoring.figure import drift_figure, save_figure
from leafnet.monitoring.records import (
    MARKER,
    Parsed,
    Record,
    iso,
    log_files,
    parse_time,
    read_records,
    select_window,
)
from leafnet.monitoring.reference import load_reference

logger = logging.getLogger(__name__)

MALFORMED_SHOWN = 5


@dataclass
class DriftConfig:
    logs: str = "runs/torchserve"  # model_log.log, the folder TorchServe logs into, or a glob
    reference: str = "exports/leafnet"  # drift_reference.json, an export directory holding it, or a .mar
    output: str = "runs/drift"  # gets drift.json and drift.png
    window: int = 1000  # the last N served records (after since/until/model filters)
    min_window: int = 100  # fewer records than this: refuse to judge
    since: str | None = None  # ISO 8601, UTC unless a zone is given
    until: str | None = None  # ISO 8601, as since: records after it are left out
    model: str | None = None  # TorchServe model name; default: every model in the logs
    any_version: bool = False  # default: only records of the reference's model version
    alpha: float = 0.01  # family-wise error rate over all tests of a window (Holm)
    min_effect: float = 0.1  # smallest KS D or Cramér's V that counts as drift
    fail_on_drift: bool = False  # scripts/drift_report.py exits 3 on drift (cron, CI)
    plot: bool = True  # write drift.png beside drift.json

    def validate(self) -> None:
        if self.window < 1 or self.min_window < 1:
            raise LeafnetError("window and min_window must be at least 1")
        if self.window < self.min_window:
            raise LeafnetError(f"window={self.window} is smaller than min_window={self.min_window}")
        if not 0 < self.alpha < 1:
            raise LeafnetError(f"alpha must be between 0 and 1, got {self.alpha}")
        if not 0 <= self.min_effect <= 1:
            raise LeafnetError(f"min_effect must be between 0 and 1, got {self.min_effect}")


def _usable(parsed: Parsed, files: list[Path], reference: dict) -> list[Record]:
    """The records computed with the reference's statistics, or why there are none."""
    where = ", ".join(str(f) for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    if not parsed.records:
        bad = f"; {len(parsed.malformed)} malformed, e.g. {parsed.malformed[0]}" if parsed.malformed else ""
        raise LeafnetError(
            f"no {MARKER.strip()} lines in {where} ({parsed.lines} lines read{bad}): is drift_log on in the "
            "archive's model-config.yaml, and has the server answered requests?"
        )
    records = [r for r in parsed.records if r.stats_version == reference["stats_version"]]
    if not records:
        found = sorted({r.stats_version for r in parsed.records})
        raise LeafnetError(
            f"the records use image statistics version {found}, the reference version "
            f"{reference['stats_version']}: compare with the reference of the served export"
        )
    return records


def _check_classes(window: list[Record], reference: dict) -> None:
    highest = max(r.top1 for r in window)
    if highest >= len(reference["class_counts"]):
        raise LeafnetError(
            f"served records predict class {highest} but the reference has {len(reference['class_counts'])} "
            "classes: it belongs to another model"
        )


def _rounded(test: dict) -> dict:
    return {k: round(v, 5) if isinstance(v, float) and not k.startswith("p_") else v for k, v in test.items()}


def drift_report(config: DriftConfig, log: Callable[[str], None] = logger.info) -> dict:
    """Writes drift.json (and drift.png) to config.output and returns drift.json's content."""
    config.validate()
    since, until = parse_time(config.since, "since"), parse_time(config.until, "until")
    reference = load_reference(config.reference)
    files = log_files(config.logs)
    parsed = read_records(files)
    if parsed.malformed:
        logger.warning("warning: %d malformed drift line(s), e.g. %s", len(parsed.malformed), parsed.malformed[0])
    records = _usable(parsed, files, reference)
    version = None if config.any_version else reference["version"]
    window = select_window(records, config.window, since, until, config.model, version)
    if len(window) < config.min_window:
        raise LeafnetError(
            f"only {len(window)} drift records in the window, fewer than min_window={config.min_window}: "
            "wait for more traffic, widen since=/until=, or lower min_window (at the cost of weaker tests)"
        )
    _check_classes(window, reference)
    result = compare(reference, window, config.alpha, config.min_effect)
    report = {
        "drift": bool(result["drifted"]),
        "drifted": result["drifted"],
        "window": {
            "size": len(window),
            "first": iso(window[0].t),
            "last": iso(window[-1].t),
            "models": dict(Counter(r.model for r in window)),
            "versions": sorted({r.version for r in window}),
        },
        "reference": {
            "source": str(config.reference),
            "version": reference["version"],
            "images": len(next(iter(reference["features"].values()), [])),
            "confidence_images": len(reference["confidence"]),
            "classes": len(reference["class_counts"]),
        },
        "thresholds": {"alpha": config.alpha, "correction": "holm", "min_effect": config.min_effect},
        "tests": {name: _rounded(test) for name, test in result["tests"].items()},
        "skipped": result["skipped"],
        "unknown": unknown_rate(window, reference),
        "logs": {
            "files": [str(f) for f in files],
            "lines": parsed.lines,
            "records": len(parsed.records),
            "malformed": len(parsed.malformed),
            "malformed_examples": parsed.malformed[:MALFORMED_SHOWN],
        },
    }
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "drift.json", report)
    verdict = f"DRIFT in {', '.join(report['drifted'])}" if report["drift"] else "no drift"
    if config.plot:
        title = f"{verdict}: {len(window)} requests {report['window']['first']} to {report['window']['last']}"
        save_figure(drift_figure(reference, window, result, title), output / "drift.png")
    _log_table(report, log)
    log(f"drift report: {verdict} -> {output / 'drift.json'}")
    return report


def unknown_rate(window: list[Record], reference: dict) -> dict:
    """How many answers in the window were `unknown`, against the rate export measured on the test split
    (`unknown_rate` in the reference); with a one-sided binomial p-value when both are known. Reported beside
    the drift tests, not among them: a rising rate means out-of-distribution traffic, which is news even
    where the image statistics hold still."""
    known = [r.unknown for r in window if r.unknown is not None]
    expected = reference.get("unknown_rate")
    summary: dict = {"answers": len(known), "unknown": int(sum(known)), "expected_rate": expected}
    summary["rate"] = round(summary["unknown"] / len(known), 5) if known else None
    if known and expected is not None:
        from scipy.stats import binomtest

        summary["p_value_above_expected"] = float(binomtest(summary["unknown"], len(known), expected, "greater").pvalue)
    return summary


def _log_table(report: dict, log: Callable[[str], None]) -> None:
    window, reference = report["window"], report["reference"]
    log(
        f"drift report: {window['size']} requests ({window['first']} to {window['last']}) against "
        f"{reference['images']} reference images, version {reference['version']}"
    )
    log(f"  {'test':<16} {'effect':>8} {'p (Holm)':>10}")
    for name, test in report["tests"].items():
        effect = f"{'V' if test['test'] == 'chi-square' else 'D'}={test['effect']:.2f}"
        log(f"  {name:<16} {effect:>8} {test['p_adjusted']:10.1e}{'  DRIFT' if test['drifted'] else ''}")
    for name, why in report["skipped"].items():
        log(f"  {name:<16} not tested: {why}")
    unknown = report["unknown"]
    if unknown["answers"]:
        expected = (
            f" (export measured {unknown['expected_rate']:.1%} on test leaves)"
            if unknown["expected_rate"] is not None
            else ""
        )
        log(f"  unknown answers: {unknown['unknown']} of {unknown['answers']}, {unknown['rate']:.1%}{expected}")
