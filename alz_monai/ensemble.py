"""Ensembles of runs (fold models, seeds, stage 1 + stage 2) and participant-level evaluation.

``alz-monai ensemble RUN... --output-dir OUT`` averages the class probabilities that the runs gave the same scans
(their ``<split>_predictions.csv``) and writes the ensemble like a run's report, ``OUT/reports/<split>_predictions.csv``
and ``<split>_metrics.json``, so that ``alz-monai compare OUT RUN`` compares it with any single run. Metrics carry
participant-bootstrap 95% CIs and come twice: per scan, and per participant with the probabilities averaged over a
participant's sessions, since several sessions of one person are not independent evidence.

Members trained with ``calibrate`` bring probabilities already scaled by their own temperature, and the ensemble
averages those. ``--calibrate`` instead fits one temperature to the ensemble of the runs' best validation predictions
(which must cover the same scans, so not for fold models, which validate on different folds) and applies it to the
average of the members' unscaled probabilities: an average of calibrated models is itself usually under-confident.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alz_monai import calibration, metrics
from alz_monai.compare import (
    align_predictions,
    compare_predictions,
    evaluate_predictions,
    find_predictions,
    format_comparison_table,
)
from alz_monai.crossval import ensemble_predictions
from alz_monai.errors import DataError
from alz_monai.fileio import atomic_write_json
from alz_monai.layout import REPORTS_DIRNAME
from alz_monai.predictions import Predictions, load_predictions, write_predictions
from alz_monai.reports import SUMMARY_METRICS, format_metrics_table

__all__ = [
    "ENSEMBLE_SUMMARY_NAME",
    "ensemble_runs",
    "evaluate_with_participants",
    "format_ensemble_table",
    "participant_predictions",
]

logger = logging.getLogger(__name__)

ENSEMBLE_SUMMARY_NAME = "ensemble_summary.json"
#: Split name of the validation predictions that the best checkpoint wrote during training.
BEST_VALIDATION = "best_val"
_SAME_SCANS_HINT = ("Ensemble runs evaluated on the same split table (train them on one dataset with one shared "
                    "splits.tsv, e.g. --split_table of an earlier run).")


def participant_predictions(predictions: Predictions) -> Predictions:
    """One row per participant: the mean class probabilities of their scans (see ``metrics.average_by_participant``).

    The rows are named by participant in ``images`` and ``participants``; ``sessions`` counts the scans averaged.
    """
    if predictions.groups is None:
        missing = sum(not participant for participant in predictions.participants)
        raise DataError([f"{missing} of {len(predictions.images)} scans have no participant_id"],
                        source=predictions.source,
                        hint="Participant-level metrics need the participant_id column of the predictions CSV.")
    averages = metrics.average_by_participant(predictions.y_true, predictions.probs, predictions.participants)
    participants = tuple(str(participant) for participant in averages.participants)
    return Predictions(source=f"{predictions.source}, averaged per participant", class_names=predictions.class_names,
                       images=participants, participants=participants,
                       sessions=tuple(f"{count} scans" for count in averages.num_scans),
                       y_true=averages.y_true, probs=averages.probs)


def evaluate_with_participants(
    predictions: Predictions, bootstrap_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per-scan and per-participant metrics, each with its participant-bootstrap 95% CIs."""
    report, intervals = evaluate_predictions(predictions, bootstrap_resamples, seed)
    result: dict[str, Any] = {"scan": {**report, "confidence_intervals": intervals}}
    if predictions.groups is None:
        logger.warning("%s lacks participant ids: participant-level metrics left out", predictions.source)
    else:
        participant_report, participant_intervals = evaluate_predictions(
            participant_predictions(predictions), bootstrap_resamples, seed)
        result["participant"] = {**participant_report, "confidence_intervals": participant_intervals}
    return result


def _calibrated(ensemble: Predictions, runs: Sequence[Path], names: Sequence[str]) -> tuple[Predictions, Any]:
    validation = {name: load_predictions(find_predictions(run, BEST_VALIDATION)) for name, run in zip(names, runs)}
    align_predictions(validation, hint="--calibrate needs runs validated on the same scans; fold models validate on "
                                       "different folds: leave out --calibrate or calibrate each fold itself.")
    fit = calibration.fit_temperature_to_predictions(ensemble_predictions(validation))
    return calibration.calibrate_predictions(ensemble, fit.temperature), fit


