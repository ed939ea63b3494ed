"""alz_monai.stats: bootstrap intervals, DeLong covariance (vs brute force) and McNemar (vs scipy and by hand)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from alz_monai.metrics import classification_report
from alz_monai.stats import (
    BOOTSTRAP_METRICS,
    MCNEMAR_EXACT_BELOW,
    bootstrap_ci,
    bootstrap_roc_band,
    delong_covariance,
    delong_test,
    mcnemar_test,
    resampled_metrics,
    rounded,
)

CLASS_NAMES = {2: ("CN", "AD"), 3: ("CN", "MCI", "AD")}


def make_predictions(num_classes: int, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_samples)
    logits = rng.normal(size=(num_samples, num_classes))
    logits[np.arange(num_samples), labels] += 1.0
    logits = np.round(logits * 2.0) / 2.0  # many tied scores
    probs = np.exp(logits)
    return labels, probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_resampled_metrics_equal_report_on_repeated_data(num_classes: int) -> None:
    labels, probs = make_predictions(num_classes, 60, seed=num_classes)
    rng = np.random.default_rng(0)
    weights = rng.poisson(1.0, size=(6, labels.size))
    weights[-1] = 0
    weights[-1, labels == 0] = 2  # only one class: class-wise metrics undefined
    resampled = resampled_metrics(labels, probs, CLASS_NAMES[num_classes], weights)
    assert list(resampled) == list(BOOTSTRAP_METRICS)
    for row, multiplicity in enumerate(weights[:-1]):
        repeated = np.repeat(np.arange(labels.size), multiplicity)
        report = classification_report(labels[repeated], probs[repeated], CLASS_NAMES[num_classes])
        for name, values in resampled.items():
            assert values[row] == pytest.approx(report[name], abs=1e-10), (row, name)
    assert resampled["accuracy"][-1] == pytest.approx(np.mean(probs[labels == 0].argmax(axis=1) == 0))
    assert all(np.isnan(values[-1]) for name, values in resampled.items() if name != "accuracy")


def test_bootstrap_interval_contains_estimate_and_shrinks_with_more_data() -> None:
    widths = {}
    for num_samples in (50, 800):
        labels, probs = make_predictions(2, num_samples, seed=1)
        intervals = bootstrap_ci(labels, probs, CLASS_NAMES[2], n_resamples=500, seed=0)
        report = classification_report(labels, probs, CLASS_NAMES[2])
        for name, interval in intervals.items():
            assert interval["estimate"] == pytest.approx(report[name])
            assert interval["low"] <= interval["estimate"] <= interval["high"], name
            assert interval["skipped"] == 0
        widths[num_samples] = {name: interval["high"] - interval["low"] for name, interval in intervals.items()}
    for name in widths[50]:
        assert widths[800][name] < 0.6 * widths[50][name], name


def test_bootstrap_is_deterministic_by_seed() -> None:
    labels, probs = make_predictions(3, 90, seed=2)
    first = bootstrap_ci(labels, probs, CLASS_NAMES[3], n_resamples=200, seed=7)
    assert bootstrap_ci(labels, probs, CLASS_NAMES[3], n_resamples=200, seed=7) == first
    assert bootstrap_ci(labels, probs, CLASS_NAMES[3], n_resamples=200, seed=8) != first


def test_bootstrap_resamples_participants_with_all_their_scans() -> None:
    labels, probs = make_predictions(2, 80, seed=3)
    participants = np.arange(labels.size)
    single_scan = bootstrap_ci(labels, probs, CLASS_NAMES[2], n_resamples=300, seed=0)
    # Every participant scanned twice with the same result: no new information.
    doubled = np.repeat(np.arange(labels.size), 2)
    grouped = bootstrap_ci(labels[doubled], probs[doubled], CLASS_NAMES[2], groups=participants[doubled],
                           n_resamples=300, seed=0)
    for name in single_scan:
        assert _bounds(grouped[name]) == pytest.approx(_bounds(single_scan[name]), abs=1e-12), name
    assert grouped["auc"]["unit"] == "participant" and single_scan["auc"]["unit"] == "scan"
    ungrouped = bootstrap_ci(labels[doubled], probs[doubled], CLASS_NAMES[2], n_resamples=300, seed=0)
    for name in ("accuracy", "auc"):
        assert ungrouped[name]["high"] - ungrouped[name]["low"] < 0.85 * (grouped[name]["high"] - grouped[name]["low"])


def _bounds(interval: dict) -> tuple[float, float, float]:
    return interval["estimate"], interval["low"], interval["high"]


def test_bootstrap_intervals_state_level_resamples_and_unit() -> None:
    labels, probs = make_predictions(2, 40, seed=8)
    intervals = bootstrap_ci(labels, probs, CLASS_NAMES[2], groups=np.arange(40) // 2, n_resamples=120,
                             confidence=0.9, metrics=("accuracy", "auc"))
    for interval in intervals.values():
        assert {key: interval[key] for key in ("level", "resamples", "unit")} == {
            "level": 0.9, "resamples": 120, "unit": "participant"}


def test_rounded_keeps_significant_digits_for_people() -> None:
    data = {"auc": 0.9999999999999999, "p_value": 1.234567891e-08, "ci": [0.123456789, float("nan")], "n": 3,
            "name": "AD"}
    shown = rounded(data)
    assert shown["auc"] == 1.0 and shown["p_value"] == 1.23457e-08 and shown["ci"][0] == 0.123457
    assert math.isnan(shown["ci"][1]) and shown["n"] == 3 and shown["name"] == "AD"
    assert json.dumps(rounded({"f1": 2 / 3}, 4)) == '{"f1": 0.6667}'


def test_roc_band_covers_the_curve_and_narrows_with_more_participants() -> None:
    widths = []
    for num_samples in (40, 400):
        labels, probs = make_predictions(2, num_samples, seed=9)
        band = bootstrap_roc_band(labels == 1, probs[:, 1], n_resamples=300, seed=0)
        fpr, tpr, _ = skm.roc_curve(labels == 1, probs[:, 1])
        curve = np.interp(band.fpr, fpr, tpr)
        inside = (band.tpr_low <= curve + 1e-9) & (curve <= band.tpr_high + 1e-9)
        assert inside.mean() > 0.95
        assert band.tpr_low[0] == 0.0 and band.tpr_high[-1] == 1.0
        assert band.level == 0.95 and band.resamples == 300
        widths.append(float(np.mean(band.tpr_high - band.tpr_low)))
    assert widths[1] < 0.6 * widths[0]


def test_roc_band_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both positives and negatives"):
        bootstrap_roc_band(np.ones(5, dtype=bool), np.linspace(0, 1, 5), n_resamples=10)


def test_bootstrap_skips_and_counts_resamples_lacking_a_class() -> None:
    labels, probs = make_predictions(2, 30, seed=4)
    labels[:] = 0
    labels[0] = 1  # a single AD scan: absent from about a third of resamples
    probs[0] = [0.2, 0.8]
    intervals = bootstrap_ci(labels, probs, CLASS_NAMES[2], n_resamples=400, seed=0, metrics=("accuracy", "auc"))
    assert intervals["accuracy"]["skipped"] == 0
    assert 0.25 * 400 < intervals["auc"]["skipped"] < 0.45 * 400
    assert math.isfinite(intervals["auc"]["low"]) and intervals["auc"]["low"] <= intervals["auc"]["high"]


def test_bootstrap_of_200_scans_is_fast() -> None:
    labels, probs = make_predictions(3, 200, seed=5)
    start = time.perf_counter()
    bootstrap_ci(labels, probs, CLASS_NAMES[3], n_resamples=1000, metrics=BOOTSTRAP_METRICS)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": ("accuracy", "kappa")}, r"unknown bootstrap metrics \['kappa'\]"),
        ({"groups": [1, 2]}, "one participant id per sample"),
        ({"confidence": 95}, "confidence must lie strictly between 0 and 1"),
        ({"n_resamples": 0}, "n_resamples must be a positive integer"),
    ],
)
def test_bootstrap_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    labels, probs = make_predictions(2, 20, seed=6)
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(labels, probs, CLASS_NAMES[2], **kwargs)


def brute_force_delong_covariance(labels: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
    """DeLong et al. (1988) structural components from the explicit m x n comparison matrix per model."""
    positive_components, negative_components = [], []
    for score in scores:
        positive, negative = score[labels == 1], score[labels == 0]
        kernel = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
        positive_components.append(kernel.mean(axis=1))
        negative_components.append(kernel.mean(axis=0))
    num_positive, num_negative = int(labels.sum()), int((1 - labels).sum())
    return np.cov(positive_components) / num_positive + np.cov(negative_components) / num_negative


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_sklearn_auc_and_brute_force_covariance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 70)
    scores = [np.round(labels + rng.normal(scale=scale, size=labels.size), 1) for scale in (0.8, 1.5, 3.0)]
    aucs, covariance = delong_covariance(labels, scores)
    np.testing.assert_allclose(aucs, [skm.roc_auc_score(labels, score) for score in scores], atol=1e-12)
    np.testing.assert_allclose(covariance, brute_force_delong_covariance(labels, scores), atol=1e-12)

    result = delong_test(labels, scores[0], scores[2])
    variance = covariance[0, 0] + covariance[2, 2] - 2 * covariance[0, 2]
    assert result["auc_a"] == pytest.approx(aucs[0]) and result["auc_b"] == pytest.approx(aucs[2])
    assert result["z"] == pytest.approx((aucs[0] - aucs[2]) / math.sqrt(variance))
    assert result["p_value"] == pytest.approx(2 * sps.norm.sf(abs(result["z"])))
    swapped = delong_test(labels, scores[2], scores[0])
    assert swapped["z"] == pytest.approx(-result["z"]) and swapped["p_value"] == pytest.approx(result["p_value"])


def test_delong_p_value_is_sane_at_the_extremes() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    strong = labels + rng.normal(scale=0.5, size=labels.size)
    identical = delong_test(labels, strong, strong.copy())
    assert identical["z"] == 0.0 and identical["p_value"] == 1.0
    noise = rng.normal(size=labels.size)
    assert delong_test(labels, strong, noise)["p_value"] < 0.01


def test_delong_rejects_non_binary_labels() -> None:
    with pytest.raises(ValueError, match="binary labels 0/1"):
        delong_test([0, 1, 2, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="at least 2 positive and 2 negative"):
        delong_test([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])


def predictions_with_discordance(only_a_right: int, only_b_right: int, both_right: int = 40, both_wrong: int = 10):
    """Binary labels and two prediction vectors with the given 2x2 agreement counts."""
    counts = (only_a_right, only_b_right, both_right, both_wrong)
    labels = np.ones(sum(counts), dtype=int)
    a_right = np.repeat([True, False, True, False], counts)
    b_right = np.repeat([False, True, True, False], counts)
    return labels, np.where(a_right, 1, 0), np.where(b_right, 1, 0)


def test_mcnemar_exact_matches_binomtest_and_hand_computation() -> None:
    result = mcnemar_test(*predictions_with_discordance(3, 12))
    assert (result["b"], result["c"], result["method"]) == (3, 12, "exact_binomial")
    assert result["p_value"] == pytest.approx(sps.binomtest(3, 15, 0.5).pvalue)
    # Two-sided exact p = 2 * P(X <= 3), X ~ Binomial(15, 1/2) = 2 * (1 + 15 + 105 + 455) / 2**15.
    assert result["p_value"] == pytest.approx(2 * 576 / 2**15)
    assert result["statistic"] == 3.0


def test_mcnemar_chi_square_with_continuity_correction_on_large_counts() -> None:
    result = mcnemar_test(*predictions_with_discordance(30, 10))
    assert (result["b"], result["c"], result["method"]) == (30, 10, "chi2_continuity_corrected")
    assert result["statistic"] == pytest.approx((20 - 1) ** 2 / 40)
    # Chi-square with one degree of freedom: P(X > s) = erfc(sqrt(s / 2)).
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    forced_exact = mcnemar_test(*predictions_with_discordance(30, 10), exact=True)
    assert forced_exact["p_value"] == pytest.approx(sps.binomtest(30, 40, 0.5).pvalue)


def test_mcnemar_switches_method_at_threshold_and_handles_no_discordance() -> None:
    assert mcnemar_test(*predictions_with_discordance(12, MCNEMAR_EXACT_BELOW - 13))["method"] == "exact_binomial"
    at_threshold = mcnemar_test(*predictions_with_discordance(12, MCNEMAR_EXACT_BELOW - 12))
    assert at_threshold["method"] == "chi2_continuity_corrected"
    agreeing = mcnemar_test(*predictions_with_discordance(0, 0))
    assert (agreeing["statistic"], agreeing["p_value"]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="equal length"):
        mcnemar_test([0, 1], [0, 1, 1], [0, 1])
