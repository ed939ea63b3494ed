"""Synthetic T1-weighted MRI cohort (CN / MCI / AD): the toolkit's embedded default dataset.

Real ADNI/OASIS scans cannot be shipped, so scans are built from the MNI152 ICBM 2009a (non-linear, symmetric)
template and its grey/white-matter maps that nilearn ships offline; nothing is downloaded. nilearn ships the
template skull-stripped, so every scan is a brain in an otherwise empty (noise-only) field of view.

Generative model. Each participant has a diagnosis and a latent disease severity drawn from overlapping class
distributions (CN ~ N(0, 1), MCI ~ N(effect/2, 1), AD ~ N(effect, 1)) and a baseline age ~ U(60, 90) that does
not depend on the class. A scan taken ``t`` years after baseline carries the latent atrophy

    severity + DISEASE_PROGRESSION_PER_YEAR * class_mean_severity * t + age_effect * (age + t - 75) / 10,

so severity grows faster for AD than for MCI, and not at all for CN beyond ageing. This one number drives all
disease signal, through the strictly increasing ``atrophy_load = softplus(latent)``: medial-temporal grey matter
(an ellipsoid at each hippocampus) and the cortical grey matter at the CSF border turn into fluid, and the
ventricles grow radially into the tissue around them. Nuisance variation does not depend on the class: a smooth
random deformation and head size per participant; pose, intensity gamma, a smooth multiplicative bias field and
Rician noise per scan. Hence the best possible classifier of a scan is the Bayes classifier of its latent atrophy,
whose accuracy :func:`theoretical_best_accuracy` estimates by Monte Carlo.

Scanner and site effects (:class:`SiteEffects`, named presets in :data:`SITES`) change how scans are acquired and
stored, never who is scanned: voxel size and slice thickness, field of view, tissue contrast and intensity gamma,
bias field strength, noise level, signal scale, orientations and dtypes. The same seed gives the same participants,
atrophy and poses at every site, so a model trained on some sites can be tested on another.

Each scan also gets a ground-truth atrophy map (fraction of brain tissue lost per voxel) on the scan's grid for
judging saliency maps. Storage is deliberately heterogeneous (axis orientations, int16 with scl_slope or float32,
a few 4D scans with a singleton last axis) so that the loading pipeline has to cope with what real archives hold.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gzip
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage, special
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from alz_monai import __version__
from alz_monai.fileio import atomic_open, atomic_write_json, atomic_write_text

__all__ = [
    "DEFAULT_AGE_EFFECT",
    "DEFAULT_EFFECT",
    "DISEASE_PROGRESSION_PER_YEAR",
    "CLASS_MEAN_SEVERITY_FRACTION",
    "SITES",
    "SITE_PARAMETERS",
    "STORAGE_ORIENTATIONS",
    "SiteEffects",
    "generate_synthetic_dataset",
    "latent_atrophy",
    "plot_examples",
    "site_effects",
    "theoretical_best_accuracy",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
"""Bumped whenever the same parameters would produce different scans."""

DEFAULT_EFFECT = 2.24
"""Class separation (AD mean severity, in severity standard deviations), calibrated numerically so that the Bayes
accuracy for CN vs AD with the default 2 sessions and age effect is 0.880 (0.861 with 1 session, 0.895 with 3;
0.630 for CN/MCI/AD with 2 sessions)."""

DEFAULT_AGE_EFFECT = 0.3
"""Latent atrophy added per decade of age, the same for every class."""

DISEASE_PROGRESSION_PER_YEAR = 0.2
"""Yearly growth of a participant's severity, as a fraction of the mean severity of their class."""

CLASS_MEAN_SEVERITY_FRACTION: dict[str, float] = {"CN": 0.0, "MCI": 0.5, "AD": 1.0}
"""Mean latent severity of each known class, as a fraction of ``effect``."""

SEVERITY_SD = 1.0
AGE_RANGE = (60.0, 90.0)
REFERENCE_AGE = 75.0
MONTHS_BETWEEN_SESSIONS = 12
BAYES_DRAWS = 1_000_000

# Anatomy of the atrophy pattern, in MNI millimetres.
HIPPOCAMPUS_CENTRES_MM = ((-26.0, -22.0, -13.0), (26.0, -22.0, -13.0))
HIPPOCAMPUS_SEMI_AXES_MM = (8.0, 21.0, 8.0)
"""(left-right, along the long axis, across it): generous enough to take in the amygdala and entorhinal cortex."""
HIPPOCAMPUS_TILT_DEG = 30.0
"""The long axis rises from the head (anterior) to the tail (posterior)."""
HIPPOCAMPAL_SUSCEPTIBILITY = 0.2
"""Medial-temporal grey matter lost: 1 - exp(-susceptibility * atrophy_load)."""
CORTICAL_SUSCEPTIBILITY = 0.06
"""Cortical grey matter lost at the CSF border: 1 - exp(-susceptibility * atrophy_load)."""
VENTRICLE_GROWTH_MM = 1.2
"""Radial growth of the ventricles (mm) per unit of atrophy load."""
VENTRICLE_INTENSITY_MAX = 0.4
VENTRICLE_MIN_VOXELS = 1000
SEPTUM_HALF_WIDTH_MM = 1.5
OUT_OF_REACH_MM = 100.0
"""Ventricle distance given to the septum and to points outside the template, which the ventricles never reach."""

# Nuisance variation.
HEAD_SCALE_SD = 0.05
ROTATION_MAX_DEG = 5.0
TRANSLATION_SD_MM = 3.0
DEFORMATION_SD_MM = 2.0
DEFORMATION_CONTROL_SPACING_MM = 32.0
DEFORMATION_GRID_MM = 4.0
GAMMA_LOG_SD = 0.1
BIAS_LOG_SD_RANGE = (0.05, 0.2)
BIAS_CONTROL_POINTS = 4
NOISE_FRACTION_RANGE = (0.01, 0.04)
"""Standard deviation of the real and imaginary noise, relative to the signal scale."""
SIGNAL_SCALE_RANGE = (500.0, 2000.0)

