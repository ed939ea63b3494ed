"""Raw synthetic T1 scans as a scanner writes them: a whole head with scalp, skull and neck, in a random pose.

The brains come from :func:`alz_monai.data.synth.generate_synthetic_dataset` (skull-stripped, close to MNI space);
this module wraps each in tissue shells following the brain's outer surface (CSF, the two tables of the skull with
the diploe between them, scalp fat, skin), adds a neck with a spinal cord below the head, and places the head in a
scanner frame: a rotation of up to ``ROTATION_MAX_DEG`` about each axis and a shift of up to ``SHIFT_MAX_MM``, a
field of view and voxel size drawn per scan, a smooth receive-coil bias field, Rician noise and an arbitrary
intensity scale. The transform is recorded per scan so that registration can be checked against the truth.

Ground truth. ``derivatives/pose/.../*_pose.json`` holds ``scanner_from_brain``, the 4x4 matrix (RAS millimetres)
taking a point of the brain-only synthetic scan's world into the raw scan's world. The brain-only scans are MNI
space up to that generator's own per-participant head size and per-scan pose, so registering a raw scan to the
template recovers this matrix composed with them; :func:`raw_head` applied to the template itself gives a head
whose matrix is the whole truth (what the registration-error test uses).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import logging
import math
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from monai.transforms import RandBiasField
from scipy import ndimage
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from alz_monai.data.synth import STORAGE_ORIENTATIONS, generate_synthetic_dataset
from alz_monai.fileio import atomic_open, atomic_write_json, atomic_write_text
from alz_monai.preprocess.images import load_scan

__all__ = ["ROTATION_MAX_DEG", "SHIFT_MAX_MM", "RawHead", "generate_raw_dataset", "raw_head", "template_brain"]

logger = logging.getLogger(__name__)

RAW_GENERATOR_VERSION = "1"
ROTATION_MAX_DEG = 20.0
SHIFT_MAX_MM = 30.0
HEAD_BOX_MM = ((-100.0, 100.0), (-135.0, 105.0), (-165.0, 115.0))
"""Template-space box (RAS mm) that holds the head and the top of the neck."""
FIELD_OF_VIEW_MM = ((220.0, 250.0), (240.0, 270.0), (240.0, 270.0))
"""Range of the raw field of view along each scanner axis."""
FIELD_OF_VIEW_DROP_MM = (0.0, 20.0)
"""The field of view's centre lies this far below the head's centre (scanners centre on the head, neck below)."""
VOXEL_SIZE_FACTOR = (1.0, 1.25)
"""Raw voxel size along each axis, relative to the requested spacing."""
INTENSITY_SCALE_RANGE = (0.5, 3.0)
NOISE_FRACTION_RANGE = (0.01, 0.03)
BIAS_COEFFICIENT_RANGE = (0.15, 0.35)
"""Coefficients of MONAI's polynomial bias field (degree 3): stronger than the brain generator's."""

# Shells outside the brain: (outer distance from the brain surface in mm, intensity relative to white matter).
HEAD_SHELLS_MM = ((3.0, 0.12), (5.0, 0.04), (8.0, 0.35), (10.0, 0.04), (14.0, 0.9), (16.0, 0.5))
"""CSF, inner table, diploe, outer table, scalp fat, skin."""
BRAIN_ENVELOPE_SMOOTHING_MM = 4.0
"""The skull follows the brain's outline, not its sulci."""
NECK_TOP_MM = -40.0
NECK_CENTRE_MM = (0.0, -35.0)
NECK_SEMI_AXES_MM = (55.0, 50.0)
NECK_FAT_MM = 4.0
MUSCLE_INTENSITY = 0.45
FAT_INTENSITY = 0.9
CORD_CENTRE_MM = (0.0, -45.0)
CORD_LAYERS_MM = ((5.0, 0.75), (8.0, 0.12), (10.0, 0.04), (16.0, 0.35))
"""Spinal cord, CSF, vertebral cortex, vertebral marrow: (outer radius, intensity)."""
BRAIN_FRACTION_OF_PEAK = 0.15
"""Voxels brighter than this fraction of the brain's 99th percentile are brain (the noise floor is below 5%)."""


