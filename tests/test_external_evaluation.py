"""Cross-site evaluation: ``run evaluating --external_data PATH`` scores a trained run on every scan of another
site's dataset, in ``evaluation/external_<name>/``, and refuses external scans the run was trained on."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
from conftest import BundleCLI, BundleRun, make_synthetic_dataset

from alz_monai.data import prepare_records
from alz_monai.data.splits import records_for_split
from alz_monai.errors import ConfigError, LeakageError
from alz_monai.layout import evaluation_dir
from alz_monai.predictions import load_predictions

CLASSES = ["CN", "AD"]


@pytest.fixture(scope="module")
def site_c(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four other participants (another seed) scanned with siteC's protocol, one session each."""
    return make_synthetic_dataset(tmp_path_factory, "site_c", subjects=4, sessions=1, spacing=6.0, seed=11,
                                  site="siteC")


def _rows(table: Path) -> list[dict[str, str]]:
    with open(table, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _external_images(dataset: Path) -> set[str]:
    return {str((dataset / row["image"]).resolve()) for row in _rows(dataset / "scans.tsv")}


def _evaluate(bundle_cli: BundleCLI, run: BundleRun, *args: str, expect_success: bool = True):
    return bundle_cli(run.bundle, "run", "evaluating", "--config_file", bundle_cli.configs(run.bundle, "evaluate"),
                      "--output_dir", str(run.output_dir), *args, expect_success=expect_success)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_external_split_is_selectable_but_not_a_dataset_split() -> None:
    records = [{"image": "a", "split": "external"}, {"image": "b", "split": "test"}]
    assert records_for_split(records, "external") == records[:1]
    assert records_for_split(records, "testing") == records[1:]
    with pytest.raises(ValueError, match="external"):
        records_for_split(records, "holdout")


def test_evaluation_dir_names_and_refusals(tmp_path: Path) -> None:
    table = tmp_path / "cohort_b.tsv"
    table.write_text("image\tlabel\n", encoding="utf-8")
    assert evaluation_dir(tmp_path, "test", None) == tmp_path / "evaluation" / "test"
    assert evaluation_dir(tmp_path, "external", table) == tmp_path / "evaluation" / "external_cohort_b"
    (tmp_path / "siteD").mkdir()
    assert evaluation_dir(tmp_path, "external", f"{tmp_path}/siteD/") == tmp_path / "evaluation" / "external_siteD"
    with pytest.raises(ConfigError, match="drop --eval_split val"):
        evaluation_dir(tmp_path, "val", table)
    with pytest.raises(ConfigError, match="--external_data"):
        evaluation_dir(tmp_path, "external", None)


def test_external_evaluation_reports_every_external_scan(stage1_run: BundleRun, bundle_cli: BundleCLI,
                                                         site_c: Path) -> None:
    split_table = stage1_run.output_dir / "splits.tsv"
    table_before = _digest(split_table)
    out_dir = stage1_run.output_dir / "evaluation" / "external_synthetic"
    _evaluate(bundle_cli, stage1_run, "--external_data", str(site_c))

    metrics = json.loads((out_dir / "external_metrics.json").read_text())
    external = _external_images(site_c)
    assert metrics["num_samples"] == len(external) == 4
    assert {"low", "high"} <= set(metrics["confidence_intervals"]["balanced_accuracy"])
    assert "expected_calibration_error_uncalibrated" in metrics["calibration"]
    predictions = load_predictions(out_dir / "external_predictions.csv")
    assert {str(Path(image).resolve()) for image in predictions.images} == external
    assert predictions.temperature == pytest.approx(metrics["calibration"]["temperature"], rel=1e-4)
    assert (out_dir / "external_roc.png").is_file()
    assert _digest(split_table) == table_before, "external evaluation must not touch the run's split table"

    # the reports are kept unless --overwrite true
    before = (out_dir / "external_metrics.json").read_bytes()
    refused = _evaluate(bundle_cli, stage1_run, "--external_data", str(site_c), expect_success=False)
    assert refused.returncode != 0 and "already holds reports" in refused.stdout
    assert (out_dir / "external_metrics.json").read_bytes() == before

    # every scan is external: another split is refused in one line
    conflict = _evaluate(bundle_cli, stage1_run, "--external_data", str(site_c), "--eval_split", "val",
                         "--overwrite", "true", expect_success=False)
    assert conflict.returncode != 0 and "drop --eval_split val" in conflict.stdout
    assert "Traceback" not in conflict.stdout

    _evaluate(bundle_cli, stage1_run, "--external_data", str(site_c), "--overwrite", "true")
    assert json.loads((out_dir / "external_metrics.json").read_text())["num_samples"] == 4


def test_copy_of_a_training_scan_is_refused_by_name(stage1_run: BundleRun, site_c: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"image": str((site_c / row["image"]).resolve()), "label": row["label"],
             "participant_id": row["participant_id"]} for row in _rows(site_c / "scans.tsv")]
    trained = next(row for row in _rows(stage1_run.output_dir / "splits.tsv") if row["split"] == "train")
    training_image = Path(stage1_run.output_dir / trained["image"]).resolve()
    copy = tmp_path / "renamed_scan.nii.gz"
    shutil.copyfile(training_image, copy)
    table = tmp_path / "with_copy.tsv"

    def write(extra: list[dict[str, str]]) -> None:
        with open(table, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image", "label", "participant_id"], delimiter="\t")
            writer.writeheader()
            writer.writerows(rows + extra)

    write([{"image": str(copy), "label": trained["label_name"], "participant_id": "sub-other"}])
    with pytest.raises(LeakageError) as refused:  # validated as the bundles do: validation's hashes are compared
        prepare_records(table, CLASSES, stage1_run.output_dir, external=True, validate=True)
    assert refused.value.problems == [f"{copy}: the same file as {training_image} (train scan of participant "
                                      f"{trained['participant_id']})"]

    # a participant id that the run's training set also has is only a warning: cohorts number people alike
    rows[0]["participant_id"] = trained["participant_id"]
    write([])
    with caplog.at_level(logging.WARNING, logger="alz_monai.data.dataset"):
        records = prepare_records(table, CLASSES, stage1_run.output_dir, external=True, validate=False)
    assert {record["split"] for record in records} == {"external"} and len(records) == len(rows)
    assert trained["participant_id"] in caplog.text