# Storage heterogeneity.
STORAGE_ORIENTATIONS = ("RAS", "LAS", "LPS", "PIR", "ASL")
FLOAT32_FRACTION = 0.3
SINGLETON_4D_FRACTION = 0.1
GZIP_LEVEL = 1
"""Noise barely compresses: higher levels cost time for ~1% smaller files."""

# Independent random streams of one seed, so that e.g. shuffling labels leaves every image unchanged.
_COHORT_STREAM, _SUBJECT_STREAM, _SESSION_STREAM, _STORAGE_STREAM, _SHUFFLE_STREAM, _BAYES_STREAM = range(6)


@dataclass(frozen=True)
class SiteEffects:
    """How one scanner and protocol acquires and stores scans: everything here is independent of the diagnosis.

    The defaults are the generator's own (site ``"default"``), so they leave its output unchanged. Voxel sizes are
    multiples of the ``spacing`` passed to :func:`generate_synthetic_dataset`, so one site can be generated at any
    resolution (e.g. 6 mm in tests, 1 mm for benchmarks).
    """

    name: str = "default"
    description: str = "the generator's own: isotropic voxels, every storage variant"
    voxel_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Voxel size along the world x (left-right), y (posterior-anterior) and z (inferior-superior) axes, as
    multiples of ``spacing``."""
    slice_axis: int = 2
    """World axis (0: x, sagittal slices; 1: y, coronal; 2: z, axial) along which slices are acquired."""
    slice_thickness: float = 1.0
    """Slice profile width (FWHM) as a multiple of the voxel size along ``slice_axis``; > 1 for thick, overlapping
    slices (every other axis is blurred to its own voxel size). Slice gaps (< 1) are not modelled."""
    field_of_view_mm: tuple[float, float, float] | None = None
    """Extent of the scanned grid along x, y, z; None for the template's (197 x 233 x 189 mm, the brain reaching
    its lower edge). Outside the template lies empty, noisy background."""
    field_of_view_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Shift of the grid's centre from the template's (0, -18, 22) mm: where the technician placed the box."""
    contrast: float = 1.0
    """Tissue contrast against the fluid that replaces lost tissue: intensities become ``fluid + contrast * (tissue -
    fluid)`` (< 1: flatter, e.g. lower field strength; > 1: stronger)."""
    gamma_log_mean: float = 0.0
    """Mean log of the intensity gamma of this site's scans (a systematic non-linear intensity response)."""
    gamma_log_sd: float = GAMMA_LOG_SD
    """Scan-to-scan spread of the log gamma."""
    bias_log_sd_range: tuple[float, float] = BIAS_LOG_SD_RANGE
    """Strength of the smooth multiplicative bias field: the SD of its log, drawn uniformly per scan from this range."""
    noise_fraction_range: tuple[float, float] = NOISE_FRACTION_RANGE
    """Rician noise SD relative to the signal scale, drawn uniformly per scan from this range."""
    signal_scale_range: tuple[float, float] = SIGNAL_SCALE_RANGE
    """Scanner units of the brightest tissue, drawn uniformly per scan from this range."""
    orientations: tuple[str, ...] = STORAGE_ORIENTATIONS
    """Voxel axis orders the scans are stored in, spread evenly over the scans."""
    float32_fraction: float = FLOAT32_FRACTION
    """Fraction of scans stored as float32; the others are int16 with a scale slope."""
    singleton_4d_fraction: float = SINGLETON_4D_FRACTION
    """Fraction of scans stored as 4D volumes with one time point."""

    def __post_init__(self) -> None:
        problems = []
        if len(self.voxel_scale) != 3 or not all(math.isfinite(v) and v > 0 for v in self.voxel_scale):
            problems.append(f"voxel_scale must be three numbers > 0, got {self.voxel_scale!r}")
        if self.slice_axis not in (0, 1, 2):
            problems.append(f"slice_axis must be 0 (x), 1 (y) or 2 (z), got {self.slice_axis!r}")
        if not self.slice_thickness >= 1.0:
            problems.append(f"slice_thickness must be >= 1 (a multiple of the slice spacing), got "
                            f"{self.slice_thickness!r}")
        if self.field_of_view_mm is not None and (
                len(self.field_of_view_mm) != 3 or not all(v > 0 for v in self.field_of_view_mm)):
            problems.append(f"field_of_view_mm must be three lengths > 0 or None, got {self.field_of_view_mm!r}")
        if len(self.field_of_view_shift_mm) != 3:
            problems.append(f"field_of_view_shift_mm must be three numbers, got {self.field_of_view_shift_mm!r}")
        if not self.contrast > 0:
            problems.append(f"contrast must be > 0, got {self.contrast!r}")
        if not self.gamma_log_sd >= 0:
            problems.append(f"gamma_log_sd must be >= 0, got {self.gamma_log_sd!r}")
        for name in ("bias_log_sd_range", "noise_fraction_range", "signal_scale_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                problems.append(f"{name} must be (low, high) with 0 <= low <= high, got {getattr(self, name)!r}")
        try:
            if not self.orientations:
                raise ValueError("no orientation given")
            for axcodes in self.orientations:
                nib.orientations.axcodes2ornt(tuple(axcodes))
                if len(axcodes) != 3:
                    raise ValueError(f"{axcodes!r} does not name 3 axes")
        except ValueError as error:
            problems.append(f"orientations must be axis codes such as RAS or LPS ({error}), got {self.orientations!r}")
        for name in ("float32_fraction", "singleton_4d_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid site effects: " + "; ".join(problems))

    def as_record(self) -> dict[str, Any]:
        """The fields as JSON holds them (lists for tuples), as recorded in ``synth_parameters.json``."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    def voxel_size(self, spacing: float) -> np.ndarray:
        """Voxel size (mm) along x, y, z at base ``spacing``."""
        return spacing * np.array(self.voxel_scale, dtype=np.float64)

    def resolution_fwhm(self, spacing: float) -> np.ndarray:
        """Width (mm, FWHM) of the point spread along x, y, z: the voxel size, times the slice thickness across."""
        fwhm = self.voxel_size(spacing)
        fwhm[self.slice_axis] *= self.slice_thickness
        return fwhm


SITES: dict[str, SiteEffects] = {site.name: site for site in (
    SiteEffects(),
    SiteEffects(
        name="siteA",
        description="1.5 T sagittal protocol: 1.2x thicker sagittal voxels, low SNR, flat contrast, darker gamma, "
                    "mild bias field; stored sagittally as int16",
        voxel_scale=(1.2, 1.0, 1.0), slice_axis=0, contrast=0.8, gamma_log_mean=-0.15,
        bias_log_sd_range=(0.05, 0.15), noise_fraction_range=(0.03, 0.06), orientations=("PIR", "ASL"),
        float32_fraction=0.0, singleton_4d_fraction=0.0),
    SiteEffects(
        name="siteB",
        description="3 T isotropic protocol: high SNR, strong contrast and bias field, brighter gamma, tight field "
                    "of view (176 x 208 x 176 mm); converted from DICOM to LPS float32",
        contrast=1.25, gamma_log_mean=0.1, bias_log_sd_range=(0.2, 0.35), noise_fraction_range=(0.005, 0.015),
        field_of_view_mm=(176.0, 208.0, 176.0), field_of_view_shift_mm=(0.0, 0.0, -12.0), orientations=("LPS",),
        float32_fraction=1.0, singleton_4d_fraction=0.0),
    SiteEffects(
        name="siteC",
        description="clinical axial protocol: 1.5x thicker axial voxels with a 2x-wide slice profile, large field "
                    "of view down to the neck (240 x 260 x 240 mm), widely varying gamma, low scanner units, "
                    "mixed storage",
        voxel_scale=(1.0, 1.0, 1.5), slice_axis=2, slice_thickness=4.0 / 3.0, gamma_log_mean=0.05,
        gamma_log_sd=0.2, bias_log_sd_range=(0.1, 0.25), noise_fraction_range=(0.02, 0.05),
        signal_scale_range=(100.0, 400.0), field_of_view_mm=(240.0, 260.0, 240.0),
        field_of_view_shift_mm=(0.0, 0.0, -25.0), orientations=("RAS", "LAS", "LPI"), float32_fraction=0.5,
        singleton_4d_fraction=0.3),
)}
"""Named sites for cross-site experiments: train on some, test on another. ``default`` is the generator's own."""

DEFAULT_SITE = SITES["default"]
#: The fields of :class:`SiteEffects` that describe a site (all but its name and description).
SITE_PARAMETERS = tuple(name for name in SiteEffects.__dataclass_fields__ if name not in ("name", "description"))


def site_effects(site: str | SiteEffects = "default", **overrides: Any) -> SiteEffects:
    """A named site of :data:`SITES` (or a given one) with some of its :class:`SiteEffects` fields replaced.

    A modified site is named after its base and the replaced fields, e.g. ``siteA+noise_fraction_range``.
    """
    if isinstance(site, str):
        if site not in SITES:
            raise ValueError(f"unknown site {site!r}; choose one of {sorted(SITES)} or pass SiteEffects(...)")
        site = SITES[site]
    unknown = sorted(set(overrides) - set(SITE_PARAMETERS))
    if unknown:
        raise ValueError(f"unknown site parameters {unknown}; choose from {sorted(SITE_PARAMETERS)}")
    if not overrides:
        return site
    values: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value
                              for key, value in overrides.items()}
    return replace(site, name="+".join([site.name, *sorted(values)]), **values)


