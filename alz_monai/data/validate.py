"""Check every scan before training or evaluation, so a bad file fails the run up front with a clear message.

A bad scan is reported, never replaced: silently training or scoring on blank volumes would bias results. The
checks look at what the pipeline will compute, not only at what the file stores: voxels after the header's
scaling (scl_slope, scl_inter) in float32, the pipeline's working type (MONAI's LoadImage casts nibabel's scaled
data to it), the affine nibabel and MONAI use (the sform when sform_code > 0, else the qform when qform_code > 0,
else one built from pixdim), and the foreground that ``ForegroundThreshold`` selects with the run's
``foreground_fraction``. Each file is read once: the bytes are hashed (the persistent cache's key) and decoded
from memory, and the float32 voxels are hashed (the leakage guard's content check).

Errors (the run stops; fix or remove the scan):

- missing, empty, unreadable, truncated or corrupt file; not one 3D volume; more voxels than ``max_voxels``;
- pixdim voxel sizes that are not positive numbers;
- an affine with NaN/Inf entries, or a singular one (zero, or axes that collapse): resampling is undefined;
- voxel sizes of that affine outside ``VOXEL_SIZE_RANGE_MM`` (0.05 to 20 mm). In-vivo and ex-vivo brain MRI lie
  well inside; sizes outside mean wrong units (xyzt_units in metres or microns) or a corrupt header, and
  resampling to the bundle's pixdim would give a volume of a few voxels or an enormous one;
- NaN or Inf voxels as stored, or Inf after scaling to float32;
- values beyond +-``MAX_MAGNITUDE`` (7.9e28) in float32: preprocessing sums voxels in float32 (interpolation,
  the foreground mean), and the bound keeps a sum over 2^32 voxels finite, more than any scan holds. Beyond it a
  large volume's sums overflow to Inf and the volume becomes NaN (int16 data with scl_slope 1e30 in a 1 mm scan);
  no MRI intensity comes near it;
- a constant volume; no voxel (or only one) above the foreground threshold (e.g. every value <= 0 over a zero
  background): cropping and normalisation have nothing to work on. With a positive 99.5th percentile at least
  0.5% of the voxels exceed the threshold, so this happens only when that percentile is <= 0.

Warnings (logged and returned; the scan is used as it is):

- sform_code and qform_code both 0: the header has no orientation, nibabel assumes one from pixdim alone, so left
  and right may be swapped relative to other scans;
- more than ``FULL_FOREGROUND_SHARE`` (99%) of the voxels above the foreground threshold (e.g. a constant positive
  background): cropping keeps the whole field of view and the normalisation statistics include the background.

Headers are checked before any voxel is decoded, so a corrupt header claiming an enormous volume costs nothing.

With a validation store (``store_dir``, see :class:`ValidationStore`) a scan whose bytes passed the same checks
before is not decoded again: reading and hashing its bytes is several times cheaper than decoding it, and both
bundles and every evaluation validate the same files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import os
import sys
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from tqdm import tqdm

from alz_monai.data.records import CONTENT_KEY, DEFAULT_CLASSES
from alz_monai.data.transforms import ForegroundThreshold
from alz_monai.errors import DataError
from alz_monai.fileio import atomic_write_json

logger = logging.getLogger(__name__)

# The code of the checks (this module and ForegroundThreshold's): any change to it retires what a validation store
# holds, with no version number to forget to bump.
_CHECKS_SHA256 = hashlib.sha256(b"".join(Path(module.__file__).read_bytes() for module in (
    sys.modules[__name__], sys.modules[ForegroundThreshold.__module__]) if module.__file__)).hexdigest()
DEFAULT_MAX_VOXELS = 1024**3
DEFAULT_FOREGROUND_FRACTION = 0.1  # the bundles' foreground_fraction
WORKING_DTYPE = np.float32
MAX_MAGNITUDE = float(np.finfo(WORKING_DTYPE).max) / 2**32  # a float32 sum of 2^32 such values stays finite
VOXEL_SIZE_RANGE_MM = (0.05, 20.0)
FULL_FOREGROUND_SHARE = 0.99
SINGULAR_RATIO = 1e-6  # smallest to largest singular value of the affine's 3x3 part
_SLAB_VOXELS = 1 << 24  # voxels decoded at a time, bounding memory for large scans
_SAMPLE_VOXELS = 1 << 18  # voxels sampled for the foreground threshold's percentile
_HEADER_CLASSES = (nib.Nifti1Image, nib.Nifti2Image)
_LOAD_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)
_REMOVE = "re-export it or remove it from the table"
_TRUNCATED = "file is truncated (gzip stream ended early)"


@dataclass(frozen=True)
class ScanContent:
    """What a scan held when validation read it: the file's stat, a hash of its bytes and of its float32 voxels.

    ``size`` and ``mtime_ns`` tell later readers whether ``file_sha256`` still describes the file.
    """

    size: int
    mtime_ns: int
    file_sha256: str
    voxel_sha256: str


@dataclass
class _ScanCheck:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    content: ScanContent | None = None
    from_store: bool = False  # taken from a ValidationStore instead of decoded


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(char in "0123456789abcdef" for char in value)


class ValidationStore:
    """Results of the per-file checks of scans that passed (perhaps with warnings), kept in a folder by content.

    One small JSON file per scan, named by the SHA-256 of the file's bytes and a fingerprint of everything that
    decides the result: the checks' code, nibabel's version, the module's limits, ``max_voxels`` and
    ``foreground_fraction`` (classes and labels do not matter: record checks run every time). A changed file has
    another hash, so it is never served an old result. Failing scans are not stored: they are checked again on
    every run, so their messages follow the file and the checks. Messages are stored without the file's path
    and given the current one, since the same bytes may lie at another path. An entry that cannot be read or
    does not describe the file is ignored, and the scan's fresh result replaces it. Entries are written
    atomically, so runs sharing the folder may write the same entry side by side. Only voxel checks use it:
    header-only checks read less than hashing the file would.
    """

    def __init__(self, folder: str | Path, *, max_voxels: int, foreground_fraction: float) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_failed = False
        description = {
            "checks": _CHECKS_SHA256, "nibabel": nib.__version__, "working_dtype": np.dtype(WORKING_DTYPE).name,
            "max_magnitude": MAX_MAGNITUDE, "voxel_size_range_mm": VOXEL_SIZE_RANGE_MM,
            "full_foreground_share": FULL_FOREGROUND_SHARE, "singular_ratio": SINGULAR_RATIO,
            "sample_voxels": _SAMPLE_VOXELS, "max_voxels": max_voxels, "foreground_fraction": foreground_fraction,
        }
        self.fingerprint = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]

    def entry_path(self, file_sha256: str) -> Path:
        return self.folder / f"{file_sha256}-{self.fingerprint}.json"

    def load(self, path: str, file_sha256: str, status: os.stat_result) -> _ScanCheck | None:
        """The stored result of the file with these bytes, for ``path`` as it is now; None when there is none."""
        entry_path = self.entry_path(file_sha256)
        try:
            entry = json.loads(entry_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning("validation store entry %s cannot be read (%s); checking %s again", entry_path, error, path)
            return None
        expected = {"file_sha256": file_sha256, "fingerprint": self.fingerprint, "size": status.st_size}
        warnings = entry.get("warnings") if isinstance(entry, dict) else None
        if not (isinstance(entry, dict) and all(entry.get(key) == value for key, value in expected.items())
                and _is_sha256(entry.get("voxel_sha256")) and isinstance(warnings, list)
                and all(isinstance(warning, str) for warning in warnings)):
            logger.warning("validation store entry %s does not describe %s; checking it again", entry_path, path)
            return None
        content = ScanContent(status.st_size, status.st_mtime_ns, file_sha256, entry["voxel_sha256"])
        return _ScanCheck([], [f"{path}: {warning}" for warning in warnings], content, from_store=True)

    def save(self, path: str, content: ScanContent, warnings: Sequence[str]) -> None:
        """Store the result of a scan at ``path`` that passed with these warnings."""
        prefix = f"{path}: "
        entry = {"file_sha256": content.file_sha256, "fingerprint": self.fingerprint, "size": content.size,
                 "voxel_sha256": content.voxel_sha256,
                 "warnings": [warning.removeprefix(prefix) for warning in warnings]}
        try:
            atomic_write_json(self.entry_path(content.file_sha256), entry)
        except OSError as error:  # a speed-up only: a full or read-only disk costs the next run its decoding
            if not self._write_failed:
                logger.warning("validation store %s: cannot write (%s); later runs check these scans again",
                               self.folder, error.strerror or error)
            self._write_failed = True

    @classmethod
    def open(cls, folder: str | Path, **settings: Any) -> ValidationStore | None:
        """The store in ``folder``, or None (every scan decoded, one warning) when the folder cannot be made."""
        try:
            return cls(folder, **settings)
        except OSError as error:
            logger.warning("validation store %s cannot be created (%s): every scan is read and checked; point "
                           "validation_store at a writable folder", folder, error.strerror or error)
            return None


@dataclass(frozen=True)
class ValidationReport:
    """Problems per record, in record order, and copies of the records with their ``CONTENT_KEY`` set."""

    records: list[dict[str, Any]]
    record_errors: list[list[str]]
    record_warnings: list[list[str]]

    @property
    def errors(self) -> list[str]:
        return [problem for problems in self.record_errors for problem in problems]

    @property
    def warnings(self) -> list[str]:
        return [problem for problems in self.record_warnings for problem in problems]


def _read_error(path: str, error: BaseException) -> str:
    if isinstance(error, EOFError):
        return f"{path}: {_TRUNCATED}; {_REMOVE}"
    if isinstance(error, (gzip.BadGzipFile, zlib.error)):
        return f"{path}: gzip data is corrupt ({error}); {_REMOVE}"
    return f"{path}: cannot be read as a NIfTI image ({error}); {_REMOVE}"


def _open_image(path: str, stream: io.BufferedIOBase) -> tuple[Any, Any, io.BufferedIOBase]:
    """The NIfTI-1 or NIfTI-2 image in ``stream`` (decompressed like nibabel does, by the .gz suffix), its header
    as stored (nibabel's checks silently repair some fields on load) and the stream the image reads from."""
    if path.lower().endswith(".gz"):
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
    start = stream.read(max(klass.header_class.sizeof_hdr for klass in _HEADER_CLASSES))
    stream.seek(0)
    for klass in _HEADER_CLASSES:
        size = klass.header_class.sizeof_hdr
        if len(start) >= size and klass.header_class.may_contain_header(start[:size]):
            return klass.from_stream(stream), klass.header_class(start[:size], check=False), stream
    raise ImageFileError("no NIfTI-1 or NIfTI-2 header at the start of the file")


def _header_problems(path: str, image: Any, stored_header: Any, max_voxels: int) -> list[str]:
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
    zooms = tuple(float(size) for size in stored_header.get_zooms()[:3])
    if not all(math.isfinite(size) and size > 0 for size in zooms):
        problems.append(
            f"{path}: voxel sizes {zooms} in the header must be positive numbers; fix pixdim in the header, "
            f"{_REMOVE}"
        )
    return problems


def _affine_source(header: Any) -> str:
    """Which header fields the affine nibabel uses comes from."""
    for form in ("sform", "qform"):
        code = int(header[f"{form}_code"])
        if code > 0:
            return f"the {form}, {form}_code {code}"
    return "pixdim alone, sform_code and qform_code 0"


def _affine_check(path: str, image: Any) -> _ScanCheck:
    """Errors and warnings of the affine the pipeline will use; only called once pixdim is known to be valid."""
    check = _ScanCheck()
    header = image.header
    source = _affine_source(header)
    rotation_zoom = np.asarray(image.affine, dtype=np.float64)[:3, :3]
    if not np.isfinite(image.affine).all():
        check.errors.append(f"{path}: the affine (from {source}) has NaN or Inf entries; fix the header's "
                            f"srow_x/y/z or quatern/qoffset fields, {_REMOVE}")
        return check
    singular_values = np.linalg.svd(rotation_zoom, compute_uv=False)
    if singular_values[-1] <= SINGULAR_RATIO * singular_values[0]:
        described = "zero" if singular_values[0] == 0 else "singular (its axes collapse onto a plane or line)"
        check.errors.append(f"{path}: the affine (from {source}) is {described}; fix the header's orientation "
                            f"(or set its code to 0 to use the other form), {_REMOVE}")
        return check
    sizes = tuple(float(size) for size in np.linalg.norm(rotation_zoom, axis=0))
    low, high = VOXEL_SIZE_RANGE_MM
    if not all(low <= size <= high for size in sizes):
        units = header.get_xyzt_units()[0]
        check.errors.append(
            f"{path}: voxel sizes {tuple(round(size, 6) for size in sizes)} (from {source}; units: {units}) are "
            f"outside {low:g}-{high:g} mm, implausible for brain MRI; fix pixdim, the affine or xyzt_units in the "
            f"header, {_REMOVE}"
        )
    if int(header["sform_code"]) <= 0 and int(header["qform_code"]) <= 0:
        orientation = "".join(nib.aff2axcodes(image.affine))
        check.warnings.append(
            f"{path}: sform_code and qform_code are 0, the header has no orientation; it is taken as {orientation} "
            "from pixdim alone, so left and right may be swapped; re-export it with its orientation"
        )
    return check


def _voxels_are(count: int) -> str:
    return "1 voxel is" if count == 1 else f"{count:,} voxels are"


def _scaling(image: Any) -> str:
    slope, inter = image.dataobj.slope, image.dataobj.inter
    if (slope, inter) == (1.0, 0.0):
        return ""
    return f" after the header's scaling (scl_slope={slope:g}, scl_inter={inter:g})"


@dataclass
class _VoxelStats:
    """Running statistics of the float32 voxels, gathered slab by slab."""

    nan: int = 0
    inf: int = 0
    overflow: int = 0
    low: float = math.inf
    high: float = -math.inf
    second: float = -math.inf  # the second largest voxel value (equal to ``high`` when that occurs twice)
    samples: list[np.ndarray] = field(default_factory=list)

    def add(self, stored: np.ndarray, working: np.ndarray, sample_step: int) -> None:
        if not np.isfinite(working).all():
            stored_inf = int(np.isinf(stored).sum()) if stored.dtype.kind in "fc" else 0
            self.nan += int(np.isnan(stored).sum()) if stored.dtype.kind in "fc" else 0
            self.inf += stored_inf
            self.overflow += int(np.isinf(working).sum()) - stored_inf
            return
        flat = working.ravel(order="K")
        position = int(flat.argmax())
        rest = [float(part.max()) for part in (flat[:position], flat[position + 1 :]) if part.size]
        self.high, self.second = sorted([self.high, self.second, float(flat[position]), *rest])[:-3:-1]
        self.low = min(self.low, float(flat.min()))
        self.samples.append(flat[::sample_step])

    @property
    def finite(self) -> bool:
        return not (self.nan or self.inf or self.overflow)


def _voxel_check(path: str, image: Any, foreground_fraction: float) -> tuple[list[str], list[str], str | None]:
    """Decode the voxels slab by slab as the pipeline will see them; errors, warnings and the float32 hash."""
    shape = image.shape
    slab_depth = max(1, _SLAB_VOXELS // (shape[0] * shape[1]))
    sample_step = max(1, math.prod(shape[:3]) // _SAMPLE_VOXELS)
    stats = _VoxelStats()
    digest = hashlib.sha256(repr(tuple(shape[:3])).encode())
    try:
        for start in range(0, shape[2], slab_depth):
            index = (slice(None), slice(None), slice(start, start + slab_depth)) + (0,) * (len(shape) - 3)
            stored = np.asarray(image.dataobj[index])
            with np.errstate(over="ignore", invalid="ignore"):
                working = np.asfortranarray(stored, dtype=WORKING_DTYPE)
            stats.add(stored, working, sample_step)
            digest.update(working.T)  # the Fortran-ordered slab as bytes: slabs concatenate to the whole volume
    except EOFError:
        return [f"{path}: {_TRUNCATED}; {_REMOVE}"], [], None
    except (OSError, zlib.error, ValueError) as error:
        return [f"{path}: voxel data cannot be read, the file is probably truncated ({error}); {_REMOVE}"], [], None
    if not stats.finite:
        scaling = _scaling(image)
        errors = []
        if stats.nan:
            errors.append(f"{path}: {_voxels_are(stats.nan)} NaN{scaling}; {_REMOVE}")
        if stats.inf:
            errors.append(f"{path}: {_voxels_are(stats.inf)} infinite (Inf){scaling}; {_REMOVE}")
        if stats.overflow:
            errors.append(f"{path}: {_voxels_are(stats.overflow)} beyond the float32 range{scaling} and become Inf "
                          f"in preprocessing; fix scl_slope/scl_inter in the header, {_REMOVE}")
        return errors, [], None
    if stats.low == stats.high:
        return [f"{path}: every voxel is {stats.low:g} (constant volume, no image content); {_REMOVE}"], [], None
    magnitude = max(abs(stats.low), abs(stats.high))
    if magnitude > MAX_MAGNITUDE:
        return [f"{path}: values reach {magnitude:.3g}{_scaling(image)}, beyond +-{MAX_MAGNITUDE:.2g}: float32 "
                f"sums over the volume in preprocessing can overflow to Inf and make it NaN; fix scl_slope/scl_inter "
                f"in the header, {_REMOVE}"], [], None
    sample = np.concatenate(stats.samples)
    selector = ForegroundThreshold(foreground_fraction)
    threshold = selector.threshold(sample)
    described = (f"the foreground threshold {threshold:.4g} ({foreground_fraction:g} x the 99.5th percentile, "
                 f"foreground_fraction={foreground_fraction:g})")
    if stats.second <= threshold:
        count = "no voxel is" if stats.high <= threshold else "only 1 voxel is"
        return [f"{path}: {count} above {described}, so there is no head to crop and normalise; check the "
                f"intensities (e.g. all values <= 0), {_REMOVE}"], [], digest.hexdigest()
    share = float(np.mean(sample > threshold))
    warnings = []
    if share > FULL_FOREGROUND_SHARE:
        warnings.append(f"{path}: {share:.1%} of the voxels are above {described}, so the whole field of view is "
                        "foreground (e.g. a constant positive background); cropping keeps all of it and the "
                        "normalisation includes the background; lower foreground_fraction or re-export it with a "
                        "zero background")
    return [], warnings, digest.hexdigest()


def _scan_check(path: str, *, read_voxels: bool, max_voxels: int, foreground_fraction: float,
                store: ValidationStore | None = None) -> _ScanCheck:
    """Problems of one file, from cheapest to most expensive check; stops where further checks are meaningless.

    With ``store``, a file whose bytes are in it is not decoded, and a file that passed is added to it."""
    if not os.path.exists(path):
        return _ScanCheck([f"{path}: file does not exist; check the path or remove it from the table"])
    if not os.path.isfile(path):
        return _ScanCheck([f"{path}: is not a file; point the table at the scan file itself"])
    with open(path, "rb") as handle:
        status = os.fstat(handle.fileno())
        if status.st_size == 0:
            return _ScanCheck([f"{path}: file is empty (0 bytes); {_REMOVE}"])
        data = handle.read() if read_voxels else None
        file_sha256 = None if data is None else hashlib.sha256(data).hexdigest()
        if store is not None and file_sha256 is not None:
            stored = store.load(path, file_sha256, status)
            if stored is not None:
                return stored
        try:
            image, stored_header, stream = _open_image(path, io.BytesIO(data) if data is not None else handle)
        except _LOAD_ERRORS as error:
            return _ScanCheck([_read_error(path, error)])
        header_problems = _header_problems(path, image, stored_header, max_voxels)
        if header_problems:
            return _ScanCheck(header_problems)
        check = _affine_check(path, image)
        if file_sha256 is None:
            return check
    errors, warnings, voxel_sha256 = _voxel_check(path, image, foreground_fraction)
    if not errors and path.lower().endswith(".gz"):
        try:  # reading to the end checks the gzip trailer's CRC and length
            while stream.read(1 << 20):
                pass
        except (EOFError, OSError, zlib.error) as error:
            errors.append(_read_error(path, error))
    check.errors += errors
    check.warnings += warnings
    if voxel_sha256 is not None:
        check.content = ScanContent(status.st_size, status.st_mtime_ns, file_sha256, voxel_sha256)
    if store is not None and check.content is not None and not check.errors:
        store.save(path, check.content, check.warnings)
    return check


def _label_problem(record: dict[str, Any], classes: Sequence[str]) -> str | None:
    label = record.get("label")
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(classes):
        return None
    choices = ", ".join(f"{index}={name}" for index, name in enumerate(classes))
    return f"{record['image']}: label {label!r} is unknown (classes: {choices}); fix the label in the source"


def check_records(
    records: Sequence[dict[str, Any]],
    classes: Sequence[str] = DEFAULT_CLASSES,
    *,
    read_voxels: bool = True,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    foreground_fraction: float = DEFAULT_FOREGROUND_FRACTION,
    progress: bool = True,
    labelled: bool = True,
    workers: int = 2,
    store_dir: str | Path | None = None,
) -> ValidationReport:
    """Every problem of every record (labels, duplicate paths, files, headers, affines, voxels) in one pass.

    ``labelled=False`` skips the label check, for scans to run inference on; ``foreground_fraction`` is the
    bundle's (see ``ForegroundThreshold``); ``workers`` threads read scans side by side (decompression, hashing
    and numpy release the GIL). ``store_dir``: a :class:`ValidationStore` folder, so that files which passed
    before are not decoded again (with ``read_voxels`` only); the record checks run every time.
    """
    first_image_of: dict[str, str] = {}
    for record in records:
        first_image_of.setdefault(os.path.realpath(record["image"]), record["image"])
    store = (ValidationStore.open(store_dir, max_voxels=max_voxels, foreground_fraction=foreground_fraction)
             if store_dir is not None and read_voxels else None)
    check = partial(_scan_check, read_voxels=read_voxels, max_voxels=max_voxels,
                    foreground_fraction=foreground_fraction, store=store)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(check, first_image_of.values())
        progress_bar = tqdm(
            results, total=len(first_image_of), desc="Checking scans", unit="scan", disable=not progress
        )
        file_checks = dict(zip(first_image_of, progress_bar))
    if store is not None:
        stored = sum(file_check.from_store for file_check in file_checks.values())
        logger.info("validation store %s: %d of %d scans taken from it, %d read and checked", store.folder, stored,
                    len(file_checks), len(file_checks) - stored)
    annotated, record_errors, record_warnings = [], [], []
    first_position: dict[str, int] = {}
    for position, record in enumerate(records, start=1):
        label_problem = _label_problem(record, classes) if labelled else None
        errors = [label_problem] if label_problem else []
        warnings: list[str] = []
        real_path = os.path.realpath(record["image"])
        content = None
        if real_path in first_position:
            errors.append(f"{record['image']}: listed twice (records {first_position[real_path]} and {position}); "
                          "remove the duplicate")
        else:
            first_position[real_path] = position
            file_check = file_checks[real_path]
            errors += file_check.errors
            warnings += file_check.warnings
            content = file_check.content
        annotated.append({**record, CONTENT_KEY: content} if content else dict(record))
        record_errors.append(errors)
        record_warnings.append(warnings)
    return ValidationReport(annotated, record_errors, record_warnings)


def log_warnings(report: ValidationReport) -> None:
    """One warning listing every scan that is used despite a doubtful property."""
    if report.warnings:
        count = len(report.warnings)
        logger.warning("%d warning%s about the %d input scans (they are used as they are):\n%s", count,
                       "" if count == 1 else "s", len(report.records),
                       "\n".join(f"  - {warning}" for warning in report.warnings))


def validate_records(
    records: Sequence[dict[str, Any]], classes: Sequence[str] = DEFAULT_CLASSES, **options: Any
) -> list[str]:
    """The errors :func:`check_records` finds, in record order; its warnings are logged."""
    report = check_records(records, classes, **options)
    log_warnings(report)
    return report.errors


def ensure_valid(
    records: Sequence[dict[str, Any]], classes: Sequence[str] = DEFAULT_CLASSES, **options: Any
) -> list[dict[str, Any]]:
    """Raise one :class:`DataError` listing every error :func:`check_records` finds; else the records with their
    ``CONTENT_KEY`` set (the hashes the cache and the leakage guard reuse). Warnings are logged."""
    report = check_records(records, classes, **options)
    log_warnings(report)
    if report.errors:
        raise DataError(
            report.errors,
            source=f"the {len(records)} input scans",
            hint="Fix or remove the listed scans (do not replace them with blank volumes), then run again.",
        )
    logger.info("All %d scans passed validation", len(records))
    return report.records
