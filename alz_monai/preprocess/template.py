"""The MNI152 2009 template nilearn ships (no download), its brain mask, and the fixed MNI box output lives in.

The box is Clinica ``t1-linear``'s crop (169 x 208 x 179 voxels at 1 mm) in MNI millimetres, so outputs at
1 mm have ClinicaDL's shape; at other resolutions the same extent is sampled more coarsely.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from alz_monai.preprocess.images import sitk, to_sitk

if TYPE_CHECKING:
    import SimpleITK

__all__ = ["BOX_FIRST_MM", "BOX_LAST_MM", "TEMPLATE_SPACE", "box_reference", "template_in_box"]

TEMPLATE_SPACE = "MNI152NLin2009aSym"
"""BIDS name of nilearn's template: ICBM 2009a non-linear symmetric (skull-stripped)."""
BOX_FIRST_MM = np.array([-84.0, -119.0, -78.0])
BOX_LAST_MM = np.array([84.0, 88.0, 100.0])
"""RAS centres of the first and last voxels of the box at 1 mm."""


def box_reference(resolution: float) -> SimpleITK.Image:
    """An empty image on the MNI box grid with ``resolution`` mm voxels (RAS axes, centred on the box)."""
    shape = np.floor((BOX_LAST_MM - BOX_FIRST_MM) / resolution + 1e-6).astype(int) + 1
    centre = (BOX_FIRST_MM + BOX_LAST_MM) / 2.0
    affine = np.diag([resolution, resolution, resolution, 1.0])
    affine[:3, 3] = centre - resolution * (shape - 1) / 2.0
    return to_sitk(np.zeros(shape, dtype=np.float32), affine, source="the MNI box")


@functools.lru_cache(maxsize=4)
def template_in_box(resolution: float) -> tuple[SimpleITK.Image, SimpleITK.Image]:
    """The template (0..1) and its brain mask (0/1, uint8) on the box grid."""
    from nilearn import datasets

    itk = sitk()
    reference = box_reference(resolution)
    template = datasets.load_mni152_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    smooth = max(resolution - 1.0, 0.0) / 2.0  # against aliasing when sampling coarser than 1 mm
    template_image = to_sitk(np.asarray(template.dataobj, dtype=np.float32), template.affine, "the template")
    if smooth > 0:
        template_image = itk.SmoothingRecursiveGaussian(template_image, smooth)
    mask_image = to_sitk(np.asarray(mask.dataobj, dtype=np.float32), mask.affine, "the template mask")
    template_box = itk.Resample(template_image, reference, itk.Transform(), itk.sitkLinear, 0.0, itk.sitkFloat32)
    mask_box = itk.Resample(mask_image, reference, itk.Transform(), itk.sitkLinear, 0.0, itk.sitkFloat32) >= 0.5
    return template_box, itk.Cast(mask_box, itk.sitkUInt8)
