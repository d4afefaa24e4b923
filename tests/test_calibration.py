"""Calibration metrics against hand values, temperature scaling on logits of known temperature, OOD metrics
against brute force, and the acceptance threshold's coverage over many simulated validation splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leafnet.calibration import (
    ECE_BINS,
    acceptance_threshold,
    auroc,
    brier_score,
    calibration_metrics,
    confidence_cap,
    expected_calibration_error,
    fit_temperature,
    fpr_at_tpr,
    negative_log_likelihood,
    ood_report,
    plot_reliability,
    reliability_bins,
    softmax,
    tolerance_rank,
)
from leafnet.errors import LeafnetError

# four images, three classes: top-1 confidences 0.9 (right), 0.9 (wrong), 0.7 (right), 0.5 (right)
HAND_PROBABILITIES = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.1, 0.7, 0.2], [0.25, 0.25, 0.5]])
HAND_TARGETS = np.array([0, 1, 1, 2])


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def _sample_labels(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    cumulative = np.cumsum(probabilities, axis=1)
    draws = rng.random((probabilities.shape[0], 1))
    return np.minimum((draws > cumulative).sum(axis=1), probabilities.shape[1] - 1)


@pytest.fixture(scope="module")
def overconfident():
    """Logits at temperature 1/2 of the truth: labels drawn from softmax(true), logits = 2 * true."""
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0.0, 1.5, size=(20000, 10))
    targets = _sample_labels(rng, softmax(true_logits))
    return true_logits * 2.0, targets


# --------------------------------------------------------------------------------------------- calibration


def test_softmax_is_stable_and_float64():
    probabilities = softmax(np.array([[1000.0, 1000.0], [-1000.0, 0.0]], dtype=np.float32))
    assert probabilities.dtype == np.float64
    np.testing.assert_allclose(probabilities, [[0.5, 0.5], [0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(softmax(np.zeros((2, 3, 4))).sum(axis=-1), 1.0)


def test_ece_is_zero_when_each_bin_is_calibrated():
    rows, targets = [], []
    for confidence in (0.6, 0.7, 0.8, 0.9, 1.0):
        right = round(confidence * 10)
        rows += [[confidence, 1 - confidence]] * 10
        targets += [0] * right + [1] * (10 - right)
    assert expected_calibration_error(np.array(rows), np.array(targets)) == pytest.approx(0.0, abs=1e-12)


def test_ece_nll_brier_match_hand_values():
    # bins of width 0.2: (0.8, 1] holds 0.9 / 0.9 at accuracy 1/2, (0.6, 0.8] 0.7 at 1, (0.4, 0.6] 0.5 at 1
    expected_ece = 2 / 4 * 0.4 + 1 / 4 * 0.3 + 1 / 4 * 0.5
    assert expected_calibration_error(HAND_PROBABILITIES, HAND_TARGETS, bins=5) == pytest.approx(expected_ece)
    expected_nll = -(math.log(0.9) + math.log(0.05) + math.log(0.7) + math.log(0.5)) / 4
    assert negative_log_likelihood(HAND_PROBABILITIES, HAND_TARGETS) == pytest.approx(expected_nll)
    assert brier_score(HAND_PROBABILITIES, HAND_TARGETS) == pytest.approx((0.015 + 1.715 + 0.14 + 0.375) / 4)


def test_nll_floors_a_zero_probability():
    assert negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-12))


def test_reliability_bins_are_closed_on_the_right_and_sum_to_the_images():
    rows = reliability_bins(np.array([[0.8, 0.2], [0.6, 0.4], [0.61, 0.39]]), np.array([0, 1, 0]), bins=5)
    assert len(rows) == 5
    assert [row["count"] for row in rows] == [0, 0, 1, 2, 0]  # 0.6 in (0.4, 0.6]; 0.61 and 0.8 in (0.6, 0.8]
    assert rows[3]["lower"] == pytest.approx(0.6) and rows[3]["upper"] == pytest.approx(0.8)
    assert rows[3]["confidence"] == pytest.approx(0.705) and rows[3]["accuracy"] == 1.0
    assert rows[2]["accuracy"] == 0.0 and rows[0]["confidence"] is None and rows[0]["accuracy"] is None
    assert len(reliability_bins(HAND_PROBABILITIES, HAND_TARGETS)) == ECE_BINS


def test_fit_temperature_recovers_the_temperature_and_lowers_ece(overconfident):
    logits, targets = overconfident
    temperature = fit_temperature(logits, targets)
    assert temperature == pytest.approx(2.0, abs=0.1)
    before = calibration_metrics(logits, targets)
    after = calibration_metrics(logits, targets, temperature)
    assert after["ece"] < before["ece"]
    assert after["nll"] < before["nll"] and after["brier"] < before["brier"]
    assert after["top1"] == before["top1"]  # scaling never changes the arg-max
    assert set(before) == {"ece", "nll", "brier", "top1"}
    assert all(value == round(value, 4) for value in before.values())


def test_a_perfectly_separated_split_is_not_taken_as_proof_of_certainty():
    """20 of 20 right: the NLL keeps falling as T falls; the fit stops where the mean confidence is
    (20 + 1) / (20 + 2), Laplace's rule of succession, instead of answering everything with probability 1."""
    logits = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    temperature = fit_temperature(logits, np.array([0, 1] * 10), bounds=(0.1, 10.0))
    assert temperature > 0.1
    assert softmax(logits / temperature).max(axis=1).mean() == pytest.approx(21 / 22, abs=1e-4)
    assert confidence_cap(20, 20) == 21 / 22


