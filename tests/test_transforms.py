"""The bundle's preprocessing chain (read from train.yaml) and the custom transforms it composes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset
from monai.transforms import Compose

from alz_monai.data import CastToFloatd, ForegroundThreshold, NormalizeForegroundd, load_records

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ad_resnet3d"


def bundle_preprocessing(**overrides: object) -> Compose:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "spatial_size": [32, 32, 32], "pixdim": [6, 6, 6], **overrides})
    return Compose(parser.get_parsed_content("preprocessing"))


def write_reoriented(source: Path, target: Path, axes: tuple[int, int, int], flips: tuple[bool, bool, bool],
                     dtype: type, singleton_4d: bool) -> Path:
    """The same image in world space, stored with permuted/flipped axes, another dtype, maybe 4D."""
    image = nib.as_closest_canonical(nib.load(source))
    data = np.asarray(image.dataobj, dtype=np.float32)
    affine = image.affine.copy()
    data = np.transpose(data, axes)
    affine[:, :3] = affine[:, list(axes)]
    for axis, flip in enumerate(flips):
        if flip:
            data = np.flip(data, axis)
            affine[:, 3] += affine[:, axis] * (data.shape[axis] - 1)
            affine[:, axis] *= -1
    if singleton_4d:
        data = data[..., None]
    out = nib.Nifti1Image(data.astype(dtype), affine)
    if dtype is np.int16:
        out = nib.Nifti1Image(np.round(data).astype(np.int16), affine)
    nib.save(out, target)
    return target


def test_preprocessing_is_the_same_whatever_the_storage_layout(tiny_dataset: Path, tmp_path: Path) -> None:
    scan = Path(load_records(tiny_dataset)[0]["image"])
    transform = bundle_preprocessing()
    reference = transform({"image": str(scan)})["image"]
    assert reference.shape == (1, 32, 32, 32)
    assert reference.dtype == torch.float32
    layouts = [((0, 1, 2), (True, False, False), np.float32, False),   # LAS
               ((1, 0, 2), (False, True, True), np.float32, True),     # permuted, flipped, 4D singleton
               ((2, 1, 0), (True, True, False), np.int16, False)]      # int16, another permutation
    for index, (axes, flips, dtype, singleton) in enumerate(layouts):
        stored = write_reoriented(scan, tmp_path / f"layout{index}.nii.gz", axes, flips, dtype, singleton)
        result = transform({"image": str(stored)})["image"]
        assert result.shape == reference.shape
        # int16 rounding of the stored intensities is the only difference allowed
        assert torch.corrcoef(torch.stack([result.flatten(), reference.flatten()]))[0, 1] > 0.999, index


def test_foreground_normalisation_and_threshold() -> None:
    volume = torch.zeros(1, 20, 20, 20) + torch.rand(1, 20, 20, 20) * 5  # noisy background
    volume[:, 5:15, 5:15, 5:15] += 100 + torch.randn(1, 10, 10, 10) * 10
    selector = ForegroundThreshold(0.1)
    mask = selector(volume)
    assert mask[:, 5:15, 5:15, 5:15].all() and mask.sum() == 1000
    normalised = NormalizeForegroundd("image", selector)({"image": volume})["image"]
    foreground = normalised[mask]
    assert foreground.mean().abs() < 1e-4 and (foreground.std() - 1).abs() < 1e-4
    with pytest.raises(ValueError, match="fraction"):
        ForegroundThreshold(1.5)
    with pytest.raises(ValueError, match="no foreground"):
        NormalizeForegroundd("image")({"image": torch.zeros(1, 4, 4, 4)})


@pytest.mark.parametrize("voxels", [1, 3, 4096, 1_500_001])
@pytest.mark.parametrize("percentile", [0.0, 50.0, 99.5, 100.0])
def test_threshold_is_torch_quantiles_percentile(voxels: int, percentile: float) -> None:
    """The selection by topk gives torch.quantile's linear interpolation (over the same strided sample), to float32
    rounding (torch interpolates in float32)."""
    values = torch.randn(voxels, generator=torch.Generator().manual_seed(voxels)) * 100
    sample = values[:: voxels // 1_000_000 + 1] if voxels > 1_000_000 else values
    expected = float(torch.quantile(sample, percentile / 100.0)) * 0.1
    assert ForegroundThreshold(0.1, percentile).threshold(values) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_float16_cache_is_cast_back_per_access(tiny_dataset: Path) -> None:
    records = load_records(tiny_dataset)[:2]
    chain = Compose([*bundle_preprocessing(cache_dtype="float16").transforms, CastToFloatd(keys="image")])
    dataset = CacheDataset([{"image": r["image"]} for r in records], transform=chain, progress=False)
    assert dataset._cache[0]["image"].dtype == torch.float16  # the cache keeps the compact dtype
    assert dataset[0]["image"].dtype == torch.float32
