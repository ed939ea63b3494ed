"""A validation store serves the results of unchanged scans without decoding them, and never a stale one."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from conftest import BundleCLI, BundleRun

from alz_monai.data import validate
from alz_monai.data.dataset import prepare_records
from alz_monai.data.records import CONTENT_KEY
from alz_monai.data.validate import ValidationReport, check_records
from alz_monai.recipes import STAGE1

CLASSES = ("CN", "AD")


def save_nifti(path: Path, data: np.ndarray, orientation: bool = True) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if orientation else None), path)
    return path


def head(background: float = 0.0) -> np.ndarray:
    data = np.full((12, 12, 12), background, np.float32)
    data[3:9, 3:9, 3:9] = 1000.0 + np.random.default_rng(0).random((6, 6, 6), dtype=np.float32)
    return data


def record(path: Path, label: object = 1) -> dict[str, Any]:
    return {"image": str(path), "label": label, "participant_id": path.stem, "split": ""}


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths whose files validation opened as images, in the order it opened them."""
    opened: list[str] = []
    original = validate._open_image

    def spy(path: str, stream: Any) -> Any:
        opened.append(path)
        return original(path, stream)

    monkeypatch.setattr(validate, "_open_image", spy)
    return opened


@pytest.fixture
def scans(tmp_path: Path) -> list[Path]:
    """A clean scan, one without orientation (a header warning) and one with a bright background (a voxel
    warning at foreground_fraction 0.1, none at 0.2)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    return [save_nifti(folder / "clean.nii.gz", head()),
            save_nifti(folder / "unoriented.nii", head(), orientation=False),
            save_nifti(folder / "background.nii.gz", head(background=150.0))]


def check(paths: list[Path], store: Path | None, **options: Any) -> ValidationReport:
    return check_records([record(path) for path in paths], CLASSES, progress=False, store_dir=store, **options)


def assert_same(report: ValidationReport, expected: ValidationReport) -> None:
    assert (report.records, report.record_errors, report.record_warnings) == (
        expected.records, expected.record_errors, expected.record_warnings)


def test_unchanged_scans_are_taken_from_the_store(tmp_path: Path, scans: list[Path], decoded: list[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "store"
    fresh = check(scans, None)
    assert len(fresh.warnings) == 2 and all(CONTENT_KEY in item for item in fresh.records)
    assert_same(check(scans, store), fresh)
    assert len(list(store.iterdir())) == len(scans)
    decoded.clear()
    with caplog.at_level(logging.INFO, logger=validate.__name__):
        assert_same(check(scans, store), fresh)
    assert decoded == []
    assert f"validation store {store}: 3 of 3 scans taken from it, 0 read and checked" in caplog.messages


def test_the_store_serves_contents_not_paths(tmp_path: Path, scans: list[Path], decoded: list[str]) -> None:
    """The same bytes at another path: messages name the copy, its stat is the copy's; record checks still run."""
    store = tmp_path / "store"
    check(scans, store)
    copy = tmp_path / "copy.nii"
    shutil.copyfile(scans[1], copy)
    decoded.clear()
    records = [record(copy), record(copy, label=7)]
    report = check_records(records, CLASSES, progress=False, store_dir=store)
    assert decoded == []
    assert_same(report, check_records(records, CLASSES, progress=False))
    [warning] = report.warnings
    assert warning.startswith(f"{copy}: sform_code and qform_code are 0")
    assert report.records[0][CONTENT_KEY].mtime_ns == copy.stat().st_mtime_ns
    assert report.errors == [f"{copy}: label 7 is unknown (classes: 0=CN, 1=AD); fix the label in the source",
                             f"{copy}: listed twice (records 1 and 2); remove the duplicate"]


def test_a_rewritten_scan_is_checked_again(tmp_path: Path, scans: list[Path], decoded: list[str]) -> None:
    """New bytes at the same path are decoded and their problem reported; failing scans are never stored."""
    store = tmp_path / "store"
    check(scans, store)
    save_nifti(scans[0], np.zeros((12, 12, 12), np.float32))
    for _ in range(2):
        decoded.clear()
        report = check(scans, store)
        assert decoded == [str(scans[0])]
        assert report.errors == [f"{scans[0]}: every voxel is 0 (constant volume, no image content); re-export it "
                                 "or remove it from the table"]
    assert len(list(store.iterdir())) == len(scans)


