"""Brain extraction by registration: the template's brain mask applied to a scan aligned with the template.

Deep-learning skull strippers either download their weights at run time (HD-BET, SynthStrip) or add a large
dependency; after an affine fit to MNI space the template's mask is a sound brain mask for T1 scans of adults,
which is what Alzheimer classification sees (and what ClinicaDL's t1-linear crop approximates).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alz_monai.preprocess.images import sitk
from alz_monai.preprocess.template import template_in_box

if TYPE_CHECKING:
    import SimpleITK

__all__ = ["extract_brain"]


def extract_brain(image_in_box: SimpleITK.Image, resolution: float) -> SimpleITK.Image:
    """The boxed scan with everything outside the template's brain mask set to zero."""
    itk = sitk()
    _, mask = template_in_box(resolution)
    if image_in_box.GetSize() != mask.GetSize():
        raise ValueError(f"image of size {image_in_box.GetSize()} is not on the {resolution} mm MNI box grid "
                         f"{mask.GetSize()}; crop it to the box first")
    masked = itk.Mask(image_in_box, mask, 0.0)
    masked.CopyInformation(image_in_box)
    return masked
