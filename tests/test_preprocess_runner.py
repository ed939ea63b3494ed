"""``alz-monai preprocess`` on a BIDS dataset: outputs the bundles read, QC tables, per-scan failures, resumption."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from alz_monai.cli import main
from alz_monai.data.records import load_records
from alz_monai.data.synth_raw import raw_head, template_brain
from alz_monai.errors import ConfigError
from alz_monai.preprocess import PreprocessSettings, preprocess_dataset

RESOLUTION = 6.0


@pytest.fixture(scope="module")
def raw_bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two raw heads (CN, AD) and a third scan that is not a 3D image (a 4D series)."""
    root = tmp_path_factory.mktemp("raw") / "bids"
    brain = template_brain(RESOLUTION)
    for index, subject in enumerate(("sub-01", "sub-02")):
        head, _ = raw_head(brain, np.random.default_rng(index), RESOLUTION)
        path = root / subject / "ses-M00" / "anat" / f"{subject}_ses-M00_T1w.nii.gz"
        path.parent.mkdir(parents=True)
        nib.save(head.image, path)
    broken = root / "sub-03" / "ses-M00" / "anat" / "sub-03_ses-M00_T1w.nii.gz"
    broken.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 3), dtype=np.float32), np.eye(4)), broken)
    (root / "participants.tsv").write_text("participant_id\tdiagnosis\tage\nsub-01\tCN\t70\nsub-02\tAD\t75\n"
                                           "sub-03\tAD\t80\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def first_run(raw_bids: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("caps") / "out"
    code = main(["preprocess", str(raw_bids), str(out), "--resolution", str(RESOLUTION), "--workers", "2"])
    return out, code


def test_preprocess_writes_what_the_bundles_read(first_run) -> None:
    out, code = first_run
    assert code == 1  # one scan failed
    records = load_records(out)
    assert [(record["participant_id"], record["label_name"]) for record in records] == [("sub-01", "CN"),
                                                                                       ("sub-02", "AD")]
    for record in records:
        image = nib.load(record["image"])
        assert image.shape == (29, 35, 30)
        assert "space-MNI152NLin2009aSym_desc-CropBrain_res-6x6x6_T1w" in record["image"]
        assert record["qc_pass"] == "True" and float(record["qc_score"]) > 0.6 and record["age"] in {"70", "75"}
        assert np.asarray(image.dataobj)[0, 0, 0] == 0  # outside the brain mask
    qc = pd.read_csv(out / "qc.tsv", sep="\t").set_index("participant_id")
    assert list(qc["status"]) == ["done", "done", "failed"]
    assert "4D image" in qc.loc["sub-03", "error"]
    for mosaic in qc["qc_mosaic"].dropna():
        assert (out / mosaic).is_file()
    assert (out / "qc_overview.png").is_file()
    page = (out / "qc_overview.html").read_text()
    assert "sub-03_ses-M00_T1w.nii.gz" in page and page.count("<img") == 2


def test_rerun_resumes_and_retries_failures(first_run, raw_bids: Path, capsys: pytest.CaptureFixture) -> None:
    out, _ = first_run
    images = sorted(out.glob("subjects/*/*/t1_linear/*_T1w.nii.gz"))
    stamps = [path.stat().st_mtime_ns for path in images]
    broken = raw_bids / "sub-03" / "ses-M00" / "anat" / "sub-03_ses-M00_T1w.nii.gz"
    original = broken.read_bytes()
    try:
        nib.save(nib.load(raw_bids / "sub-01" / "ses-M00" / "anat" / "sub-01_ses-M00_T1w.nii.gz"), broken)
        summary = preprocess_dataset(raw_bids, out, settings=PreprocessSettings(resolution=RESOLUTION),
                                     progress=False, qc_threshold=0.99, exclude_flagged=True)
    finally:
        broken.write_bytes(original)
    assert (summary.resumed, summary.processed, summary.failures) == (2, 1, [])
    assert [path.stat().st_mtime_ns for path in images] == stamps
    # Every scan is below an impossible threshold: all flagged, none in the table, all in qc.tsv.
    assert summary.flagged == 3 and summary.excluded == 3 and summary.scans_table is None
    qc = pd.read_csv(out / "qc.tsv", sep="\t")
    assert list(qc["status"]) == ["done"] * 3 and not qc["qc_pass"].any()


def test_other_settings_or_a_foreign_folder_are_refused(first_run, raw_bids: Path, tmp_path: Path) -> None:
    out, _ = first_run
    with pytest.raises(ConfigError, match="other settings"):
        preprocess_dataset(raw_bids, out, settings=PreprocessSettings(resolution=RESOLUTION, transform="rigid"))
    assert json.loads((out / "preprocess_parameters.json").read_text())["settings"]["transform"] == "affine"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a preprocess output"):
        preprocess_dataset(raw_bids, foreign, settings=PreprocessSettings(resolution=RESOLUTION))
    assert (foreign / "notes.txt").read_text() == "keep me"
