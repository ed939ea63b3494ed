"""Each kind of broken input scan yields its own clear message, and all are reported together."""

from __future__ import annotations

import gzip
import io
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from alz_monai.data import validate
from alz_monai.data.dataset import file_sha256
from alz_monai.data.records import CONTENT_KEY
from alz_monai.data.validate import check_records, ensure_valid, validate_records
from alz_monai.errors import DataError

CLASSES = ("CN", "AD")


def save_nifti(path: Path, data: np.ndarray, zooms: tuple[float, ...] | None = None) -> Path:
    image = nib.Nifti1Image(data, np.eye(4))
    if zooms is not None:
        image.header["pixdim"][1 : 1 + len(zooms)] = zooms
    nib.save(image, path)
    return path


def random_volume(shape: tuple[int, ...] = (12, 12, 12)) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def record(path: Path, label: object = 1) -> dict:
    return {"image": str(path), "label": label, "label_name": "AD", "participant_id": path.name, "split": ""}


def problems_of(path: Path, **options: object) -> list[str]:
    return validate_records([record(path)], CLASSES, progress=False, **options)


def test_valid_scans_pass(tmp_path: Path) -> None:
    scans = [
        save_nifti(tmp_path / "a.nii.gz", random_volume()),
        save_nifti(tmp_path / "b.nii", random_volume((8, 8, 8, 1))),
        save_nifti(tmp_path / "c.nii.gz", np.arange(512, dtype=np.int16).reshape(8, 8, 8)),
    ]
    ensure_valid([record(scan) for scan in scans], CLASSES)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.nii.gz"
    assert problems_of(path) == [f"{path}: file does not exist; check the path or remove it from the table"]


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.nii.gz"
    path.touch()
    assert problems_of(path) == [f"{path}: file is empty (0 bytes); re-export it or remove it from the table"]


@pytest.mark.parametrize("keep_fraction", [0.5, 0.02])  # cut in the voxel data, and inside the header
def test_truncated_gzip(tmp_path: Path, keep_fraction: float) -> None:
    whole = save_nifti(tmp_path / "whole.nii.gz", random_volume((16, 16, 16))).read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(whole[: int(len(whole) * keep_fraction)])
    assert problems_of(path) == [
        f"{path}: file is truncated (gzip stream ended early); re-export it or remove it from the table"
    ]


