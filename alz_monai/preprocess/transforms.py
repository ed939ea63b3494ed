"""The preprocessing steps as MONAI dictionary transforms, for bundles that preprocess on the fly.

They are deterministic, so a ``CacheDataset`` / ``PersistentDataset`` before the first random transform runs them
once per scan. Images are channel-first ``MetaTensor`` s with one channel and a RAS affine, as ``LoadImaged`` with
``ensure_channel_first`` gives them; a typical chain is ``LoadImaged -> BiasFieldCorrectiond ->
RegisterToTemplated -> ExtractBraind``: the steps of ``alz-monai preprocess`` (the same fit, up to the small
differences multithreaded registration metrics give between two runs).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from alz_monai.preprocess.bias import n4_correct
from alz_monai.preprocess.brain_mask import extract_brain
from alz_monai.preprocess.crop import crop_to_box
from alz_monai.preprocess.images import affine_of, sitk, to_sitk
from alz_monai.preprocess.qc import registration_score
from alz_monai.preprocess.registration import register_to_template
from alz_monai.preprocess.template import template_in_box

if TYPE_CHECKING:
    import SimpleITK

__all__ = ["BiasFieldCorrectiond", "ExtractBraind", "RegisterToTemplated"]

QC_SCORE_SUFFIX = "_qc_score"


def _as_sitk(image: torch.Tensor, key: Hashable) -> SimpleITK.Image:
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"{key}: expected one channel-first 3D image (1, X, Y, Z), got shape {tuple(image.shape)}")
    affine = image.affine.numpy() if isinstance(image, MetaTensor) else np.eye(4)
    return to_sitk(image[0].detach().cpu().numpy(), affine, source=str(key))


def _as_meta_tensor(image: SimpleITK.Image, like: torch.Tensor) -> MetaTensor:
    volume = torch.from_numpy(sitk().GetArrayFromImage(image).transpose(2, 1, 0).copy())[None]
    meta = {key: value for key, value in like.meta.items() if key != "affine"} if isinstance(like, MetaTensor) else {}
    return MetaTensor(volume, affine=torch.as_tensor(affine_of(image)), meta=meta)


class BiasFieldCorrectiond(MapTransform):
    """N4 bias-field correction on the image's own grid."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _as_meta_tensor(n4_correct(_as_sitk(d[key], key)), d[key])
        return d


class RegisterToTemplated(MapTransform):
    """Registration to the MNI template and resampling into the MNI box; the QC score goes to ``<key>_qc_score``."""

    def __init__(self, keys: KeysCollection, resolution: float = 1.0, transform: str = "affine",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resolution = resolution
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        template, mask = template_in_box(self.resolution)
        for key in self.key_iterator(d):
            image = _as_sitk(d[key], key)
            aligned = crop_to_box(image, register_to_template(image, template, mask, self.transform), self.resolution)
            d[f"{key}{QC_SCORE_SUFFIX}"] = registration_score(aligned, self.resolution)
            d[key] = _as_meta_tensor(aligned, d[key])
        return d


class ExtractBraind(MapTransform):
    """The template's brain mask applied to an image already in the MNI box (after ``RegisterToTemplated``)."""

    def __init__(self, keys: KeysCollection, resolution: float = 1.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resolution = resolution

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _as_meta_tensor(extract_brain(_as_sitk(d[key], key), self.resolution), d[key])
        return d
