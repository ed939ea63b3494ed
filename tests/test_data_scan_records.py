"""Inference input: a bad scan stops the run, or is skipped and listed in a problems file when one is named."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from alz_monai.data import scan_records
from alz_monai.errors import DataError


def save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([6.0, 6.0, 6.0, 1.0])), path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two good scans and one without foreground, in subfolders."""
    rng = np.random.default_rng(0)
    save(tmp_path / "scans" / "a" / "sub-01_T1w.nii.gz", rng.random((8, 8, 8), dtype=np.float32))
    save(tmp_path / "scans" / "b" / "sub-02_T1w.nii.gz", rng.random((8, 8, 8), dtype=np.float32))
    negative_head = np.zeros((8, 8, 8), np.float32)
    negative_head[2:6, 2:6, 2:6] = -1.0 - rng.random((4, 4, 4), dtype=np.float32)
    save(tmp_path / "scans" / "c" / "sub-03_T1w.nii.gz", negative_head)
    return tmp_path / "scans"


def bad_scan(folder: Path) -> str:
    return str((folder / "c" / "sub-03_T1w.nii.gz").absolute())


def test_without_a_problems_file_a_bad_scan_stops_the_run(folder: Path) -> None:
    with pytest.raises(DataError) as caught:
        scan_records(folder)
    [problem] = caught.value.problems
    assert problem.startswith(f"{bad_scan(folder)}: no voxel is above the foreground threshold")


def test_with_a_problems_file_bad_scans_are_listed_and_the_others_proceed(folder: Path, tmp_path: Path) -> None:
    problems_path = tmp_path / "out" / "problems.tsv"
    records = scan_records(folder, problems_path=problems_path)
    assert [record["participant_id"] for record in records] == ["sub-01", "sub-02"]
    with open(problems_path, newline="", encoding="utf-8") as handle:
        [row] = list(csv.DictReader(handle, delimiter="\t"))
    assert row["image"] == bad_scan(folder)
    assert row["problem"].startswith(f"{bad_scan(folder)}: no voxel is above the foreground threshold")


def test_problems_file_is_rewritten_empty_when_every_scan_is_good(folder: Path, tmp_path: Path) -> None:
    problems_path = tmp_path / "problems.tsv"
    problems_path.write_text("image\tproblem\nold\tstale\n", encoding="utf-8")
    scan_records([folder / "a", folder / "b"], problems_path=problems_path)
    assert problems_path.read_text(encoding="utf-8") == "image\tproblem\n"


def test_when_no_scan_is_left_the_run_stops(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no voxel is above"):
        scan_records(folder / "c", problems_path=tmp_path / "problems.tsv")
    assert (tmp_path / "problems.tsv").read_text(encoding="utf-8").count("\n") == 2


def test_foreground_fraction_is_the_callers(folder: Path) -> None:
    with pytest.raises(DataError, match=r"\(0\.3 x the 99\.5th percentile, foreground_fraction=0\.3\)"):
        scan_records(folder / "c", foreground_fraction=0.3)
