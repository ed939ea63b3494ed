"""Uncertainty and significance for classifier comparisons: participant-level bootstrap, DeLong and McNemar tests."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps
from sklearn import metrics as skm

from alz_monai.metrics import POSITIVE_CLASS, SCALAR_KEYS, classification_report, validate_predictions

logger = logging.getLogger(__name__)

#: Metrics :func:`bootstrap_ci` and :func:`resampled_metrics` can compute (keys of ``classification_report``).
BOOTSTRAP_METRICS = SCALAR_KEYS

#: McNemar's test switches from the exact binomial to chi-square at this many discordant pairs.
MCNEMAR_EXACT_BELOW = 25

# Resamples are evaluated in blocks so that the (resamples x samples) weight matrices stay small.
_MAX_BLOCK_ELEMENTS = 2_000_000


def _check_metric_names(metrics: Sequence[str]) -> None:
    unknown = [name for name in metrics if name not in BOOTSTRAP_METRICS]
    if unknown:
        raise ValueError(f"unknown bootstrap metrics {unknown}; choose from {list(BOOTSTRAP_METRICS)}.")


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio that is 0 where the denominator is 0 (sklearn's ``zero_division=0``)."""
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _weighted_ranking_scores(
    is_positive: np.ndarray, scores: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision of ``scores`` for every row of sample ``weights`` (R x n).

    Samples are sorted once by decreasing score and tied scores merged, so each row costs O(n): the AUC is the
    weighted Mann-Whitney statistic (ties count 1/2) and the AP is ``sum_k (delta recall_k) * precision_k``
    over score thresholds, both equal to sklearn's on data repeated ``weights`` times.
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    tie_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    sorted_weights = weights[:, order]
    sorted_positive = is_positive[order]
    positive_weight = np.add.reduceat(sorted_weights * sorted_positive, tie_starts, axis=1)
    negative_weight = np.add.reduceat(sorted_weights * ~sorted_positive, tie_starts, axis=1)
    total_positive = positive_weight.sum(axis=1)
    total_negative = negative_weight.sum(axis=1)
    negatives_at_or_above = np.cumsum(negative_weight, axis=1)
    negatives_below = total_negative[:, None] - negatives_at_or_above
    with np.errstate(invalid="ignore", divide="ignore"):
        pairs_ranked_right = (positive_weight * (negatives_below + 0.5 * negative_weight)).sum(axis=1)
        auc = pairs_ranked_right / (total_positive * total_negative)
        positives_at_or_above = np.cumsum(positive_weight, axis=1)
        precision = _safe_divide(positives_at_or_above, positives_at_or_above + negatives_at_or_above)
        average_precision = (positive_weight * precision).sum(axis=1) / total_positive
    return auc, average_precision


def resampled_metrics(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    weights: Any,
    metrics: Sequence[str] = BOOTSTRAP_METRICS,
    y_pred: Any = None,
) -> dict[str, np.ndarray]:
    """Metrics of many reweightings of one prediction set at once: ``weights`` is (R x n) sample multiplicities.

    Row r gives what :func:`classification_report` returns on the data with sample i repeated ``weights[r, i]``
    times. A row lacking any class in ``y_true`` gives NaN for every metric but accuracy: class-wise metrics are then
    undefined (sklearn would silently report 0 recall for the missing class).
    """
    _check_metric_names(metrics)
    labels, probs, predicted = validate_predictions(y_true, probs, class_names, y_pred)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if weights.ndim != 2 or weights.shape[1] != labels.size:
        raise ValueError(f"weights must have shape (num_resamples, {labels.size}), got {weights.shape}.")
    num_classes = len(class_names)

    cell = np.zeros((labels.size, num_classes * num_classes))
    cell[np.arange(labels.size), labels * num_classes + predicted] = 1.0
    confusion = (weights @ cell).reshape(-1, num_classes, num_classes)  # rows true, columns predicted
    true_positive = np.diagonal(confusion, axis1=1, axis2=2)
    support = confusion.sum(axis=2)
    predicted_count = confusion.sum(axis=1)
    total = support.sum(axis=1)
    false_positive = predicted_count - true_positive
    false_negative = support - true_positive
    true_negative = total[:, None] - true_positive - false_positive - false_negative

    recall = _safe_divide(true_positive, support)
    precision = _safe_divide(true_positive, predicted_count)
    f1 = _safe_divide(2.0 * true_positive, 2.0 * true_positive + false_positive + false_negative)
    specificity = _safe_divide(true_negative, true_negative + false_positive)
    class_weight = _safe_divide(support, total[:, None])

    correct = true_positive.sum(axis=1)
    results = {
        "accuracy": _safe_divide(correct, total),
        "balanced_accuracy": recall.mean(axis=1),
        "precision_macro": precision.mean(axis=1),
        "recall_macro": recall.mean(axis=1),
        "f1_macro": f1.mean(axis=1),
        "precision_weighted": (class_weight * precision).sum(axis=1),
        "recall_weighted": (class_weight * recall).sum(axis=1),
        "f1_weighted": (class_weight * f1).sum(axis=1),
        "sensitivity": recall[:, POSITIVE_CLASS] if num_classes == 2 else recall.mean(axis=1),
        "specificity": specificity[:, POSITIVE_CLASS] if num_classes == 2 else specificity.mean(axis=1),
        "mcc": _multiclass_mcc(correct, total, support, predicted_count),
    }
    if "auc" in metrics or "average_precision" in metrics:
        ranking_classes = [POSITIVE_CLASS] if num_classes == 2 else range(num_classes)
        per_class = [_weighted_ranking_scores(labels == index, probs[:, index], weights) for index in ranking_classes]
        if "auc" in metrics:
            results["auc"] = np.mean([auc for auc, _ in per_class], axis=0)
        if "average_precision" in metrics:
            results["average_precision"] = np.mean([ap for _, ap in per_class], axis=0)

    lacks_class = np.any(support == 0, axis=1)
    selected = {name: results[name].copy() for name in metrics}
    for name, values in selected.items():
        if name != "accuracy":
            values[lacks_class] = np.nan
    return selected


def _multiclass_mcc(
    correct: np.ndarray, total: np.ndarray, support: np.ndarray, predicted_count: np.ndarray
) -> np.ndarray:
    """Gorodkin's R_K (sklearn's ``matthews_corrcoef``), 0 when a marginal is constant."""
    covariance_true_pred = correct * total - (support * predicted_count).sum(axis=1)
    covariance_pred = total**2 - (predicted_count**2).sum(axis=1)
    covariance_true = total**2 - (support**2).sum(axis=1)
    return _safe_divide(covariance_true_pred, np.sqrt(covariance_pred * covariance_true))


def _participant_index(groups: Any, num_samples: int) -> np.ndarray:
    """Each scan's participant as an index in ``range(number of participants)`` (default: a scan is its own)."""
    if groups is None:
        return np.arange(num_samples)
    groups = np.asarray(groups)
    if groups.shape != (num_samples,):
        raise ValueError(f"groups must give one participant id per sample ({num_samples}), got shape {groups.shape}.")
    return np.unique(groups, return_inverse=True)[1].reshape(-1)


def _resample_weights(scan_group: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of bootstrap scan multiplicities (resamples x scans): participants are drawn with replacement and a
    drawn participant brings all their scans, so repeated scans of one person do not narrow an interval."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples}.")
    num_groups = int(scan_group.max()) + 1
    drawn_groups = np.random.default_rng(seed).integers(0, num_groups, size=(n_resamples, num_groups))
    block_size = max(1, _MAX_BLOCK_ELEMENTS // max(scan_group.size, num_groups))
    for start in range(0, n_resamples, block_size):
        block = drawn_groups[start : start + block_size]
        offsets = np.arange(block.shape[0])[:, None] * num_groups
        group_counts = np.bincount((block + offsets).ravel(), minlength=block.size).reshape(block.shape)
        yield group_counts[:, scan_group]


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}.")


def bootstrap_ci(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    groups: Any = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    metrics: Sequence[str] = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "f1_macro"),
) -> dict[str, dict[str, Any]]:
    """Percentile bootstrap confidence intervals, resampling participants rather than scans.

    ``groups`` gives each scan's participant id (default: every scan its own participant). Resamples where a metric
    is undefined (a class absent) are skipped for it and counted in ``skipped``. Returns ``{metric: {estimate, low,
    high, level, resamples, unit, skipped}}``: ``estimate`` is the metric on the full data and every interval states
    its own confidence level, resample count and resampled unit, so that a JSON file holding it reads on its own.
    """
    _check_metric_names(metrics)
    _check_confidence(confidence)
    labels, probs, predicted = validate_predictions(y_true, probs, class_names)
    scan_group = _participant_index(groups, labels.size)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    for weights in _resample_weights(scan_group, n_resamples, seed):
        for name, values in resampled_metrics(labels, probs, class_names, weights, metrics, predicted).items():
            samples[name].append(values)

    full_report = classification_report(labels, probs, class_names, predicted)
    tail = (1.0 - confidence) / 2.0
    unit = "scan" if groups is None else "participant"
    intervals = {}
    for name in metrics:
        values = np.concatenate(samples[name])
        valid = values[~np.isnan(values)]
        skipped = int(values.size - valid.size)
        if skipped:
            logger.warning(
                "bootstrap of %s: %d of %d resamples lacked a class and were skipped.", name, skipped, values.size
            )
        low, high = np.quantile(valid, [tail, 1.0 - tail]) if valid.size else (np.nan, np.nan)
        intervals[name] = {
            "estimate": float(full_report[name]),
            "low": float(low),
            "high": float(high),
            "level": confidence,
            "resamples": n_resamples,
            "unit": unit,
            "skipped": skipped,
        }
    return intervals


