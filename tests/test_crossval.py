"""alz_monai.crossval: fold statistics, ensemble, fold checks on fabricated folders, and one real 2-fold run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alz_monai import crossval
from alz_monai.cli import build_parser
from alz_monai.compare import Predictions, load_predictions, write_predictions
from alz_monai.crossval import (
    FoldFailedError,
    aggregate_cross_validation,
    check_fold_participants,
    fold_dir,
    metric_statistics,
    run_cross_validation,
)
from alz_monai.data.splits import assign_splits, kfold_splits, read_split_table, write_split_table
from alz_monai.errors import DataError, LeakageError
from alz_monai.metrics import classification_report

CLASSES = ("CN", "AD")
BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundles" / "ad_resnet3d"
NUM_PARTICIPANTS = 12
TEST_PARTICIPANTS = ("sub-10", "sub-11")


def make_records() -> list[dict]:
    """Two sessions of 12 participants, alternating CN/AD, the last two in test and the others train/val."""
    return [
        {"participant_id": f"sub-{p:02d}", "session_id": f"ses-{s}", "image": f"/data/sub-{p:02d}_ses-{s}.nii.gz",
         "label": p % 2, "label_name": CLASSES[p % 2],
         "split": "test" if f"sub-{p:02d}" in TEST_PARTICIPANTS else ("val" if p < 2 else "train")}
        for p in range(NUM_PARTICIPANTS) for s in range(2)
    ]


def predictions_of(records: list[dict], probs: np.ndarray) -> Predictions:
    return Predictions(
        source="fabricated", class_names=CLASSES,
        images=tuple(r["image"] for r in records), participants=tuple(r["participant_id"] for r in records),
        sessions=tuple(r["session_id"] for r in records),
        y_true=np.array([r["label"] for r in records]), probs=probs)


def fabricate_folds(output_dir: Path, num_folds: int, seed: int = 0) -> dict[int, dict]:
    """Finished fold folders as a training run leaves them; returns what was written per fold."""
    records = make_records()
    rng = np.random.default_rng(seed)
    written = {}
    for fold in range(num_folds):
        run_dir = fold_dir(output_dir, fold)
        write_split_table(records, run_dir / "splits.tsv")
        folded = kfold_splits(records, num_folds, fold)
        val = [r for r in folded if r["split"] == "val"]
        test = [r for r in folded if r["split"] == "test"]
        test = [test[i] for i in rng.permutation(len(test))]  # every fold lists the test scans in its own order
        p_ad = np.round(rng.uniform(0.05, 0.95, len(test)), 6)
        test_probs = np.column_stack([1.0 - p_ad, p_ad])
        write_predictions(run_dir / "reports" / "test_predictions.csv", predictions_of(test, test_probs))
        val_probs = np.full((len(val), 2), 0.5)
        write_predictions(run_dir / "reports" / "best_val_predictions.csv", predictions_of(val, val_probs))
        summary = {
            "key_metric": "auc", "best_epoch": fold + 1,
            "best_validation": {"accuracy": rng.uniform(), "auc": rng.uniform(), "auc/AD": rng.uniform()},
            "test": {"accuracy": rng.uniform(), "auc": rng.uniform(), "confusion_matrix": [[1, 1], [1, 1]],
                     "num_samples": len(test)},
        }
        (run_dir / "summary_all.json").write_text(json.dumps(summary))
        written[fold] = {"summary": summary, "test": load_predictions(run_dir / "reports" / "test_predictions.csv")}
    return written


def test_metric_statistics_match_numpy() -> None:
    per_fold = [{"auc": 0.7, "accuracy": 0.6, "num_samples": 10, "confusion_matrix": [[1]]},
                {"auc": 0.9, "accuracy": 0.8, "num_samples": 12, "confusion_matrix": [[2]]},
                {"auc": 0.75, "accuracy": None, "num_samples": 11, "confusion_matrix": [[3]]}]
    statistics = metric_statistics(per_fold)
    assert list(statistics) == ["auc", "accuracy"]
    auc = np.array([0.7, 0.9, 0.75])
    assert statistics["auc"]["mean"] == pytest.approx(auc.mean())
    assert statistics["auc"]["std"] == pytest.approx(auc.std(ddof=1))
    assert statistics["auc"]["values"] == [0.7, 0.9, 0.75]
    assert np.isnan(statistics["accuracy"]["mean"])  # an undefined fold is not silently dropped


def test_aggregate_fabricated_folds(tmp_path: Path) -> None:
    written = fabricate_folds(tmp_path, num_folds=3)
    summary = aggregate_cross_validation(tmp_path, num_folds=3, bootstrap_resamples=30)

    assert summary["folds"] == [0, 1, 2] and summary["complete"] and summary["best_epochs"] == [1, 2, 3]
    for part, key in (("validation", "best_validation"), ("test", "test")):
        for name in ("accuracy", "auc"):
            values = np.array([written[fold]["summary"][key][name] for fold in range(3)])
            assert summary[part][name]["mean"] == pytest.approx(values.mean())
            assert summary[part][name]["std"] == pytest.approx(values.std(ddof=1))
    assert "auc/AD" in summary["validation"] and "num_samples" not in summary["test"]

    ensemble = load_predictions(tmp_path / "reports" / "test_predictions.csv")
    for index, image in enumerate(ensemble.images):
        fold_probs = [w["test"].probs[w["test"].images.index(image)] for w in written.values()]
        np.testing.assert_allclose(ensemble.probs[index], np.mean(fold_probs, axis=0), atol=1e-6)
    assert len(ensemble.images) == 2 * len(TEST_PARTICIPANTS)
    expected = classification_report(ensemble.y_true, ensemble.probs, CLASSES)
    assert summary["ensemble"]["metrics"]["auc"] == pytest.approx(expected["auc"], abs=1e-5)
    assert summary["ensemble"]["confidence_intervals"]["auc"]["skipped"] >= 0
    assert json.loads((tmp_path / "cv_summary.json").read_text()) == summary
    assert json.loads((tmp_path / "reports" / "test_metrics.json").read_text())["num_samples"] == 4


def test_folds_that_tested_different_scans_are_refused(tmp_path: Path) -> None:
    fabricate_folds(tmp_path, num_folds=2)
    path = fold_dir(tmp_path, 1) / "reports" / "test_predictions.csv"
    lines = path.read_text().splitlines()
    dropped = lines[1].split(",")[2]
    path.write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    with pytest.raises(DataError, match="scored by fold 0 but not by fold 1") as error:
        aggregate_cross_validation(tmp_path, num_folds=2, bootstrap_resamples=10)
    assert dropped in str(error.value)


def test_folds_with_different_split_tables_are_refused(tmp_path: Path) -> None:
    fabricate_folds(tmp_path, num_folds=2)
    table = fold_dir(tmp_path, 1) / "splits.tsv"
    rows = read_split_table(table)
    rows[0]["split"] = "test"
    write_split_table(rows, table)
    with pytest.raises(ValueError, match="split tables of folds \\[1\\] differ"):
        aggregate_cross_validation(tmp_path, num_folds=2, bootstrap_resamples=10)


def test_kfold_val_sets_are_disjoint_and_cover_the_pool() -> None:
    records = assign_splits([{**r, "split": ""} for r in make_records()], seed=3)
    num_folds = 3
    val = {fold: {r["participant_id"] for r in kfold_splits(records, num_folds, fold, seed=3) if r["split"] == "val"}
           for fold in range(num_folds)}
    test = {r["participant_id"] for r in records if r["split"] == "test"}
    pool = {r["participant_id"] for r in records if r["split"] in ("train", "val")}
    assert test and all(val.values())
    check_fold_participants(val, test, pool=pool, num_folds=num_folds)

    intruder = sorted(test)[0]
    with pytest.raises(LeakageError, match=f"{intruder} validate in fold 1 and are in the test split"):
        check_fold_participants({**val, 1: val[1] | {intruder}}, test, pool=pool, num_folds=num_folds)
    twice = sorted(val[0])[0]
    with pytest.raises(LeakageError, match=f"{twice} validate in fold 0 and fold 2"):
        check_fold_participants({**val, 2: val[2] | {twice}}, test, pool=pool, num_folds=num_folds)
    with pytest.raises(LeakageError, match="validated in none of the 3 folds"):
        check_fold_participants({**val, 1: set()}, test, pool=pool, num_folds=num_folds)


def test_unfinished_fold_resumes_and_a_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output_dir = tmp_path / "cv"
    fabricate_folds(output_dir, num_folds=2)
    (fold_dir(output_dir, 0) / "splits.tsv").replace(output_dir / "splits.tsv")
    unfinished = fold_dir(output_dir, 0)
    (unfinished / "summary_all.json").unlink()
    (unfinished / "checkpoints").mkdir()
    (unfinished / "checkpoints" / "checkpoint_latest.pt").write_bytes(b"")
    commands = []

    def failing_run(command: list[str], cwd: Path, log_path: Path) -> int:
        commands.append((command, cwd, (log_path.parent / "splits.tsv").is_file()))
        return 3

    monkeypatch.setattr(crossval, "_run_logged", failing_run)
    with pytest.raises(FoldFailedError, match="fold 0 failed \\(exit code 3\\)"):
        run_cross_validation(BUNDLE_DIR, output_dir, 2, overrides=["--num_epochs", "1"])
    (command, cwd, had_split), = commands  # fold 1 is finished and not run again
    assert cwd == BUNDLE_DIR
    assert command[command.index("--fold") + 1] == "0" and command[command.index("--num_folds") + 1] == "2"
    assert command[command.index("--resume") + 1] == "true" and command[-2:] == ["--num_epochs", "1"]
    assert command[command.index("--output_dir") + 1] == str(unfinished)
    assert had_split  # the shared split table was in place before the fold started


def test_bad_arguments_are_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set by the cross-validation"):
        run_cross_validation(BUNDLE_DIR, tmp_path, 2, overrides=["--output_dir", "x"])
    with pytest.raises(ValueError, match="folds \\[5\\] do not exist"):
        run_cross_validation(BUNDLE_DIR, tmp_path, 5, folds=[0, 5])
    with pytest.raises(FileNotFoundError, match="configs/train.yaml does not exist"):
        run_cross_validation(tmp_path, tmp_path, 2)
    (tmp_path / "cv_settings.json").write_text(json.dumps(
        {"bundle_dir": str(BUNDLE_DIR), "num_folds": 3, "overrides": []}))
    with pytest.raises(ValueError, match="other settings \\(num_folds 3 then, 2 now"):
        run_cross_validation(BUNDLE_DIR, tmp_path, 2)


def test_real_two_fold_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alz_monai.data.synth import generate_synthetic_dataset

    data_dir = tmp_path / "data"
    generate_synthetic_dataset(data_dir, subjects=10, sessions=2, spacing=6.0, progress=False)
    output_dir = tmp_path / "cv"
    parser = build_parser()
    args = parser.parse_args([
        "cv", str(BUNDLE_DIR), "--num_folds", "2", "--output-dir", str(output_dir), "--bootstrap-resamples", "20",
        "--", "--dataset_dir", str(data_dir), "--num_epochs", "1", "--spatial_size", "[32,32,32]",
        "--pixdim", "[6,6,6]", "--bootstrap_resamples", "20", "--network_def#name", "resnet10"])
    assert args.func(args) == 0
    assert "test ensemble" in capsys.readouterr().out

    summary = json.loads((output_dir / "cv_summary.json").read_text())
    assert summary["folds"] == [0, 1] and summary["complete"]
    assert len(summary["validation"]["auc"]["values"]) == 2 and len(summary["test"]["accuracy"]["values"]) == 2
    tables = [read_split_table(fold_dir(output_dir, fold) / "splits.tsv") for fold in (0, 1)]
    assert tables[0] == tables[1] == read_split_table(output_dir / "splits.tsv")
    folds = [load_predictions(fold_dir(output_dir, fold) / "reports" / "test_predictions.csv") for fold in (0, 1)]
    ensemble = load_predictions(output_dir / "reports" / "test_predictions.csv")
    assert summary["ensemble"]["metrics"]["num_samples"] == len(ensemble.images) == len(folds[0].images)
    expected = (folds[0].probs + folds[1].reordered(folds[0].images).probs) / 2
    np.testing.assert_allclose(ensemble.reordered(folds[0].images).probs, expected, atol=2e-6)
    # the ensemble has the figures of a run's test report, and the folds stand beside it on one page
    assert all((output_dir / "reports" / f"test_{kind}.png").stat().st_size > 0
               for kind in ("roc", "pr", "confusion_matrix", "reliability", "per_class"))
    assert "fold" in (output_dir / "report.html").read_text(encoding="utf-8")

    # a rerun keeps the finished folds: nothing is trained again, only the summary is rewritten
    logs = [(fold_dir(output_dir, fold) / "cv_fold.log").stat().st_size for fold in (0, 1)]
    assert args.func(args) == 0
    assert [(fold_dir(output_dir, fold) / "cv_fold.log").stat().st_size for fold in (0, 1)] == logs