@pytest.mark.parametrize("damage", [
    lambda entry: "{not json",
    lambda entry: json.dumps([entry]),
    lambda entry: json.dumps({**entry, "voxel_sha256": None}),
    lambda entry: json.dumps({**entry, "size": entry["size"] + 1}),
    lambda entry: json.dumps({**entry, "warnings": "sform_code and qform_code are 0"}),
])
def test_a_damaged_entry_is_ignored_and_replaced(tmp_path: Path, scans: list[Path], decoded: list[str],
                                                 damage: Any) -> None:
    store = tmp_path / "store"
    fresh = check(scans, store)
    [entry_path] = store.glob(f"{fresh.records[1][CONTENT_KEY].file_sha256}-*.json")
    entry_path.write_text(damage(json.loads(entry_path.read_text())))
    decoded.clear()
    assert_same(check(scans, store), fresh)
    assert decoded == [str(scans[1])]
    decoded.clear()
    assert_same(check(scans, store), fresh)
    assert decoded == []


@pytest.mark.parametrize("options", [{"foreground_fraction": 0.2}, {"max_voxels": 1000}])
def test_other_checks_do_not_reuse_entries(tmp_path: Path, scans: list[Path], decoded: list[str],
                                           options: dict[str, Any]) -> None:
    store = tmp_path / "store"
    check(scans, store)
    decoded.clear()
    report = check(scans, store, **options)
    assert sorted(decoded) == sorted(str(scan) for scan in scans)
    assert_same(report, check(scans, None, **options))
    assert_same(check(scans, store), check(scans, None))  # the first entries are still there and still right


def test_changed_checks_do_not_reuse_entries(tmp_path: Path, scans: list[Path], decoded: list[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    check(scans, store)
    monkeypatch.setattr(validate, "_CHECKS_SHA256", "0" * 64)  # what an edit of the checks' code does
    decoded.clear()
    check(scans, store)
    assert sorted(decoded) == sorted(str(scan) for scan in scans)


def test_prepare_records_validates_through_the_store(tmp_path: Path, tiny_dataset: Path, decoded: list[str]) -> None:
    store = tmp_path / "store"
    first = prepare_records(tiny_dataset, CLASSES, tmp_path / "run", validation_store=store)
    decoded.clear()
    again = prepare_records(tiny_dataset, CLASSES, tmp_path / "run", validation_store=store)
    assert decoded == []
    assert [item[CONTENT_KEY] for item in again] == [item[CONTENT_KEY] for item in first]


def test_a_store_that_cannot_be_made_or_written_only_costs_speed(
        tmp_path: Path, scans: list[Path], decoded: list[str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    fresh = check(scans, None)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    decoded.clear()
    with caplog.at_level(logging.WARNING, logger=validate.__name__):
        assert_same(check(scans, blocker / "store"), fresh)
    assert len(decoded) == len(scans)
    assert any("cannot be created" in message and "every scan is read" in message for message in caplog.messages)

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(validate, "atomic_write_json", full_disk)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=validate.__name__):
        assert_same(check(scans, tmp_path / "store"), fresh)
    assert sum("cannot write" in message for message in caplog.messages) == 1
    assert list((tmp_path / "store").iterdir()) == []


@pytest.mark.slow
def test_an_evaluation_through_the_disk_cache_reads_each_scan_once(
        stage1_run: BundleRun, bundle_cli: BundleCLI, tmp_path: Path) -> None:
    """`run evaluating --cache disk`: the first evaluation decodes the scans and caches the test split's volumes;
    a second one takes validation from the store and every volume from the cache, with the same report."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(stage1_run.output_dir, run,
                    ignore=shutil.ignore_patterns("checkpoint_latest.pt", ".lock", "evaluation", "inference"))
    command = ("run", "evaluating", "--config_file", bundle_cli.configs(STAGE1, "evaluate"), "--output_dir", str(run),
               "--cache", "disk", "--cache_dir", str(cache))
    first = bundle_cli(STAGE1, *command)
    test_scans = json.loads((run / "reports" / "test_metrics.json").read_text())["num_samples"]
    volumes = sorted(path.name for path in cache.glob("*.pt"))
    assert len(volumes) == test_scans
    assert f"0 of {len(list((cache / 'validation').iterdir()))} scans taken from it" in first.stdout
    second = bundle_cli(STAGE1, *command, "--overwrite", "true")
    assert "scans taken from it, 0 read and checked" in second.stdout
    assert sorted(path.name for path in cache.glob("*.pt")) == volumes
    evaluated = json.loads((run / "evaluation" / "test" / "test_metrics.json").read_text())
    trained = json.loads((stage1_run.output_dir / "reports" / "test_metrics.json").read_text())
    for name in ("auc", "balanced_accuracy", "confusion_matrix", "expected_calibration_error", "calibration"):
        assert evaluated[name] == trained[name], name
