"""Temperature scaling wired into runs: fitted after training (calibrate_run), recorded for one model file, applied
by ApplyTemperature to an evaluator's logits before the report handlers, and undone for ensembles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import BundleCLI, BundleRun
from ignite.engine import Engine
from scipy import special

from alz_monai import calibration, ensemble, layout
from alz_monai.handlers import ApplyTemperature, ClassificationReport, PredictionWriter
from alz_monai.layout import PATH_KEY
from alz_monai.predictions import Predictions, load_predictions, write_predictions
from alz_monai.recipes import STAGE1
from alz_monai.run_config import load_run_config, record_calibration

CLASSES = ("CN", "AD")
OVERCONFIDENCE = 3.0  # validation and test logits are the calibrated ones times this


def cohort(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), returned with the over-confident logits OVERCONFIDENCE * z."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(num_samples, len(CLASSES)))
    labels = np.array([rng.choice(len(CLASSES), p=row) for row in special.softmax(logits, axis=1)])
    return labels, OVERCONFIDENCE * logits


def predictions_of(labels: np.ndarray, probs: np.ndarray, temperature: float | None = None) -> Predictions:
    count = labels.size
    return Predictions(source="synthetic", class_names=CLASSES, images=tuple(f"scan{i}.nii.gz" for i in range(count)),
                       participants=tuple(f"sub-{i}" for i in range(count)), sessions=("ses-M00",) * count,
                       y_true=labels, probs=probs, temperature=temperature)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A trained run as far as calibration reads it: a recorded configuration, a best model, its validation CSV."""
    run = tmp_path / "run"
    (run / layout.CHECKPOINTS_DIRNAME).mkdir(parents=True)
    (run / layout.RUN_CONFIG_NAME).write_text(yaml.safe_dump({"knobs": {"calibrate": True}}), encoding="utf-8")
    torch.save({"weight": torch.arange(4.0)}, run / layout.CHECKPOINTS_DIRNAME / layout.BEST_MODEL_NAME)
    labels, logits = cohort(400, seed=0)
    write_predictions(run / layout.REPORTS_DIRNAME / "best_val_predictions.csv",
                      predictions_of(labels, special.softmax(logits, axis=1)))
    return run


def best_model(run: Path) -> Path:
    return run / layout.CHECKPOINTS_DIRNAME / layout.BEST_MODEL_NAME


def test_calibrate_run_records_the_temperature_for_its_model(run_dir: Path) -> None:
    fit = calibration.calibrate_run(run_dir, best_model(run_dir))
    assert fit is not None and not fit.at_bound
    assert fit.temperature == pytest.approx(OVERCONFIDENCE, rel=0.2)
    assert fit.ece_after < fit.ece_before
    record = yaml.safe_load((run_dir / layout.RUN_CONFIG_NAME).read_text())["calibration"]
    assert record["applied"] is True and record["temperature"] == pytest.approx(fit.temperature)
    assert record["model_sha256"] == calibration.describe_model(best_model(run_dir))["sha256"]
    beside_model = json.loads((best_model(run_dir).parent / calibration.TEMPERATURE_NAME).read_text())
    assert beside_model["temperature"] == pytest.approx(fit.temperature)
    assert (run_dir / layout.REPORTS_DIRNAME / "best_val_reliability_calibrated.png").stat().st_size > 0
    assert calibration.run_temperature(run_dir, best_model(run_dir)) == (pytest.approx(fit.temperature),
                                                                         record["reason"])


def test_the_temperature_is_never_applied_to_another_model(run_dir: Path) -> None:
    calibration.calibrate_run(run_dir, best_model(run_dir))
    other = best_model(run_dir).with_name("checkpoint_final.pt")
    torch.save({"weight": torch.ones(4)}, other)
    temperature, reason = calibration.run_temperature(run_dir, other)
    assert temperature is None and "belongs to" in reason and str(best_model(run_dir)) in reason
    torch.save({"weight": torch.zeros(4)}, best_model(run_dir))  # a resumed run's new best model, not yet refitted
    assert calibration.run_temperature(run_dir, best_model(run_dir))[0] is None


def test_a_run_without_a_fit_or_at_the_bound_stays_uncalibrated(run_dir: Path) -> None:
    temperature, reason = calibration.run_temperature(run_dir, best_model(run_dir))
    assert temperature is None and "records no temperature" in reason
    separable = predictions_of(np.array([0, 1] * 10), np.tile([[0.99, 0.01], [0.01, 0.99]], (10, 1)))
    write_predictions(run_dir / layout.REPORTS_DIRNAME / "best_val_predictions.csv", separable)
    fit = calibration.calibrate_run(run_dir, best_model(run_dir))
    assert fit is not None and fit.at_bound
    temperature, reason = calibration.run_temperature(run_dir, best_model(run_dir))
    assert temperature is None and "stopped at its bound" in reason


