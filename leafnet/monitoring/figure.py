"""drift.png: reference against served, one panel per test, drifted ones in red."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np

from leafnet.monitoring.records import Record

DRIFT_COLOUR, CALM_COLOUR = "#c0392b", "#1f77b4"


def _served(window: list[Record], name: str) -> np.ndarray:
    if name == "confidence":
        return np.asarray([r.p for r in window])
    return np.asarray([r.features[name] for r in window])


def _histograms(axes, reference: np.ndarray, served: np.ndarray, colour: str) -> None:
    low, high = min(reference.min(), served.min()), max(reference.max(), served.max())
    if high - low < 1e-9:  # one value on both sides (colour of silhouettes): a readable unit range around it
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 31)
    axes.hist(reference, bins=bins, density=True, color="0.6", alpha=0.6, label="reference")
    axes.hist(served, bins=bins, density=True, histtype="step", linewidth=1.6, color=colour, label="served")


def _classes(axes, counts: list[int], window: list[Record], colour: str) -> None:
    prior = np.asarray(counts, float) / sum(counts)
    served = np.bincount([r.top1 for r in window], minlength=prior.size) / len(window)
    axes.bar(np.arange(prior.size), prior, width=1.0, color="0.6", alpha=0.6, label="train prior")
    axes.step(np.arange(prior.size), served, where="mid", color=colour, linewidth=1.4, label="served")
    axes.set_xlabel("class index")


def drift_figure(reference: dict, window: list[Record], result: dict, title: str):
    tests = result["tests"]
    columns = 3
    rows = max(1, math.ceil(len(tests) / columns))
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axes, (name, test) in zip(grid.flat, tests.items(), strict=False):  # spare panels stay blank
        colour = DRIFT_COLOUR if test["drifted"] else CALM_COLOUR
        if name == "predicted_class":
            _classes(axes, reference["class_counts"], window, colour)
        else:
            values = reference["confidence"] if name == "confidence" else reference["features"][name]
            _histograms(axes, np.asarray(values, float), _served(window, name), colour)
        effect = f"{'V' if test['test'] == 'chi-square' else 'D'}={test['effect']:.2f}"
        axes.set_title(
            f"{name}{'  DRIFT' if test['drifted'] else ''}\n{effect}  p(Holm)={test['p_adjusted']:.1e}",
            color=colour,
            fontsize=9,
            fontweight="bold" if test["drifted"] else "normal",
        )
        for spine in axes.spines.values():
            spine.set_edgecolor(colour if test["drifted"] else "0.3")
        axes.tick_params(labelsize=7)
        axes.legend(fontsize=7)
    for axes in list(grid.flat)[len(tests) :]:
        axes.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def save_figure(figure, path: Path) -> None:
    figure.savefig(path, dpi=110)
    plt.close(figure)