@dataclass(frozen=True)
class RawHead:
    """A raw head scan and the truth about how it was posed."""

    image: nib.Nifti1Image
    scanner_from_brain: np.ndarray
    """4x4 RAS matrix taking a point of the input brain's world to the raw scan's world."""
    rotation_deg: tuple[float, ...]
    shift_mm: tuple[float, ...]
    voxel_size_mm: tuple[float, ...]
    axcodes: str


def raw_head(brain: nib.Nifti1Image, rng: np.random.Generator, spacing: float,
             extra: Sequence[nib.Nifti1Image] = ()) -> tuple[RawHead, list[nib.Nifti1Image]]:
    """The raw scan of a head built around ``brain`` (a skull-stripped T1 near MNI space), and ``extra`` volumes
    (e.g. atrophy maps on the brain's grid) moved into the same raw grid without head, bias or noise."""
    head_affine, head_shape = _head_grid(spacing)
    brain_signal = _resample(brain, head_affine, head_shape)
    reference = float(np.percentile(brain_signal[brain_signal > 0], 99))
    envelope = _brain_envelope(brain_signal, reference, spacing)
    signal = np.where(envelope, brain_signal, _head_tissue(envelope, head_affine, head_shape, spacing) * reference)

    rotation = rng.uniform(-ROTATION_MAX_DEG, ROTATION_MAX_DEG, 3)
    shift = rng.uniform(-SHIFT_MAX_MM, SHIFT_MAX_MM, 3)
    centre = (head_affine[:3, :3] @ np.argwhere(envelope).mean(axis=0)) + head_affine[:3, 3]
    scanner_from_brain = np.eye(4)
    scanner_from_brain[:3, :3] = Rotation.from_euler("xyz", rotation, degrees=True).as_matrix()
    scanner_from_brain[:3, 3] = centre + shift - scanner_from_brain[:3, :3] @ centre

    voxel_size = spacing * rng.uniform(*VOXEL_SIZE_FACTOR, 3)
    extent = np.array([rng.uniform(*limits) for limits in FIELD_OF_VIEW_MM])
    shape = np.maximum(np.round(extent / voxel_size).astype(int), 8)
    raw_centre = centre + shift - np.array([0.0, 0.0, rng.uniform(*FIELD_OF_VIEW_DROP_MM)])
    raw_affine = np.diag([*voxel_size, 1.0])
    raw_affine[:3, 3] = raw_centre - voxel_size * (shape - 1) / 2.0
    brain_from_raw = np.linalg.inv(scanner_from_brain) @ raw_affine

    moved = _sample(signal, head_affine, brain_from_raw, shape)
    bias = RandBiasField(degree=3, coeff_range=BIAS_COEFFICIENT_RANGE, prob=1.0)
    bias.set_random_state(int(rng.integers(2**31)))
    moved = np.asarray(bias(moved[np.newaxis]))[0]
    noise_sd = reference * rng.uniform(*NOISE_FRACTION_RANGE)
    moved = np.hypot(moved + noise_sd * rng.standard_normal(shape), noise_sd * rng.standard_normal(shape))
    moved *= rng.uniform(*INTENSITY_SCALE_RANGE) * 1000.0 / reference

    axcodes = STORAGE_ORIENTATIONS[int(rng.integers(len(STORAGE_ORIENTATIONS)))]
    image = _stored(moved, raw_affine, axcodes, np.int16)
    extras = [_stored(_sample(_resample(volume, head_affine, head_shape), head_affine, brain_from_raw, shape),
                      raw_affine, axcodes, np.float32) for volume in extra]
    head = RawHead(image=image, scanner_from_brain=scanner_from_brain, rotation_deg=tuple(map(float, rotation)),
                   shift_mm=tuple(map(float, shift)), voxel_size_mm=tuple(map(float, voxel_size)), axcodes=axcodes)
    return head, extras