def test_the_cap_leaves_a_split_with_errors_alone():
    """One wrong answer gives the NLL a finite minimum: the fit is the plain minimiser, cap or no cap."""
    logits = np.array([[5.0, 0.0], [0.0, 5.0]] * 10 + [[5.0, 0.0]])
    targets = np.array([0, 1] * 10 + [1])
    temperature = fit_temperature(logits, targets, bounds=(0.1, 10.0))
    nll = [_nll(logits, targets, t) for t in (temperature * 0.99, temperature, temperature * 1.01)]
    assert nll[1] <= min(nll[0], nll[2])
    assert softmax(logits / temperature).max(axis=1).mean() > confidence_cap(20, 21)  # no cap applied


def _nll(logits, targets, temperature):
    return negative_log_likelihood(softmax(logits / temperature), targets)


@pytest.mark.parametrize(
    ("logits", "targets", "needle"),
    [
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "non-empty"),
        (np.zeros((4, 3)), np.zeros(3, dtype=int), "3 entries for 4 images"),
        (np.array([[0.0, np.inf], [1.0, 0.0]]), np.array([0, 1]), "non-finite"),
        (np.array([[0.0, np.nan], [1.0, 0.0]]), np.array([0, 1]), "non-finite"),
        (np.zeros((2, 3)), np.array([0, 3]), "0..2"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), "integer"),
    ],
)
def test_fit_temperature_refuses_bad_input(logits, targets, needle):
    with pytest.raises(LeafnetError) as error:
        fit_temperature(logits, targets)
    assert needle in _one_line(error)


def test_metrics_refuse_logits_passed_as_probabilities():
    with pytest.raises(LeafnetError) as error:
        expected_calibration_error(np.array([[3.0, -1.0]]), np.array([0]))
    assert "softmax" in _one_line(error)