def latent_atrophy(
    severity: np.ndarray | float,
    baseline_age: np.ndarray | float,
    years: np.ndarray | float,
    class_mean_severity: np.ndarray | float,
    age_effect: float = DEFAULT_AGE_EFFECT,
) -> np.ndarray:
    """Total latent atrophy of a scan taken ``years`` after baseline: progressing disease severity plus ageing."""
    progression = DISEASE_PROGRESSION_PER_YEAR * np.asarray(class_mean_severity) * years
    ageing = age_effect * (np.asarray(baseline_age) + years - REFERENCE_AGE) / 10.0
    return np.asarray(severity) + progression + ageing


def theoretical_best_accuracy(
    effect: float,
    *,
    classes: Sequence[str] = ("CN", "AD"),
    sessions: int = 2,
    age_effect: float = DEFAULT_AGE_EFFECT,
    draws: int = BAYES_DRAWS,
    seed: int = 0,
) -> float:
    """Accuracy of the Bayes classifier that sees each scan's latent atrophy exactly (balanced classes).

    Scans are drawn from the generative model (class, session, severity, age) and classified by the largest exact
    class likelihood, a mixture over sessions of a Gaussian convolved with the uniform age term. No classifier of
    the images can beat it: everything else in a scan is independent of the class.
    """
    class_means = _class_mean_severities(classes, effect)
    _check_positive_int(sessions=sessions, draws=draws)
    rng = np.random.default_rng([seed, _BAYES_STREAM])
    true_class = rng.integers(len(class_means), size=draws)
    years = rng.integers(sessions, size=draws) * (MONTHS_BETWEEN_SESSIONS / 12.0)
    severity, baseline_age = _draw_severity_and_age(rng, class_means[true_class])
    latent = latent_atrophy(severity, baseline_age, years, class_means[true_class], age_effect)
    likelihood = np.zeros((len(class_means), draws))
    for class_index, class_mean in enumerate(class_means):
        for session in range(sessions):
            likelihood[class_index] += _latent_density(latent, class_mean, session * MONTHS_BETWEEN_SESSIONS / 12.0,
                                                       age_effect)
    return float(np.mean(likelihood.argmax(axis=0) == true_class))


