"""alz_monai.calibration: a hand-computed temperature, ECE lowered on mis-calibrated logits, CSV fits, storage."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from scipy import special

from alz_monai import calibration
from alz_monai.errors import DataError
from alz_monai.metrics import expected_calibration_error
from alz_monai.predictions import Predictions, load_predictions, write_predictions

CLASS_NAMES = {2: ("CN", "AD"), 3: ("CN", "MCI", "AD")}


def calibrated_cohort(num_classes: int, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from their own softmax: perfectly calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(num_samples, num_classes))
    probs = special.softmax(logits, axis=1)
    labels = np.array([rng.choice(num_classes, p=row) for row in probs])
    return labels, logits


def as_predictions(labels: np.ndarray, probs: np.ndarray) -> Predictions:
    count = labels.size
    return Predictions(source="synthetic", class_names=CLASS_NAMES[probs.shape[1]],
                       images=tuple(f"scan{i}.nii.gz" for i in range(count)),
                       participants=tuple(f"sub-{i // 2}" for i in range(count)),
                       sessions=tuple(f"ses-{i % 2}" for i in range(count)), y_true=labels, probs=probs)


def test_hand_computed_binary_temperature_matches_the_observed_accuracy():
    # Every scan scores logits (0, 2) and 3 of 4 are AD: the NLL is minimal where sigmoid(2 / T) = 3/4,
    # so T = 2 / logit(3/4) = 2 / ln 3, and the calibrated confidence 0.75 equals the accuracy.
    logits = np.tile([0.0, 2.0], (4, 1))
    labels = np.array([1, 1, 1, 0])
    fit = calibration.fit_temperature(labels, logits)
    assert fit.temperature == pytest.approx(2.0 / math.log(3.0), rel=1e-5)
    probs = calibration.apply_temperature(logits, fit.temperature)
    np.testing.assert_allclose(probs[:, 1], 0.75, rtol=1e-5)
    assert fit.ece_before == pytest.approx(special.expit(2.0) - 0.75)
    assert fit.ece_after == pytest.approx(0.0, abs=1e-5)
    assert fit.nll_after < fit.nll_before
    assert fit.nll_after == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-6)
    assert not fit.at_bound and fit.num_samples == 4


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("scale", [3.0, 1.0 / 3.0])
def test_temperature_recovers_miscalibration_and_keeps_predictions(num_classes, scale):
    """Logits multiplied by ``scale`` (3: over-confident, 1/3: under-confident) are fixed by T close to ``scale``."""
    val_labels, val_logits = calibrated_cohort(num_classes, 3000, seed=1)
    test_labels, test_logits = calibrated_cohort(num_classes, 3000, seed=2)
    fit = calibration.fit_temperature(val_labels, scale * val_logits)
    assert fit.temperature == pytest.approx(scale, rel=0.1)
    assert fit.ece_after < fit.ece_before / 3

    before = special.softmax(scale * test_logits, axis=1)
    after = calibration.apply_temperature(scale * test_logits, fit.temperature)
    ece_before, ece_after = (expected_calibration_error(test_labels, probs) for probs in (before, after))
    assert ece_before > 0.05 and ece_after < 0.03 and ece_after < ece_before / 3
    np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))


@pytest.mark.parametrize("num_classes", [2, 3])
def test_probabilities_of_a_csv_give_the_temperature_of_the_logits(tmp_path, num_classes):
    labels, logits = calibrated_cohort(num_classes, 400, seed=3)
    from_logits = calibration.fit_temperature(labels, 2.5 * logits).temperature
    # log-probabilities differ from the logits by one constant per row
    from_log_probs = calibration.fit_temperature(labels, special.log_softmax(2.5 * logits, axis=1)).temperature
    assert from_log_probs == pytest.approx(from_logits, rel=1e-6)

    csv = tmp_path / "reports" / "best_val_predictions.csv"
    write_predictions(csv, as_predictions(labels, special.softmax(2.5 * logits, axis=1)))
    fit = calibration.fit_temperature_to_run(csv)  # 6 decimals, zeros floored
    assert fit.temperature == pytest.approx(from_logits, rel=1e-2)
    assert calibration.load_temperature(csv.parent / calibration.TEMPERATURE_NAME) == pytest.approx(fit.temperature)
    saved = json.loads((csv.parent / calibration.TEMPERATURE_NAME).read_text())
    assert saved["fitted_on"] == str(csv) and saved["ece_after"] < saved["ece_before"]
    assert len(saved["reliability_after"]["counts"]) == 15

    calibrated = calibration.calibrate_predictions(load_predictions(csv), fit.temperature)
    expected = calibration.apply_temperature(2.5 * logits, fit.temperature)
    # rounding to 6 decimals loses the smallest probabilities: exact where every class scored 0.001 or more
    resolved = special.softmax(2.5 * logits, axis=1).min(axis=1) >= 1e-3
    np.testing.assert_allclose(calibrated.probs[resolved], expected[resolved], atol=1e-4)
    np.testing.assert_allclose(calibrated.probs, expected, atol=5e-3)
    np.testing.assert_array_equal(calibrated.predicted, expected.argmax(axis=1))


def test_separable_data_stops_at_a_bound_with_a_warning(caplog):
    labels = np.array([0, 1, 0, 1])
    logits = np.array([[3.0, -3.0], [-1.0, 1.0], [2.0, 0.0], [0.0, 4.0]])
    with caplog.at_level(logging.WARNING, logger="alz_monai.calibration"):
        fit = calibration.fit_temperature(labels, logits)
    assert fit.at_bound and fit.temperature == pytest.approx(calibration.TEMPERATURE_BOUNDS[0], rel=1e-2)
    assert "separable" in caplog.text
    all_wrong = calibration.fit_temperature(1 - labels, logits, bounds=(0.5, 4.0))
    assert all_wrong.at_bound and all_wrong.temperature == pytest.approx(4.0, rel=1e-2)
    assert math.isfinite(all_wrong.nll_after) and all_wrong.nll_after < all_wrong.nll_before


def test_unusable_validation_splits_are_refused_with_a_clear_message():
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.2]])
    with pytest.raises(DataError, match="(?s)val.csv.*all 3 scans have true class index 1.*every class"):
        calibration.fit_temperature([1, 1, 1], logits, source="val.csv")
    with pytest.raises(DataError, match="same score for every class"):
        calibration.fit_temperature([0, 1, 0], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="finite"):
        calibration.fit_temperature([0, 1], np.array([[-np.inf, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="temperature must be"):
        calibration.apply_temperature(logits, 0.0)


def test_wrapped_network_divides_logits_and_stores_the_temperature(tmp_path):
    torch.manual_seed(0)
    network = torch.nn.Linear(4, 3)
    inputs = torch.randn(5, 4)
    scaled = calibration.TemperatureScaled(network, 2.0)
    torch.testing.assert_close(scaled(inputs), network(inputs) / 2.0)
    assert scaled.state_dict()["temperature"].item() == 2.0

    path = tmp_path / "temperature.json"
    calibration.save_temperature(path, calibration.fit_temperature([1, 1, 1, 0], np.tile([0.0, 2.0], (4, 1))))
    restored = calibration.TemperatureScaled.from_file(torch.nn.Linear(4, 3), path)
    assert restored.temperature.item() == pytest.approx(2.0 / math.log(3.0))
    restored.load_state_dict(scaled.state_dict())
    assert restored.temperature.item() == 2.0
    torch.testing.assert_close(restored(inputs), scaled(inputs))

    path.write_text(json.dumps({"temperature": -1}))
    with pytest.raises(DataError, match="(?s)temperature.json.*number > 0"):
        calibration.load_temperature(path)
