"""NIfTI (nibabel, RAS) to SimpleITK (LPS) images and back, and the one place SimpleITK is imported."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from alz_monai.errors import ConfigError, DataError

if TYPE_CHECKING:
    import SimpleITK

__all__ = ["sitk", "load_scan", "to_sitk", "to_nifti", "affine_of"]

INSTALL_HINT = "preprocessing needs SimpleITK: pip install 'alz-monai[preprocess]' (or pip install SimpleITK)"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_ORTHONORMAL_TOLERANCE = 1e-4


def sitk() -> ModuleType:
    """SimpleITK, imported on first use so that the rest of the toolkit works without the extra."""
    try:
        return importlib.import_module("SimpleITK")
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


def load_scan(path: str | Path) -> nib.Nifti1Image:
    """A 3D float32 image from a NIfTI file; a singleton fourth axis is dropped, anything else 4D refused."""
    image = nib.load(path)
    if not isinstance(image, nib.spatialimages.SpatialImage):
        raise DataError([f"{path}: not an image with a voxel grid; give a NIfTI T1 volume"], source=str(path))
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError([f"{path}: a {len(image.shape)}D image of shape {image.shape}; give one 3D T1 volume"],
                        source=str(path))
    return nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32).reshape(shape), image.affine)


def to_sitk(volume: np.ndarray, affine: np.ndarray, source: str = "the image") -> SimpleITK.Image:
    """A SimpleITK image of a volume indexed (i, j, k) with a RAS voxel-to-world matrix."""
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    direction = lps[:, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_ORTHONORMAL_TOLERANCE):
        raise DataError([f"{source}: the voxel-to-world matrix is sheared; resample the scan to an orthogonal grid"],
                        source=source)
    image = sitk().GetImageFromArray(np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(lps[:, 3].tolist())
    return image


def affine_of(image: SimpleITK.Image) -> np.ndarray:
    """The RAS voxel-to-world matrix of a SimpleITK image."""
    affine = np.eye(4)
    direction = np.reshape(image.GetDirection(), (3, 3))
    affine[:3, :3] = _RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(image.GetOrigin())
    return affine


def to_nifti(image: SimpleITK.Image) -> nib.Nifti1Image:
    """A float32 NIfTI image (qform and sform set) of a SimpleITK image."""
    volume = sitk().GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    result = nib.Nifti1Image(volume, affine_of(image))
    result.set_qform(result.affine, code=1)
    result.set_sform(result.affine, code=1)
    result.header.set_xyzt_units("mm", "sec")
    return result
