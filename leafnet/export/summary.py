"""The calibration and unknown-detection summary of an export: which targets hold, and the lines export logs
(and `leafnet calibration` prints again from export.json). Reads export.json's dict only: no torch."""

from __future__ import annotations

from collections.abc import Callable


def targets(eager: dict) -> dict:
    """The targets docs/calibration.md states, checked on eager's figures: reported, not gated."""
    flagged = {name: family["flagged"] for name, family in eager["families"].items()}
    return {
        "test_accepted_at_least_0.95": eager["test_accepted"] >= 0.95,
        "top1_accepted_not_below_top1": (eager["test_top1_accepted"] or 0) >= eager["test_top1"],
        "every_family_flagged_at_least_0.90": min(flagged.values()) >= 0.90,
        "auroc_at_least_0.95": eager["auroc"] >= 0.95,
        "ece_after_at_most_0.03": eager["calibration"]["after"]["ece"] <= 0.03,
    }


def log_calibration(report: dict, log: Callable[[str], None]) -> None:
    calibration, ood = report["calibration"], report["ood"]
    before, after = calibration["eager"]["before"], calibration["eager"]["after"]
    log(
        f"  calibration: T = {calibration['temperature']:.3f}; test ECE {before['ece']:.4f} -> {after['ece']:.4f}, "
        f"NLL {before['nll']:.4f} -> {after['nll']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}"
    )
    eager = ood["eager"]
    log(
        f"  unknown ({ood['score']} score): test images accepted {eager['test_accepted']:.1%} (top-1 on them "
        f"{_percent(eager['test_top1_accepted'])}, all {eager['test_top1']:.2%}); generated images flagged "
        f"{eager['ood_flagged']:.1%}; AUROC {eager['auroc']:.4f}, FPR95 {eager['fpr95']:.4f}"
    )
    log("  " + ", ".join(f"{name} {family['flagged']:.0%}" for name, family in eager["families"].items()))
    log(
        "  scores compared (AUROC / worst family flagged): "
        + ", ".join(f"{kind} {c['auroc']:.3f} / {c['worst_family_flagged']:.0%}" for kind, c in ood["scores"].items())
    )
    for name, v in report["variants"].items():
        log(
            f"  {name:<17} ECE {v['calibration']['after']['ece']:.4f}  accepted {v['ood']['test_accepted']:6.1%}  "
            f"flagged {v['ood']['ood_flagged']:6.1%}  AUROC {v['ood']['auroc']:.4f}"
        )
    missed = [name for name, held in ood["targets"].items() if not held]
    log("  targets: " + ("all met" if not missed else "NOT met: " + ", ".join(missed)))


def _percent(value: float | None) -> str:
    """A share as 98.48%, or n/a where there was nothing to take it over (no test image accepted)."""
    return "n/a" if value is None else f"{value:.2%}"