def ensemble_runs(
    runs: Sequence[str | Path],
    output_dir: str | Path,
    split: str = "test",
    calibrate: bool = False,
    compare_with: str | Path | None = None,
    bootstrap_resamples: int = 1000,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Average the runs' ``split`` predictions, evaluate them per scan and per participant, write the reports.

    Writes ``reports/<split>_predictions.csv``, ``reports/<split>_metrics.json`` (per-scan metrics, as a run's, with
    the participant-level ones under ``participant_level``) and ``ensemble_summary.json`` (the members' metrics too,
    the temperature and the comparison with ``compare_with``). An output folder that holds files is refused unless
    ``overwrite``.
    """
    run_paths = [Path(run) for run in runs]
    if len(run_paths) < 2:
        raise ValueError(f"an ensemble needs at least 2 runs, got {len(run_paths)}.")
    files = [str(run) for run in run_paths if run.is_file()]
    if calibrate and files:
        raise ValueError(f"--calibrate reads each run's {BEST_VALIDATION}_predictions.csv, so it needs run folders, "
                         f"not the predictions files {', '.join(files)}.")
    output_dir = Path(output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} already holds files; choose a new --output-dir or pass --overwrite to "
                              "write over it.")
    names = [f"run {index + 1}" for index in range(len(run_paths))]
    members = align_predictions({name: load_predictions(find_predictions(run, split)) for name, run in
                                 zip(names, run_paths)}, hint=_SAME_SCANS_HINT)
    fit = None
    if calibrate:  # validation predictions are unscaled: so must the test predictions be that the fit applies to
        ensemble, fit = _calibrated(ensemble_predictions(
            {name: calibration.uncalibrated_predictions(predictions) for name, predictions in members.items()}),
            run_paths, names)
    else:
        ensemble = ensemble_predictions(members)

    evaluation = evaluate_with_participants(ensemble, bootstrap_resamples, seed)
    report_dir = output_dir / REPORTS_DIRNAME
    write_predictions(report_dir / f"{split}_predictions.csv", ensemble)
    metrics_report = {**evaluation["scan"], "participant_level": evaluation.get("participant")}
    atomic_write_json(report_dir / f"{split}_metrics.json", metrics.to_jsonable(metrics_report))

    summary: dict[str, Any] = {
        "split": split,
        "members": {name: {"predictions": predictions.source, "checkpoint": predictions.checkpoint,
                           "training_epoch": predictions.training_epoch, "temperature": predictions.temperature}
                    for name, predictions in members.items()},
        "num_samples": len(ensemble.images),
        "num_participants": len(set(ensemble.participants)) if ensemble.groups else None,
        "ensemble": evaluation,
        "member_metrics": {name: evaluate_predictions(predictions, bootstrap_resamples, seed)[0]
                           for name, predictions in members.items()},
        "calibration": None if fit is None else fit.to_json(),
        "bootstrap": {"resamples": bootstrap_resamples, "seed": seed,
                      "resampled_unit": "participant" if ensemble.groups else "scan"},
        "predictions": str(report_dir / f"{split}_predictions.csv"),
    }
    if compare_with is not None:
        other = load_predictions(find_predictions(compare_with, split))
        named = dataclasses.replace(ensemble, source=f"ensemble of {len(run_paths)} runs")
        comparison = compare_predictions(named, other, bootstrap_resamples, seed)
        summary["comparison"] = {"split": split, **comparison}
    summary = metrics.to_jsonable(summary)
    atomic_write_json(output_dir / ENSEMBLE_SUMMARY_NAME, summary)
    logger.info("ensemble of %d runs written to %s", len(run_paths), output_dir)
    return summary


def format_ensemble_table(summary: Mapping[str, Any]) -> str:
    """The members' metrics beside the ensemble's per scan and per participant (with 95% CIs)."""
    columns: dict[str, Mapping[str, Any]] = dict(summary["member_metrics"])
    ensemble = summary["ensemble"]
    columns["ensemble"] = ensemble["scan"]
    intervals = {"ensemble": ensemble["scan"]["confidence_intervals"]}
    if "participant" in ensemble:
        columns["ensemble, per participant"] = ensemble["participant"]
        intervals["ensemble, per participant"] = ensemble["participant"]["confidence_intervals"]
    lines = [f"{summary['split']} split: {summary['num_samples']} scans"
             + (f" of {summary['num_participants']} participants" if summary["num_participants"] else "")]
    lines += [f"{name}: {member['predictions']}" for name, member in summary["members"].items()]
    if summary["calibration"] is not None:
        fit = summary["calibration"]
        lines.append(f"temperature {fit['temperature']:.3f} fitted on the ensemble's validation predictions "
                     f"(ECE {fit['ece_before']:.3f} -> {fit['ece_after']:.3f} there)")
    lines.append(format_metrics_table(columns, metric_names=SUMMARY_METRICS, intervals=intervals))
    lines.append(f"95% CIs: bootstrap over {summary['bootstrap']['resampled_unit']}s "
                 f"({summary['bootstrap']['resamples']} resamples)")
    if "comparison" in summary:
        lines += ["", "ensemble (A) against a single run (B):", format_comparison_table(summary["comparison"])]
    return "\n".join(lines)
