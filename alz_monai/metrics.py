"""Classification metrics for AD/CN(/MCI) predictions, computed with scikit-learn.

Every function takes the same inputs: ``y_true`` (n integer labels in ``range(C)``), ``probs`` (n x C class
probabilities, rows summing to 1) and ``class_names`` (C names, index 1 being the positive class of a binary task,
e.g. ``("CN", "AD")``). Reports are plain Python containers so they can be logged, compared and dumped to JSON with
:func:`to_jsonable`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

logger = logging.getLogger(__name__)

#: Positive class index of a binary task (AD in ``("CN", "AD")``).
POSITIVE_CLASS = 1

#: Report entries that are single numbers, in the order :func:`scalar_metrics` emits them.
SCALAR_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "sensitivity",
    "specificity",
    "auc",
    "average_precision",
    "mcc",
)

#: Per-class report entries that :func:`scalar_metrics` emits as ``"<metric>/<class name>"``.
PER_CLASS_SCALAR_KEYS = ("precision", "recall", "f1", "specificity", "auc", "average_precision")

#: One curve as sklearn returns it: ``(fpr, tpr, thresholds)`` or ``(precision, recall, thresholds)``.
Curve = tuple[np.ndarray, np.ndarray, np.ndarray]

# Softmax outputs in float32 sum to 1 only up to rounding.
_ROW_SUM_TOLERANCE = 1e-4


def validate_predictions(
    y_true: Any, probs: Any, class_names: Sequence[str] | None = None, y_pred: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes, ranges and normalisation; return ``(y_true, probs, y_pred)`` as numpy arrays.

    ``class_names`` fixes the number of classes (else ``probs`` does); ``y_pred`` defaults to the arg-max of
    ``probs``. Raises ``ValueError`` naming the offending argument and row.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be a 2-D array (num_samples, num_classes), got shape {probs.shape}.")
    num_classes = probs.shape[1] if class_names is None else len(class_names)
    if num_classes < 2:
        raise ValueError(f"at least 2 classes are needed, got {num_classes} (class_names={class_names!r}).")
    if class_names is not None and probs.shape[1] != num_classes:
        raise ValueError(
            f"probs must have shape (num_samples, {num_classes}) to match class_names {list(class_names)!r}, "
            f"got shape {probs.shape}."
        )
    if probs.shape[0] == 0:
        raise ValueError("probs is empty: metrics need at least one sample.")
    labels = _as_labels(y_true, "y_true", probs.shape[0], num_classes)
    bad_rows = np.flatnonzero(~np.all(np.isfinite(probs) & (probs >= 0.0) & (probs <= 1.0), axis=1))
    if bad_rows.size:
        row = int(bad_rows[0])
        raise ValueError(
            f"probs must lie in [0, 1]; row {row} is {probs[row].tolist()} ({bad_rows.size} bad rows). "
            "Pass softmax probabilities, not logits."
        )
    row_sums = probs.sum(axis=1)
    bad_rows = np.flatnonzero(np.abs(row_sums - 1.0) > _ROW_SUM_TOLERANCE)
    if bad_rows.size:
        row = int(bad_rows[0])
        raise ValueError(
            f"each row of probs must sum to 1; row {row} sums to {row_sums[row]:.6f} ({bad_rows.size} bad rows). "
            "Apply softmax over the class dimension."
        )
    if y_pred is None:
        predicted = probs.argmax(axis=1)
    else:
        predicted = _as_labels(y_pred, "y_pred", probs.shape[0], num_classes)
    return labels, probs, predicted


def _as_labels(values: Any, name: str, num_samples: int, num_classes: int) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (num_samples,):
        raise ValueError(
            f"{name} must be a 1-D array of {num_samples} labels (one per row of probs), got shape {array.shape}."
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)):
        if not (np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}.")
    array = array.astype(np.int64)
    bad = np.flatnonzero((array < 0) | (array >= num_classes))
    if bad.size:
        raise ValueError(
            f"{name} must hold class indices in [0, {num_classes - 1}]; row {int(bad[0])} is {int(array[bad[0]])} "
            f"({bad.size} bad rows)."
        )
    return array


def _per_class_ranking_scores(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> tuple[list[float], list[float]]:
    """One-vs-rest ROC AUC and average precision per class; NaN (and a warning) where undefined."""
    aucs: list[float] = []
    average_precisions: list[float] = []
    for index, name in enumerate(class_names):
        is_class = labels == index
        num_positive = int(is_class.sum())
        if num_positive == 0 or num_positive == labels.size:
            logger.warning(
                "ROC AUC of class %r is undefined: %d of %d samples belong to it "
                "(it needs both members and non-members); reporting NaN.",
                name,
                num_positive,
                labels.size,
            )
            aucs.append(math.nan)
        else:
            aucs.append(float(skm.roc_auc_score(is_class, probs[:, index])))
        if num_positive == 0:
            logger.warning("Average precision of class %r is undefined: it is absent from y_true; reporting NaN.", name)
            average_precisions.append(math.nan)
        else:
            average_precisions.append(float(skm.average_precision_score(is_class, probs[:, index])))
    return aucs, average_precisions


def classification_report(
    y_true: Any, probs: Any, class_names: Sequence[str], y_pred: Any = None
) -> dict[str, Any]:
    """All metrics of one evaluation, with sklearn semantics (``zero_division=0``).

    Binary tasks report sensitivity, specificity, AUC and average precision of the positive class (index 1);
    multi-class tasks report their macro one-vs-rest averages, NaN if any class is undefined.
    """
    labels, probs, predicted = validate_predictions(y_true, probs, class_names, y_pred)
    class_indices = list(range(len(class_names)))
    confusion = skm.confusion_matrix(labels, predicted, labels=class_indices)

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=class_indices, zero_division=0
    )
    # One-vs-rest confusion matrices are [[tn, fp], [fn, tp]] per class.
    one_vs_rest = skm.multilabel_confusion_matrix(labels, predicted, labels=class_indices)
    true_negatives, false_positives = one_vs_rest[:, 0, 0], one_vs_rest[:, 0, 1]
    negatives = true_negatives + false_positives
    specificity = np.divide(true_negatives, negatives, out=np.zeros(len(class_names)), where=negatives > 0)
    aucs, average_precisions = _per_class_ranking_scores(labels, probs, class_names)

    averaged = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            labels, predicted, labels=class_indices, average=average, zero_division=0
        )
        averaged.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})

    if len(class_names) == 2:
        sensitivity = float(recall[POSITIVE_CLASS])
        specificity_summary = float(specificity[POSITIVE_CLASS])
        auc = aucs[POSITIVE_CLASS]
        average_precision = average_precisions[POSITIVE_CLASS]
    else:
        sensitivity = averaged["recall_macro"]
        specificity_summary = float(specificity.mean())
        auc = float(np.mean(aucs))
        average_precision = float(np.mean(average_precisions))

    per_class = {
        name: {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "specificity": float(specificity[index]),
            "support": int(support[index]),
            "auc": aucs[index],
            "average_precision": average_precisions[index],
        }
        for index, name in enumerate(class_names)
    }
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, predicted)),
        **averaged,
        "sensitivity": sensitivity,
        "specificity": specificity_summary,
        "auc": auc,
        "average_precision": average_precision,
        "mcc": float(skm.matthews_corrcoef(labels, predicted)),
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class,
        "num_samples": int(labels.size),
    }


def _curve_classes(class_names: Sequence[str]) -> list[int]:
    """Binary tasks plot only the positive class (the negative one is its mirror image)."""
    return [POSITIVE_CLASS] if len(class_names) == 2 else list(range(len(class_names)))


def roc_curves(y_true: Any, probs: Any, class_names: Sequence[str]) -> dict[str, Curve]:
    """One-vs-rest ``(fpr, tpr, thresholds)`` per class (binary: positive class only); undefined classes left out."""
    labels, probs, _ = validate_predictions(y_true, probs, class_names)
    curves = {}
    for index in _curve_classes(class_names):
        is_class = labels == index
        if is_class.all() or not is_class.any():
            logger.warning(
                "ROC curve of class %r left out: y_true does not contain both it and other classes.", class_names[index]
            )
            continue
        curves[class_names[index]] = skm.roc_curve(is_class, probs[:, index])
    return curves


def pr_curves(y_true: Any, probs: Any, class_names: Sequence[str]) -> dict[str, Curve]:
    """One-vs-rest ``(precision, recall, thresholds)`` per class (binary: positive class only); absent ones left out."""
    labels, probs, _ = validate_predictions(y_true, probs, class_names)
    curves = {}
    for index in _curve_classes(class_names):
        is_class = labels == index
        if not is_class.any():
            logger.warning("Precision-recall curve of class %r left out: it is absent from y_true.", class_names[index])
            continue
        curves[class_names[index]] = skm.precision_recall_curve(is_class, probs[:, index])
    return curves


def scalar_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Flatten a :func:`classification_report` to ``name -> float`` (per-class as ``"f1/AD"``) for TensorBoard/JSON."""
    scalars = {key: float(report[key]) for key in SCALAR_KEYS}
    for name, values in report["per_class"].items():
        scalars.update({f"{key}/{name}": float(values[key]) for key in PER_CLASS_SCALAR_KEYS})
    return scalars


