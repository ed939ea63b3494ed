"""BIDS roots as the fourth data source: labels per participant or per session, every problem named."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from alz_monai.data.records import load_records
from alz_monai.errors import DataError


def _scan(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.float32), np.eye(4)), path)
    return path


def _tsv(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture()
def bids_root(tmp_path: Path) -> Path:
    """sub-01: two sessions, converted to AD at M12 per its sessions table; sub-02: no session level."""
    root = tmp_path / "bids"
    _tsv(root / "participants.tsv", ["participant_id\tdiagnosis\tsex\tage", "sub-01\tCN\tF\t70", "sub-02\tAD\tM\t80"])
    _tsv(root / "sub-01" / "sub-01_sessions.tsv", ["session_id\tdiagnosis\tage", "ses-M00\t\t70", "ses-M12\tAD\t71"])
    _scan(root / "sub-01" / "ses-M00" / "anat" / "sub-01_ses-M00_T1w.nii.gz")
    _scan(root / "sub-01" / "ses-M12" / "anat" / "sub-01_ses-M12_T1w.nii")
    _scan(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    _scan(root / "sub-02" / "anat" / "sub-02_FLAIR.nii.gz")  # not a T1w: ignored
    return root


def test_bids_records_take_session_diagnosis_and_columns(bids_root: Path) -> None:
    records = {Path(record["image"]).name: record for record in load_records(bids_root)}
    assert sorted(records) == ["sub-01_ses-M00_T1w.nii.gz", "sub-01_ses-M12_T1w.nii", "sub-02_T1w.nii.gz"]
    baseline, follow_up, single = (records[name] for name in sorted(records))
    assert (baseline["label_name"], follow_up["label_name"], single["label_name"]) == ("CN", "AD", "AD")
    assert (baseline["session_id"], follow_up["session_id"], single["session_id"]) == ("ses-M00", "ses-M12", "")
    assert follow_up["participant_id"] == "sub-01" and follow_up["age"] == "71" and follow_up["sex"] == "F"
    assert single["age"] == "80" and single["split"] == ""
    assert Path(single["image"]).is_absolute()


def test_bids_gives_the_same_records_as_a_table(bids_root: Path, tmp_path: Path) -> None:
    from_bids = load_records(bids_root)
    table = tmp_path / "scans.csv"
    columns = ["image", "label", "participant_id", "session_id", "sex", "age"]
    _tsv(table, [",".join(columns), *(",".join(str(record[name] if name != "label" else record["label_name"])
                                                for name in columns) for record in from_bids)])
    assert load_records(table) == from_bids


def test_bids_problems_are_listed_together(bids_root: Path) -> None:
    _scan(bids_root / "sub-03" / "ses-M00" / "anat" / "sub-03_ses-M00_T1w.nii.gz")  # no participants row
    _scan(bids_root / "sub-01" / "ses-M24" / "anat" / "sub-01_ses-M24_T1w.nii.gz")  # not in the sessions table
    _tsv(bids_root / "participants.tsv", ["participant_id\tdiagnosis", "sub-01\tCN", "sub-02\tFTD", "sub-03x\tCN"])
    with pytest.raises(DataError) as caught:
        load_records(bids_root)
    problems = caught.value.problems
    assert len(problems) == 3
    assert any("sub-03 is not listed in" in problem and "participants.tsv" in problem for problem in problems)
    assert any("session ses-M24 is not listed in" in problem for problem in problems)
    assert any("sub-02_T1w.nii.gz" in problem and "'FTD'" in problem for problem in problems)


def test_bids_without_any_diagnosis_is_refused(bids_root: Path) -> None:
    _tsv(bids_root / "participants.tsv", ["participant_id\tage", "sub-01\t70", "sub-02\t80"])
    with pytest.raises(DataError, match="sub-02_T1w.nii.gz: no diagnosis for sub-02"):
        load_records(bids_root)