def template_brain(spacing: float) -> nib.Nifti1Image:
    """nilearn's MNI152 2009a template (skull-stripped) on a ``spacing`` mm grid: a brain whose ``raw_head``
    matrix is the exact template-to-scanner transform."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=1)
    volume = np.asarray(template.dataobj, dtype=np.float32)
    if spacing > 1.0:  # Gaussian whose FWHM is one output voxel, against aliasing
        volume = ndimage.gaussian_filter(volume, math.sqrt(spacing**2 - 1.0) / (2.0 * math.sqrt(2.0 * math.log(2.0))))
    first = template.affine[:3, 3]
    shape = np.floor((np.array(volume.shape) - 1) / spacing).astype(int) + 1
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = first
    return nib.Nifti1Image(_sample(volume, template.affine, affine, shape), affine)


def generate_raw_dataset(out_dir: str | Path, *, subjects: int = 40, sessions: int = 2,
                         classes: Sequence[str] = ("CN", "AD"), effect: float | None = None, spacing: float = 1.0,
                         seed: int = 0, shuffle_labels: bool = False, workers: int = 1, progress: bool = True,
                         overwrite: bool = False) -> dict[str, Any]:
    """Write a BIDS cohort of raw heads (same participants, labels and atrophy as the brain-only generator with
    these arguments) and return its ``synth_parameters.json``; ``derivatives/pose`` holds the true poses."""
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} is not empty; choose a new or empty folder, or pass "
                              f"--overwrite to write over it")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".brains-", dir=out) as brains_dir:
        brains = Path(brains_dir)
        parameters = generate_synthetic_dataset(
            brains, subjects=subjects, sessions=sessions, classes=classes, effect=effect, spacing=spacing, seed=seed,
            shuffle_labels=shuffle_labels, progress=progress, workers=workers)
        scans = pd.read_csv(brains / "scans.tsv", sep="\t")
        jobs = [_RawJob(brains, out, row["image"], row["atrophy_map"], spacing, seed, index)
                for index, row in scans.iterrows()]
        with tqdm(total=len(jobs), disable=not progress, desc="raw heads", unit="scan") as bar:
            if workers == 1:
                for job in jobs:
                    _write_raw_scan(job)
                    bar.update()
            else:  # spawned: a forked copy of a process with live thread pools can hang
                spawn = multiprocessing.get_context("spawn")
                with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
                    for _ in pool.map(_write_raw_scan, jobs):
                        bar.update()
        for name in ("participants.tsv", "dataset_description.json"):
            shutil.copyfile(brains / name, out / name)
        shutil.copyfile(brains / "derivatives" / "atrophy" / "dataset_description.json",
                        out / "derivatives" / "atrophy" / "dataset_description.json")
    scans["pose_path"] = [_pose_path(image).as_posix() for image in scans["image"]]
    atomic_write_text(out / "scans.tsv", scans.to_csv(sep="\t", index=False))
    parameters["raw"] = {
        "generator": __name__, "generator_version": RAW_GENERATOR_VERSION, "rotation_max_deg": ROTATION_MAX_DEG,
        "shift_max_mm": SHIFT_MAX_MM, "field_of_view_mm": [list(limits) for limits in FIELD_OF_VIEW_MM],
        "voxel_size_factor": list(VOXEL_SIZE_FACTOR), "head_shells_mm": [list(shell) for shell in HEAD_SHELLS_MM],
        "bias_coefficient_range": list(BIAS_COEFFICIENT_RANGE), "noise_fraction_range": list(NOISE_FRACTION_RANGE),
        "ground_truth": "derivatives/pose/<sub>/<ses>/*_pose.json: scanner_from_brain (RAS mm, 4x4)",
    }
    atomic_write_json(out / "synth_parameters.json", parameters)
    logger.info("wrote %d raw scans to %s in %.1f s", len(scans), out, time.perf_counter() - started)
    return parameters


@dataclass(frozen=True)
class _RawJob:
    brains: Path
    out: Path
    image: str
    atrophy_map: str
    spacing: float
    seed: int
    index: int


def _pose_path(image: str) -> Path:
    relative = Path(image)
    return Path("derivatives", "pose", *relative.parts[:-2], relative.name.replace("_T1w.nii.gz", "_pose.json"))


def _write_raw_scan(job: _RawJob) -> None:
    rng = np.random.default_rng([job.seed, int(RAW_GENERATOR_VERSION), job.index])
    brain = load_scan(job.brains / job.image)
    atrophy = load_scan(job.brains / job.atrophy_map)
    head, (moved_atrophy,) = raw_head(brain, rng, job.spacing, extra=[atrophy])
    _write_nifti(job.out / job.image, head.image)
    _write_nifti(job.out / job.atrophy_map, moved_atrophy)
    atomic_write_json(job.out / _pose_path(job.image), {
        "scanner_from_brain": np.round(head.scanner_from_brain, 6).tolist(), "rotation_deg_xyz": head.rotation_deg,
        "shift_mm": head.shift_mm, "voxel_size_mm": head.voxel_size_mm, "axcodes": head.axcodes,
        "shape": list(head.image.shape),
    })


def _head_grid(spacing: float) -> tuple[np.ndarray, tuple[int, ...]]:
    first = np.array([low for low, _ in HEAD_BOX_MM])
    last = np.array([high for _, high in HEAD_BOX_MM])
    shape = tuple(int(n) for n in np.ceil((last - first) / spacing).astype(int) + 1)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = first
    return affine, shape


def _sample(volume: np.ndarray, volume_affine: np.ndarray, volume_from_grid_world: np.ndarray,
            shape: Sequence[int] | np.ndarray) -> np.ndarray:
    """``volume`` seen at the voxels of a grid whose voxel-to-``volume``-world matrix is ``volume_from_grid_world``."""
    index_from_grid = np.linalg.inv(volume_affine) @ volume_from_grid_world
    return ndimage.affine_transform(volume, index_from_grid, output_shape=tuple(shape), order=1, mode="constant",
                                    cval=0.0).astype(np.float32)


def _resample(image: nib.Nifti1Image, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return _sample(np.asarray(image.dataobj, dtype=np.float32), image.affine, affine, shape)


def _brain_envelope(signal: np.ndarray, reference: float, spacing: float) -> np.ndarray:
    """The brain with its sulci and ventricles filled: what the skull wraps."""
    brain = ndimage.binary_fill_holes(signal > BRAIN_FRACTION_OF_PEAK * reference)
    labelled, count = ndimage.label(brain)
    if count > 1:
        brain = labelled == np.argmax(np.bincount(labelled.ravel())[1:]) + 1
    smooth = ndimage.gaussian_filter(brain.astype(np.float32), BRAIN_ENVELOPE_SMOOTHING_MM / spacing)
    return ndimage.binary_fill_holes((smooth > 0.3) | brain)


def _head_tissue(envelope: np.ndarray, affine: np.ndarray, shape: Sequence[int], spacing: float) -> np.ndarray:
    """Relative intensity of everything but the brain: shells around it, then the neck and spine below."""
    distance = ndimage.distance_transform_edt(~envelope, sampling=spacing)
    x, y, z = (affine[axis, 3] + spacing * np.arange(shape[axis]) for axis in range(3))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    neck_radius = np.sqrt(((x - NECK_CENTRE_MM[0]) / NECK_SEMI_AXES_MM[0]) ** 2
                          + ((y - NECK_CENTRE_MM[1]) / NECK_SEMI_AXES_MM[1]) ** 2)
    neck_depth = (1.0 - neck_radius) * min(NECK_SEMI_AXES_MM)  # approximate depth below the neck's skin, mm
    tissue = np.where(neck_depth > NECK_FAT_MM, MUSCLE_INTENSITY, FAT_INTENSITY).astype(np.float32)
    cord_radius = np.hypot(x - CORD_CENTRE_MM[0], y - CORD_CENTRE_MM[1])
    for outer, intensity in reversed(CORD_LAYERS_MM):
        tissue = np.where(cord_radius <= outer, intensity, tissue)
    below_head = z < NECK_TOP_MM
    tissue = np.where((neck_depth > 0) & below_head, tissue, 0.0)
    spinal_canal = (cord_radius <= CORD_LAYERS_MM[1][0]) & below_head  # where the brainstem leaves the skull
    for outer, intensity in reversed(HEAD_SHELLS_MM):
        tissue = np.where((distance <= outer) & ~spinal_canal, intensity, tissue)
    return tissue.astype(np.float32)


def _stored(volume: np.ndarray, affine: np.ndarray, axcodes: str, dtype: type) -> nib.Nifti1Image:
    """The image with voxel axes along ``axcodes`` and the given on-disk type."""
    ras = nib.Nifti1Image(volume.astype(np.float32), affine)
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                                nib.orientations.axcodes2ornt(tuple(axcodes)))
    oriented = ras.as_reoriented(transform)
    image = nib.Nifti1Image(np.asarray(oriented.dataobj), oriented.affine)
    image.set_data_dtype(dtype)
    image.set_qform(oriented.affine, code=1)
    image.set_sform(oriented.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = f"alz-monai raw synthetic v{RAW_GENERATOR_VERSION}".encode()
    return image


def _write_nifti(path: Path, image: nib.Nifti1Image) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))
