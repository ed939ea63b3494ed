"""The persistent cache follows a scan's content, not its path, and its preprocessing's parameters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized

from alz_monai.data import CastToFloatd, build_dataset, ensure_valid
from alz_monai.data.records import CONTENT_KEY

SHAPE = (8, 8, 8)


def write_scan(path: Path, seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).random(SHAPE, dtype=np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([6.0, 6.0, 6.0, 1.0])), path)
    return data


def preprocessing(size: int = 8) -> Compose:
    return Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                    Resized("image", spatial_size=(size,) * 3), CastToFloatd("image")])


def record(path: Path, label: int = 1, participant: str = "sub-01") -> dict[str, Any]:
    return {"image": str(path), "label": label, "label_name": "AD", "participant_id": participant,
            "session_id": "", "split": "train"}


def cached_volume(records: list[dict[str, Any]], cache_dir: Path, transform: Compose | None = None) -> np.ndarray:
    dataset = build_dataset(records, transform or preprocessing(), cache="disk", cache_dir=cache_dir)
    return np.asarray(dataset[0]["image"][0])


@pytest.mark.parametrize("validated", [True, False], ids=["hash_from_validation", "hash_computed_by_the_cache"])
def test_scan_replaced_at_the_same_path_with_the_same_size_and_mtime_is_recomputed(
        tmp_path: Path, validated: bool) -> None:
    path = tmp_path / "sub-01_T1w.nii"
    first = write_scan(path, seed=0)
    before = os.stat(path)

    def records() -> list[dict[str, Any]]:
        return ensure_valid([record(path)], progress=False) if validated else [record(path)]

    np.testing.assert_array_equal(cached_volume(records(), tmp_path / "cache"), first)
    second = write_scan(path, seed=1)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(cached_volume(records(), tmp_path / "cache"), second)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_hash_from_validation_is_not_trusted_once_the_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "scan.nii"
    write_scan(path, seed=0)
    [validated] = ensure_valid([record(path)], progress=False)
    assert validated[CONTENT_KEY].file_sha256
    second = write_scan(path, seed=1)
    os.utime(path, ns=(0, validated[CONTENT_KEY].mtime_ns + 1_000_000_000))
    np.testing.assert_array_equal(cached_volume([validated], tmp_path / "cache"), second)


def test_one_entry_serves_copies_and_other_labels_but_not_other_preprocessing(tmp_path: Path) -> None:
    write_scan(tmp_path / "a.nii", seed=0)
    (tmp_path / "b.nii").write_bytes((tmp_path / "a.nii").read_bytes())
    cache_dir = tmp_path / "cache"
    stage1 = build_dataset([record(tmp_path / "a.nii", label=1)], preprocessing(), cache="disk", cache_dir=cache_dir)
    stage2 = build_dataset([record(tmp_path / "b.nii", label=0, participant="sub-02")], preprocessing(),
                           cache="disk", cache_dir=cache_dir)
    first, second = stage1[0], stage2[0]
    assert (first["label"], first["path"]) == (1, str(tmp_path / "a.nii"))
    assert (second["label"], second["participant_id"], second["path"]) == (0, "sub-02", str(tmp_path / "b.nii"))
    assert len(list(cache_dir.glob("*.pt"))) == 1
    resized = cached_volume([record(tmp_path / "a.nii")], cache_dir, preprocessing(size=4))
    assert resized.shape == (4, 4, 4)
    assert len(list(cache_dir.glob("*.pt"))) == 2
