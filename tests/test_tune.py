"""alz_monai.tune: the search over cross-validation folds, its resumption, best configuration and a real tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from alz_monai import crossval, tune
from alz_monai.cli import build_parser
from alz_monai.data.splits import kfold_splits, read_split_table, write_split_table
from alz_monai.errors import ConfigError
from alz_monai.predictions import Predictions, write_predictions

pytest.importorskip("optuna")

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundles" / "ad_resnet3d"
CLASSES = ("CN", "AD")
SPACE = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
         "label_smoothing": {"type": "categorical", "choices": [0.0, 0.1]}}


def records() -> list[dict]:
    """Two sessions of 12 participants, alternating CN/AD, the last two in test."""
    return [{"participant_id": f"sub-{p:02d}", "session_id": f"ses-{s}", "image": f"/data/sub-{p:02d}_ses-{s}.nii.gz",
             "label": p % 2, "label_name": CLASSES[p % 2], "split": "test" if p >= 10 else "train"}
            for p in range(12) for s in range(2)]


def predictions(rows: list[dict]) -> Predictions:
    return Predictions(source="fake", class_names=CLASSES, images=tuple(r["image"] for r in rows),
                       participants=tuple(r["participant_id"] for r in rows),
                       sessions=tuple(r["session_id"] for r in rows), y_true=np.array([r["label"] for r in rows]),
                       probs=np.full((len(rows), 2), 0.5))


def validation_auc(learning_rate: float, fold: int) -> float:
    """What the fake training scores on validation: best at a learning rate of 3e-4."""
    return 1.0 - abs(math.log10(learning_rate / 3e-4)) / 4.0 - 0.01 * fold


class FakeTraining:
    """Stands in for a fold's ``monai.bundle run training``: writes what the fold leaves, records the calls."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls: list[dict] = []
        self.interrupt_at = interrupt_at

    def __call__(self, command: list[str], cwd: Path, log_path: Path) -> int:
        arguments = dict(zip(command[::2], command[1::2])) | dict(zip(command[1::2], command[2::2]))
        fold, num_folds = int(arguments["--fold"]), int(arguments["--num_folds"])
        run_dir = Path(arguments["--output_dir"])
        learning_rate = float(arguments["--learning_rate"])
        self.calls.append({"run_dir": run_dir, "fold": fold, "learning_rate": learning_rate,
                           "label_smoothing": float(arguments["--label_smoothing"])})
        if len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        if not (run_dir / "splits.tsv").is_file():  # else the shared table, which holds the same records
            write_split_table(records(), run_dir / "splits.tsv")
        folded = kfold_splits(records(), num_folds, fold)
        write_predictions(run_dir / "reports" / "best_val_predictions.csv",
                          predictions([r for r in folded if r["split"] == "val"]))
        write_predictions(run_dir / "reports" / "test_predictions.csv",
                          predictions([r for r in folded if r["split"] == "test"]))
        # the test figure rewards what validation punishes: a search that looked at it would go wrong
        summary = {"key_metric": "auc", "best_epoch": 1,
                   "best_validation": {"auc": validation_auc(learning_rate, fold)},
                   "test": {"auc": 1.0 - validation_auc(learning_rate, fold), "num_samples": 4}}
        (run_dir / "summary_all.json").write_text(json.dumps(summary))
        return 0


def test_search_scores_trials_by_validation_and_resumes(tmp_path, monkeypatch):
    fake = FakeTraining()
    monkeypatch.setattr(crossval, "_run_logged", fake)
    out = tmp_path / "tune"
    summary = tune.run_tuning(BUNDLE_DIR, out, num_folds=2, trials=3, space=SPACE, bootstrap_resamples=10)

    assert [trial["state"] for trial in summary["trials"]] == ["COMPLETE"] * 3 and len(fake.calls) == 6
    for trial in summary["trials"]:
        expected = np.mean([validation_auc(trial["params"]["learning_rate"], fold) for fold in (0, 1)])
        assert trial["value"] == pytest.approx(expected)
        calls = [call for call in fake.calls if call["run_dir"].parent == Path(trial["folder"])]
        assert [call["fold"] for call in calls] == [0, 1]
        assert all(call["learning_rate"] == trial["params"]["learning_rate"] for call in calls)
    best = max(summary["trials"], key=lambda trial: trial["value"])
    assert summary["best"]["number"] == best["number"]
    best_config = yaml.safe_load((out / tune.BEST_CONFIG_NAME).read_text())
    assert best_config == best["params"] and set(best_config) == set(SPACE)
    assert json.loads((out / tune.TUNE_SUMMARY_NAME).read_text()) == summary
    shared = read_split_table(out / "splits.tsv")
    assert all(read_split_table(Path(trial["folder"]) / "splits.tsv") == shared for trial in summary["trials"])

    # the study is resumed from its database: more trials add to it, the same number trains nothing
    more = tune.run_tuning(BUNDLE_DIR, out, num_folds=2, trials=4, space=SPACE, bootstrap_resamples=10)
    assert len(more["trials"]) == 4 and len(fake.calls) == 8
    tune.run_tuning(BUNDLE_DIR, out, num_folds=2, trials=4, space=SPACE, bootstrap_resamples=10)
    assert len(fake.calls) == 8
    with pytest.raises(ConfigError, match="other settings \\(folds changed\\)"):
        tune.run_tuning(BUNDLE_DIR, out, num_folds=2, trials=5, space=SPACE, folds=[0])