def test_validation_predictions_that_admit_no_fit_are_recorded_not_raised(run_dir: Path) -> None:
    constant = predictions_of(np.array([0, 1] * 5), np.full((10, 2), 0.5))
    write_predictions(run_dir / layout.REPORTS_DIRNAME / "best_val_predictions.csv", constant)
    assert calibration.calibrate_run(run_dir, best_model(run_dir)) is None
    temperature, reason = calibration.run_temperature(run_dir, best_model(run_dir))
    assert temperature is None and "no temperature could be fitted" in reason


def evaluate(logits: torch.Tensor, labels: torch.Tensor, handlers: list) -> Engine:
    """An evaluator over batches of 50 scans whose iterations output MONAI's {pred, label}."""
    batches = [{"logits": logits[i:i + 50], "label": labels[i:i + 50],
                PATH_KEY: [f"scan{j}.nii.gz" for j in range(i, min(i + 50, len(labels)))],
                "participant_id": [f"sub-{j}" for j in range(i, min(i + 50, len(labels)))]}
               for i in range(0, len(labels), 50)]

    def step(engine: Engine, batch: dict) -> dict[str, torch.Tensor]:
        return {"pred": batch["logits"].clone(), "label": batch["label"]}

    engine = Engine(step)
    for handler in handlers:
        handler.attach(engine)
    engine.run(batches)
    return engine


def test_apply_temperature_scales_the_logits_every_report_reads(run_dir: Path) -> None:
    fit = calibration.calibrate_run(run_dir, best_model(run_dir))
    assert fit is not None
    labels, logits = cohort(300, seed=1)
    out = run_dir / layout.REPORTS_DIRNAME
    report = ClassificationReport(CLASSES, out, prefix="test", artifacts="always", model_path=best_model(run_dir))
    writer = PredictionWriter(CLASSES, run_dir / "inference" / "predictions.csv", model_path=best_model(run_dir))
    evaluate(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels),
             [ApplyTemperature(run_dir, best_model(run_dir)), report, writer])

    expected = special.softmax(logits / fit.temperature, axis=1)
    written = load_predictions(out / "test_predictions.csv")
    np.testing.assert_allclose(written.probs, expected, atol=2e-6)
    assert written.temperature == pytest.approx(fit.temperature, rel=1e-5)
    np.testing.assert_allclose(load_predictions(run_dir / "inference" / "predictions.csv", labelled=False).probs,
                               expected, atol=2e-6)
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["calibration"]["temperature"] == pytest.approx(fit.temperature, rel=1e-5)
    uncalibrated_ece = metrics["calibration"]["expected_calibration_error_uncalibrated"]
    assert metrics["expected_calibration_error"] < 0.5 * uncalibrated_ece
    assert (out / "test_reliability_uncalibrated.png").is_file() and (out / "test_reliability.png").is_file()


def test_disabled_or_uncalibrated_runs_report_the_network_probabilities(run_dir: Path) -> None:
    labels, logits = cohort(100, seed=2)
    out = run_dir / layout.REPORTS_DIRNAME
    report = ClassificationReport(CLASSES, out, prefix="test", artifacts="always", model_path=best_model(run_dir))
    calibration.calibrate_run(run_dir, best_model(run_dir))
    evaluate(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels),
             [ApplyTemperature(run_dir, best_model(run_dir), enabled=False), report])
    written = load_predictions(out / "test_predictions.csv")
    np.testing.assert_allclose(written.probs, special.softmax(logits, axis=1), atol=2e-6)
    assert written.temperature is None
    assert json.loads((out / "test_metrics.json").read_text())["calibration"] == {
        "temperature": None, "source": "calibrate is false"}
    assert not (out / "test_reliability_uncalibrated.png").exists()


def test_uncalibrated_predictions_undo_the_recorded_temperature() -> None:
    labels, logits = cohort(50, seed=3)
    raw = predictions_of(labels, special.softmax(logits, axis=1))
    scaled = calibration.calibrate_predictions(raw, 2.5)
    assert scaled.temperature == pytest.approx(2.5)
    assert calibration.calibrate_predictions(scaled, 2.0).temperature == pytest.approx(5.0)
    # exact but for the floor on log-probabilities (PROBABILITY_FLOOR)
    np.testing.assert_allclose(calibration.uncalibrated_predictions(scaled).probs, raw.probs, atol=2e-7)
    assert calibration.uncalibrated_predictions(raw) is raw


def test_the_temperature_column_round_trips(tmp_path: Path) -> None:
    labels, logits = cohort(10, seed=4)
    path = tmp_path / "test_predictions.csv"
    write_predictions(path, predictions_of(labels, special.softmax(logits, axis=1), temperature=1.8))
    assert load_predictions(path).temperature == pytest.approx(1.8)
    write_predictions(path, predictions_of(labels, special.softmax(logits, axis=1)))
    assert load_predictions(path).temperature is None


