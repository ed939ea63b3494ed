"""alz_monai.ensemble: mean probabilities of runs, participant-level metrics, calibration, reports and CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import special

from alz_monai import calibration, stats
from alz_monai.cli import build_parser
from alz_monai.compare import compare_runs
from alz_monai.ensemble import ensemble_runs, format_ensemble_table, participant_predictions
from alz_monai.errors import DataError
from alz_monai.metrics import classification_report
from alz_monai.predictions import Predictions, load_predictions, write_predictions

CLASS_NAMES = ("CN", "AD")
RESAMPLES = 200


def cohort(num_participants: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two sessions per participant, labels per participant, and a latent score that carries the label."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, 2, num_participants), 2)
    latent = (2 * labels - 1) * 1.0 + rng.normal(size=labels.size)
    return labels, latent


def model_predictions(labels: np.ndarray, latent: np.ndarray, seed: int, scale: float = 1.0,
                      split: str = "test") -> Predictions:
    """A noisy reading of ``latent`` (models disagree through their own noise); ``scale`` sets the confidence."""
    noise = np.random.default_rng(seed).normal(scale=1.0, size=latent.size)
    logits = np.stack([np.zeros(latent.size), scale * (latent + noise)], axis=1)
    count = labels.size
    return Predictions(source=f"model {seed}", class_names=CLASS_NAMES,
                       images=tuple(f"/data/{split}/sub-{i // 2:03d}_ses-{i % 2}.nii.gz" for i in range(count)),
                       participants=tuple(f"sub-{i // 2:03d}" for i in range(count)),
                       sessions=tuple(f"ses-{i % 2}" for i in range(count)), y_true=labels,
                       probs=special.softmax(logits, axis=1))


def write_run(root: Path, seed: int, scale: float = 1.0, order: np.ndarray | None = None) -> Path:
    """A run folder with reports/test_predictions.csv and reports/best_val_predictions.csv."""
    for split, cohort_seed in (("test", 0), ("best_val", 1)):
        labels, latent = cohort(60, cohort_seed)
        predictions = model_predictions(labels, latent, seed + 10 * cohort_seed, scale, split)
        if order is not None and split == "test":
            predictions = predictions.reordered([predictions.images[i] for i in order])
        write_predictions(root / "reports" / f"{split}_predictions.csv", predictions)
    return root


def test_participant_predictions_average_sessions_and_keep_bootstrap_units():
    labels, latent = cohort(20, 0)
    predictions = model_predictions(labels, latent, seed=1)
    participants = participant_predictions(predictions)
    assert len(participants.images) == 20 and participants.groups == participants.images
    np.testing.assert_allclose(participants.probs, predictions.probs.reshape(20, 2, 2).mean(axis=1))
    np.testing.assert_array_equal(participants.y_true, labels[::2])
    assert set(participants.sessions) == {"2 scans"}

    without_ids = dataclasses.replace(predictions, participants=("",) * labels.size)
    with pytest.raises(DataError, match="40 of 40 scans have no participant_id"):
        participant_predictions(without_ids)


def test_ensemble_averages_matched_scans_and_reports_scans_and_participants(tmp_path):
    reverse = np.arange(120)[::-1]
    runs = [write_run(tmp_path / "a", seed=2), write_run(tmp_path / "b", seed=3, order=reverse),
            write_run(tmp_path / "c", seed=4)]
    summary = ensemble_runs(runs, tmp_path / "out", bootstrap_resamples=RESAMPLES)

    members = [load_predictions(run / "reports" / "test_predictions.csv") for run in runs]
    members[1] = members[1].reordered(members[0].images)
    expected = np.mean([member.probs for member in members], axis=0)
    written = load_predictions(tmp_path / "out" / "reports" / "test_predictions.csv")
    assert written.images == members[0].images
    np.testing.assert_allclose(written.probs, expected, atol=1e-6)

    scan_level = classification_report(members[0].y_true, expected, CLASS_NAMES)
    assert summary["ensemble"]["scan"]["balanced_accuracy"] == pytest.approx(scan_level["balanced_accuracy"])
    per_participant = expected.reshape(60, 2, 2).mean(axis=1)
    participant_level = classification_report(members[0].y_true[::2], per_participant, CLASS_NAMES)
    assert summary["ensemble"]["participant"]["auc"] == pytest.approx(participant_level["auc"], abs=1e-5)
    assert summary["ensemble"]["participant"]["num_samples"] == 60 and summary["num_participants"] == 60
    intervals = stats.bootstrap_ci(members[0].y_true, written.probs, CLASS_NAMES, groups=written.participants,
                                   n_resamples=RESAMPLES, metrics=("balanced_accuracy",))
    assert summary["ensemble"]["scan"]["confidence_intervals"]["balanced_accuracy"] == intervals["balanced_accuracy"]
    # averaging three noisy readings of the same signal beats every member
    member_aucs = [metrics["auc"] for metrics in summary["member_metrics"].values()]
    assert summary["ensemble"]["scan"]["auc"] > max(member_aucs)

    saved = json.loads((tmp_path / "out" / "reports" / "test_metrics.json").read_text())
    assert saved["participant_level"]["num_samples"] == 60 and "confidence_intervals" in saved
    assert json.loads((tmp_path / "out" / "ensemble_summary.json").read_text()) == summary
    # the ensemble folder is a run for `alz-monai compare`
    assert compare_runs(tmp_path / "out", runs[0], bootstrap_resamples=20)["num_samples"] == 120
    table = format_ensemble_table(summary)
    assert "ensemble, per participant" in table and "run 3" in table and "120 scans of 60 participants" in table


def test_existing_output_and_mismatched_runs_are_refused(tmp_path):
    runs = [write_run(tmp_path / "a", seed=2), write_run(tmp_path / "b", seed=3)]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds files.*--overwrite"):
        ensemble_runs(runs, tmp_path / "out", bootstrap_resamples=RESAMPLES)
    ensemble_runs(runs, tmp_path / "out", bootstrap_resamples=RESAMPLES, overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"

    other = load_predictions(runs[1] / "reports" / "test_predictions.csv")
    write_predictions(tmp_path / "short.csv", dataclasses.replace(
        other, images=other.images[:-2], participants=other.participants[:-2], sessions=other.sessions[:-2],
        y_true=other.y_true[:-2], probs=other.probs[:-2]))
    with pytest.raises(DataError, match="(?s)2 scan\\(s\\) scored by run 1 but not by run 2.*same split table"):
        ensemble_runs([runs[0], tmp_path / "short.csv"], tmp_path / "new")
    with pytest.raises(ValueError, match="at least 2 runs"):
        ensemble_runs(runs[:1], tmp_path / "new")
    with pytest.raises(ValueError, match="needs run folders"):
        ensemble_runs([runs[0], tmp_path / "short.csv"], tmp_path / "new", calibrate=True)
    assert not (tmp_path / "new").exists()


def test_calibrate_fits_the_ensemble_on_validation_and_keeps_predictions(tmp_path):
    runs = [write_run(tmp_path / "a", seed=2, scale=0.3), write_run(tmp_path / "b", seed=3, scale=0.3)]
    plain = ensemble_runs(runs, tmp_path / "plain", bootstrap_resamples=RESAMPLES)
    calibrated = ensemble_runs(runs, tmp_path / "calibrated", calibrate=True, bootstrap_resamples=RESAMPLES)
    fit = calibrated["calibration"]
    assert fit["temperature"] < 1.0 and fit["fitted_on"].startswith("ensemble of")  # under-confident members
    before, after = (summary["ensemble"]["scan"] for summary in (plain, calibrated))
    assert after["expected_calibration_error"] < before["expected_calibration_error"]
    assert after["confusion_matrix"] == before["confusion_matrix"]

    plain_probs = load_predictions(tmp_path / "plain" / "reports" / "test_predictions.csv").probs
    np.testing.assert_allclose(
        load_predictions(tmp_path / "calibrated" / "reports" / "test_predictions.csv").probs,
        calibration.apply_temperature(np.log(plain_probs), fit["temperature"]), atol=1e-5)


def test_cli_compares_with_a_single_run(tmp_path, capsys):
    runs = [write_run(tmp_path / "a", seed=2), write_run(tmp_path / "b", seed=3)]
    parser = build_parser()
    args = parser.parse_args(["ensemble", *map(str, runs), "--output-dir", str(tmp_path / "out"), "--compare-with",
                              str(runs[0]), "--bootstrap-resamples", "50"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "ensemble (A) against a single run (B)" in printed and "McNemar" in printed
    summary = json.loads((tmp_path / "out" / "ensemble_summary.json").read_text())
    assert summary["comparison"]["runs"]["B"] == str(runs[0] / "reports" / "test_predictions.csv")
