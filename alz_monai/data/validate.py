"""Check every scan before training or evaluation, so a broken file fails the run up front with a clear message.

A broken scan is reported, never replaced: silently training or scoring on blank volumes would bias results.
Headers are checked before any voxel is read, so a corrupt header claiming an enormous volume costs nothing.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.analyze import AnalyzeHeader
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener
from nibabel.spatialimages import HeaderDataError
from tqdm import tqdm

from alz_monai.data.records import DEFAULT_CLASSES
from alz_monai.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_MAX_VOXELS = 1024**3
_SLAB_VOXELS = 1 << 24  # voxels read at a time, bounding memory for large scans
_GZIP_CHUNK_BYTES = 1 << 20
_LOAD_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)
_REMOVE = "re-export it or remove it from the table"


def _gzip_damage(path: str) -> str | None:
    """Why a gzip file cannot be decompressed to its end, or None when it can."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(_GZIP_CHUNK_BYTES):
                pass
    except EOFError:
        return "file is truncated (gzip stream ended early)"
    except (OSError, zlib.error) as error:
        return f"gzip data is corrupt ({error})"
    return None


def _unreadable(path: str, error: BaseException) -> str:
    damage = _gzip_damage(path) if path.lower().endswith(".gz") else None
    if damage:
        return f"{path}: {damage}; {_REMOVE}"
    return f"{path}: cannot be read as a NIfTI image ({error}); {_REMOVE}"


def _stored_voxel_sizes(path: str, image: Any) -> tuple[float, ...]:
    """Voxel sizes as stored: on load nibabel silently turns zero sizes into 1 and negative ones positive."""
    header = image.header
    if isinstance(header, AnalyzeHeader):  # NIfTI-1/2 and Analyze
        with ImageOpener(path) as stream:
            header = type(header).from_fileobj(stream, check=False)
    return tuple(float(size) for size in header.get_zooms()[:3])


def _header_problems(path: str, image: Any, max_voxels: int) -> list[str]:
    shape = tuple(int(size) for size in image.shape)
    problems = []
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        problems.append(
            f"{path}: image has shape {shape}; expected one 3D volume (4D only with a single volume). "
            "Extract the T1 volume or remove it from the table"
        )
    elif min(shape) < 1:
        problems.append(f"{path}: image has shape {shape} with an empty axis; {_REMOVE}")
    voxels = math.prod(shape)
    if voxels > max_voxels:
        dtype = image.get_data_dtype()
        problems.append(
            f"{path}: header claims shape {shape} = {voxels:,} voxels ({voxels * dtype.itemsize:,} bytes of "
            f"{dtype}), more than max_voxels={max_voxels:,}; the header is probably corrupt: {_REMOVE} "
            "(or raise max_voxels if the scan really is that large)"
        )
    zooms = _stored_voxel_sizes(path, image)
    if not all(math.isfinite(size) and size > 0 for size in zooms):
        problems.append(
            f"{path}: voxel sizes {zooms} in the header must be positive numbers; fix pixdim in the header or "
            f"{_REMOVE}"
        )
    return problems


def _voxels_are(count: int) -> str:
    return "1 voxel is" if count == 1 else f"{count:,} voxels are"