def test_truncated_uncompressed_data(tmp_path: Path) -> None:
    whole = save_nifti(tmp_path / "whole.nii", random_volume()).read_bytes()
    path = tmp_path / "cut.nii"
    path.write_bytes(whole[: len(whole) // 2])
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: voxel data cannot be read, the file is probably truncated (")
    assert problems_of(path, read_voxels=False) == [], "header-only checks cannot see truncated data"


def test_random_bytes_named_nifti(tmp_path: Path) -> None:
    path = tmp_path / "noise.nii"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: cannot be read as a NIfTI image (")
    assert problem.endswith("re-export it or remove it from the table")


def test_absurd_header_dimensions_reported_without_reading(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as handle:
        header.write_to(handle)
        handle.write(bytes(int(header.get_data_offset()) - handle.tell()) + bytes(64))
    started = time.perf_counter()
    [problem] = problems_of(path)
    assert time.perf_counter() - started < 5
    assert problem.startswith(f"{path}: header claims shape (30000, 30000, 30000) = 27,000,000,000,000 voxels")
    assert "more than max_voxels=1,073,741,824" in problem


@pytest.mark.parametrize(
    ("shape", "described"),
    [((16, 16), "(16, 16)"), ((4, 4, 4, 1, 2), "(4, 4, 4, 1, 2)"), ((6, 6, 6, 2), "(6, 6, 6, 2)")],
)
def test_wrong_dimensionality(tmp_path: Path, shape: tuple[int, ...], described: str) -> None:
    path = save_nifti(tmp_path / "odd.nii.gz", random_volume(shape))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: image has shape {described}; expected one 3D volume")


@pytest.mark.parametrize(("value", "described"), [(np.nan, "are NaN"), (np.inf, "are infinite (Inf)")])
def test_non_finite_voxels(tmp_path: Path, value: float, described: str) -> None:
    data = random_volume()
    data[1, 2, 3] = data[4, 5, 6] = value
    path = save_nifti(tmp_path / "bad.nii.gz", data)
    assert problems_of(path) == [f"{path}: 2 voxels {described}; re-export it or remove it from the table"]


@pytest.mark.parametrize("value", [0.0, 7.5])
def test_constant_volume(tmp_path: Path, value: float) -> None:
    path = save_nifti(tmp_path / "flat.nii.gz", np.full((10, 10, 10), value, dtype=np.float32))
    expected = f"{path}: every voxel is {value:g} (constant volume, no image content); re-export it or remove it"
    assert problems_of(path) == [expected + " from the table"]


@pytest.mark.parametrize("zooms", [(1.0, 0.0, 1.0), (1.0, 1.0, float("nan")), (-1.0, 1.0, 1.0)])
def test_bad_voxel_sizes(tmp_path: Path, zooms: tuple[float, ...]) -> None:
    path = save_nifti(tmp_path / "zooms.nii", random_volume(), zooms=zooms)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: voxel sizes ") and "must be positive numbers" in problem


def test_unknown_label_and_duplicate_path(tmp_path: Path) -> None:
    path = save_nifti(tmp_path / "ok.nii.gz", random_volume())
    records = [record(path, label=2), record(path), record(Path(os.path.relpath(path)))]
    assert validate_records(records, CLASSES, progress=False) == [
        f"{path}: label 2 is unknown (classes: 0=CN, 1=AD); fix the label in the source",
        f"{path}: listed twice (records 1 and 2); remove the duplicate",
        f"{os.path.relpath(path)}: listed twice (records 1 and 3); remove the duplicate",
    ]


def test_all_problems_reported_in_one_error(tmp_path: Path) -> None:
    good = save_nifti(tmp_path / "good.nii.gz", random_volume())
    flat = save_nifti(tmp_path / "flat.nii.gz", np.zeros((8, 8, 8), dtype=np.float32))
    flat_2d = save_nifti(tmp_path / "flat2d.nii.gz", np.zeros((8, 8), dtype=np.float32))
    records = [record(good), record(tmp_path / "missing.nii"), record(flat), record(flat_2d, label="AD")]
    with pytest.raises(DataError) as caught:
        ensure_valid(records, CLASSES, progress=False)
    message = str(caught.value)
    assert message.startswith("4 problems in the 4 input scans:\n")
    for fragment in ("missing.nii: file does not exist", "flat.nii.gz: every voxel is 0", "flat2d.nii.gz: image has"):
        assert fragment in message
    assert "label 'AD' is unknown" in message
    assert "good.nii.gz" not in message


def test_foreground_follows_the_callers_fraction(tmp_path: Path) -> None:
    """A background of 150 around a head of 1000: above 0.1 x 1000 (the whole field of view, a warning), below
    0.2 x 1000 (a proper background)."""
    data = np.full((12, 12, 12), 150.0, np.float32)
    data[3:9, 3:9, 3:9] = 1000.0
    path = save_nifti(tmp_path / "background.nii.gz", data)
    [warning] = check_records([record(path)], CLASSES, progress=False, foreground_fraction=0.1).warnings
    assert warning.startswith(f"{path}: 100.0% of the voxels are above the foreground threshold 100 (0.1 x")
    assert not check_records([record(path)], CLASSES, progress=False, foreground_fraction=0.2).warnings


@pytest.mark.parametrize(("bright", "expected"), [(1, "only 1 voxel is above"), (2, None)])
def test_single_foreground_voxel_is_found_across_slabs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       bright: int, expected: str | None) -> None:
    """Zeros with one or two bright voxels, in different slabs: one is too little to normalise, two suffice."""
    monkeypatch.setattr(validate, "_SLAB_VOXELS", 10 * 10)  # one slice per slab
    data = np.zeros((10, 10, 10), np.float32)
    data[5, 5, 2] = 1.0
    if bright == 2:
        data[5, 5, 7] = 1.0
    problems = problems_of(save_nifti(tmp_path / "dots.nii", data))
    assert [expected in problem for problem in problems] == ([True] if expected else [])


def test_content_hashes_follow_the_voxels_not_the_encoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The voxel hash is of the float32 volume the pipeline sees: the same for an int16 file and its float32
    copy with another affine, whatever the slab size; the file hash is the cache's hash of the file's bytes."""
    data = np.arange(1000, dtype=np.int16).reshape(10, 10, 10)
    as_int = save_nifti(tmp_path / "int.nii.gz", data)
    image = nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    as_float = tmp_path / "float.nii"
    nib.save(image, as_float)
    records = ensure_valid([record(as_int), record(as_float)], CLASSES, progress=False)
    first, second = (item[CONTENT_KEY] for item in records)
    assert first.voxel_sha256 == second.voxel_sha256
    assert (first.file_sha256, second.file_sha256) == (file_sha256(as_int), file_sha256(as_float))
    assert (first.size, first.mtime_ns) == (os.stat(as_int).st_size, os.stat(as_int).st_mtime_ns)
    monkeypatch.setattr(validate, "_SLAB_VOXELS", 10 * 10 * 3)
    [again] = ensure_valid([record(as_int)], CLASSES, progress=False)
    assert again[CONTENT_KEY] == first


def test_headers_only_checks_the_affine_and_hashes_nothing(tmp_path: Path) -> None:
    path = save_nifti(tmp_path / "flat_affine.nii.gz", random_volume())
    header_bytes = gzip.decompress(path.read_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(header_bytes), check=False)
    header["srow_z"] = header["srow_y"]
    path.write_bytes(gzip.compress(header.binaryblock + header_bytes[header.sizeof_hdr:]))
    report = check_records([record(path)], CLASSES, progress=False, read_voxels=False)
    [problem] = report.errors
    assert problem.startswith(f"{path}: the affine (from the sform, sform_code 2) is singular")
    assert CONTENT_KEY not in report.records[0]


def test_corrupt_gzip_trailer_is_found(tmp_path: Path) -> None:
    """A flipped byte in the CRC at the end: the voxels decode, the check at the end of the gzip stream fails."""
    path = save_nifti(tmp_path / "crc.nii.gz", random_volume())
    damaged = bytearray(path.read_bytes())
    damaged[-5] ^= 0xFF
    path.write_bytes(bytes(damaged))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: gzip data is corrupt (CRC check failed")
    assert problem.endswith("; re-export it or remove it from the table")
