"""k-fold cross-validation of a bundle: one training run per fold, then mean/std over folds and a fold ensemble.

Every fold trains ``configs/train.yaml`` of the bundle in its own folder ``OUT/fold_<k>`` with ``--fold k
--num_folds K``: the train and val participants are regrouped into K folds and fold k validates, while the test
split stays the same. All folds share one base split table (``OUT/splits.tsv``), so they test the same scans; the
test split is then scored by each fold's best model and by their ensemble (mean class probabilities). The ensemble
is saved like a run's test report (``OUT/reports/test_predictions.csv``), so ``alz-monai compare`` accepts ``OUT``.

A rerun with the same arguments resumes: finished folds are kept and an interrupted fold continues from its latest
checkpoint.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alz_monai import plots
from alz_monai.compare import align_predictions, evaluate_predictions
from alz_monai.data.splits import SPLIT_TABLE_NAME, read_split_table, write_split_table
from alz_monai.errors import LeakageError
from alz_monai.fileio import atomic_write_json
from alz_monai.metrics import to_jsonable
from alz_monai.predictions import Predictions, load_predictions, write_predictions
from alz_monai.recipes import BUNDLES, STAGE1, bundle_command, config_files
from alz_monai.reports import SUMMARY_METRICS, format_metrics_table, load_json
from alz_monai.run_dir import latest_checkpoint

__all__ = [
    "CV_SUMMARY_NAME",
    "FoldFailedError",
    "aggregate_cross_validation",
    "check_fold_participants",
    "ensemble_predictions",
    "fold_dir",
    "format_cv_table",
    "metric_statistics",
    "run_cross_validation",
    "training_command",
]

logger = logging.getLogger(__name__)

CV_SUMMARY_NAME = "cv_summary.json"
CV_SETTINGS_NAME = "cv_settings.json"
FOLD_LOG_NAME = "cv_fold.log"
RUN_SUMMARY_NAME = "summary_all.json"
TRAIN_CONFIG = Path("configs") / "train.yaml"  # what the error names when the folder is no bundle
#: Bundle arguments the cross-validation sets itself for every fold.
RESERVED_OVERRIDES = ("--fold", "--num_folds", "--output_dir", "--resume", "--eval_split")
# Not metrics, though numeric, in a run summary.
_NON_METRICS = ("num_samples",)


class FoldFailedError(RuntimeError):
    """A fold's training process exited with an error; its log says why."""


def fold_dir(output_dir: str | Path, fold: int) -> Path:
    return Path(output_dir) / f"fold_{fold}"


def training_command(
    fold: int, num_folds: int, output_dir: str | Path, overrides: Sequence[str] = (), resume: bool = False,
    bundle: str = STAGE1,
) -> list[str]:
    """The ``monai.bundle run training`` command of one fold, run from the bundle folder."""
    fold_options = ["--fold", str(fold), "--num_folds", str(num_folds), "--output_dir", str(fold_dir(output_dir, fold))]
    return bundle_command(bundle, "training", (), [*fold_options, *(["--resume", "true"] if resume else []),
                                                   *overrides])


def _check_overrides(overrides: Sequence[str]) -> None:
    reserved = [token for token in overrides if token.split("=", 1)[0] in RESERVED_OVERRIDES]
    if reserved:
        raise ValueError(f"bundle overrides {reserved} are set by the cross-validation for every fold; remove them "
                         "(use --num-folds, --output-dir and --folds of `alz-monai cv` instead).")