def _voxel_problems(path: str, image: Any) -> list[str]:
    """Read the data fully, slab by slab, counting non-finite voxels and tracking the value range."""
    shape = image.shape
    slab_depth = max(1, _SLAB_VOXELS // (shape[0] * shape[1]))
    nan_count = inf_count = 0
    low, high = math.inf, -math.inf
    try:
        for start in range(0, shape[2], slab_depth):
            index = (slice(None), slice(None), slice(start, start + slab_depth)) + (0,) * (len(shape) - 3)
            block = np.asarray(image.dataobj[index])
            if block.dtype.kind in "fc":
                nan_mask, inf_mask = np.isnan(block), np.isinf(block)
                nan_count += int(nan_mask.sum())
                inf_count += int(inf_mask.sum())
                block = block[~(nan_mask | inf_mask)]
            if block.size:
                low, high = min(low, block.min().item()), max(high, block.max().item())
    except EOFError:
        return [f"{path}: file is truncated (gzip stream ended early); {_REMOVE}"]
    except (OSError, zlib.error, ValueError) as error:
        return [f"{path}: voxel data cannot be read, the file is probably truncated ({error}); {_REMOVE}"]
    problems = []
    if nan_count:
        problems.append(f"{path}: {_voxels_are(nan_count)} NaN; {_REMOVE}")
    if inf_count:
        problems.append(f"{path}: {_voxels_are(inf_count)} infinite (Inf); {_REMOVE}")
    if low == high:
        problems.append(f"{path}: every voxel is {low:g} (constant volume, no image content); {_REMOVE}")
    return problems


def _scan_problems(path: str, *, read_voxels: bool, max_voxels: int) -> list[str]:
    """Problems of one file, from cheapest to most expensive check; stops where further checks are meaningless."""
    if not os.path.exists(path):
        return [f"{path}: file does not exist; check the path or remove it from the table"]
    if not os.path.isfile(path):
        return [f"{path}: is not a file; point the table at the scan file itself"]
    if os.path.getsize(path) == 0:
        return [f"{path}: file is empty (0 bytes); {_REMOVE}"]
    try:
        image = nib.load(path, mmap=False, keep_file_open=True)  # slabs read on from where the last one ended
    except _LOAD_ERRORS as error:
        return [_unreadable(path, error)]
    problems = _header_problems(path, image, max_voxels)
    if problems or not read_voxels:
        return problems
    return _voxel_problems(path, image)


def _label_problem(record: dict[str, Any], classes: Sequence[str]) -> str | None:
    label = record.get("label")
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(classes):
        return None
    choices = ", ".join(f"{index}={name}" for index, name in enumerate(classes))
    return f"{record['image']}: label {label!r} is unknown (classes: {choices}); fix the label in the source"


def validate_records(
    records: Sequence[dict[str, Any]],
    classes: Sequence[str] = DEFAULT_CLASSES,
    *,
    read_voxels: bool = True,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    progress: bool = True,
    labelled: bool = True,
) -> list[str]:
    """Every problem of every record (labels, duplicate paths, files, headers, voxels), in record order.

    ``labelled=False`` skips the label check, for scans to run inference on.
    """
    first_image_of: dict[str, str] = {}
    for record in records:
        first_image_of.setdefault(os.path.realpath(record["image"]), record["image"])
    check = partial(_scan_problems, read_voxels=read_voxels, max_voxels=max_voxels)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(check, first_image_of.values())
        progress_bar = tqdm(
            results, total=len(first_image_of), desc="Checking scans", unit="scan", disable=not progress
        )
        file_problems = dict(zip(first_image_of, progress_bar))
    problems: list[str] = []
    first_position: dict[str, int] = {}
    for position, record in enumerate(records, start=1):
        label_problem = _label_problem(record, classes) if labelled else None
        if label_problem:
            problems.append(label_problem)
        real_path = os.path.realpath(record["image"])
        if real_path in first_position:
            problems.append(
                f"{record['image']}: listed twice (records {first_position[real_path]} and {position}); "
                "remove the duplicate"
            )
            continue
        first_position[real_path] = position
        problems.extend(file_problems[real_path])
    return problems


def ensure_valid(
    records: Sequence[dict[str, Any]], classes: Sequence[str] = DEFAULT_CLASSES, **options: Any
) -> None:
    """Raise one :class:`DataError` listing every problem :func:`validate_records` finds."""
    problems = validate_records(records, classes, **options)
    if problems:
        raise DataError(
            problems,
            source=f"the {len(records)} input scans",
            hint="Fix or remove the listed scans (do not replace them with blank volumes), then run again.",
        )
    logger.info("All %d scans passed validation", len(records))
