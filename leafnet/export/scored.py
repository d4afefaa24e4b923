"""The exported graph: calibrated logits and an out-of-distribution score, in one forward pass.

Export wraps the trained classifier in `ScoredClassifier`, so every variant (TorchScript, ONNX, the quantized
ones) carries the fitted temperature and the score inside the model file: no consumer can apply one without the
other, and no server needs leafnet to compute them. The graph has two outputs:

- `logits`: the classifier's logits divided by the temperature fitted on the validation split, so a plain
  softmax of them is the calibrated confidence;
- `ood_score`: higher means less like the training data; an image is `unknown` above the threshold export
  stores in calibration.json (leafnet/serving/calibration.py reads it).

The scores (docs/calibration.md compares them on the generated out-of-distribution families):
- `msp`: minus the maximum softmax probability (Hendrycks & Gimpel, 2017);
- `energy`: minus the log-sum-exp of the raw logits (Liu et al., 2020);
- `mahalanobis`: the squared Mahalanobis distance of the penultimate features to the nearest class mean under
  one shared covariance (Lee et al., 2018), fitted on the train split with Ledoit-Wolf shrinkage, because a
  few hundred images cannot estimate a 512-dimensional covariance on their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from leafnet.errors import LeafnetError
from leafnet.export.onnx_export import OUTPUT_NAME

SCORES = ("msp", "energy", "mahalanobis")
OUTPUT_NAMES = (OUTPUT_NAME, "ood_score")  # the ONNX outputs, in order


@dataclass
class FeatureStats:
    """The Mahalanobis score's constants: whitened class means and the whitening matrix (precision^1/2)."""

    means: np.ndarray  # [classes, dim], already whitened
    whitening: np.ndarray  # [dim, dim]
    shrinkage: float  # Ledoit-Wolf's weight on the scaled identity, for the record


CHUNK_ROWS = 4096  # rows centred and multiplied at a time: memory stays dim^2, not images x dim, in float64


def ledoit_wolf(centred: np.ndarray | Iterable[np.ndarray]) -> tuple[np.ndarray, float]:
    """Ledoit & Wolf's (2004) shrunk covariance of already-centred rows (one array, or chunks of rows), and
    the shrinkage weight it chose. Only dim x dim sums are kept, so the rows may come a chunk at a time."""
    chunks = [centred] if isinstance(centred, np.ndarray) else centred
    n, products, square_products = 0, None, None
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float64)
        squares = chunk**2
        if products is None:
            products, square_products = chunk.T @ chunk, squares.T @ squares
        else:
            products += chunk.T @ chunk
            square_products += squares.T @ squares
        n += len(chunk)
    dim = products.shape[0]
    sample = products / n
    mu = np.trace(sample) / dim
    delta = ((sample - mu * np.eye(dim)) ** 2).sum() / dim
    beta = (square_products.sum() / n - (sample**2).sum()) / (dim * n)
    shrinkage = float(min(max(beta / delta, 0.0), 1.0)) if delta > 0 else 1.0
    return (1 - shrinkage) * sample + shrinkage * mu * np.eye(dim), shrinkage


def fit_feature_stats(features: np.ndarray, targets: np.ndarray, classes: int) -> FeatureStats:
    """Class means and one shared covariance of penultimate features, as the score's constants (float64 sums
    over float32 rows, a chunk at a time)."""
    features = np.asarray(features, dtype=np.float32)
    targets = np.asarray(targets)
    counts = np.bincount(targets, minlength=classes)
    if (counts[:classes] == 0).any():
        missing = int(np.flatnonzero(counts[:classes] == 0)[0])
        raise LeafnetError(f"the Mahalanobis score needs train images of every class; class {missing} has none")
    means = np.stack([features[targets == c].astype(np.float64).mean(axis=0) for c in range(classes)])
    rows = range(0, len(features), CHUNK_ROWS)
    covariance, shrinkage = ledoit_wolf(features[i : i + CHUNK_ROWS] - means[targets[i : i + CHUNK_ROWS]] for i in rows)
    values, vectors = np.linalg.eigh(covariance)
    values = np.maximum(values, values.max() * 1e-9)  # shrinkage keeps them positive; guard rounding
    whitening = vectors @ np.diag(values**-0.5) @ vectors.T
    return FeatureStats(means @ whitening, whitening, shrinkage)


def split_model(model: nn.Module) -> None:
    """Refuses a model whose logits are not its classifier applied to `forward_head(pre_logits=True)`: the
    feature score and the logits must come from the same features (timm's models all split this way)."""
    needed = ("forward_features", "forward_head", "get_classifier")
    name = type(model).__name__
    if not all(hasattr(model, attribute) for attribute in needed):
        raise LeafnetError(f"{name} has no timm forward_features/forward_head: export needs its features and logits")
    if not isinstance(model.get_classifier(), nn.Module):  # distilled models: two heads, averaged at eval
        raise LeafnetError(f"{name} has more than one classifier head (a distilled model?): export scores one")


class OodHead(nn.Module):
    """Penultimate features and raw logits -> (logits / temperature, score); the score is `kind`'s."""

    def __init__(self, kind: str, temperature: float, stats: FeatureStats | None = None) -> None:
        super().__init__()
        if kind not in SCORES:
            raise LeafnetError(f"unknown ood score {kind!r}; choose from {', '.join(SCORES)}")
        if kind == "mahalanobis" and stats is None:
            raise LeafnetError("the mahalanobis score needs the train split's feature statistics")
        self.kind = kind
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        if stats is not None and kind == "mahalanobis":
            self.register_buffer("whitening", torch.from_numpy(stats.whitening.astype(np.float32)))
            means = torch.from_numpy(stats.means.astype(np.float32))
            self.register_buffer("means_t", means.T.contiguous())
            self.register_buffer("means_sq", (means * means).sum(dim=1))

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calibrated = logits / self.temperature
        if self.kind == "msp":
            score = -torch.softmax(calibrated, dim=1).amax(dim=1)
        elif self.kind == "energy":
            score = -torch.logsumexp(logits, dim=1)
        else:  # |z - m|^2 = |z|^2 - 2 z.m + |m|^2 for every class at once, then the nearest
            whitened = features @ self.whitening
            distances = (whitened * whitened).sum(dim=1, keepdim=True) - 2 * whitened @ self.means_t + self.means_sq
            score = distances.amin(dim=1)
        return calibrated, score


class ScoredClassifier(nn.Module):
    """A timm classifier with its OodHead: images -> (calibrated logits, ood score)."""

    def __init__(self, model: nn.Module, head: OodHead) -> None:
        super().__init__()
        split_model(model)
        self.model, self.head = model, head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        return self.head(features, self.model.get_classifier()(features))


def features_and_logits(model: nn.Module, batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and raw logits of `model` (eval mode, no gradients) over float32 NCHW batches."""
    split_model(model)
    features, logits = [], []
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            pooled = model.forward_head(model.forward_features(torch.from_numpy(batch)), pre_logits=True)
            features.append(pooled.float().numpy())
            logits.append(model.get_classifier()(pooled).float().numpy())
    return np.concatenate(features), np.concatenate(logits)


def all_scores(features: np.ndarray, logits: np.ndarray, temperature: float, stats: FeatureStats) -> dict:
    """Every score of SCORES for the same images (the export's comparison), through the OodHead itself."""
    features_t, logits_t = torch.from_numpy(features), torch.from_numpy(logits)
    with torch.inference_mode():
        return {kind: OodHead(kind, temperature, stats)(features_t, logits_t)[1].numpy() for kind in SCORES}
