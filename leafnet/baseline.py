"""A pixel-level linear baseline: multinomial logistic regression on 32×32 grey pixels.

It tells how much of a data set a classifier can get without learning any shape: a synthetic set is
only useful if this stays well below what a CNN reaches. L2 strength is chosen on the val split,
and the test split is scored once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from leafnet.data.prepared import PreparedData

logger = logging.getLogger(__name__)


@dataclass
class BaselineConfig:
    data: str = "data/processed/synthetic"  # a prepared data directory
    size: int = 32  # images are reduced to size x size grey pixels
    l2: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1])  # L2 strengths tried; val picks one
    iterations: int = 300  # L-BFGS iterations per fit


def load_pixels(root: str | Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    features, labels = [], []
    for path, label in PreparedData(root).samples(split):
        with Image.open(path) as image:
            grey = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
        features.append(np.asarray(grey, dtype=np.float32).ravel() / 255.0)
        labels.append(label)
    return np.stack(features), np.asarray(labels)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, iterations: int) -> torch.nn.Linear:
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def run_baseline(config: BaselineConfig, log=logger.info) -> dict:
    splits = {s: load_pixels(config.data, s, config.size) for s in ("train", "val", "test")}
    mean, std = splits["train"][0].mean(0), splits["train"][0].std(0) + 1e-6
    tensors = {s: (torch.from_numpy((x - mean) / std), torch.from_numpy(y)) for s, (x, y) in splits.items()}
    classes = len(PreparedData(config.data).classes())

    def accuracy(model, split):
        x, y = tensors[split]
        with torch.no_grad():
            return (model(x).argmax(1) == y).float().mean().item()

    best = None
    for l2 in config.l2:
        model = fit_logistic(*tensors["train"], classes, l2, config.iterations)
        val = accuracy(model, "val")
        log(f"l2={l2:g}: val top-1 {val:.1%}")
        if best is None or val > best[1]:
            best = (l2, val, model)
    l2, val, model = best
    result = {"l2": l2, "val_top1": round(val, 4), "test_top1": round(accuracy(model, "test"), 4)}
    log(f"linear baseline on {config.size}x{config.size} grey pixels: test top-1 {result['test_top1']:.1%} (l2={l2:g})")
    return result