def generate_synthetic_dataset(
    out_dir: str | Path,
    *,
    subjects: int = 40,
    sessions: int = 2,
    classes: Sequence[str] = ("CN", "AD"),
    effect: float | None = None,
    spacing: float = 2.0,
    seed: int = 0,
    shuffle_labels: bool = False,
    age_effect: float = DEFAULT_AGE_EFFECT,
    progress: bool = True,
    workers: int = 1,
    overwrite: bool = False,
    site: str | SiteEffects = "default",
) -> dict[str, Any]:
    """Write a BIDS-like synthetic cohort to ``out_dir`` and return the content of its ``synth_parameters.json``.

    Layout: ``sub-XXXX/ses-MYY/anat/*_T1w.nii.gz``, ``derivatives/atrophy/.../*_atrophy.nii.gz``,
    ``participants.tsv``, ``scans.tsv`` (the table the data loader reads), ``dataset_description.json`` and
    ``synth_parameters.json``. Output is byte-identical for a seed, whatever ``workers``. ``shuffle_labels``
    permutes diagnoses across participants and keeps the images: a control on which a sound pipeline scores at
    chance. A non-empty ``out_dir`` is refused unless ``overwrite`` (files are then written over, none removed).
    ``site`` (a name of :data:`SITES` or :class:`SiteEffects`, e.g. from :func:`site_effects`) sets the scanner and
    storage effects; the participants, their atrophy and the random poses do not depend on it.
    """
    effect = DEFAULT_EFFECT if effect is None else float(effect)
    site = site_effects(site)
    class_means = _class_mean_severities(classes, effect)
    _check_positive_int(subjects=subjects, sessions=sessions, workers=workers)
    if subjects < len(classes):
        raise ValueError(f"subjects={subjects} is fewer than the {len(classes)} classes {list(classes)}; "
                         f"ask for at least one participant per class")
    if not spacing >= 1.0:
        raise ValueError(f"spacing={spacing} mm is finer than the 1 mm template; use spacing >= 1.0")
    if not (site.voxel_size(spacing) >= 1.0).all():
        raise ValueError(f"site {site.name!r} makes voxels of {site.voxel_size(spacing).tolist()} mm at spacing="
                         f"{spacing}, finer than the 1 mm template; raise spacing or the site's voxel_scale")
    out = Path(out_dir)
    _prepare_output_folder(out, overwrite)
    started = time.perf_counter()

    cohort = _draw_cohort(subjects, classes, class_means, seed)
    labels = cohort["diagnosis"].to_numpy()
    if shuffle_labels:
        labels = labels[np.random.default_rng([seed, _SHUFFLE_STREAM]).permutation(subjects)]
    plans, scan_rows = _plan_scans(out, cohort, labels, sessions, age_effect, spacing, seed, site)

    best_accuracy = theoretical_best_accuracy(effect, classes=classes, sessions=sessions, age_effect=age_effect)
    label_counts = Counter(labels)
    chance = max(label_counts.values()) / subjects
    reported_accuracy = chance if shuffle_labels else best_accuracy
    logger.info("theoretical best accuracy %.4f (effect %.3f, classes %s, %d session(s))%s", best_accuracy, effect,
                "/".join(classes), sessions, f"; labels shuffled, so chance {chance:.3f}" if shuffle_labels else "")

    anatomy = _anatomy(spacing, site)  # built before any fork, so forked workers share it
    _run_plans(plans, workers, progress)

    participants = cohort.assign(diagnosis=labels)[["participant_id", "diagnosis", "age", "sex", "severity"]]
    atomic_write_text(out / "participants.tsv", participants.to_csv(sep="\t", index=False))
    scans = pd.DataFrame(scan_rows)
    atomic_write_text(out / "scans.tsv", scans.to_csv(sep="\t", index=False))
    atomic_write_json(out / "dataset_description.json", _dataset_description("raw"))
    atomic_write_json(out / "derivatives" / "atrophy" / "dataset_description.json", _dataset_description("derivative"))

    parameters = {
        "generator": __name__,
        "generator_version": GENERATOR_VERSION,
        "alz_monai_version": __version__,
        "nilearn_version": _nilearn_version(),
        "template": "MNI152 ICBM 2009a non-linear symmetric, skull-stripped (nilearn)",
        "seed": seed,
        "subjects": subjects,
        "sessions": sessions,
        "session_ids": [_session_id(index) for index in range(sessions)],
        "classes": list(classes),
        "effect": effect,
        "class_mean_severity": {name: float(mean) for name, mean in zip(classes, class_means)},
        "severity_sd": SEVERITY_SD,
        "age_range": list(AGE_RANGE),
        "age_effect_per_decade": age_effect,
        "disease_progression_per_year": DISEASE_PROGRESSION_PER_YEAR,
        "shuffle_labels": shuffle_labels,
        "theoretical_best_accuracy": reported_accuracy,
        "theoretical_best_accuracy_unshuffled": best_accuracy,
        "theoretical_best_accuracy_draws": BAYES_DRAWS,
        "participants_per_class": {name: int(label_counts.get(name, 0)) for name in classes},
        "scans_per_class": {name: int((scans["label"] == name).sum()) for name in classes},
        "scans": len(scans),
        "spacing_mm": spacing,
        "voxel_size_mm": anatomy.voxel_size.tolist(),
        "shape": list(anatomy.grid_shape),
        "site": site.as_record(),
        "atrophy": {
            "hippocampus_centres_mm": [list(centre) for centre in HIPPOCAMPUS_CENTRES_MM],
            "hippocampus_semi_axes_mm": list(HIPPOCAMPUS_SEMI_AXES_MM),
            "hippocampal_susceptibility": HIPPOCAMPAL_SUSCEPTIBILITY,
            "cortical_susceptibility": CORTICAL_SUSCEPTIBILITY,
            "ventricle_growth_mm_per_load": VENTRICLE_GROWTH_MM,
        },
        "nuisance": {
            "head_scale_sd": HEAD_SCALE_SD,
            "rotation_max_deg": ROTATION_MAX_DEG,
            "translation_sd_mm": TRANSLATION_SD_MM,
            "deformation_sd_mm": DEFORMATION_SD_MM,
            "gamma_log_sd": site.gamma_log_sd,
            "bias_log_sd_range": list(site.bias_log_sd_range),
            "noise_fraction_range": list(site.noise_fraction_range),
        },
        "storage": {
            "orientations": dict(sorted(Counter(plan.axcodes for plan in plans).items())),
            "dtypes": dict(sorted(Counter(plan.dtype for plan in plans).items())),
            "singleton_4d": sum(plan.singleton_4d for plan in plans),
        },
    }
    atomic_write_json(out / "synth_parameters.json", parameters)
    logger.info("wrote %d scans of %d participants to %s in %.1f s", len(plans), subjects, out,
                time.perf_counter() - started)
    return parameters


