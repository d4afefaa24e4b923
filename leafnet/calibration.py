"""Calibration and out-of-distribution (OOD) metrics: how far the model's confidence can be trusted, and
when an image should not be answered at all.

- Calibration: a network trained with cross-entropy is usually over-confident; a single temperature T,
  dividing the logits before the softmax, fixes most of it without changing any top-1 answer (Guo et al.,
  "On Calibration of Modern Neural Networks", 2017). T is fitted by minimising the negative log-likelihood
  on the validation split, never the test split, so the test metrics stay an honest estimate.
- Expected calibration error (ECE): top-1 confidence against top-1 accuracy in 15 equal-width bins over
  [0, 1], each bin weighted by its share of the images, as in Guo et al., so numbers are comparable with the
  literature. Bins are closed on the right, (lower, upper]. NLL and the multi-class Brier score are
  reported beside it: ECE depends on the binning and can be gamed, the two proper scoring rules cannot.
- OOD scores: HIGHER means MORE out-of-distribution, everywhere in this module (pass e.g. 1 - max softmax
  probability, or a negative energy score). For AUROC and FPR95 the OOD images are the positives.
- The acceptance threshold is a distribution-free one-sided tolerance bound: with probability `confidence`
  over the draw of the validation split, at least `accept` of NEW in-distribution images score at or below
  it. A plain empirical quantile only holds on the split it was fitted on, and falls short on new data
  about half of the time.

numpy only at import: scipy and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from leafnet.errors import LeafnetError
from leafnet.serving.answers import softmax as served_softmax

ECE_BINS = 15  # Guo et al. 2017; comparable with published numbers
NLL_FLOOR = 1e-12  # a probability of exactly 0 on the true class would make the mean NLL infinite
SUM_TOLERANCE = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; logits passed by mistake are far off
CEIL_SLACK = 1e-9  # accept * n in floating point: 0.07 * 100 is 7.000000000000001, whose ceiling is 8


# ---------------------------------------------------------------------------------------------- validation


def _probabilities(probabilities: np.ndarray, name: str = "probabilities") -> np.ndarray:
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise LeafnetError(f"{name} must be a non-empty 2-D array (images, classes), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise LeafnetError(f"{name} holds {int(np.sum(~np.isfinite(array)))} non-finite value(s)")
    if array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise LeafnetError(
            f"{name} must lie in [0, 1] (got {array.min():.4g}..{array.max():.4g}); pass softmax(logits)"
        )
    sums = array.sum(axis=1)
    if np.max(np.abs(sums - 1.0)) > SUM_TOLERANCE:
        raise LeafnetError(f"{name} rows must sum to 1 (one sums to {sums[np.argmax(np.abs(sums - 1))]:.4g})")
    return np.clip(array, 0.0, 1.0)


def _logits(logits: np.ndarray) -> np.ndarray:
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise LeafnetError(f"logits must be a non-empty 2-D array (images, classes), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise LeafnetError(f"logits hold {int(np.sum(~np.isfinite(array)))} non-finite value(s)")
    return array


def _targets(targets: np.ndarray, images: int, classes: int) -> np.ndarray:
    array = np.asarray(targets)
    if array.ndim != 1:
        raise LeafnetError(f"targets must be a 1-D array of class indices, got shape {array.shape}")
    if array.shape[0] != images:
        raise LeafnetError(f"targets has {array.shape[0]} entries for {images} images")
    if array.dtype.kind not in "iu":
        raise LeafnetError(f"targets must be integer class indices, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= classes):
        raise LeafnetError(f"targets must lie in 0..{classes - 1}, got {array.min()}..{array.max()}")
    return array.astype(np.int64)


def _scores(scores: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise LeafnetError(f"{name} must be a non-empty 1-D array of scores, got shape {array.shape}")
    nans = int(np.isnan(array).sum())
    if nans:
        raise LeafnetError(f"{name} holds {nans} NaN score(s) of {array.size}")
    return array


def _fraction(value: float, name: str, *, low_open: bool = True, high_open: bool = True) -> float:
    value = float(value)
    above = value > 0 if low_open else value >= 0
    below = value < 1 if high_open else value <= 1
    if not (above and below):  # also catches NaN
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise LeafnetError(f"{name} must lie in {interval}, got {value}")
    return value


def _rank(fraction: float, n: int) -> int:
    """The 1-based rank ceil(fraction * n), at least 1."""
    return max(1, math.ceil(fraction * n - CEIL_SLACK))


# --------------------------------------------------------------------------------------------- calibration


def softmax(logits: np.ndarray) -> np.ndarray:
    """The served answers' own softmax (leafnet/serving/answers.py), refusing an empty class axis."""
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] == 0:
        raise LeafnetError(f"softmax needs at least one class on the last axis, got shape {array.shape}")
    return served_softmax(array)


