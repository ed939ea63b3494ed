"""alz_monai.metrics against scikit-learn computed independently, on random, tied and degenerate predictions."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from alz_monai.metrics import (
    PER_CLASS_SCALAR_KEYS,
    SCALAR_KEYS,
    average_by_participant,
    classification_report,
    expected_calibration_error,
    pr_curves,
    reliability_curve,
    roc_curves,
    scalar_metrics,
    to_jsonable,
    validate_predictions,
)

CLASS_NAMES = {2: ("CN", "AD"), 3: ("CN", "MCI", "AD")}


def make_predictions(
    num_classes: int, seed: int, variant: str, num_samples: int = 120
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax-like probabilities that are informative but imperfect.

    ``ties`` draws every row from five probability vectors (tied scores, tied arg-max); ``absent_prediction``
    makes the last class never the arg-max.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_samples)
    labels[:num_classes] = np.arange(num_classes)  # every class present
    if variant == "ties":
        palette = rng.dirichlet(np.ones(num_classes), size=5)
        palette[0] = 1.0 / num_classes  # every class tied for the arg-max
        rows = np.where(rng.random(num_samples) < 0.5, labels % 5, rng.integers(0, 5, num_samples))
        return labels, palette[rows]
    logits = rng.normal(size=(num_samples, num_classes))
    logits[np.arange(num_samples), labels] += 1.2
    if variant == "absent_prediction":
        logits[:, -1] -= 10.0
    probs = np.exp(logits)
    return labels, probs / probs.sum(axis=1, keepdims=True)


def reference_report(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> dict:
    """The same quantities straight from sklearn, with specificity as the recall of 'not this class'."""
    predicted = probs.argmax(axis=1)
    classes = list(range(num_classes))
    specificity = [skm.recall_score(labels != c, predicted != c, zero_division=0) for c in classes]
    per_class_auc = [skm.roc_auc_score(labels == c, probs[:, c]) for c in classes]
    per_class_ap = [skm.average_precision_score(labels == c, probs[:, c]) for c in classes]
    reference = {
        "accuracy": skm.accuracy_score(labels, predicted),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, predicted),
        "mcc": skm.matthews_corrcoef(labels, predicted),
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=classes).tolist(),
        "per_class_precision": skm.precision_score(labels, predicted, labels=classes, average=None, zero_division=0),
        "per_class_recall": skm.recall_score(labels, predicted, labels=classes, average=None, zero_division=0),
        "per_class_f1": skm.f1_score(labels, predicted, labels=classes, average=None, zero_division=0),
        "per_class_specificity": specificity,
        "per_class_auc": per_class_auc,
        "per_class_average_precision": per_class_ap,
    }
    for average in ("macro", "weighted"):
        reference[f"precision_{average}"] = skm.precision_score(labels, predicted, average=average, zero_division=0)
        reference[f"recall_{average}"] = skm.recall_score(labels, predicted, average=average, zero_division=0)
        reference[f"f1_{average}"] = skm.f1_score(labels, predicted, average=average, zero_division=0)
    if num_classes == 2:
        reference["sensitivity"] = skm.recall_score(labels, predicted, pos_label=1)
        reference["specificity"] = skm.recall_score(labels, predicted, pos_label=0)
        reference["auc"] = skm.roc_auc_score(labels, probs[:, 1])
        reference["average_precision"] = skm.average_precision_score(labels, probs[:, 1])
    else:
        reference["sensitivity"] = reference["recall_macro"]
        reference["specificity"] = np.mean(specificity)
        reference["auc"] = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
        reference["average_precision"] = skm.average_precision_score(
            label_binarize(labels, classes=classes), probs, average="macro"
        )
    return reference


@pytest.mark.parametrize("variant", ["random", "ties", "absent_prediction"])
@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_sklearn(seed: int, num_classes: int, variant: str) -> None:
    labels, probs = make_predictions(num_classes, seed, variant)
    if variant == "absent_prediction":
        assert num_classes - 1 not in probs.argmax(axis=1)
    report = classification_report(labels, probs, CLASS_NAMES[num_classes])
    reference = reference_report(labels, probs, num_classes)

    for key in SCALAR_KEYS:
        assert report[key] == pytest.approx(reference[key], abs=1e-12), key
    assert report["confusion_matrix"] == reference["confusion_matrix"]
    assert report["num_samples"] == labels.size
    for index, name in enumerate(CLASS_NAMES[num_classes]):
        entry = report["per_class"][name]
        assert entry["support"] == int(np.sum(labels == index))
        for key in ("precision", "recall", "f1", "specificity", "auc", "average_precision"):
            assert entry[key] == pytest.approx(reference[f"per_class_{key}"][index], abs=1e-12), (name, key)


def test_explicit_y_pred_overrides_argmax() -> None:
    labels, probs = make_predictions(2, seed=3, variant="random")
    thresholded = (probs[:, 1] > 0.3).astype(int)
    report = classification_report(labels, probs, CLASS_NAMES[2], y_pred=thresholded)
    assert report["sensitivity"] == pytest.approx(skm.recall_score(labels, thresholded))
    assert report["confusion_matrix"] == skm.confusion_matrix(labels, thresholded).tolist()
    assert report["auc"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))


def test_auc_is_nan_with_warning_when_class_absent(caplog: pytest.LogCaptureFixture) -> None:
    labels, probs = make_predictions(3, seed=4, variant="random")
    present = labels != 1  # drop every MCI scan
    with caplog.at_level(logging.WARNING, logger="alz_monai.metrics"):
        report = classification_report(labels[present], probs[present], CLASS_NAMES[3])
    assert math.isnan(report["auc"]) and math.isnan(report["average_precision"])
    assert math.isnan(report["per_class"]["MCI"]["auc"]) and math.isnan(report["per_class"]["MCI"]["average_precision"])
    assert report["per_class"]["AD"]["auc"] == pytest.approx(skm.roc_auc_score(labels[present] == 2, probs[present, 2]))
    assert any("MCI" in record.getMessage() and record.levelno == logging.WARNING for record in caplog.records)

    only_controls = np.zeros(10, dtype=int)
    binary_probs = np.full((10, 2), 0.5)
    report = classification_report(only_controls, binary_probs, CLASS_NAMES[2])
    assert math.isnan(report["auc"]) and math.isnan(report["average_precision"])
    assert report["accuracy"] == 1.0
    assert json.loads(json.dumps(to_jsonable(report), allow_nan=False))["auc"] is None


def _assert_builtin_only(value: object) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            _assert_builtin_only(item)
    elif isinstance(value, list):
        for item in value:
            _assert_builtin_only(item)
    else:
        assert value is None or type(value) in (bool, int, float, str), type(value)
        assert not (isinstance(value, float) and not math.isfinite(value))


def test_report_is_json_serialisable() -> None:
    labels, probs = make_predictions(3, seed=5, variant="random")
    report = classification_report(labels, probs, CLASS_NAMES[3])
    jsonable = to_jsonable(report)
    _assert_builtin_only(jsonable)
    assert json.loads(json.dumps(jsonable, allow_nan=False)) == jsonable
    assert jsonable["per_class"]["AD"]["f1"] == report["per_class"]["AD"]["f1"]
    mixed = to_jsonable({"array": np.array([1.0, np.nan, np.inf]), "scalar": np.float32(0.5), "count": np.int64(3)})
    assert mixed == {"array": [1.0, None, None], "scalar": 0.5, "count": 3}
    curve = to_jsonable(reliability_curve(labels, probs, n_bins=4))
    assert set(curve) == {"bin_centers", "accuracy", "confidence", "counts"}
    _assert_builtin_only(curve)


def test_scalar_metrics_flatten_summary_and_per_class_values() -> None:
    labels, probs = make_predictions(2, seed=6, variant="random")
    report = classification_report(labels, probs, CLASS_NAMES[2])
    scalars = scalar_metrics(report)
    expected_keys = set(SCALAR_KEYS) | {f"{key}/{name}" for key in PER_CLASS_SCALAR_KEYS for name in CLASS_NAMES[2]}
    assert set(scalars) == expected_keys
    assert all(type(value) is float for value in scalars.values())
    assert scalars["f1/AD"] == report["per_class"]["AD"]["f1"]
    assert scalars["auc"] == report["auc"]


@pytest.mark.parametrize("num_classes", [2, 3])
def test_curves_match_sklearn(num_classes: int) -> None:
    labels, probs = make_predictions(num_classes, seed=7, variant="ties")
    names = CLASS_NAMES[num_classes]
    roc = roc_curves(labels, probs, names)
    pr = pr_curves(labels, probs, names)
    expected_names = ["AD"] if num_classes == 2 else list(names)
    assert list(roc) == expected_names and list(pr) == expected_names
    for name in expected_names:
        index = names.index(name)
        for actual, expected in zip(roc[name], skm.roc_curve(labels == index, probs[:, index])):
            np.testing.assert_array_equal(actual, expected)
        for actual, expected in zip(pr[name], skm.precision_recall_curve(labels == index, probs[:, index])):
            np.testing.assert_array_equal(actual, expected)


def test_curves_leave_out_absent_class() -> None:
    labels, probs = make_predictions(3, seed=8, variant="random")
    present = labels != 2
    assert list(roc_curves(labels[present], probs[present], CLASS_NAMES[3])) == ["CN", "MCI"]
    assert list(pr_curves(labels[present], probs[present], CLASS_NAMES[3])) == ["CN", "MCI"]


def _binary_with_accuracy(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary predictions whose top-class probability is ``confidence`` and which are right where ``correct``."""
    predicted = np.zeros(confidence.size, dtype=int)
    probs = np.stack([confidence, 1.0 - confidence], axis=1)
    labels = np.where(correct, predicted, 1 - predicted)
    return labels, probs