def plot_examples(dataset_dir: str | Path, out_png: str | Path, *, per_class: int = 2) -> Path:
    """Figure of baseline scans per class: coronal slice through the hippocampi, axial through the ventricles and
    the ground-truth atrophy map; the scans shown are spread over each class's range of latent atrophy."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from alz_monai.plots import save_figure

    root = Path(dataset_dir)
    table_path = root / "scans.tsv"
    if not table_path.is_file():
        raise FileNotFoundError(f"{table_path} not found; {root} is not a dataset written by "
                                f"generate_synthetic_dataset")
    scans = pd.read_csv(table_path, sep="\t")
    baseline = scans[scans["session_id"] == _session_id(0)]
    classes = [name for name in CLASS_MEAN_SEVERITY_FRACTION if name in set(baseline["label"])]
    examples: list[pd.Series] = []
    for name in classes:
        members = baseline[baseline["label"] == name].sort_values("latent_atrophy")
        picks = np.unique(np.round(np.linspace(0, len(members) - 1, per_class + 2)[1:-1]).astype(int))
        examples.extend(members.iloc[pick] for pick in picks)

    views = ("coronal (hippocampi)", "axial (ventricles)", "atrophy map (tissue lost)")
    figure = Figure(figsize=(2.3 * len(examples), 2.4 * len(views)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(views), len(examples), squeeze=False)
    hippocampus_y, ventricles_z = HIPPOCAMPUS_CENTRES_MM[0][1], 15.0
    for column, example in zip(axes.T, examples):
        image = _canonical_volume(root / example["image"])
        atrophy = _canonical_volume(root / example["atrophy_map"])
        shown = {"cmap": "gray", "vmin": 0.0, "vmax": float(np.percentile(image.dataobj, 99.5)), "origin": "lower"}
        voxel = np.abs(np.diag(image.affine)[:3])  # anisotropic voxels drawn to scale
        coronal_aspect, axial_aspect = voxel[2] / voxel[0], voxel[1] / voxel[0]
        coronal = _slice_at(image, axis=1, world_mm=hippocampus_y).T
        column[0].imshow(coronal, aspect=coronal_aspect, **shown)
        column[1].imshow(_slice_at(image, axis=2, world_mm=ventricles_z).T, aspect=axial_aspect, **shown)
        column[2].imshow(coronal, aspect=coronal_aspect, **shown)
        lost = np.ma.masked_less(_slice_at(atrophy, axis=1, world_mm=hippocampus_y).T, 0.02)
        column[2].imshow(lost, cmap="autumn_r", vmin=0.0, vmax=0.6, alpha=0.8, origin="lower", aspect=coronal_aspect)
        column[0].set_title(f"{example['label']} {example['participant_id']}\nage {example['age']:.0f}, "
                            f"latent {example['latent_atrophy']:.2f}", fontsize=8)
        for axis_ in column:
            axis_.set_xticks([])
            axis_.set_yticks([])
    for axis_, view in zip(axes[:, 0], views):
        axis_.set_ylabel(view, fontsize=8)
    return save_figure(figure, out_png)


@dataclass(frozen=True)
class _Anatomy:
    """Template maps resampled for one output spacing (smoothed against aliasing) and the output grid."""

    intensity: np.ndarray
    """T1 template, 0..1."""
    tissue: np.ndarray
    """Grey + white matter probability."""
    susceptibility: np.ndarray
    """Tissue-loss rate per unit atrophy load: medial-temporal and cortical-border grey matter."""
    fluid_intensity: np.ndarray
    """Intensity of what replaces lost tissue: CSF inside the brain, the empty background at its surface."""
    ventricle_distance: np.ndarray
    """Distance (mm) to the ventricles; the septum between the lateral ventricles is kept out of reach."""
    near_brain: np.ndarray
    """Where a deformed brain can reach; everything else is background."""
    world_to_template: np.ndarray
    brain_centre: np.ndarray
    field_of_view: tuple[np.ndarray, np.ndarray]
    """World coordinates (mm) of the template's first and last voxel centres."""
    grid_shape: tuple[int, ...]
    grid_affine: np.ndarray
    voxel_size: np.ndarray
    """Output voxel size (mm) along x, y, z."""


@dataclass(frozen=True)
class _ScanPlan:
    """Everything one worker needs to write one scan and its atrophy map."""

    seed: int
    spacing: float
    subject_index: int
    session_index: int
    atrophy_load: float
    axcodes: str
    dtype: str
    singleton_4d: bool
    image_path: Path
    atrophy_path: Path
    site: SiteEffects = DEFAULT_SITE


def _class_mean_severities(classes: Sequence[str], effect: float) -> np.ndarray:
    names = tuple(classes)
    unknown = [name for name in names if name not in CLASS_MEAN_SEVERITY_FRACTION]
    if unknown or len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"classes must be at least two distinct names among {list(CLASS_MEAN_SEVERITY_FRACTION)}, "
                         f"got {list(names)}")
    if not (math.isfinite(effect) and effect >= 0):
        raise ValueError(f"effect must be a finite number >= 0 (severity standard deviations), got {effect}")
    return np.array([CLASS_MEAN_SEVERITY_FRACTION[name] * effect for name in names])


def _check_positive_int(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _draw_severity_and_age(rng: np.random.Generator, class_means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    severity = rng.normal(class_means, SEVERITY_SD)
    baseline_age = rng.uniform(*AGE_RANGE, size=np.shape(class_means))
    return severity, baseline_age


def _latent_density(latent: np.ndarray, class_mean: float, years: float, age_effect: float) -> np.ndarray:
    """Density of the latent atrophy of one class and session: N(mean, SD) convolved with the uniform age term."""
    location = class_mean * (1.0 + DISEASE_PROGRESSION_PER_YEAR * years)
    low, high = (age_effect * (age + years - REFERENCE_AGE) / 10.0 for age in AGE_RANGE)
    if low == high:
        return np.exp(-0.5 * ((latent - location - low) / SEVERITY_SD) ** 2) / (SEVERITY_SD * math.sqrt(2 * math.pi))
    standardised = (latent - location - np.array([[low], [high]])) / SEVERITY_SD
    return (special.ndtr(standardised[0]) - special.ndtr(standardised[1])) / (high - low)


def _prepare_output_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a folder; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} is not empty; choose a new or empty folder, or pass "
                              f"overwrite=True to write over it")
    out.mkdir(parents=True, exist_ok=True)


