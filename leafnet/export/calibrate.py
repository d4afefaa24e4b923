"""Export's calibration and unknown detection (docs/calibration.md).

Before the variants are written: the temperature is fitted on the validation split (NLL) and the feature
statistics of the Mahalanobis score on the train split, and both go into the graph (leafnet/export/scored.py).
After: every variant, eager included, is run over the validation split (its own acceptance threshold), the
test split (calibration before and after, acceptance, top-1 on what it accepts) and a generated
out-of-distribution set (leafnet/data/ood.py: flagged per family, AUROC, FPR at 95% TPR). Eager's features
also give every score of SCORES side by side, which is how the default score was chosen.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from leafnet import calibration as metrics
from leafnet.data.ood import OOD_FAMILIES, generate_ood
from leafnet.errors import LeafnetError
from leafnet.export.config import CalibrationConfig
from leafnet.export.scored import SCORES, FeatureStats, OodHead, all_scores, features_and_logits, fit_feature_stats
from leafnet.serving.preprocess import Preprocessor

logger = logging.getLogger(__name__)

Batches = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # (float32 NCHW images, int targets), re-iterable


@dataclass
class Fitted:
    temperature: float
    stats: FeatureStats
    head: OodHead
    val_images: int
    train_images: int


def _features(model: nn.Module, batches: Iterable[tuple[np.ndarray, np.ndarray]]):
    """Eager features, raw logits and targets over a split."""
    features, logits, targets = [], [], []
    for images, labels in batches:
        f, z = features_and_logits(model, [images])
        features.append(f)
        logits.append(z)
        targets.append(labels)
    return np.concatenate(features), np.concatenate(logits), np.concatenate(targets)


def fit(model: nn.Module, train: Batches, val: Batches, classes: int, config: CalibrationConfig) -> Fitted:
    """The temperature (val NLL) and the feature statistics (train) of the graph's head."""
    train_features, _, train_targets = _features(model, train())
    _, val_logits, val_targets = _features(model, val())
    temperature = metrics.fit_temperature(val_logits, val_targets) if config.fit_temperature else 1.0
    stats = fit_feature_stats(train_features, train_targets, classes)
    head = OodHead(config.ood_score, temperature, stats)
    return Fitted(temperature, stats, head, len(val_targets), len(train_targets))


def ood_batches(spec: dict, leaves: list[Image.Image], config: CalibrationConfig, batch_size: int) -> Batches:
    """The generated out-of-distribution set, prepared exactly as the server prepares an upload; targets are
    family indices into OOD_FAMILIES. Generated and decoded once, kept as the fitted 8-bit images (a quarter
    of float inputs, fewer pixels where prepare fits smaller than the input), made model inputs per batch."""
    preprocessor = Preprocessor(spec)
    fitted_images, families = [], []
    for item in generate_ood(config.ood_per_family, config.ood_seed, leaves):
        upload = io.BytesIO()
        # through the server's own decoding, as an upload would go; stored, not deflated: the same pixels, and
        # compressing 540 images took longer than everything else the set costs
        item.image.save(upload, format="PNG", compress_level=0)
        fitted_images.append(preprocessor.fitted(upload.getvalue())[0])
        families.append(OOD_FAMILIES.index(item.family))
    families_array = np.asarray(families)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(fitted_images), batch_size):
            chunk = fitted_images[start : start + batch_size]
            yield np.stack([preprocessor.tensor(image) for image in chunk]), families_array[start : start + batch_size]

    return batches


@dataclass
class Outputs:
    """One predictor's outputs over a split."""

    logits: np.ndarray
    scores: np.ndarray


def run_split(predictors: dict[str, Callable], fitted: Fitted, model: nn.Module, batches: Batches):
    """Every predictor over one split, and eager through the head from its own features (kept for the score
    comparison). Returns ({name: Outputs}, eager features, eager raw logits, targets)."""
    logits: dict[str, list] = {name: [] for name in predictors}
    scores: dict[str, list] = {name: [] for name in predictors}
    features, raw, targets = [], [], []
    for images, labels in batches():
        f, z = features_and_logits(model, [images])
        features.append(f)
        raw.append(z)
        targets.append(labels)
        for name, predict in predictors.items():
            out_logits, out_scores = predict(images)
            if out_scores is None:
                raise LeafnetError(f"variant {name} has no ood_score output; its file was not exported by this code")
            logits[name].append(out_logits)
            scores[name].append(out_scores)
    features_array, raw_array = np.concatenate(features), np.concatenate(raw)
    outputs = {name: Outputs(np.concatenate(logits[name]), np.concatenate(scores[name])) for name in predictors}
    with torch.inference_mode():
        calibrated, score = fitted.head(torch.from_numpy(features_array), torch.from_numpy(raw_array))
    outputs["eager"] = Outputs(calibrated.numpy(), score.numpy())
    return outputs, features_array, raw_array, np.concatenate(targets)