def _bin_statistics(probabilities: np.ndarray, targets: np.ndarray, bins: int):
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise LeafnetError(f"bins must be a positive integer, got {bins!r}")
    probabilities = _probabilities(probabilities)
    targets = _targets(targets, *probabilities.shape)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # (lower, upper] as in Guo et al.; searchsorted against the same edges that reliability_bins reports,
    # so a confidence of exactly 0.2 lands where the reported edges say, whatever ceil(0.2 * 15) rounds to
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    confidence_sums = np.bincount(index, weights=confidence, minlength=bins)
    correct_sums = np.bincount(index, weights=correct, minlength=bins)
    return edges, counts, confidence_sums, correct_sums, confidence


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-1 answer: sum over equal-width bins of (bin share) * |mean confidence - accuracy|."""
    _, counts, confidence_sums, correct_sums, _ = _bin_statistics(probabilities, targets, bins)
    return float(np.sum(np.abs(confidence_sums - correct_sums)) / counts.sum())


def negative_log_likelihood(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean -log p(true class), the probability floored at 1e-12."""
    probabilities = _probabilities(probabilities)
    targets = _targets(targets, *probabilities.shape)
    true = probabilities[np.arange(targets.size), targets]
    return float(-np.mean(np.log(np.clip(true, NLL_FLOOR, 1.0))))