def test_ece_near_zero_when_calibrated_and_large_when_overconfident() -> None:
    rng = np.random.default_rng(9)
    confidence = rng.uniform(0.5, 1.0, 20_000)
    labels, probs = _binary_with_accuracy(confidence, rng.random(confidence.size) < confidence)
    assert expected_calibration_error(labels, probs) < 0.02

    overconfident = np.full(20_000, 0.99)
    labels, probs = _binary_with_accuracy(overconfident, rng.random(overconfident.size) < 0.7)
    assert expected_calibration_error(labels, probs) == pytest.approx(0.29, abs=0.02)


def test_reliability_curve_bins_are_right_closed_and_ece_is_weighted_gap() -> None:
    confidence = np.array([0.5, 0.6, 0.75, 0.75, 1.0])
    correct = np.array([True, False, True, True, False])
    labels, probs = _binary_with_accuracy(confidence, correct)
    curve = reliability_curve(labels, probs, n_bins=4)
    np.testing.assert_allclose(curve.bin_centers, [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_array_equal(curve.counts, [0, 1, 3, 1])  # 0.5 and 0.75 fall in the bin they close
    assert math.isnan(curve.accuracy[0]) and math.isnan(curve.confidence[0])
    np.testing.assert_allclose(curve.accuracy[1:], [1.0, 2 / 3, 0.0])
    np.testing.assert_allclose(curve.confidence[1:], [0.5, 0.7, 1.0])
    expected = (1 * 0.5 + 3 * abs(2 / 3 - 0.7) + 1 * 1.0) / 5
    assert expected_calibration_error(labels, probs, n_bins=4) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("labels", "probs", "y_pred", "message"),
    [
        ([0, 1], [[0.5, 0.5, 0.0]] * 2, None, r"shape \(num_samples, 2\)"),
        ([0, 1, 1], [[0.5, 0.5]] * 2, None, "y_true must be a 1-D array of 2 labels"),
        ([0, 2], [[0.5, 0.5]] * 2, None, r"y_true must hold class indices in \[0, 1\]; row 1 is 2"),
        ([0, 1], [[0.5, 0.5], [2.0, -1.0]], None, "row 1 .* not logits"),
        ([0, 1], [[0.5, 0.5], [0.3, 0.3]], None, "row 1 sums to 0.600000"),
        ([0, 1], [[0.5, 0.5], [np.nan, 0.5]], None, r"probs must lie in \[0, 1\]; row 1"),
        ([0, 0.5], [[0.5, 0.5]] * 2, None, "y_true must hold integer class indices"),
        ([0, 1], [[0.5, 0.5]] * 2, [0], "y_pred must be a 1-D array of 2 labels"),
        ([0, 1], np.zeros((0, 2)), None, "probs is empty"),
    ],
)
def test_bad_input_raises_clear_error(labels: list, probs: list, y_pred: list | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_report(labels, probs, CLASS_NAMES[2], y_pred=y_pred)


def test_validate_predictions_infers_classes_from_probs() -> None:
    labels, probs, predicted = validate_predictions([2, 0], [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert labels.tolist() == [2, 0] and predicted.tolist() == [2, 0] and probs.shape == (2, 3)
    with pytest.raises(ValueError, match="2-D array"):
        validate_predictions([0], [0.5, 0.5])
    with pytest.raises(ValueError, match="at least 2 classes"):
        validate_predictions([0], [[1.0]])


def test_average_by_participant_matches_a_pandas_group_mean() -> None:
    rng = np.random.default_rng(4)
    participant_of_scan = rng.integers(0, 30, 90)
    participant_label = rng.integers(0, 3, 30)
    labels, probs = participant_label[participant_of_scan], rng.dirichlet(np.ones(3), 90)
    ids = [f"sub-{index:02d}" for index in participant_of_scan]
    averages = average_by_participant(labels, probs, ids)

    table = pd.DataFrame(probs).assign(participant=ids, label=labels)
    expected = table.groupby("participant", sort=False)[[0, 1, 2]].agg(["mean", "size"])
    assert list(averages.participants) == list(expected.index)
    np.testing.assert_allclose(averages.probs, expected.xs("mean", axis=1, level=1).to_numpy())
    np.testing.assert_array_equal(averages.num_scans, expected[(0, "size")].to_numpy())
    np.testing.assert_array_equal(averages.y_true, table.groupby("participant", sort=False)["label"].first())
    np.testing.assert_allclose(averages.probs.sum(axis=1), 1.0)


def test_average_by_participant_splits_changed_diagnoses_and_needs_every_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probs = [[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]]
    with caplog.at_level(logging.WARNING, logger="alz_monai.metrics"):
        averages = average_by_participant([0, 0, 0, 1], probs, ["b", "b", "a", "a"])
    assert list(averages.participants) == ["b", "a", "a"] and list(averages.y_true) == [0, 0, 1]
    np.testing.assert_allclose(averages.probs, [[0.8, 0.2], [0.2, 0.8], [0.4, 0.6]])
    assert "participants a have scans with different true labels" in caplog.text
    with pytest.raises(ValueError, match="participant id missing on row 1"):
        average_by_participant([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", ""])
