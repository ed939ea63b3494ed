"""Preprocessing steps one by one (N4, box, brain mask, QC score, MONAI transforms) and the registration error."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from alz_monai.data.synth_raw import raw_head, template_brain
from alz_monai.preprocess.brain_mask import extract_brain
from alz_monai.preprocess.crop import crop_to_box
from alz_monai.preprocess.images import to_sitk
from alz_monai.preprocess.pipeline import PreprocessSettings, preprocess_volume
from alz_monai.preprocess.qc import QC_THRESHOLD, passes, registration_score
from alz_monai.preprocess.template import box_reference, template_in_box
from alz_monai.preprocess.transforms import BiasFieldCorrectiond, ExtractBraind, RegisterToTemplated

RESOLUTION = 4.0
REGISTRATION_ERROR_BOUND_MM = 3.0
"""Mean displacement of template brain points between the fitted and the true transform, at 4-5 mm voxels
(measured 1.0-1.6 mm; about 0.4 mm at 2 mm voxels). Three quarters of a voxel: a failed or rough fit is 5-20 mm."""
_LPS = np.array([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def heads() -> list:
    brain = template_brain(RESOLUTION)
    return [raw_head(brain, np.random.default_rng(seed), RESOLUTION)[0] for seed in (11, 12)]


def _sitk_of(head) -> sitk.Image:
    return to_sitk(np.asarray(head.image.dataobj, dtype=np.float32), head.image.affine)


def _brain_points_mm() -> np.ndarray:
    """RAS millimetres of every fourth voxel of the template's brain mask."""
    _, mask = template_in_box(RESOLUTION)
    index = np.argwhere(sitk.GetArrayFromImage(mask).transpose(2, 1, 0) > 0)[::4]
    return np.array([np.array(mask.TransformIndexToPhysicalPoint([int(i) for i in voxel])) * _LPS
                     for voxel in index])


def test_box_has_clinicadl_shape_at_1mm_and_the_same_extent_coarser() -> None:
    assert box_reference(1.0).GetSize() == (169, 208, 179)
    coarse = box_reference(RESOLUTION)
    assert coarse.GetSize() == (43, 52, 45)
    extent = np.array(coarse.GetSize()) * RESOLUTION
    assert np.all(np.abs(extent - np.array([169, 208, 179])) <= RESOLUTION)


def test_n4_transform_removes_a_smooth_multiplicative_bias() -> None:
    brain = template_brain(RESOLUTION)
    volume = np.asarray(brain.dataobj, dtype=np.float32)
    x = np.linspace(-1.0, 1.0, volume.shape[0])[:, None, None]
    z = np.linspace(-1.0, 1.0, volume.shape[2])[None, None, :]
    biased = volume * np.exp(0.4 * x + 0.3 * z ** 2)
    data = {"image": MetaTensor(torch.from_numpy(biased)[None], affine=torch.as_tensor(brain.affine))}
    corrected = BiasFieldCorrectiond("image")(data)["image"]
    assert corrected.shape == (1, *volume.shape)
    np.testing.assert_allclose(corrected.affine.numpy(), brain.affine, atol=1e-6)
    inside = volume > 0.2

    def agreement(candidate: np.ndarray) -> float:
        return float(np.corrcoef(candidate[inside], volume[inside])[0, 1])

    assert agreement(corrected[0].numpy()) > agreement(biased) + 0.05


def test_registration_error_is_within_the_documented_bound(heads) -> None:
    template, mask = template_in_box(RESOLUTION)
    points = _brain_points_mm()
    for head in heads:
        result = preprocess_volume(np.asarray(head.image.dataobj, dtype=np.float32), head.image.affine,
                                   PreprocessSettings(resolution=RESOLUTION))
        fitted = np.array([np.array(result.template_to_scan.TransformPoint(tuple(p * _LPS))) * _LPS for p in points])
        truth = points @ head.scanner_from_brain[:3, :3].T + head.scanner_from_brain[:3, 3]
        error = np.linalg.norm(fitted - truth, axis=1).mean()
        assert error < REGISTRATION_ERROR_BOUND_MM, f"pose {head.rotation_deg} deg {head.shift_mm} mm: {error:.2f}"
        assert result.qc_score >= QC_THRESHOLD
        # Away from the truth the score falls below the threshold: QC tells a good fit from a bad one.
        shifted = sitk.CompositeTransform([result.template_to_scan, sitk.TranslationTransform(3, (0.0, 12.0, 0.0))])
        assert registration_score(crop_to_box(_sitk_of(head), shifted, RESOLUTION), RESOLUTION) < QC_THRESHOLD


def test_brain_extraction_keeps_only_the_template_brain(heads) -> None:
    image = _sitk_of(heads[0])
    boxed = crop_to_box(image, sitk.Transform(), RESOLUTION)
    brain = sitk.GetArrayFromImage(extract_brain(boxed, RESOLUTION))
    _, mask = template_in_box(RESOLUTION)
    inside = sitk.GetArrayFromImage(mask) > 0
    assert np.all(brain[~inside] == 0)
    np.testing.assert_array_equal(brain[inside], sitk.GetArrayFromImage(boxed)[inside])
    with pytest.raises(ValueError, match="MNI box"):
        extract_brain(image, RESOLUTION)


def test_qc_passes_at_and_above_the_threshold() -> None:
    assert passes([0.9, QC_THRESHOLD, QC_THRESHOLD - 1e-3, float("nan")], QC_THRESHOLD) == [True, True, False, False]


def test_monai_transforms_reproduce_the_pipeline(heads) -> None:
    head = heads[1]
    volume = np.asarray(head.image.dataobj, dtype=np.float32)
    settings = PreprocessSettings(resolution=RESOLUTION, bias_correction=False)
    expected = preprocess_volume(volume, head.image.affine, settings)
    data = {"image": MetaTensor(torch.from_numpy(volume.copy())[None], affine=torch.as_tensor(head.image.affine))}
    for transform in (RegisterToTemplated("image", resolution=RESOLUTION),
                      ExtractBraind("image", resolution=RESOLUTION)):
        data = transform(data)
    result = data["image"]
    assert tuple(result.shape) == (1, *box_reference(RESOLUTION).GetSize())
    # Multithreaded metric sums make two fits differ slightly (not bit for bit): the same fit, to well under a voxel.
    brain = sitk.GetArrayFromImage(expected.brain).transpose(2, 1, 0)
    assert np.corrcoef(result[0].numpy().ravel(), brain.ravel())[0, 1] > 0.98
    assert data["image_qc_score"] == pytest.approx(expected.qc_score, abs=0.02)
    np.testing.assert_allclose(result.affine.numpy()[:3, 3], [-84.0, -117.5, -77.0])