@dataclasses.dataclass(frozen=True)
class RocBand:
    """Pointwise percentile bootstrap band of a ROC curve: true positive rates at fixed false positive rates."""

    fpr: np.ndarray
    tpr_low: np.ndarray
    tpr_high: np.ndarray
    level: float
    resamples: int


def bootstrap_roc_band(
    is_positive: Any,
    scores: Any,
    groups: Any = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    grid_points: int = 101,
) -> RocBand:
    """Band around a one-vs-rest ROC curve from the same participant-level resamples as :func:`bootstrap_ci`.

    Each resample's curve (sklearn's, with the resample's scan multiplicities as weights) is interpolated at
    ``grid_points`` false positive rates; resamples lacking positives or negatives are skipped.
    """
    _check_confidence(confidence)
    positive = _binary_labels(is_positive)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != positive.shape:
        raise ValueError(f"scores must have one value per label ({positive.size}), got shape {scores.shape}.")
    grid = np.linspace(0.0, 1.0, grid_points)
    curves = []
    for weights in _resample_weights(_participant_index(groups, positive.size), n_resamples, seed):
        for row in weights:
            if not (row[positive].any() and row[~positive].any()):
                continue
            kept = row > 0
            fpr, tpr, _ = skm.roc_curve(positive[kept], scores[kept], sample_weight=row[kept])
            curves.append(np.interp(grid, fpr, tpr))
    if not curves:
        raise ValueError("no bootstrap resample holds both positives and negatives; a ROC band needs both classes.")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(curves), [tail, 1.0 - tail], axis=0)
    low[0], high[-1] = 0.0, 1.0
    return RocBand(fpr=grid, tpr_low=low, tpr_high=high, level=confidence, resamples=len(curves))


