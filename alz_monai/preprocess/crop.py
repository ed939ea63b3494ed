"""Resampling a scan into the fixed MNI box through its registration: alignment and crop in one interpolation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alz_monai.preprocess.images import sitk
from alz_monai.preprocess.template import box_reference

if TYPE_CHECKING:
    import SimpleITK

__all__ = ["crop_to_box"]


def crop_to_box(image: SimpleITK.Image, template_to_scan: SimpleITK.Transform,
                resolution: float) -> SimpleITK.Image:
    """The scan on the MNI box grid (``resolution`` mm), zero outside its field of view (B-spline, clipped at 0)."""
    itk = sitk()
    resampled = itk.Resample(image, box_reference(resolution), template_to_scan, itk.sitkBSpline, 0.0,
                             itk.sitkFloat32)
    return itk.Clamp(resampled, itk.sitkFloat32, 0.0)