@dataclasses.dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin calibration summary; empty bins have ``count == 0`` and NaN accuracy/confidence."""

    bin_centers: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    counts: np.ndarray


def reliability_curve(y_true: Any, probs: Any, n_bins: int = 15) -> ReliabilityCurve:
    """Accuracy vs mean top-label confidence in ``n_bins`` equal-width bins ``(k/n, (k+1)/n]`` of [0, 1].

    The confidence of a sample is its largest class probability and it counts as correct when that class is the
    true one (Guo et al., 2017, "On Calibration of Modern Neural Networks").
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}.")
    labels, probs, predicted = validate_predictions(y_true, probs)
    confidence = probs.max(axis=1)
    correct = (predicted == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" on the inner edges puts a value equal to an edge into the lower bin: bins are right-closed.
    bin_index = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(bin_index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_accuracy = np.bincount(bin_index, weights=correct, minlength=n_bins) / counts
        bin_confidence = np.bincount(bin_index, weights=confidence, minlength=n_bins) / counts
    return ReliabilityCurve(
        bin_centers=(edges[:-1] + edges[1:]) / 2.0, accuracy=bin_accuracy, confidence=bin_confidence, counts=counts
    )


def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = 15) -> float:
    """Top-label ECE: ``sum_b (n_b / n) * |accuracy_b - confidence_b|`` over the bins of :func:`reliability_curve`."""
    curve = reliability_curve(y_true, probs, n_bins)
    filled = curve.counts > 0
    gaps = np.abs(curve.accuracy[filled] - curve.confidence[filled])
    return float(np.sum(curve.counts[filled] * gaps) / curve.counts.sum())


@dataclasses.dataclass(frozen=True)
class ParticipantAverages:
    """One row per participant (and diagnosis, where it changed between sessions), in order of first appearance."""

    participants: np.ndarray
    y_true: np.ndarray
    probs: np.ndarray
    num_scans: np.ndarray


def average_by_participant(y_true: Any, probs: Any, participants: Any) -> ParticipantAverages:
    """Mean class probabilities of each participant's scans, for participant-level metrics.

    Sessions of one person are not independent evidence, so a participant counts once. A participant whose true
    label changed between sessions (e.g. CN converting to MCI) gives one row per label, with a warning.
    """
    labels, probs, _ = validate_predictions(y_true, probs)
    ids = np.asarray(participants, dtype=str)
    if ids.shape != labels.shape:
        raise ValueError(f"participants must give one id per row of probs ({labels.size}), got shape {ids.shape}.")
    missing = np.flatnonzero(ids == "")
    if missing.size:
        raise ValueError(f"participant id missing on row {int(missing[0])} ({missing.size} rows): participant-level "
                         "metrics need every scan's participant.")
    _, participant_index = np.unique(ids, return_inverse=True)
    num_classes = probs.shape[1]
    _, first, unit = np.unique(participant_index * num_classes + labels, return_index=True, return_inverse=True)
    order = np.argsort(first)
    num_scans = np.bincount(unit)
    sums = np.stack([np.bincount(unit, weights=probs[:, column]) for column in range(num_classes)], axis=1)
    unit_ids = ids[first][order]
    values, counts = np.unique(unit_ids, return_counts=True)
    if (counts > 1).any():
        logger.warning("participants %s have scans with different true labels: each label counts as its own "
                       "participant-level row.", ", ".join(values[counts > 1][:10]))
    return ParticipantAverages(participants=unit_ids, y_true=labels[first][order],
                               probs=(sums / num_scans[:, None])[order], num_scans=num_scans[order])


def to_jsonable(obj: Any) -> Any:
    """Convert reports, arrays and numpy scalars to built-in types; NaN and infinities become ``None`` (JSON null)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: to_jsonable(getattr(obj, field.name)) for field in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(value) for value in obj]
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