def _check_settings(output_dir: Path, settings: Mapping[str, Any]) -> None:
    """Refuse to mix folds trained with different settings in one output folder."""
    path = output_dir / CV_SETTINGS_NAME
    if path.is_file():
        previous = load_json(path)
        if previous != settings:
            changed = sorted(key for key in settings.keys() | previous.keys()
                             if settings.get(key) != previous.get(key))
            differences = "; ".join(f"{key} {previous.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
            raise ValueError(f"{output_dir} holds a cross-validation started with other settings ({differences}); "
                             "rerun with the same settings to resume it, or choose a new --output-dir.")
    else:
        atomic_write_json(path, dict(settings))


def _split_key(rows: Sequence[Mapping[str, str]]) -> dict[str, tuple[str, str, str]]:
    return {row["image"]: (row["participant_id"], row["label_name"], row["split"]) for row in rows}


def _share_split_table(source: Path, target: Path) -> None:
    """Copy the split of ``source`` to ``target``; a different existing ``target`` is refused (it tests other scans)."""
    rows = read_split_table(source)
    if target.is_file():
        if _split_key(read_split_table(target)) != _split_key(rows):
            raise ValueError(f"{target} differs from {source}: the folds would not test the same scans. Restore the "
                             "table, or delete the fold folder that holds it, or choose a new --output-dir.")
        return
    write_split_table(rows, target)


def _run_logged(command: Sequence[str], cwd: Path, log_path: Path) -> int:
    """Run ``command``, relaying its output to this process's stdout and appending it to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a", encoding="utf-8") as log, subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        env=environment
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
    return process.returncode


def _finished(output_dir: Path, fold: int) -> bool:
    return (fold_dir(output_dir, fold) / RUN_SUMMARY_NAME).is_file()


def run_cross_validation(
    bundle_dir: str | Path,
    output_dir: str | Path,
    num_folds: int,
    folds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    split_table: str | Path | None = None,
    bootstrap_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the requested folds (all by default) that are not finished yet, then :func:`aggregate_cross_validation`.

    ``overrides`` are passed to every fold's ``monai.bundle run``; relative paths in them are relative to
    ``bundle_dir``, where the bundle runs. ``split_table`` fixes the base split (e.g. another run's ``splits.tsv``,
    to test on the same scans); otherwise the first fold to train writes it.
    """
    bundle_dir, output_dir = Path(bundle_dir).absolute(), Path(output_dir).absolute()
    if bundle_dir.name not in BUNDLES or not (bundle_dir / config_files(bundle_dir.name)[-1]).is_file():
        raise FileNotFoundError(f"{bundle_dir / TRAIN_CONFIG} does not exist; pass a bundle folder such as "
                                "bundles/ad_resnet3d.")
    if num_folds < 2:
        raise ValueError(f"--num-folds must be at least 2, got {num_folds}.")
    folds = list(range(num_folds)) if folds is None else sorted(set(folds))
    outside = [fold for fold in folds if not 0 <= fold < num_folds]
    if outside:
        raise ValueError(
            f"folds {outside} do not exist: with {num_folds} folds they are numbered 0 to {num_folds - 1}.")
    _check_overrides(overrides)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(output_dir, {"bundle_dir": str(bundle_dir), "num_folds": num_folds, "overrides": list(overrides)})

    shared_split = output_dir / SPLIT_TABLE_NAME
    if split_table is None and not shared_split.is_file():
        # a fold that stopped before its table was shared still holds it
        split_table = next((fold_dir(output_dir, fold) / SPLIT_TABLE_NAME for fold in range(num_folds)
                            if (fold_dir(output_dir, fold) / SPLIT_TABLE_NAME).is_file()), None)
    if split_table is not None:
        _share_split_table(Path(split_table), shared_split)
    for fold in folds:
        if _finished(output_dir, fold):
            logger.info("fold %d of %d already finished: kept", fold, num_folds)
            continue
        run_dir = fold_dir(output_dir, fold)
        if shared_split.is_file():
            _share_split_table(shared_split, run_dir / SPLIT_TABLE_NAME)
        resume = latest_checkpoint(run_dir) is not None
        command = training_command(fold, num_folds, output_dir, overrides, resume=resume, bundle=bundle_dir.name)
        logger.info("%s fold %d of %d: %s", "resuming" if resume else "training", fold, num_folds, " ".join(command))
        log_path = run_dir / FOLD_LOG_NAME
        return_code = _run_logged(command, bundle_dir, log_path)
        if return_code != 0:
            raise FoldFailedError(
                f"fold {fold} failed (exit code {return_code}); its log is {log_path}. Fix the cause and rerun the "
                "same command: finished folds are kept and this one resumes from its latest checkpoint (if it "
                f"stopped before writing one, delete {run_dir} first).")
        if not shared_split.is_file():
            _share_split_table(run_dir / SPLIT_TABLE_NAME, shared_split)
    return aggregate_cross_validation(output_dir, num_folds, bootstrap_resamples, seed)


def metric_statistics(per_fold: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, sample standard deviation (ddof=1) and per-fold values of every metric all folds report.

    An undefined value (None or NaN) in any fold makes that metric's mean and std NaN, so it is not hidden.
    """
    def numeric(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    if not per_fold:
        raise ValueError("metric_statistics needs the metrics of at least one fold.")
    names = [name for name in per_fold[0] if name not in _NON_METRICS
             and all(name in fold and numeric(fold[name]) for fold in per_fold)]
    statistics = {}
    for name in names:
        values = np.array([np.nan if fold[name] is None else float(fold[name]) for fold in per_fold])
        statistics[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
            "values": values.tolist(),
        }
    return statistics


def ensemble_predictions(fold_predictions: Mapping[str, Predictions]) -> Predictions:
    """The mean class probabilities of the folds, matched by image; every fold must have scored the same scans."""
    aligned = align_predictions(
        fold_predictions,
        hint="Every fold must test the same scans: train all folds of one cross-validation on one dataset and one "
        "shared splits.tsv (delete the folds that differ and run `alz-monai cv` again).")
    first = next(iter(aligned.values()))
    mean_probs = np.mean([predictions.probs for predictions in aligned.values()], axis=0)
    return Predictions(
        source=f"ensemble of {', '.join(predictions.source for predictions in fold_predictions.values())}",
        class_names=first.class_names,
        images=first.images,
        participants=first.participants,
        sessions=first.sessions,
        y_true=first.y_true,
        probs=mean_probs,
    )


def check_fold_participants(
    val_participants: Mapping[int, set[str]],
    test_participants: set[str],
    pool: set[str] | None = None,
    num_folds: int | None = None,
) -> None:
    """Raise :class:`LeakageError` unless the folds' val participants are disjoint from each other and from test.

    With ``pool`` (the train+val participants of the base split), every val participant must come from it, and
    when all ``num_folds`` folds are given every pool participant must be validated once.
    """
    problems = []
    folds = sorted(val_participants)
    for position, fold in enumerate(folds):
        for other in folds[position + 1:]:
            shared = sorted(val_participants[fold] & val_participants[other])
            if shared:
                problems.append(f"participant(s) {', '.join(shared)} validate in fold {fold} and fold {other}")
        in_test = sorted(val_participants[fold] & test_participants)
        if in_test:
            problems.append(f"participant(s) {', '.join(in_test)} validate in fold {fold} and are in the test split")
        if pool is not None:
            foreign = sorted(val_participants[fold] - pool - test_participants)
            if foreign:
                problems.append(f"participant(s) {', '.join(foreign)} validate in fold {fold} but are not train/val "
                                "participants of the split table")
    if pool is not None and num_folds is not None and len(folds) == num_folds:
        never = sorted(pool - set().union(*val_participants.values()))
        if never:
            problems.append(f"participant(s) {', '.join(never)} are validated in none of the {num_folds} folds")
    if problems:
        raise LeakageError(problems, source="the cross-validation folds",
                           hint="Train all folds on one shared splits.tsv with the same seed and num_folds.")


def _fold_artifacts(output_dir: Path, fold: int) -> dict[str, Any]:
    run_dir = fold_dir(output_dir, fold)
    return {
        "summary": load_json(run_dir / RUN_SUMMARY_NAME),
        "split": read_split_table(run_dir / SPLIT_TABLE_NAME),
        "val": load_predictions(run_dir / "reports" / "best_val_predictions.csv"),
        "test": load_predictions(run_dir / "reports" / "test_predictions.csv"),
    }


def aggregate_cross_validation(
    output_dir: str | Path, num_folds: int, bootstrap_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Check and summarise the finished folds of ``output_dir`` into ``cv_summary.json``; also write the ensemble's
    ``reports/test_predictions.csv``, ``reports/test_metrics.json`` and its figures (``reports/test_<kind>.png``)."""
    output_dir = Path(output_dir)
    folds = [fold for fold in range(num_folds) if _finished(output_dir, fold)]
    if not folds:
        raise FileNotFoundError(
            f"no finished fold in {output_dir} (no fold_<k>/{RUN_SUMMARY_NAME}); train folds first.")
    if len(folds) < num_folds:
        logger.warning("only folds %s of %d are finished; the summary covers them alone", folds, num_folds)
    artifacts = {fold: _fold_artifacts(output_dir, fold) for fold in folds}

    reference_fold = folds[0]
    reference_split = _split_key(artifacts[reference_fold]["split"])
    differing = [fold for fold in folds if _split_key(artifacts[fold]["split"]) != reference_split]
    if differing:
        raise ValueError(f"the split tables of folds {differing} differ from that of fold {reference_fold}: the "
                         "folds do not share one base split. Delete those fold folders and run `alz-monai cv` again.")
    check_fold_participants(
        {fold: set(artifacts[fold]["val"].participants) for fold in folds},
        {participant for participant, _, split in reference_split.values() if split == "test"},
        pool={participant for participant, _, split in reference_split.values() if split in ("train", "val")},
        num_folds=num_folds,
    )
    ensemble = ensemble_predictions({f"fold {fold}": artifacts[fold]["test"] for fold in folds})
    report, intervals = evaluate_predictions(ensemble, bootstrap_resamples, seed)
    report_dir = output_dir / "reports"
    write_predictions(report_dir / "test_predictions.csv", ensemble)
    atomic_write_json(report_dir / "test_metrics.json", to_jsonable({**report, "confidence_intervals": intervals}))
    context = plots.FigureContext(split="test", model=f"ensemble of {len(folds)} folds", num_scans=len(ensemble.images),
                                  num_participants=len(set(ensemble.participants)) if ensemble.groups else None)
    figures = plots.report_figures(ensemble.labels, ensemble.probs, ensemble.class_names, context,
                                   groups=ensemble.groups, band_resamples=bootstrap_resamples, seed=seed)
    for kind, figure in figures.items():
        plots.save_figure(figure, report_dir / f"test_{kind}.png")

    summaries = [artifacts[fold]["summary"] for fold in folds]
    settings_path = output_dir / CV_SETTINGS_NAME
    summary = to_jsonable({
        "settings": load_json(settings_path) if settings_path.is_file() else None,
        "num_folds": num_folds,
        "folds": folds,
        "complete": len(folds) == num_folds,
        "key_metric": summaries[0].get("key_metric"),
        "best_epochs": [fold_summary.get("best_epoch") for fold_summary in summaries],
        "validation": metric_statistics([fold_summary["best_validation"] for fold_summary in summaries]),
        "test": metric_statistics([fold_summary["test"] for fold_summary in summaries]),
        "ensemble": {
            "metrics": {name: report[name] for name in (*SUMMARY_METRICS, "confusion_matrix", "num_samples")},
            "confidence_intervals": intervals,
            "per_class": report["per_class"],
            "num_participants": len(set(ensemble.participants)),
            "predictions": str(report_dir / "test_predictions.csv"),
            "bootstrap": {"resamples": bootstrap_resamples, "seed": seed},
        },
    })
    atomic_write_json(output_dir / CV_SUMMARY_NAME, summary)
    logger.info("cross-validation summary of folds %s written to %s", folds, output_dir / CV_SUMMARY_NAME)
    return summary


def format_cv_table(summary: Mapping[str, Any]) -> str:
    """Validation and test mean and std over folds next to the test metrics of the ensemble (with 95% CIs)."""
    columns: dict[str, dict[str, Any]] = {}
    for part in ("validation", "test"):
        for statistic in ("mean", "std"):
            columns[f"{part} {statistic}"] = {name: values[statistic] for name, values in summary[part].items()}
    columns["test ensemble"] = summary["ensemble"]["metrics"]
    table = format_metrics_table(columns, intervals={"test ensemble": summary["ensemble"]["confidence_intervals"]})
    return f"{len(summary['folds'])} of {summary['num_folds']} folds (validation: best epoch of each)\n{table}"