def _session_id(session_index: int) -> str:
    return f"ses-M{session_index * MONTHS_BETWEEN_SESSIONS:02d}"


def _draw_cohort(subjects: int, classes: Sequence[str], class_means: np.ndarray, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, _COHORT_STREAM])
    class_index = rng.permutation(np.arange(subjects) % len(classes))
    severity, baseline_age = _draw_severity_and_age(rng, class_means[class_index])
    width = max(4, len(str(subjects)))
    return pd.DataFrame({
        "participant_id": [f"sub-{number:0{width}d}" for number in range(1, subjects + 1)],
        "diagnosis": np.asarray(classes)[class_index],
        "age": np.round(baseline_age, 1),
        "sex": rng.choice(["F", "M"], size=subjects),
        "severity": np.round(severity, 4),
        "class_mean_severity": class_means[class_index],
        "exact_age": baseline_age,
        "exact_severity": severity,
    })


def _plan_scans(
    out: Path, cohort: pd.DataFrame, labels: np.ndarray, sessions: int, age_effect: float, spacing: float, seed: int,
    site: SiteEffects = DEFAULT_SITE,
) -> tuple[list[_ScanPlan], list[dict[str, Any]]]:
    """Per-scan work items and scans.tsv rows; storage variants are spread so that every dataset holds a mix."""
    scan_count = len(cohort) * sessions
    storage_rng = np.random.default_rng([seed, _STORAGE_STREAM])
    orientation_index = storage_rng.permutation(scan_count) % len(site.orientations)
    is_float32 = storage_rng.permutation(scan_count) < math.ceil(site.float32_fraction * scan_count)
    is_4d = storage_rng.permutation(scan_count) < math.ceil(site.singleton_4d_fraction * scan_count)
    plans, rows = [], []
    for subject_index, participant in enumerate(cohort.itertuples(index=False)):
        for session_index in range(sessions):
            scan_index = subject_index * sessions + session_index
            session_id = _session_id(session_index)
            years = session_index * MONTHS_BETWEEN_SESSIONS / 12.0
            latent = float(latent_atrophy(participant.exact_severity, participant.exact_age, years,
                                          participant.class_mean_severity, age_effect))
            stem = f"{participant.participant_id}_{session_id}"
            image = Path(participant.participant_id, session_id, "anat", f"{stem}_T1w.nii.gz")
            atrophy_map = Path("derivatives", "atrophy", participant.participant_id, session_id,
                               f"{stem}_atrophy.nii.gz")
            plans.append(_ScanPlan(
                seed=seed, spacing=spacing, subject_index=subject_index, session_index=session_index,
                atrophy_load=float(np.logaddexp(0.0, latent)),
                axcodes=site.orientations[orientation_index[scan_index]],
                dtype="float32" if is_float32[scan_index] else "int16", singleton_4d=bool(is_4d[scan_index]),
                image_path=out / image, atrophy_path=out / atrophy_map, site=site,
            ))
            rows.append({
                "image": image.as_posix(), "label": labels[subject_index],
                "participant_id": participant.participant_id, "session_id": session_id,
                "age": round(participant.exact_age + years, 1), "sex": participant.sex,
                "atrophy_map": atrophy_map.as_posix(), "latent_atrophy": round(latent, 4),
            })
    return plans, rows


def _run_plans(plans: Sequence[_ScanPlan], workers: int, progress: bool) -> None:
    with tqdm(total=len(plans), disable=not progress, desc="synthetic scans", unit="scan") as bar:
        if workers == 1:
            for plan in plans:
                _synthesise_scan(plan)
                bar.update()
            return
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_synthesise_scan, plans):
                bar.update()