def brier_score(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of sum_k (p_k - onehot_k)^2, in [0, 2]."""
    probabilities = _probabilities(probabilities)
    targets = _targets(targets, *probabilities.shape)
    onehot = np.zeros_like(probabilities)
    onehot[np.arange(targets.size), targets] = 1.0
    return float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1)))


def calibration_metrics(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> dict:
    """ECE, NLL, Brier and top-1 accuracy of softmax(logits / temperature), each rounded to 4 decimals."""
    logits = _logits(logits)
    targets = _targets(targets, *logits.shape)
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise LeafnetError(f"temperature must be a positive finite number, got {temperature}")
    probabilities = softmax(logits / temperature)
    return {
        "ece": round(expected_calibration_error(probabilities, targets), 4),
        "nll": round(negative_log_likelihood(probabilities, targets), 4),
        "brier": round(brier_score(probabilities, targets), 4),
        "top1": round(float(np.mean(probabilities.argmax(axis=1) == targets)), 4),
    }


def _scaled_nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    # exact log-softmax rather than clipped probabilities: the floor would flatten the objective at small T
    scaled = logits / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_normaliser = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_normaliser - scaled[np.arange(targets.size), targets]))


def confidence_cap(correct: int, images: int) -> float:
    """The highest mean top-1 confidence a split of `images` with `correct` right answers supports: Laplace's
    rule of succession, (correct + 1) / (images + 2). Eight out of eight right is evidence of a good model,
    not of one that is never wrong."""
    return (correct + 1) / (images + 2)


def _mean_confidence(logits: np.ndarray, temperature: float) -> float:
    return float(softmax(logits / temperature).max(axis=1).mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising the NLL of softmax(logits / T), rounded to 4 decimals.

    Fit it on the validation split. The NLL is convex in 1/T, hence unimodal in log T, so a bounded Brent
    search on log T (scale-free: 0.1 -> 0.2 weighs like 5 -> 10) finds the global minimum within `bounds`.
    One wrong answer is enough for a finite minimum. A split the model classifies perfectly has none (the NLL
    falls as T falls): there T would sink to the lower bound and every answer, wrong ones included, would
    come with probability 1. So on such a split T is raised until the mean top-1 confidence is
    confidence_cap (it falls as T rises: bisection on log T).
    """
    from scipy.optimize import brentq, minimize_scalar

    logits = _logits(logits)
    targets = _targets(targets, *logits.shape)
    low, high = (float(bound) for bound in bounds)
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise LeafnetError(f"temperature bounds must satisfy 0 < low < high, got {bounds}")
    result = minimize_scalar(
        lambda log_t: _scaled_nll(logits, targets, math.exp(log_t)),
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = min(max(math.exp(result.x), low), high)
    correct = int((logits.argmax(axis=1) == targets).sum())
    if correct == len(targets):  # no finite minimum: the search's answer is arbitrary; the cap decides
        cap = confidence_cap(correct, len(targets))
        if _mean_confidence(logits, high) >= cap:
            return round(high, 4)  # even the softest temperature allowed is more confident than the cap
        if _mean_confidence(logits, low) <= cap:
            return round(low, 4)
        excess = lambda log_t: _mean_confidence(logits, math.exp(log_t)) - cap  # noqa: E731
        temperature = math.exp(brentq(excess, math.log(low), math.log(high), xtol=1e-9))
    return round(temperature, 4)


def reliability_bins(probabilities: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Every bin of the reliability diagram, empty ones included (their confidence and accuracy are None,
    which JSON can hold and NaN cannot): lower, upper, count, mean top-1 confidence, top-1 accuracy."""
    edges, counts, confidence_sums, correct_sums, _ = _bin_statistics(probabilities, targets, bins)
    rows = []
    for index, count in enumerate(counts.tolist()):
        rows.append(
            {
                "lower": float(edges[index]),
                "upper": float(edges[index + 1]),
                "count": int(count),
                "confidence": float(confidence_sums[index] / count) if count else None,
                "accuracy": float(correct_sums[index] / count) if count else None,
            }
        )
    return rows


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "") -> None:
    """One reliability diagram per curve, side by side (e.g. before and after temperature scaling).

    Each panel: accuracy per bin as bars, the gap to the bin's mean confidence shaded, the diagonal of
    perfect calibration, ECE in its title; under it, a histogram of the top-1 confidences, since a bin's
    gap matters only as much as the images in it.
    """
    # a Figure with its own Agg canvas, no pyplot: no global backend switch under other code's feet
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise LeafnetError("plot_reliability needs at least one curve")
    figure = Figure(figsize=(4.2 * len(curves), 5.2))
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, len(curves), height_ratios=(3, 1), hspace=0.08)
    for column, (name, (probabilities, targets)) in enumerate(curves.items()):
        edges, counts, confidence_sums, correct_sums, confidence = _bin_statistics(probabilities, targets, ECE_BINS)
        ece = float(np.sum(np.abs(confidence_sums - correct_sums)) / counts.sum())
        filled = counts > 0
        lowers, width = edges[:-1][filled], edges[1] - edges[0]
        accuracy = correct_sums[filled] / counts[filled]
        mean_confidence = confidence_sums[filled] / counts[filled]

        top = figure.add_subplot(grid[0, column])
        top.bar(lowers, accuracy, width=width, align="edge", color="#1f77b4", edgecolor="white", label="accuracy")
        top.bar(
            lowers,
            mean_confidence - accuracy,
            bottom=accuracy,
            width=width,
            align="edge",
            color="#c0392b",
            alpha=0.3,
            edgecolor="#c0392b",
            hatch="//",
            label="gap",
        )
        top.plot([0, 1], [0, 1], linestyle="--", color="0.3", linewidth=1.0, label="perfect")
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy" if column == 0 else None)
        top.tick_params(labelbottom=False)
        top.set_title(f"{name}\nECE = {ece:.4f}  ({int(counts.sum())} images)", fontsize=10)
        top.legend(loc="upper left", fontsize=8)

        bottom = figure.add_subplot(grid[1, column], sharex=top)
        bottom.hist(confidence, bins=edges, color="0.5")
        bottom.set(xlabel="top-1 confidence", ylabel="images" if column == 0 else None)
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------------- OOD


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve with the OOD images as positives: P(out > in) + P(out == in) / 2.

    Mann-Whitney U from average ranks, so ties count half and +-inf scores rank like any other value
    (two infinities tie) instead of producing NaN.
    """
    from scipy.stats import rankdata

    inside, outside = _scores(in_scores, "in_scores"), _scores(out_scores, "out_scores")
    ranks = rankdata(np.concatenate([inside, outside]))
    u = ranks[inside.size :].sum() - outside.size * (outside.size + 1) / 2.0
    return float(min(max(u / (inside.size * outside.size), 0.0), 1.0))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """FPR at `tpr` (FPR95 by default): the fraction of in-distribution images flagged at the threshold
    that flags `tpr` of the OOD images.

    Convention: an image is flagged when score >= threshold; the threshold is the largest one that still
    flags at least `tpr` of the OOD images, i.e. the ceil(tpr * m)-th largest of the m OOD scores, which
    gives the lowest FPR reaching that TPR. Ties at the threshold are flagged on both sides. +inf scores
    need no special case: an infinite threshold flags only infinite scores.
    """
    tpr = _fraction(tpr, "tpr", high_open=False)
    inside, outside = _scores(in_scores, "in_scores"), _scores(out_scores, "out_scores")
    descending = np.sort(outside)[::-1]
    threshold = descending[_rank(tpr, outside.size) - 1]
    return float(np.mean(inside >= threshold))


def tolerance_rank(n: int, accept: float, confidence: float | None = 0.9) -> int | None:
    """The 1-based rank k whose order statistic, among n exchangeable in-distribution scores, is a
    threshold accepting at least `accept` of new images with probability `confidence`; None when n is
    too small for that even at k = n.

    With continuous scores, the true acceptance F(X_(k)) is Beta(k, n - k + 1) distributed, and
    P(Beta(k, n - k + 1) >= accept) = P(Binomial(n, accept) <= k - 1): fewer than k of the n scores fall
    below the accept-quantile. The smallest k reaching `confidence` is the tightest such bound; ties only
    make it more conservative. n must be at least log(1 - confidence) / log(accept) (45 for 0.95 / 0.9).
    confidence 0 or None: the plain empirical quantile, rank ceil(accept * n).
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise LeafnetError(f"n must be a positive integer, got {n!r}")
    accept = _fraction(accept, "accept")
    if confidence is None or float(confidence) == 0.0:
        return _rank(accept, int(n))
    confidence = _fraction(confidence, "confidence", low_open=False)
    from scipy.stats import binom

    coverage = binom.cdf(np.arange(int(n)), int(n), accept)  # entry k - 1: P(Binomial <= k - 1)
    reached = np.flatnonzero(coverage >= confidence)
    return int(reached[0]) + 1 if reached.size else None


def acceptance_threshold(in_scores: np.ndarray, accept: float = 0.95, confidence: float | None = 0.9) -> float:
    """The threshold t accepting an in-distribution image when its score <= t, fitted on a validation split
    so that, with probability `confidence`, at least `accept` of NEW in-distribution images are accepted
    (see tolerance_rank). When the split is too small for that guarantee, the maximum score is returned:
    check tolerance_rank(len(in_scores), accept, confidence) is None and warn.
    """
    scores = _scores(in_scores, "in_scores")
    rank = tolerance_rank(scores.size, accept, confidence)
    ordered = np.sort(scores)
    return float(ordered[-1] if rank is None else ordered[rank - 1])


def ood_report(in_scores: np.ndarray, families: dict[str, np.ndarray], threshold: float) -> dict:
    """How a threshold splits in-distribution images from each OOD family, and threshold-free AUROC and
    FPR95 for all families pooled and for each one; fractions rounded to 4 decimals."""
    inside = _scores(in_scores, "in_scores")
    threshold = float(threshold)
    if math.isnan(threshold):
        raise LeafnetError("threshold is NaN")
    if not families:
        raise LeafnetError("ood_report needs at least one OOD family")
    outside = {name: _scores(scores, f"families[{name!r}]") for name, scores in families.items()}
    pooled = np.concatenate(list(outside.values()))
    return {
        "in_accepted": round(float(np.mean(inside <= threshold)), 4),
        "auroc": round(auroc(inside, pooled), 4),
        "fpr95": round(fpr_at_tpr(inside, pooled), 4),
        "families": {
            name: {
                "images": int(scores.size),
                "flagged": round(float(np.mean(scores > threshold)), 4),
                "auroc": round(auroc(inside, scores), 4),
                "fpr95": round(fpr_at_tpr(inside, scores), 4),
            }
            for name, scores in outside.items()
        },
    }
