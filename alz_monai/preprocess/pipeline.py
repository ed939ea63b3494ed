"""One scan through t1-linear-style preprocessing: N4, registration to MNI, crop to the MNI box, brain mask."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from alz_monai.errors import ConfigError
from alz_monai.preprocess.bias import n4_correct
from alz_monai.preprocess.brain_mask import extract_brain
from alz_monai.preprocess.crop import crop_to_box
from alz_monai.preprocess.images import sitk, to_sitk
from alz_monai.preprocess.qc import registration_score
from alz_monai.preprocess.registration import TRANSFORM_KINDS, register_to_template
from alz_monai.preprocess.template import TEMPLATE_SPACE, template_in_box

if TYPE_CHECKING:
    import SimpleITK

__all__ = ["PIPELINE_VERSION", "PreprocessSettings", "PreprocessedScan", "preprocess_volume"]

PIPELINE_VERSION = "2"
"""Bumped whenever the same settings would produce different outputs."""


@dataclass(frozen=True)
class PreprocessSettings:
    """What decides a preprocessed scan's voxels; an output folder holds results of one setting only."""

    resolution: float = 1.0
    transform: str = "affine"
    bias_correction: bool = True

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORM_KINDS:
            raise ConfigError(f"--transform {self.transform!r} is not one of {', '.join(TRANSFORM_KINDS)}")
        if not 0.5 <= self.resolution <= 8.0:
            raise ConfigError(f"--resolution {self.resolution} mm is outside 0.5..8 mm; 1 mm matches ClinicaDL")

    def describe(self) -> dict[str, Any]:
        """The settings with the pipeline and template versions, as recorded beside the outputs."""
        return {**asdict(self), "pipeline_version": PIPELINE_VERSION, "template_space": TEMPLATE_SPACE,
                "simpleitk_version": sitk().Version_VersionString()}

    @property
    def resolution_label(self) -> str:
        """BIDS ``res-`` value, e.g. ``1x1x1``."""
        return "x".join([f"{self.resolution:g}"] * 3)


@dataclass(frozen=True)
class PreprocessedScan:
    """A scan in the MNI box: with and without the brain mask applied, how it got there and how well."""

    brain: SimpleITK.Image
    head: SimpleITK.Image
    template_to_scan: SimpleITK.Transform
    qc_score: float


def preprocess_volume(volume: np.ndarray, affine: np.ndarray, settings: PreprocessSettings,
                      source: str = "the scan") -> PreprocessedScan:
    """Bias-correct, register, crop and brain-mask one 3D volume given with its RAS voxel-to-world matrix."""
    image = to_sitk(volume, affine, source)
    if settings.bias_correction:
        image = n4_correct(image)
    template, mask = template_in_box(settings.resolution)
    transform = register_to_template(image, template, mask, settings.transform)
    head = crop_to_box(image, transform, settings.resolution)
    return PreprocessedScan(brain=extract_brain(head, settings.resolution), head=head, template_to_scan=transform,
                            qc_score=registration_score(head, settings.resolution))
