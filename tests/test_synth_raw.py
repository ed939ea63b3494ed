"""Raw synthetic heads: a head around the brain, a random pose within the documented bounds, the true transform."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from alz_monai.data.records import load_records
from alz_monai.data.synth_raw import ROTATION_MAX_DEG, SHIFT_MAX_MM, generate_raw_dataset, raw_head, template_brain

SPACING = 6.0


def _brain_seen_through_truth(brain: nib.Nifti1Image, raw: nib.Nifti1Image, scanner_from_brain: np.ndarray):
    """The raw scan sampled at the brain's voxels through the recorded transform."""
    raw_index_from_brain_index = np.linalg.inv(raw.affine) @ scanner_from_brain @ brain.affine
    return ndimage.affine_transform(np.asarray(raw.dataobj, dtype=np.float32), raw_index_from_brain_index,
                                    output_shape=brain.shape, order=1)


def test_raw_head_records_the_pose_that_maps_the_brain_into_the_scan() -> None:
    brain = template_brain(SPACING)
    head, _ = raw_head(brain, np.random.default_rng(3), SPACING)
    assert np.all(np.abs(head.rotation_deg) <= ROTATION_MAX_DEG) and np.all(np.abs(head.shift_mm) <= SHIFT_MAX_MM)
    assert nib.aff2axcodes(head.image.affine) == tuple(head.axcodes)
    assert head.image.get_data_dtype() == np.int16
    inside = np.asarray(brain.dataobj) > 0.2

    def agreement(scanner_from_brain: np.ndarray) -> float:
        seen = _brain_seen_through_truth(brain, head.image, scanner_from_brain)
        return float(np.corrcoef(seen[inside], np.asarray(brain.dataobj)[inside])[0, 1])

    truth = agreement(head.scanner_from_brain)
    assert truth > 0.7  # bias field, noise and two interpolations at 6 mm keep it below 1
    for axis in range(3):
        for step in (-4.0, 4.0):
            shifted = head.scanner_from_brain.copy()
            shifted[axis, 3] += step
            assert agreement(shifted) < truth - 0.02


def test_raw_head_has_scalp_skull_and_neck_around_the_brain() -> None:
    brain = template_brain(SPACING)
    head, _ = raw_head(brain, np.random.default_rng(4), SPACING)
    raw = np.asarray(head.image.dataobj, dtype=np.float32)
    background = np.median(raw[raw < np.percentile(raw, 20)])
    brain_in_raw = _brain_seen_through_truth(brain, head.image, head.scanner_from_brain)
    white_matter = np.percentile(brain_in_raw[np.asarray(brain.dataobj) > 0.2], 90)
    # Scalp fat (as bright as white matter) lies 10-14 mm outside the brain: sample it above the vertex.
    brain_voxels = np.argwhere(np.asarray(brain.dataobj) > 0.2)
    top = brain.affine[:3, :3] @ brain_voxels[np.argmax(brain_voxels[:, 2])] + brain.affine[:3, 3]
    profile = []
    for height in np.arange(0.0, 30.0, 1.0):
        point = head.scanner_from_brain @ [*top[:2], top[2] + height, 1.0]
        index = np.linalg.inv(head.image.affine) @ point
        profile.append(ndimage.map_coordinates(raw, index[:3, None], order=1)[0])
    assert max(profile[8:18]) > 0.6 * white_matter > 4 * background
    assert min(profile[3:10]) < 0.3 * white_matter  # CSF and bone are dark
    # A neck below the brain: tissue 40 mm below the lowest brain voxel, on the midline.
    neck = head.scanner_from_brain @ [0.0, -20.0, -110.0, 1.0]
    neck_value = ndimage.map_coordinates(raw, (np.linalg.inv(head.image.affine) @ neck)[:3, None], order=1)[0]
    assert neck_value > 0.3 * white_matter


def test_generate_raw_dataset_is_a_bids_dataset_with_poses(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    parameters = generate_raw_dataset(out, subjects=2, sessions=1, spacing=SPACING, progress=False)
    assert parameters["raw"]["rotation_max_deg"] == ROTATION_MAX_DEG
    records = load_records(out)
    assert len(records) == 2 and {record["label_name"] for record in records} == {"CN", "AD"}
    for record in records:
        pose = json.loads(Path(record["pose_path"]).read_text())
        image = nib.load(record["image"])
        assert list(image.shape) == pose["shape"] and np.asarray(pose["scanner_from_brain"]).shape == (4, 4)
        assert nib.load(record["atrophy_map"]).shape == image.shape
    assert not any(path.name.startswith(".brains") for path in out.iterdir())
    assert set(pd.read_csv(out / "participants.tsv", sep="\t")["participant_id"]) == {"sub-0001", "sub-0002"}
    with pytest.raises(FileExistsError, match="not empty"):
        generate_raw_dataset(out, subjects=2, sessions=1, spacing=SPACING, progress=False)