def family_scores(scores: np.ndarray, families: np.ndarray) -> dict[str, np.ndarray]:
    return {name: scores[families == index] for index, name in enumerate(OOD_FAMILIES) if (families == index).any()}


def variant_report(val: Outputs, test: Outputs, test_targets, ood: Outputs, ood_families, temperature, config) -> dict:
    """Calibration before and after, the threshold and what it accepts and flags, for one variant."""
    threshold = metrics.acceptance_threshold(val.scores, config.accept, config.accept_confidence)
    accepted = test.scores <= threshold
    correct = test.logits.argmax(axis=1) == test_targets
    report = metrics.ood_report(test.scores, family_scores(ood.scores, ood_families), threshold)
    return {
        "calibration": {
            # a variant's logits carry the temperature; times it they are the classifier's own again
            "before": metrics.calibration_metrics(test.logits * temperature, test_targets),
            "after": metrics.calibration_metrics(test.logits, test_targets),
        },
        "threshold": round(float(threshold), 6),
        "val_accepted": round(float((val.scores <= threshold).mean()), 4),
        "test_accepted": report.pop("in_accepted"),
        "test_top1": round(float(correct.mean()), 4),
        "test_top1_accepted": round(float(correct[accepted].mean()), 4) if accepted.any() else None,
        "ood_flagged": round(float((ood.scores > threshold).mean()), 4),
        **report,
    }


def score_comparison(fitted: Fitted, val, test, ood, ood_families, config: CalibrationConfig) -> dict:
    """Every score of SCORES from eager's features: how each would do with its own threshold."""
    val_all, test_all, ood_all = (all_scores(f, z, fitted.temperature, fitted.stats) for f, z in (val, test, ood))
    comparison = {}
    for kind in SCORES:
        threshold = metrics.acceptance_threshold(val_all[kind], config.accept, config.accept_confidence)
        report = metrics.ood_report(test_all[kind], family_scores(ood_all[kind], ood_families), threshold)
        flagged = [family["flagged"] for family in report["families"].values()]
        comparison[kind] = {
            "test_accepted": report["in_accepted"],
            "auroc": report["auroc"],
            "fpr95": report["fpr95"],
            "worst_family_flagged": min(flagged),
            "mean_family_flagged": round(float(np.mean(flagged)), 4),
            "families_flagged": {name: family["flagged"] for name, family in report["families"].items()},
        }
    return comparison


def check_config(config: CalibrationConfig) -> None:
    if config.ood_score not in SCORES:
        raise LeafnetError(f"unknown calibration.ood_score {config.ood_score!r}; choose from {', '.join(SCORES)}")
    if not 0 < config.accept < 1:
        raise LeafnetError(f"calibration.accept must be between 0 and 1, got {config.accept}")
    if not 0 <= config.accept_confidence < 1:
        raise LeafnetError(f"calibration.accept_confidence must be in [0, 1), got {config.accept_confidence}")
    if config.ood_per_family < 1:
        raise LeafnetError(f"calibration.ood_per_family must be at least 1, got {config.ood_per_family}")


def warn_small_val(val_images: int, config: CalibrationConfig) -> None:
    if config.accept_confidence and metrics.tolerance_rank(val_images, config.accept, config.accept_confidence) is None:
        logger.warning(
            "export: %d val images are too few to promise %.0f%% acceptance with %.0f%% confidence; the "
            "threshold is the highest val score", val_images, 100 * config.accept, 100 * config.accept_confidence,
        )  # fmt: skip


def config_summary(fitted: Fitted, config: CalibrationConfig) -> dict:
    return {
        "temperature": fitted.temperature,
        "fitted_on": {"temperature": "val", "feature_statistics": "train", "thresholds": "val"},
        "val_images": fitted.val_images,
        "train_images": fitted.train_images,
        "covariance_shrinkage": round(fitted.stats.shrinkage, 4),
        **asdict(config),
    }