@functools.lru_cache(maxsize=1)
def _template_maps() -> dict[str, np.ndarray]:
    """Full-resolution (1 mm) template maps with the atrophy pattern; nilearn reads them from its package data."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=1)
    intensity = np.asarray(template.dataobj, dtype=np.float32)
    grey = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    white = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    affine = template.affine
    x, y, z = (coordinate.astype(np.float32) for coordinate in _world_axes(affine, intensity.shape))

    tissue = np.clip(grey + white, 0.0, 1.0)
    cortical_border = grey * np.clip(2.0 * ndimage.gaussian_filter(1.0 - tissue, 1.0), 0.0, 1.0)
    medial_temporal = grey * _hippocampal_weight(x, y, z)
    susceptibility = HIPPOCAMPAL_SUSCEPTIBILITY * medial_temporal + CORTICAL_SUSCEPTIBILITY * cortical_border

    ventricles = _ventricle_mask(intensity, brain, x, y, z)
    # Lost tissue turns into CSF inside the brain; at its surface into the empty background of the skull-stripped
    # template, so the brain visibly shrinks there.
    csf_intensity = float(np.median(intensity[ventricles]))
    fluid_intensity = csf_intensity * ndimage.gaussian_filter(brain.astype(np.float32), 2.0)
    ventricle_distance = ndimage.distance_transform_edt(~ventricles).astype(np.float32)
    ventricle_distance[(np.abs(x) < SEPTUM_HALF_WIDTH_MM) & ~ventricles] = OUT_OF_REACH_MM
    brain_distance = ndimage.distance_transform_edt(~brain).astype(np.float32)
    brain_centre = np.array([coordinate[brain].mean() for coordinate in np.broadcast_arrays(x, y, z)])
    return {
        "intensity": intensity, "tissue": tissue, "susceptibility": susceptibility.astype(np.float32),
        "fluid_intensity": fluid_intensity.astype(np.float32), "ventricle_distance": ventricle_distance,
        "brain_distance": brain_distance, "affine": affine, "brain_centre": brain_centre,
    }


def _world_axes(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable x, y, z world coordinates of an axis-aligned grid."""
    axes = [affine[axis, 3] + affine[axis, axis] * np.arange(shape[axis]) for axis in range(3)]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _hippocampal_weight(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Soft-edged tilted ellipsoids at both hippocampi: 1 inside, 0 beyond 1.25 radii."""
    tilt = math.radians(HIPPOCAMPUS_TILT_DEG)
    lateral, longitudinal, transverse = HIPPOCAMPUS_SEMI_AXES_MM
    weight = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
    for centre_x, centre_y, centre_z in HIPPOCAMPUS_CENTRES_MM:
        dy, dz = y - centre_y, z - centre_z
        along = -dy * math.cos(tilt) + dz * math.sin(tilt)
        across = dy * math.sin(tilt) + dz * math.cos(tilt)
        radius = np.sqrt(((x - centre_x) / lateral) ** 2 + (along / longitudinal) ** 2 + (across / transverse) ** 2)
        weight = np.maximum(weight, np.clip((1.25 - radius) / 0.5, 0.0, 1.0))
    return weight


def _ventricle_mask(intensity: np.ndarray, brain: np.ndarray, x: np.ndarray, y: np.ndarray,
                    z: np.ndarray) -> np.ndarray:
    """Lateral and third ventricles: large dark connected regions of the template near the midline."""
    candidate = ((intensity < VENTRICLE_INTENSITY_MAX) & brain & (np.abs(x) < 30) & (y > -50) & (y < 35)
                 & (z > -5) & (z < 35))
    labelled, count = ndimage.label(candidate)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    large = np.flatnonzero(sizes >= VENTRICLE_MIN_VOXELS)
    return np.isin(labelled, large[large > 0])


def _anatomy(spacing: float, site: SiteEffects = DEFAULT_SITE) -> _Anatomy:
    """The anatomy on the grid of ``site`` at ``spacing``; sites that differ in intensity effects alone share it."""
    return _grid_anatomy(tuple(site.voxel_size(spacing)), tuple(site.resolution_fwhm(spacing)),
                         site.field_of_view_mm, site.field_of_view_shift_mm)


@functools.lru_cache(maxsize=2)
def _grid_anatomy(voxel: tuple[float, ...], fwhm: tuple[float, ...], field_of_view_mm: tuple[float, ...] | None,
                  field_of_view_shift_mm: tuple[float, ...]) -> _Anatomy:
    maps = _template_maps()
    voxel_size = np.array(voxel, dtype=np.float64)
    # Gaussian per axis whose FWHM makes a 1 mm voxel as wide as the output's point spread (voxel or slice profile).
    sigma = np.sqrt(np.maximum(np.array(fwhm) ** 2 - 1.0, 0.0)) / (2.0 * math.sqrt(2.0 * math.log(2.0)))

    def smooth(volume: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(volume, tuple(sigma)) if (sigma > 0).any() else volume

    affine = maps["affine"]
    shape = np.array(maps["intensity"].shape)
    first = affine[:3, 3]
    last = first + np.diag(affine)[:3] * (shape - 1)
    extent = last - first if field_of_view_mm is None else np.array(field_of_view_mm, dtype=np.float64)
    centre = (first + last) / 2.0 + np.array(field_of_view_shift_mm, dtype=np.float64)
    grid_shape = tuple(int(n) for n in np.ceil(extent / voxel_size).astype(int) + 1)
    grid_affine = np.diag([*voxel_size, 1.0])
    grid_affine[:3, 3] = centre - voxel_size * (np.array(grid_shape) - 1) / 2.0
    reach = 4.0 * DEFORMATION_SD_MM + 3.0 * float(sigma.max()) + float(voxel_size.max())
    return _Anatomy(
        intensity=smooth(maps["intensity"]),
        tissue=smooth(maps["tissue"]),
        susceptibility=smooth(maps["susceptibility"]),
        fluid_intensity=smooth(maps["fluid_intensity"]),
        ventricle_distance=maps["ventricle_distance"],
        near_brain=maps["brain_distance"] <= reach,
        world_to_template=np.linalg.inv(affine),
        brain_centre=maps["brain_centre"],
        field_of_view=(first, last),
        grid_shape=grid_shape,
        grid_affine=grid_affine,
        voxel_size=voxel_size,
    )


def _smooth_random_field(rng: np.random.Generator, control_shape: Sequence[int], shape: Sequence[int] | np.ndarray,
                         components: int = 1) -> np.ndarray:
    """Standard-normal values on a coarse control grid, cubic-spline interpolated to ``shape``."""
    control = rng.standard_normal((components, *control_shape)).astype(np.float32)
    factors = np.array(shape) / np.array(control_shape)
    return np.stack([ndimage.zoom(component, factors, order=3, mode="nearest") for component in control])


def _template_coordinates(subject_rng: np.random.Generator, session_rng: np.random.Generator, anatomy: _Anatomy,
                          world: np.ndarray) -> np.ndarray:
    """Template voxel coordinates seen by output world points: participant head size and deformation, scan pose."""
    head_scale = subject_rng.normal(1.0, HEAD_SCALE_SD)
    first, last = anatomy.field_of_view
    extent = last - first
    control_shape = np.ceil(extent / DEFORMATION_CONTROL_SPACING_MM).astype(int) + 1
    field_shape = np.ceil(extent / DEFORMATION_GRID_MM).astype(int) + 1
    displacement = DEFORMATION_SD_MM * _smooth_random_field(subject_rng, control_shape, field_shape, components=3)

    rotation = Rotation.from_euler("xyz", session_rng.uniform(-ROTATION_MAX_DEG, ROTATION_MAX_DEG, 3), degrees=True)
    translation = session_rng.normal(0.0, TRANSLATION_SD_MM, 3)
    centre = anatomy.brain_centre[:, None]
    # world = centre + translation + head_scale * R (anatomical - centre), inverted.
    anatomical = centre + rotation.as_matrix().T @ (world - centre - translation[:, None]) / head_scale
    field_index = (anatomical - first[:, None]) / extent[:, None] * (field_shape - 1)[:, None]
    for axis in range(3):
        anatomical[axis] += ndimage.map_coordinates(displacement[axis], field_index, order=1, mode="nearest")
    return anatomy.world_to_template[:3, :3] @ anatomical + anatomy.world_to_template[:3, 3:]


def _synthesise_scan(plan: _ScanPlan) -> None:
    """Render one scan and its atrophy map and write both atomically."""
    site = plan.site
    anatomy = _anatomy(plan.spacing, site)
    subject_rng = np.random.default_rng([plan.seed, _SUBJECT_STREAM, plan.subject_index])
    session_rng = np.random.default_rng([plan.seed, _SESSION_STREAM, plan.subject_index, plan.session_index])
    world_axes = _world_axes(anatomy.grid_affine, anatomy.grid_shape)
    world = np.stack([coordinate.ravel() for coordinate in np.meshgrid(*(a.ravel() for a in world_axes),
                                                                       indexing="ij")])
    coordinates = _template_coordinates(subject_rng, session_rng, anatomy, world)
    nearest = np.clip(np.rint(coordinates).astype(np.intp), 0, np.array(anatomy.near_brain.shape)[:, None] - 1)
    inside = anatomy.near_brain[nearest[0], nearest[1], nearest[2]]
    coordinates = coordinates[:, inside]

    def sample(volume: np.ndarray, outside: float = 0.0) -> np.ndarray:
        return ndimage.map_coordinates(volume, coordinates, order=1, mode="constant", cval=outside, prefilter=False)

    intensity = sample(anatomy.intensity)
    tissue = sample(anatomy.tissue)
    grey_matter_loss = -np.expm1(-plan.atrophy_load * sample(anatomy.susceptibility))
    # Tissue within the grown radius turns into CSF, with a partial-volume ramp one output voxel wide.
    ventricle_distance = sample(anatomy.ventricle_distance, outside=OUT_OF_REACH_MM)
    ventricular_loss = np.clip((VENTRICLE_GROWTH_MM * plan.atrophy_load - ventricle_distance)
                               / float(anatomy.voxel_size.min()), 0.0, 1.0)
    loss = 1.0 - (1.0 - grey_matter_loss) * (1.0 - ventricular_loss)
    fluid = sample(anatomy.fluid_intensity)
    intensity += loss * (fluid - intensity)
    if site.contrast != 1.0:  # skipped at 1, where it changes nothing but rounding, to keep the default bit-exact
        intensity = fluid + site.contrast * (intensity - fluid)

    atrophy = np.zeros(anatomy.grid_shape, dtype=np.float32)
    atrophy.reshape(-1)[inside] = loss * tissue
    signal = np.zeros(anatomy.grid_shape, dtype=np.float32)
    signal.reshape(-1)[inside] = np.clip(intensity, 0.0, None) ** np.exp(
        session_rng.normal(site.gamma_log_mean, site.gamma_log_sd))

    bias_log_sd = session_rng.uniform(*site.bias_log_sd_range)
    # Spline-smooth on a 4x coarser grid, then linearly upsampled: as smooth, a fraction of the cost.
    coarse_shape = np.ceil(np.array(anatomy.grid_shape) / 4).astype(int) + 1
    coarse_bias = _smooth_random_field(session_rng, (BIAS_CONTROL_POINTS,) * 3, coarse_shape)[0]
    bias = np.exp(bias_log_sd * ndimage.zoom(coarse_bias, np.array(anatomy.grid_shape) / coarse_shape, order=1))
    scale = session_rng.uniform(*site.signal_scale_range)
    noise_sd = scale * session_rng.uniform(*site.noise_fraction_range)
    real = signal * bias * scale + noise_sd * session_rng.standard_normal(anatomy.grid_shape, dtype=np.float32)
    imaginary = noise_sd * session_rng.standard_normal(anatomy.grid_shape, dtype=np.float32)
    image = np.hypot(real, imaginary)

    _write_nifti(plan.image_path, image, anatomy.grid_affine, plan.axcodes, plan.dtype, plan.singleton_4d)
    _write_nifti(plan.atrophy_path, atrophy, anatomy.grid_affine, plan.axcodes, "float32", singleton_4d=False)


def _reorient(volume: np.ndarray, affine: np.ndarray, axcodes: str) -> nib.Nifti1Image:
    """The same world-space image stored with its voxel axes along ``axcodes`` (data and affine both change)."""
    ras_image = nib.Nifti1Image(volume, affine)
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                                nib.orientations.axcodes2ornt(tuple(axcodes)))
    return ras_image.as_reoriented(transform)


def _write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray, axcodes: str, dtype: str,
                 singleton_4d: bool) -> None:
    oriented = _reorient(volume, affine, axcodes)
    data = np.asarray(oriented.dataobj)
    if singleton_4d:
        data = data[..., np.newaxis]
    image = nib.Nifti1Image(data, oriented.affine)
    image.set_data_dtype(np.dtype(dtype))  # int16 is stored with an scl_slope/scl_inter chosen by nibabel
    image.set_qform(oriented.affine, code=1)
    image.set_sform(oriented.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = f"alz-monai synthetic v{GENERATOR_VERSION}".encode()
    with atomic_open(path, "wb") as handle:
        handle.write(gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0))


def _canonical_volume(path: Path) -> nib.Nifti1Image:
    image = nib.as_closest_canonical(nib.load(path))
    return nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3]), image.affine)


def _slice_at(image: nib.Nifti1Image, axis: int, world_mm: float) -> np.ndarray:
    index = int(round((world_mm - image.affine[axis, 3]) / image.affine[axis, axis]))
    index = min(max(index, 0), image.shape[axis] - 1)
    return np.take(np.asarray(image.dataobj), index, axis=axis)


def _dataset_description(dataset_type: str) -> dict[str, Any]:
    return {
        "Name": "alz-monai synthetic T1w cohort" + (": ground-truth atrophy maps" if dataset_type != "raw" else ""),
        "BIDSVersion": "1.9.0",
        "DatasetType": dataset_type,
        "GeneratedBy": [{"Name": "alz-monai synth", "Version": __version__,
                         "Description": f"alz_monai.data.synth generator v{GENERATOR_VERSION}"}],
        "ReferencesAndLinks": ["Fonov et al. (2011) Unbiased average age-appropriate atlases for pediatric studies. "
                               "NeuroImage 54(1):313-327 (MNI152 ICBM 2009a template)"],
    }


def _nilearn_version() -> str:
    import nilearn

    return nilearn.__version__