def rounded(obj: Any, significant_digits: int = 6) -> Any:
    """Floats rounded to ``significant_digits`` throughout a JSON-like object, for files people read: a metric of
    0.9999999999999999 shows as 1.0 and a p-value of 1.234567891e-08 keeps its magnitude."""
    if isinstance(obj, float):
        return float(f"{obj:.{significant_digits}g}") if math.isfinite(obj) else obj
    if isinstance(obj, Mapping):
        return {key: rounded(value, significant_digits) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(value, significant_digits) for value in obj]
    return obj


def _binary_labels(y_true: Any, num_samples: int | None = None) -> np.ndarray:
    labels = np.asarray(y_true)
    if labels.ndim != 1 or (num_samples is not None and labels.size != num_samples):
        raise ValueError(f"y_true must be a 1-D array with one label per score, got shape {labels.shape}.")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(
            f"y_true must hold binary labels 0/1 (1 = positive class), found values {np.unique(labels).tolist()}."
        )
    return labels.astype(bool)


def delong_covariance(y_true: Any, scores: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUCs of K score sets on the same samples and their DeLong covariance matrix (K x K).

    Uses the midrank formulation of the structural components (Sun & Xu, 2014, IEEE SPL 21:1389): with m positives
    and n negatives, ``V10_i = (rank of positive i among all - its rank among positives) / n`` and
    ``V01_j = 1 - (rank of negative j among all - its rank among negatives) / m``, and
    ``cov = cov(V10) / m + cov(V01) / n`` (DeLong et al., 1988, Biometrics 44:837).
    """
    score_matrix = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    is_positive = _binary_labels(y_true, score_matrix.shape[1])
    if not np.isfinite(score_matrix).all():
        raise ValueError("scores must be finite numbers.")
    num_positive, num_negative = int(is_positive.sum()), int((~is_positive).sum())
    if num_positive < 2 or num_negative < 2:
        raise ValueError(
            f"the DeLong test needs at least 2 positive and 2 negative samples, got {num_positive} and {num_negative}."
        )
    positive_scores, negative_scores = score_matrix[:, is_positive], score_matrix[:, ~is_positive]
    rank_all = sps.rankdata(np.concatenate([positive_scores, negative_scores], axis=1), axis=1)
    rank_among_positive = sps.rankdata(positive_scores, axis=1)
    rank_among_negative = sps.rankdata(negative_scores, axis=1)
    positive_components = (rank_all[:, :num_positive] - rank_among_positive) / num_negative
    negative_components = 1.0 - (rank_all[:, num_positive:] - rank_among_negative) / num_positive
    aucs = positive_components.mean(axis=1)
    covariance = np.atleast_2d(np.cov(positive_components)) / num_positive
    covariance = covariance + np.atleast_2d(np.cov(negative_components)) / num_negative
    return aucs, covariance


def delong_test(y_true: Any, scores_a: Any, scores_b: Any) -> dict[str, float]:
    """Two-sided paired DeLong test that two correlated ROC AUCs (same samples, binary labels) are equal.

    When the AUC difference has zero variance (e.g. identical scores), ``z`` is 0 and ``p_value`` 1 if the AUCs are
    equal, else ``z`` is infinite and ``p_value`` 0.
    """
    aucs, covariance = delong_covariance(y_true, [scores_a, scores_b])
    difference = aucs[0] - aucs[1]
    variance = covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1]
    if variance > 1e-15:
        z = difference / np.sqrt(variance)
    else:
        z = 0.0 if np.isclose(difference, 0.0, atol=1e-12) else np.copysign(np.inf, difference)
    p_value = 2.0 * sps.norm.sf(abs(z))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "z": float(z), "p_value": float(p_value)}


def mcnemar_test(y_true: Any, pred_a: Any, pred_b: Any, exact: bool | None = None) -> dict[str, Any]:
    """McNemar's test that two classifiers have the same error rate on the same samples.

    ``b`` counts samples only model A gets right, ``c`` those only model B gets right. ``exact=None`` picks the exact
    two-sided binomial test when ``b + c < 25``, else chi-square with Edwards' continuity correction
    ``max(|b - c| - 1, 0)^2 / (b + c)`` on 1 degree of freedom. The exact test's statistic is ``min(b, c)``.
    """
    labels = np.asarray(y_true)
    predictions_a, predictions_b = np.asarray(pred_a), np.asarray(pred_b)
    if labels.ndim != 1 or predictions_a.shape != labels.shape or predictions_b.shape != labels.shape:
        raise ValueError(
            f"y_true, pred_a and pred_b must be 1-D of equal length, got shapes {labels.shape}, "
            f"{predictions_a.shape} and {predictions_b.shape}."
        )
    correct_a, correct_b = predictions_a == labels, predictions_b == labels
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    discordant = b + c
    use_exact = discordant < MCNEMAR_EXACT_BELOW if exact is None else exact
    if discordant == 0:
        statistic, p_value = 0.0, 1.0
    elif use_exact:
        statistic, p_value = float(min(b, c)), float(sps.binomtest(b, discordant, 0.5).pvalue)
    else:
        statistic = max(abs(b - c) - 1, 0) ** 2 / discordant
        p_value = float(sps.chi2.sf(statistic, df=1))
    return {
        "b": b,
        "c": c,
        "statistic": float(statistic),
        "p_value": p_value,
        "method": "exact_binomial" if use_exact else "chi2_continuity_corrected",
    }
