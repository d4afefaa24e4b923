"""Agreement of an exported variant with the eager model, accuracy on a split, and the parity gates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from leafnet.export.config import GateConfig


@dataclass
class Agreement:
    max_abs_logit: float
    top1_agreement: float  # share of images whose top-1 class equals eager's
    images: int


def compare_logits(reference: np.ndarray, logits: np.ndarray) -> Agreement:
    if reference.shape != logits.shape:
        raise ValueError(f"logits of shape {logits.shape} where eager gives {reference.shape}")
    same = reference.argmax(axis=1) == logits.argmax(axis=1)
    return Agreement(float(np.abs(reference - logits).max()), float(same.mean()), len(reference))


class TopK:
    """Running top-1 / top-5 counts over batches."""

    def __init__(self) -> None:
        self.count = self.top1 = self.top5 = 0

    def update(self, logits: np.ndarray, targets: np.ndarray) -> None:
        k = min(5, logits.shape[1])
        ranked = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        self.top1 += int((ranked[:, 0] == targets).sum())
        self.top5 += int((ranked == targets[:, None]).any(axis=1).sum())
        self.count += len(targets)

    def result(self) -> dict[str, float]:
        return {"top1": self.top1 / max(self.count, 1), "top5": self.top5 / max(self.count, 1)}


def allowed_lost_images(max_top1_drop: float, images: int) -> int:
    """The top-1 limit in points as whole test images: the nearest whole number of images. On the demo's 198
    test images 1.0 point is 1.98 images; truncating would make the limit 1 image (0.51 points), half of
    what was asked, and a variant that loses 2 would fail a gate it meets as closely as 198 images can."""
    return math.floor(max_top1_drop * images / 100 + 0.5 + 1e-9)


def gate_failures(
    name: str, quantized: bool, agreement: Agreement, top1: float, eager_top1: float, gates: GateConfig, images: int
):
    """Why `name` may not ship (empty when it passes): fp32 variants must match eager logit by logit,
    quantized ones may lose at most `max_top1_drop` points of top-1 on the `images` test images (as whole
    images: `allowed_lost_images`)."""
    if quantized:
        lost = round((eager_top1 - top1) * images)
        allowed = allowed_lost_images(gates.max_top1_drop, images)
        if lost > allowed:
            return [
                f"{name} loses {lost} of {images} test images, {100 * lost / images:.2f} points of test top-1 "
                f"(limit {gates.max_top1_drop} points: {allowed} image{'' if allowed == 1 else 's'})"
            ]
        return []
    failures = []
    if agreement.max_abs_logit > gates.fp32_max_abs_logit:
        failures.append(f"{name} max |Δlogit| {agreement.max_abs_logit:.3g} > {gates.fp32_max_abs_logit:g}")
    if agreement.top1_agreement < 1.0:
        disagree = round((1 - agreement.top1_agreement) * agreement.images)
        failures.append(f"{name} top-1 differs from eager on {disagree} of {agreement.images} val images")
    return failures


def calibration_gate_failures(name: str, quantized: bool, variant: dict, eager: dict, gates: GateConfig) -> list[str]:
    """A quantized variant may be calibrated at most `max_ece_increase` worse than eager (test ECE after
    temperature scaling) and tell generated out-of-distribution images from test images at most
    `max_auroc_drop` worse (its activations clip on them); fp32 variants are held to eager's logits already.
    `variant` and `eager`: their calibration reports (leafnet/export/calibrate.py variant_report)."""
    if not quantized:
        return []
    failures = []
    ece, eager_ece = variant["calibration"]["after"]["ece"], eager["calibration"]["after"]["ece"]
    increase = round(ece - eager_ece, 6)
    if increase > gates.max_ece_increase:
        failures.append(f"{name} test ECE {ece:.4f} is {increase:.4f} above eager's (limit {gates.max_ece_increase})")
    drop = round(eager["auroc"] - variant["auroc"], 6)
    if drop > gates.max_auroc_drop:
        failures.append(
            f"{name} unknown-detection AUROC {variant['auroc']:.4f} is {drop:.4f} below eager's "
            f"(limit {gates.max_auroc_drop})"
        )
    return failures
