"""No command overwrites: scans of one file name in different folders get distinct saliency names, and a second
run into the same folder is refused before any work unless asked to replace."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from alz_monai import saliency
from alz_monai.data.synth import generate_synthetic_dataset
from alz_monai.networks import resnet10_3d
from alz_monai.run_dir import RunDirError

TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "bundles" / "ad_resnet3d" / "configs" / "train.yaml"


def test_scan_names_add_folders_until_they_differ() -> None:
    names = saliency.scan_names(["/d/x/a/T1w.nii.gz", "/d/y/a/T1w.nii.gz", "/d/b/T1w.nii", "/d/c/other.nii.gz"])
    assert names == {"/d/x/a/T1w.nii.gz": "x_a_T1w", "/d/y/a/T1w.nii.gz": "y_a_T1w", "/d/b/T1w.nii": "b_T1w",
                     "/d/c/other.nii.gz": "other"}


def test_explain_scans_keeps_both_scans_and_refuses_a_second_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_synthetic_dataset(data, subjects=2, sessions=1, spacing=6.0, seed=0, progress=False)
    scans = sorted(data.rglob("*_T1w.nii*"))[:2]
    copies = []
    for folder, scan in zip(("a", "b"), scans):
        target = tmp_path / "input" / folder / "T1w.nii.gz"
        target.parent.mkdir(parents=True)
        shutil.copy(scan, target)
        copies.append(target)
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser.update({"spatial_size": [32, 32, 32], "pixdim": [6.0, 6.0, 6.0], "cache_device": "cpu"})
    transform = parser.get_parsed_content("validate#transforms")
    torch.manual_seed(0)
    options = {"network": resnet10_3d(num_classes=2), "transform": transform, "methods": ("gradcam",),
               "gradcam_layer": "layer2"}
    out = tmp_path / "saliency"

    saliency.explain_scans(copies, out, **options)
    written = sorted(path.name for path in out.iterdir())
    assert written == ["a_T1w_gradcam.nii.gz", "a_T1w_gradcam.png", "b_T1w_gradcam.nii.gz", "b_T1w_gradcam.png"]
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    with pytest.raises(RunDirError, match=r"saliency maps already exist: .*a_T1w_gradcam.nii.gz.*--overwrite true"):
        saliency.explain_scans(copies, out, **options)
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before
    saliency.explain_scans(copies, out, overwrite=True, **options)
    assert all(path.stat().st_mtime_ns >= before[path.name] for path in out.iterdir())