@pytest.mark.parametrize("refit", [False, True])
def test_ensembles_average_calibrated_members_or_refit_their_unscaled_average(tmp_path: Path, refit: bool) -> None:
    labels, logits = cohort(120, seed=5)
    val_labels, val_logits = cohort(300, seed=6)
    members, runs = [], []
    for index, (temperature, shift) in enumerate(((1.5, 0.0), (4.0, 0.7))):
        run = tmp_path / f"run{index}"
        reports = run / layout.REPORTS_DIRNAME
        write_predictions(reports / "best_val_predictions.csv",
                          predictions_of(val_labels, special.softmax(val_logits + shift, axis=1)))
        member = calibration.calibrate_predictions(predictions_of(labels, special.softmax(logits + shift, axis=1)),
                                                   temperature)
        write_predictions(reports / "test_predictions.csv", member)
        members.append(load_predictions(reports / "test_predictions.csv"))
        runs.append(run)
    ensemble.ensemble_runs(runs, tmp_path / "ensemble", calibrate=refit, bootstrap_resamples=20)
    written = load_predictions(tmp_path / "ensemble" / layout.REPORTS_DIRNAME / "test_predictions.csv")
    if not refit:
        np.testing.assert_allclose(written.probs, np.mean([m.probs for m in members], axis=0), atol=2e-6)
        return
    unscaled = np.mean([calibration.uncalibrated_predictions(m).probs for m in members], axis=0)
    val_mean = np.mean([special.softmax(val_logits + shift, axis=1) for shift in (0.0, 0.7)], axis=0)
    fit = calibration.fit_temperature(val_labels, calibration.log_probabilities(val_mean))
    np.testing.assert_allclose(written.probs, calibration.apply_temperature(
        calibration.log_probabilities(unscaled), fit.temperature), atol=1e-4)
    assert written.temperature == pytest.approx(fit.temperature, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["stage1_run", "stage2_run"])
def test_a_trained_run_records_its_temperature_and_its_test_report_applies_it(
        fixture: str, request: pytest.FixtureRequest) -> None:
    run: BundleRun = request.getfixturevalue(fixture)
    model = best_model(run.output_dir)
    record = load_run_config(run.output_dir)["calibration"]
    assert record["model_sha256"] == calibration.describe_model(model)["sha256"]
    temperature, reason = calibration.run_temperature(run.output_dir, model)
    assert (temperature is not None) == record["applied"], reason
    reports = run.output_dir / layout.REPORTS_DIRNAME
    applied = json.loads((reports / "test_metrics.json").read_text())["calibration"]
    assert applied["source"] == reason
    if temperature is None:
        assert applied["temperature"] is None and load_predictions(reports / "test_predictions.csv").temperature is None
    else:
        assert applied["temperature"] == pytest.approx(temperature, rel=1e-5)
        assert load_predictions(reports / "test_predictions.csv").temperature == pytest.approx(temperature, rel=1e-5)
        assert (reports / "best_val_reliability_calibrated.png").is_file()


@pytest.mark.slow
def test_evaluation_applies_the_recorded_temperature_to_its_model_only(
        stage1_run: BundleRun, bundle_cli: BundleCLI, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(stage1_run.output_dir, run,
                    ignore=shutil.ignore_patterns("checkpoint_latest.pt", ".lock", "evaluation", "inference"))
    record_calibration(run, {"applied": True, "temperature": 2.0, "reason": "set by the test",
                             "model": str(best_model(run)),
                             "model_sha256": calibration.describe_model(best_model(run))["sha256"]})
    evaluate_command = ("run", "evaluating", "--config_file", bundle_cli.configs(STAGE1, "evaluate"),
                        "--output_dir", str(run))
    bundle_cli(STAGE1, *evaluate_command)
    network_probs = calibration.uncalibrated_predictions(
        load_predictions(stage1_run.output_dir / layout.REPORTS_DIRNAME / "test_predictions.csv"))
    evaluated = load_predictions(run / "evaluation" / "test" / "test_predictions.csv")
    assert evaluated.temperature == pytest.approx(2.0)
    assert evaluated.images == network_probs.images
    np.testing.assert_allclose(evaluated.probs, calibration.calibrate_predictions(network_probs, 2.0).probs, atol=1e-5)

    # a full checkpoint of the same run loads too, and is not scaled with the best model's temperature
    bundle_cli(STAGE1, *evaluate_command, "--eval_split", "val",
               "--model_path", str(run / layout.CHECKPOINTS_DIRNAME / "checkpoint_final.pt"))
    report = json.loads((run / "evaluation" / "val" / "val_metrics.json").read_text())
    assert report["calibration"]["temperature"] is None and "belongs to" in report["calibration"]["source"]
    assert load_predictions(run / "evaluation" / "val" / "val_predictions.csv").temperature is None