def test_an_interrupted_trial_is_taken_up_with_its_knobs_and_finished_folds(tmp_path, monkeypatch):
    out = tmp_path / "tune"
    monkeypatch.setattr(crossval, "_run_logged", FakeTraining(interrupt_at=4))  # trial 1, fold 1
    with pytest.raises(KeyboardInterrupt):
        tune.run_tuning(BUNDLE_DIR, out, num_folds=2, trials=2, space=SPACE, bootstrap_resamples=10)

    fake = FakeTraining()
    monkeypatch.setattr(crossval, "_run_logged", fake)
    summary = tune.run_tuning(BUNDLE_DIR, out, num_folds=2, trials=2, space=SPACE, bootstrap_resamples=10)
    interrupted, resumed = summary["trials"][1], summary["trials"][2]
    assert interrupted["state"] == "FAIL" and resumed["state"] == "COMPLETE"
    assert resumed["params"] == interrupted["params"] and resumed["folder"] == interrupted["folder"]
    # fold 0 of the interrupted trial was kept: only fold 1 trained again
    assert [(call["run_dir"].parent.name, call["fold"]) for call in fake.calls] == [("trial_001", 1)]
    assert [trial["state"] for trial in summary["trials"]].count("COMPLETE") == 2


def test_bad_spaces_and_overrides_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="learning_rte is not a knob"):
        tune.load_space({"learning_rte": {"type": "float", "low": 0.1, "high": 1.0}}, BUNDLE_DIR)
    with pytest.raises(ConfigError, match="fold is set by the cross-validation"):
        tune.load_space({"fold": {"type": "int", "low": 0, "high": 1}}, BUNDLE_DIR)
    with pytest.raises(ConfigError, match="a log range needs low > 0.*type must be one of"):
        tune.load_space({"weight_decay": {"type": "float", "low": 0.0, "high": 1.0, "log": True},
                         "seed": {"type": "gaussian"}}, BUNDLE_DIR)
    space_file = tmp_path / "space.yaml"
    space_file.write_text("network_def#name: {type: categorical, choices: [resnet10, resnet18]}\n")
    assert tune.load_space(space_file, BUNDLE_DIR) == {
        "network_def#name": {"type": "categorical", "choices": ["resnet10", "resnet18"]}}
    assert tune.load_space(None, BUNDLE_DIR) == tune.DEFAULT_SPACE
    with pytest.raises(ConfigError, match="--learning_rate.*searched by the tuning"):
        tune.run_tuning(BUNDLE_DIR, tmp_path / "out", 2, 1, space=SPACE, overrides=["--learning_rate", "0.1"])


@pytest.mark.slow
def test_real_two_trial_run(tmp_path, capsys):
    from alz_monai.data.synth import generate_synthetic_dataset

    data_dir = tmp_path / "data"
    generate_synthetic_dataset(data_dir, subjects=10, sessions=1, spacing=6.0, progress=False)
    parser = build_parser()
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(SPACE))
    args = parser.parse_args([
        "tune", str(BUNDLE_DIR), "--num-folds", "2", "--folds", "0", "--output-dir", str(tmp_path / "tune"),
        "--trials", "2", "--space", str(space_file), "--metric", "balanced_accuracy", "--bootstrap-resamples", "10",
        "--", "--dataset_dir", str(data_dir), "--num_epochs", "1", "--spatial_size", "[32,32,32]",
        "--pixdim", "[6,6,6]", "--bootstrap_resamples", "10", "--network_def#name", "resnet10"])
    assert args.func(args) == 0
    assert "2 trials, mean validation balanced_accuracy" in capsys.readouterr().out
    summary = json.loads((tmp_path / "tune" / tune.TUNE_SUMMARY_NAME).read_text())
    assert [trial["state"] for trial in summary["trials"]] == ["COMPLETE", "COMPLETE"]
    for trial in summary["trials"]:
        recorded = yaml.safe_load((Path(trial["folder"]) / "fold_0" / "run_config.yaml").read_text())
        assert json.dumps(recorded).count(repr(trial["params"]["learning_rate"])) >= 1
    assert yaml.safe_load((tmp_path / "tune" / tune.BEST_CONFIG_NAME).read_text()) == summary["best"]["params"]