def test_plot_reliability_writes_a_png(tmp_path, overconfident):
    logits, targets = overconfident
    logits, targets = logits[:2000], targets[:2000]
    path = tmp_path / "figures" / "reliability.png"
    plot_reliability(
        {"before": (softmax(logits), targets), "after T=2": (softmax(logits / 2.0), targets)}, path, title="val"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------- OOD


def test_auroc_on_separated_identical_and_tied_scores():
    rng = np.random.default_rng(1)
    inside = rng.normal(size=5000)
    assert auroc(inside, inside + 100.0) == 1.0
    assert auroc(inside + 100.0, inside) == 0.0
    assert auroc(inside, rng.normal(size=5000)) == pytest.approx(0.5, abs=0.02)
    assert auroc(np.full(7, 0.3), np.full(5, 0.3)) == 0.5


def test_auroc_matches_brute_force_pairs():
    rng = np.random.default_rng(2)
    inside, outside = rng.integers(0, 6, size=40).astype(float), rng.integers(2, 8, size=30).astype(float)
    pairs = outside[:, None] - inside[None, :]
    brute = np.mean((pairs > 0) + 0.5 * (pairs == 0))
    assert auroc(inside, outside) == pytest.approx(brute, abs=1e-12)


def test_ood_metrics_survive_infinite_scores():
    inside, outside = np.array([0.1, 0.2, np.inf]), np.array([np.inf, np.inf, 0.15])
    value = auroc(inside, outside)
    assert np.isfinite(value)
    # pairs: inf beats 0.1, 0.2 and ties inf (x2); 0.15 beats 0.1 only -> (2.5 * 2 + 1) / 9
    assert value == pytest.approx(6 / 9)
    assert fpr_at_tpr(inside, outside, tpr=0.5) == pytest.approx(1 / 3)  # threshold inf flags the in inf


def test_fpr_at_tpr_hand_example():
    inside, outside = np.array([0.1, 0.2, 0.3, 0.4, 0.5]), np.array([0.35, 0.6, 0.7, 0.8])
    assert fpr_at_tpr(inside, outside, tpr=0.75) == 0.0  # threshold 0.6 flags 3 of 4 OOD, no in-distribution
    assert fpr_at_tpr(inside, outside) == pytest.approx(0.4)  # 95% of 4 needs all 4: threshold 0.35
    assert fpr_at_tpr(inside, outside, tpr=1.0) == pytest.approx(0.4)
    assert fpr_at_tpr(np.array([0.5, 0.5]), np.array([0.5]), tpr=0.95) == 1.0  # ties are flagged


def test_nan_scores_are_refused_by_name():
    with pytest.raises(LeafnetError) as error:
        auroc(np.array([0.1, np.nan]), np.array([0.5]))
    assert "in_scores" in _one_line(error)
    with pytest.raises(LeafnetError) as error:
        fpr_at_tpr(np.array([0.1]), np.array([np.nan]))
    assert "out_scores" in _one_line(error)
    with pytest.raises(LeafnetError) as error:
        ood_report(np.array([0.1]), {"blur": np.array([0.2]), "noise": np.array([np.nan])}, 0.5)
    assert "noise" in _one_line(error)


# -------------------------------------------------------------------------------------- acceptance threshold


def test_acceptance_threshold_without_confidence_is_the_empirical_quantile():
    scores = np.random.default_rng(3).normal(size=238)
    for accept in (0.5, 0.9, 0.95, 0.99):
        expected = np.quantile(scores, accept, method="inverted_cdf")
        assert acceptance_threshold(scores, accept, confidence=0) == expected
        assert acceptance_threshold(scores, accept, confidence=None) == expected
    assert tolerance_rank(100, 0.07, 0) == 7  # not 8 from 0.07 * 100 = 7.000000000000001


def test_acceptance_threshold_holds_on_new_data():
    n, repetitions, accept, confidence = 238, 2000, 0.95, 0.9
    scores = np.random.default_rng(4).random((repetitions, n))  # uniform: the true acceptance F(t) is t
    rank = tolerance_rank(n, accept, confidence)
    assert rank is not None and rank > math.ceil(accept * n)
    thresholds = np.sort(scores, axis=1)[:, rank - 1]
    for row in range(5):
        assert acceptance_threshold(scores[row], accept, confidence) == thresholds[row]
    assert np.mean(thresholds >= accept) >= 0.88
    # the plain quantile falls short on new data far more often: the reason for the bound
    plain = np.sort(scores, axis=1)[:, tolerance_rank(n, accept, 0) - 1]
    assert np.mean(plain >= accept) < 0.7


def test_tolerance_rank_is_the_smallest_sufficient_rank():
    assert tolerance_rank(10, 0.95, 0.9) is None
    assert tolerance_rank(44, 0.95, 0.9) is None
    assert tolerance_rank(45, 0.95, 0.9) == 45  # 1 - 0.95^45 = 0.9006
    scores = np.arange(10.0)
    assert acceptance_threshold(scores, 0.95, 0.9) == 9.0  # too few: the maximum, the caller warns


@pytest.mark.parametrize(
    ("n", "accept", "confidence"),
    [(0, 0.95, 0.9), (10, 0.0, 0.9), (10, 1.0, 0.9), (10, 0.95, 1.0), (10, 0.95, -0.1), (10, float("nan"), 0.9)],
)
def test_tolerance_rank_refuses_bad_arguments(n, accept, confidence):
    with pytest.raises(LeafnetError) as error:
        tolerance_rank(n, accept, confidence)
    _one_line(error)


def test_ood_report_fields():
    inside = np.linspace(0.0, 1.0, 101)
    families = {"far": np.full(20, 5.0), "near": np.linspace(0.5, 1.5, 20)}
    report = ood_report(inside, families, threshold=0.955)
    assert report["in_accepted"] == round(96 / 101, 4)
    assert report["families"]["far"] == {"images": 20, "flagged": 1.0, "auroc": 1.0, "fpr95": 0.0}
    near = report["families"]["near"]
    assert near["images"] == 20 and near["flagged"] == pytest.approx(11 / 20)
    assert 0.5 < near["auroc"] < report["auroc"] < 1.0
    # pooled, the 38th of 40 OOD scores is near's 0.6053: 40 of 101 in-distribution at or above it
    assert report["fpr95"] == round(40 / 101, 4) and near["fpr95"] == round(45 / 101, 4)
    for value in (report["in_accepted"], report["auroc"], report["fpr95"], *near.values()):
        assert value == round(value, 4)


def test_a_perfect_split_with_huge_margins_still_meets_the_cap_or_takes_the_softest_temperature():
    logits = np.array([[200.0, 0.0], [0.0, 200.0]] * 5)
    targets = np.array([0, 1] * 5)
    temperature = fit_temperature(logits, targets)
    confidence = softmax(logits / temperature).max(axis=1).mean()
    assert confidence == pytest.approx(confidence_cap(10, 10), abs=1e-4) or temperature == 20.0
    assert temperature == 20.0  # 200 logits apart: even T = 20 answers with certainty; the softest allowed
