"""Two-sample drift tests of a served window against the reference, and the verdict.

- each image statistic and the top-1 probability: Kolmogorov-Smirnov (`scipy.stats.ks_2samp`), no
  assumption about the shape of the distributions; its statistic D, the largest gap between the two
  cumulative distributions (0..1), is also the effect size. PSI on the reference's deciles is reported
  beside it, for readers used to it;
- the predicted classes: Pearson's chi-square against the train split's class frequencies, with
  classes of small expected count merged so every cell expects at least 5; Cramér's V (0..1) is the
  effect size.

p-values are Holm-corrected over all tests of the window (family-wise error `alpha`). A test flags drift
only when its corrected p-value is below `alpha` AND its effect is at least `min_effect`: a huge window
makes any trifle significant, and a tiny one makes nothing significant.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from leafnet.monitoring.records import Record

MIN_EXPECTED = 5.0  # per chi-square cell: below it the chi-square approximation is not trusted
PSI_FLOOR = 1e-4  # a bin empty on one side would make PSI infinite


def psi(served: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index over the reference's deciles (ties merged), bins closed on the right,
    so a value below or above every reference value has a bin of its own."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11)))
    expected = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=edges.size + 1)
    actual = np.bincount(np.searchsorted(edges, served, side="left"), minlength=edges.size + 1)
    expected = np.maximum(expected / expected.sum(), PSI_FLOOR)
    actual = np.maximum(actual / actual.sum(), PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_test(served: list[float], reference: list[float]) -> dict:
    served_array, reference_array = np.asarray(served, float), np.asarray(reference, float)
    result = stats.ks_2samp(served_array, reference_array)
    return {
        "test": "ks",
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "effect": float(result.statistic),
        "psi": psi(served_array, reference_array),
        "served_median": float(np.median(served_array)),
        "reference_median": float(np.median(reference_array)),
    }


def class_bins(expected: np.ndarray) -> list[list[int]]:
    """Classes grouped, smallest expected count first, until each group expects MIN_EXPECTED."""
    bins, current, total = [], [], 0.0
    for index in np.argsort(expected, kind="stable"):
        current.append(int(index))
        total += expected[index]
        if total >= MIN_EXPECTED:
            bins.append(current)
            current, total = [], 0.0
    if current and bins:  # the remainder joins the last full group
        bins[-1].extend(current)
    elif current:
        bins.append(current)
    return bins


def class_test(predicted: list[int], class_counts: list[int]) -> dict | None:
    """Chi-square of the predicted classes against the prior; None when fewer than two cells remain."""
    counts = np.asarray(class_counts, float)
    observed = np.bincount(predicted, minlength=counts.size).astype(float)
    expected = len(predicted) * counts / counts.sum()
    bins = class_bins(expected)
    if len(bins) < 2:
        return None
    observed_bins = [observed[group].sum() for group in bins]
    expected_bins = [expected[group].sum() for group in bins]
    result = stats.chisquare(observed_bins, expected_bins)
    cramers_v = math.sqrt(float(result.statistic) / (len(predicted) * (len(bins) - 1)))
    return {
        "test": "chi-square",
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "effect": min(cramers_v, 1.0),
        "cells": len(bins),
        "classes": int(counts.size),
        "top_served": _top_shares(observed),
        "top_reference": _top_shares(counts),
    }


def _top_shares(counts: np.ndarray, k: int = 5) -> dict[str, float]:
    order = np.argsort(-counts, kind="stable")[:k]
    return {str(int(i)): round(float(counts[i] / counts.sum()), 4) for i in order}


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given."""
    order = np.argsort(p_values, kind="stable")
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def compare(reference: dict, window: list[Record], alpha: float, min_effect: float) -> dict:
    """Every test of `window` against `reference`: {"tests": {name: result}, "skipped": {name: why},
    "drifted": [names]}."""
    tests, skipped = {}, {}
    served_features = set().union(*(r.features for r in window))
    for name in sorted(served_features | set(reference["features"])):
        if name not in reference["features"]:
            skipped[name] = "not in the reference: export found no raw images to size (docs/serving.md)"
        elif any(name not in r.features for r in window):
            skipped[name] = "missing from some served records"
        else:
            tests[name] = ks_test([r.features[name] for r in window], reference["features"][name])
    if len(reference["confidence"]) > 0:
        tests["confidence"] = ks_test([r.p for r in window], reference["confidence"])
    else:
        skipped["confidence"] = "the reference holds no test-split probabilities"
    classes = class_test([r.top1 for r in window], reference["class_counts"]) if reference["class_counts"] else None
    if classes is not None:
        tests["predicted_class"] = classes
    elif reference["class_counts"]:
        skipped["predicted_class"] = f"fewer than two cells expect {MIN_EXPECTED:g} predictions in this window"
    else:
        skipped["predicted_class"] = "the reference holds no class counts"
    names = list(tests)
    for name, adjusted in zip(names, holm([tests[n]["p_value"] for n in names]), strict=True):
        test = tests[name]
        test["p_adjusted"] = adjusted
        test["drifted"] = bool(adjusted < alpha and test["effect"] >= min_effect)
    return {"tests": tests, "skipped": skipped, "drifted": [n for n in names if tests[n]["drifted"]]}
