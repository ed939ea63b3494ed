"""Saliency maps of a classifier (Grad-CAM, occlusion) on the original scan's grid, and scores against ground truth.

Maps are computed on the preprocessed grid the network sees, then taken back to the scan's own grid, affine and axis
order by inverting the preprocessing with MONAI's ``Invertd``, so they overlay the scan in any viewer. Every map is
scaled to [0, 1] and shows positive evidence for the target class only: a map of zeros means no evidence.

The scores compare a map with a ground-truth atrophy map (the synthetic data's ``atrophy_map`` column): the share of
saliency mass inside the atrophied region and the pointing game. Random smooth maps, as smooth as the saliency map
itself, give the chance level each score must beat.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.networks.nets import DenseNet121
from monai.networks.utils import eval_mode
from monai.transforms import Invertd, InvertibleTransform, ScaleIntensity
from monai.utils import convert_to_tensor
from monai.visualize import GradCAM, OcclusionSensitivity
from scipy import ndimage
from torch import nn
from tqdm import tqdm

from alz_monai.data.records import nifti_stem
from alz_monai.fileio import atomic_open
from alz_monai.networks import ResNet3D
from alz_monai.plots import plot_saliency_slices, save_figure
from alz_monai.run_dir import RunDirError

__all__ = [
    "DEFAULT_ATROPHY_THRESHOLD",
    "SALIENCY_METHODS",
    "RandomBaseline",
    "ScanExplanation",
    "default_cam_layer",
    "estimate_smoothness",
    "explain_scan",
    "grad_cam",
    "occlusion_map",
    "plot_saliency_overlay",
    "pointing_game",
    "random_baseline",
    "saliency_mass_inside",
    "saliency_to_original_space",
    "save_saliency_nifti",
]

logger = logging.getLogger(__name__)

SALIENCY_METHODS: tuple[str, ...] = ("gradcam", "occlusion")

DEFAULT_ATROPHY_THRESHOLD = 0.05
"""Atrophied region of the synthetic ground truth: voxels that lost more than 5% of their tissue."""

_NO_PROBABILITY_DROP = 1e-4
"""Largest probability drop an occlusion map may have and still count as no evidence: blending the occluded
windows leaves float rounding of about 1e-6 where occlusion changes nothing, which scaling would blow up."""


def default_cam_layer(network: nn.Module) -> str:
    """Name of the module whose output Grad-CAM weighs: the deepest convolutional stage of ``network``."""
    if isinstance(network, ResNet3D):
        return "layer4"
    if isinstance(getattr(network, "backbone", None), ResNet3D):
        return "backbone.layer4"
    if isinstance(network, DenseNet121):
        return "class_layers.relu"
    raise ValueError(
        f"No default Grad-CAM layer for {type(network).__name__}; pass layer=<name of a convolutional module> "
        "(see network.named_modules()), or use the occlusion method, which works for any network"
    )


def grad_cam(
    network: nn.Module, image: torch.Tensor, target_class: int | None = None, layer: str | None = None
) -> torch.Tensor:
    """Grad-CAM of one preprocessed image ``(channels, *spatial)`` for ``target_class`` (default: the predicted one).

    The map of ``layer`` (default :func:`default_cam_layer`) is upsampled to the image and scaled to [0, 1]; the
    result is ``(1, *spatial)`` on the CPU. Its resolution is that layer's: 32 voxels per cell for ``layer4`` of a
    ResNet, so ``layer3`` gives finer, noisier maps. Works for frozen networks and inside ``torch.no_grad()``.
    """
    layer = layer or default_cam_layer(network)
    target_module = dict(network.named_modules()).get(layer)
    if target_module is None:
        raise ValueError(f"{type(network).__name__} has no module named {layer!r}; pick one of network.named_modules()")
    batch = _as_batch(image, network)
    target = _resolve_target(_class_probabilities(network, batch), target_class)
    with torch.enable_grad(), _hooks_removed_on_exit(target_module):
        cam = GradCAM(nn_module=network, target_layers=layer, postprocessing=_scaled_to_unit)
        saliency = cam(x=batch.detach().clone().requires_grad_(True), class_idx=target)
    network.zero_grad(set_to_none=True)
    return saliency[0].detach().cpu()


def occlusion_map(
    network: nn.Module,
    image: torch.Tensor,
    target_class: int | None = None,
    mask_size: int | Sequence[int] = 16,
    overlap: float = 0.5,
    batch_size: int = 16,
) -> torch.Tensor:
    """Occlusion sensitivity of one preprocessed image ``(channels, *spatial)`` for ``target_class``.

    MONAI's ``OcclusionSensitivity`` slides a Gaussian-weighted box of ``mask_size`` voxels (``overlap`` between
    neighbouring boxes) that pulls the image towards zero, the foreground mean after z-scoring. Each voxel gets the
    drop in the target class's probability: regions whose occlusion argues *for* the class count as zero, and a map
    whose largest drop is under 1e-4 is all zeros. ``batch_size`` occluded copies go through the network at once,
    about ``(size / (mask_size * (1 - overlap)))^3`` in all. Returns ``(1, *spatial)`` in [0, 1] on the CPU.
    """
    batch = _as_batch(image, network)
    probabilities = _class_probabilities(network, batch)
    target = _resolve_target(probabilities, target_class)
    occlusion = OcclusionSensitivity(
        nn_module=network,
        mask_size=mask_size,
        n_batch=batch_size,
        verbose=False,
        mode="gaussian",
        overlap=overlap,
        # MONAI's activate=True picks sigmoid or softmax by the *image's* channel count; a classifier needs softmax.
        activate=lambda logits: logits.float().softmax(dim=1),
    )
    with warnings.catch_warnings():
        # MONAI 1.6 indexes with lists of slices, which torch deprecates; the planted-signal test guards the result.
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
        occluded_probabilities, _ = occlusion(x=batch)
    drop = probabilities[target] - convert_to_tensor(occluded_probabilities, track_meta=False)[0, target].cpu()
    if drop.max() < _NO_PROBABILITY_DROP:
        return torch.zeros_like(drop, dtype=torch.float32).unsqueeze(0)
    return _scaled_to_unit(drop.clamp(min=0.0).unsqueeze(0))


def saliency_to_original_space(
    saliency: torch.Tensor, preprocessed_image: MetaTensor, transform: InvertibleTransform, key: str = "image"
) -> MetaTensor:
    """Map a saliency map from the preprocessed grid back to the original scan's grid.

    ``preprocessed_image`` is the MetaTensor that ``transform`` (the preprocessing ``Compose``) returned under
    ``key``; its record of applied operations is replayed backwards on the map (resize, crop, spacing, orientation)
    with linear interpolation. Returns ``(1, *original_spatial)`` in [0, 1] with the original affine; voxels the
    crop removed get zero.
    """
    if not isinstance(preprocessed_image, MetaTensor) or not preprocessed_image.applied_operations:
        raise ValueError(
            "preprocessed_image carries no record of the transforms applied to it; pass the MetaTensor that the "
            "preprocessing Compose returned (with MONAI's meta tracking on), not a plain tensor or a batch"
        )
    if not isinstance(transform, InvertibleTransform):
        raise TypeError(f"transform must be the invertible preprocessing (a Compose), got {type(transform).__name__}")
    spatial_shape = tuple(preprocessed_image.shape[1:])
    if tuple(saliency.shape[-len(spatial_shape) :]) != spatial_shape or saliency.numel() != np.prod(spatial_shape):
        raise ValueError(
            f"saliency of shape {tuple(saliency.shape)} does not match the preprocessed image's grid {spatial_shape}"
        )
    heat = MetaTensor(convert_to_tensor(saliency, track_meta=False).detach().float().cpu().reshape(1, *spatial_shape))
    saliency_key = f"{key}_saliency"
    inverter = Invertd(keys=saliency_key, transform=transform, orig_keys=key, nearest_interp=False)
    original = inverter({key: preprocessed_image, saliency_key: heat})[saliency_key]
    return original.clamp(0.0, 1.0)


def save_saliency_nifti(
    volume: torch.Tensor | np.ndarray, reference_path: str | os.PathLike, out_path: str | os.PathLike
) -> Path:
    """Write ``volume`` (on the grid of the scan at ``reference_path``) as float32 NIfTI with that scan's affine,
    qform/sform codes and shape, a trailing singleton axis included; atomic, gzipped for a ``.gz`` name."""
    reference = nib.load(reference_path)
    if not isinstance(reference, nib.Nifti1Image):  # NIfTI-2 images are Nifti1Image too
        raise ValueError(f"{reference_path} is not a NIfTI image: saliency maps are written on the grid of NIfTI scans")
    data = np.asarray(convert_to_tensor(volume, track_meta=False).detach().cpu(), dtype=np.float32)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    spatial_shape = tuple(reference.shape[:3])
    if data.shape != spatial_shape or any(size != 1 for size in reference.shape[3:]):
        raise ValueError(
            f"saliency of shape {data.shape} does not fit {reference_path} (shape {reference.shape}); bring it to "
            "the scan's grid with saliency_to_original_space first"
        )
    image = nib.Nifti1Image(data.reshape(reference.shape), reference.affine)
    for get_form, set_form in ((reference.header.get_qform, image.set_qform),
                               (reference.header.get_sform, image.set_sform)):
        matrix, code = get_form(coded=True)
        if code:
            set_form(matrix, code=int(code))
    image.header.set_xyzt_units(*reference.header.get_xyzt_units())
    image.header["descrip"] = b"alz-monai saliency map"
    payload = image.to_bytes()
    target = Path(out_path)
    if target.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    with atomic_open(target, "wb") as handle:
        handle.write(payload)
    return target


def plot_saliency_overlay(
    image: torch.Tensor | np.ndarray,
    saliency: torch.Tensor | np.ndarray,
    out_png: str | os.PathLike,
    affine: torch.Tensor | np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """PNG of sagittal, coronal and axial slices through the saliency peak inside the head, the map over the image
    (:func:`alz_monai.plots.plot_saliency_slices`): both volumes on the grid whose ``affine`` labels the views."""
    volume, heat = _as_volume(image, "image"), _as_volume(saliency, "saliency")
    _check_same_shape(heat, volume, "saliency", "image")
    grid = None if affine is None else np.asarray(convert_to_tensor(affine, track_meta=False).cpu(), dtype=float)
    return save_figure(plot_saliency_slices(volume, heat, grid, title), out_png)


@dataclass(frozen=True)
class ScanExplanation:
    """What :func:`explain_scan` wrote for one scan and what the network predicted."""

    image_path: Path
    probabilities: dict[str, float]
    predicted_class: str
    target_class: str
    saliency_paths: dict[str, Path]
    """Method name to the NIfTI on the scan's own grid."""
    overlay_paths: dict[str, Path]
    """Method name to the PNG overlay (drawn on the preprocessed, RAS-oriented grid)."""


def explain_scan(
    network: nn.Module,
    transform: InvertibleTransform,
    image_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    methods: Sequence[str] = SALIENCY_METHODS,
    class_names: Sequence[str] = ("CN", "AD"),
    target_class: str | None = None,
    *,
    gradcam_layer: str | None = None,
    occlusion_mask_size: int | Sequence[int] = 16,
    occlusion_overlap: float = 0.5,
    batch_size: int = 16,
    name: str | None = None,
) -> ScanExplanation:
    """Saliency maps of one scan: ``<name>_<method>.nii.gz`` on the scan's grid and ``<name>_<method>.png`` in
    ``out_dir``, for each of ``methods`` (from ``SALIENCY_METHODS``); ``name`` defaults to the file's stem
    (:func:`explain_scans` gives scans of one stem distinct names).

    ``transform`` is the inference preprocessing (the bundle's ``validate#transforms``) applied to
    ``{"image": image_path}``; ``target_class`` names the class to explain (default: the predicted one).
    """
    unknown = [method for method in methods if method not in SALIENCY_METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown saliency methods {unknown or list(methods)}; choose from {list(SALIENCY_METHODS)}")
    class_names = list(class_names)
    if target_class is not None and target_class not in class_names:
        raise ValueError(f"target_class {target_class!r} is not one of the classes {class_names}")
    path = Path(image_path)
    if not path.is_file():
        raise FileNotFoundError(f"scan {path} does not exist; give the path of a NIfTI scan")
    image = transform({"image": str(path)})["image"]
    probabilities = _class_probabilities(network, _as_batch(image, network))
    if probabilities.numel() != len(class_names):
        raise ValueError(
            f"the network gives {probabilities.numel()} class scores but class_names has {len(class_names)} "
            f"({class_names}); pass the class names the network was trained with"
        )
    predicted = int(probabilities.argmax())
    target = predicted if target_class is None else class_names.index(target_class)
    compute = {
        "gradcam": lambda: grad_cam(network, image, target, gradcam_layer),
        "occlusion": lambda: occlusion_map(network, image, target, occlusion_mask_size, occlusion_overlap, batch_size),
    }
    out = Path(out_dir)
    stem = name or nifti_stem(path)
    saliency_paths, overlay_paths = {}, {}
    for method in methods:
        saliency = compute[method]()
        original = saliency_to_original_space(saliency, image, transform)
        saliency_paths[method] = save_saliency_nifti(original, path, out / f"{stem}_{method}.nii.gz")
        title = f"{stem}: {method} for {class_names[target]} (p = {probabilities[target]:.2f})"
        overlay_paths[method] = plot_saliency_overlay(image, saliency, out / f"{stem}_{method}.png", image.affine,
                                                        title)
    logger.info("%s: predicted %s (p = %.3f); saliency for %s in %s", path.name, class_names[predicted],
                float(probabilities[predicted]), class_names[target], out)
    return ScanExplanation(
        image_path=path,
        probabilities={name: float(value) for name, value in zip(class_names, probabilities)},
        predicted_class=class_names[predicted],
        target_class=class_names[target],
        saliency_paths=saliency_paths,
        overlay_paths=overlay_paths,
    )


def scan_names(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """A distinct output name per scan: its file stem, preceded by as many parent folders as it takes to tell it
    from the other scans (``a/T1w.nii.gz`` and ``b/T1w.nii.gz`` become ``a_T1w`` and ``b_T1w``)."""
    parts = {str(p): (*Path(p).absolute().parent.parts[1:], nifti_stem(p)) for p in paths}
    names: dict[str, str] = {}
    for path, components in parts.items():
        for depth in range(1, len(components) + 1):
            suffix = components[-depth:]
            if all(other[-depth:] != suffix for key, other in parts.items() if key != path):
                names[path] = "_".join(suffix)
                break
        else:  # the same path twice
            names[path] = "_".join(components)
    return names


def explain_scans(image_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  methods: Sequence[str] = SALIENCY_METHODS, overwrite: bool = False,
                  **options: Any) -> list[ScanExplanation]:
    """:func:`explain_scan` for every scan, under distinct names, with a progress bar. Maps that already exist in
    ``out_dir`` are refused before any work, unless ``overwrite``."""
    names = scan_names(image_paths)
    out = Path(out_dir)
    existing = [out / f"{name}_{method}{suffix}" for name in names.values() for method in methods
                for suffix in (".nii.gz", ".png") if (out / f"{name}_{method}{suffix}").exists()]
    if existing and not overwrite:
        shown = ", ".join(str(path) for path in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3
                                                                 else "")
        raise RunDirError(f"saliency maps already exist: {shown}; pass --overwrite true to replace them, or choose "
                          "another --saliency_dir")
    return [explain_scan(image_path=path, out_dir=out, methods=methods, name=names[str(path)], **options)
            for path in tqdm(list(image_paths), desc="saliency", unit="scan", disable=len(image_paths) < 2)]


def saliency_mass_inside(
    saliency: torch.Tensor | np.ndarray,
    atrophy_map: torch.Tensor | np.ndarray,
    threshold: float = DEFAULT_ATROPHY_THRESHOLD,
) -> float:
    """Share of the map's total saliency that lies where ``atrophy_map > threshold``; NaN for an all-zero map."""
    heat, region = _heat_and_region(saliency, atrophy_map, threshold)
    total = heat.sum()
    return float(heat[region].sum() / total) if total > 0 else float("nan")


def pointing_game(
    saliency: torch.Tensor | np.ndarray,
    atrophy_map: torch.Tensor | np.ndarray,
    threshold: float = DEFAULT_ATROPHY_THRESHOLD,
    tolerance: int = 1,
) -> bool:
    """Whether the map's peak voxel lies in the region ``atrophy_map > threshold`` grown by ``tolerance`` voxels
    (26-connected, so diagonal neighbours count); a constant map points nowhere and misses."""
    heat, region = _heat_and_region(saliency, atrophy_map, threshold)
    if heat.max() == heat.min():
        return False
    if tolerance > 0:
        region = ndimage.binary_dilation(region, ndimage.generate_binary_structure(3, 3), iterations=tolerance)
    return bool(region[np.unravel_index(np.argmax(heat), heat.shape)])


def estimate_smoothness(saliency: torch.Tensor | np.ndarray, support: np.ndarray | None = None) -> float:
    """Gaussian smoothing (sigma, voxels) that gives white noise the map's lag-one autocorrelation ``rho``.

    For Gaussian-smoothed white noise ``rho = exp(-1 / (4 sigma^2))``; ``rho`` is averaged over the three axes,
    over neighbour pairs inside ``support`` (default: everywhere). Zero for a map rougher than white noise.
    """
    heat = _as_volume(saliency, "saliency")
    inside = np.ones(heat.shape, dtype=bool) if support is None else _as_volume(support, "support") > 0
    _check_same_shape(inside, heat, "support", "saliency")
    centred = heat - heat[inside].mean()
    correlations = []
    for axis in range(3):
        length = heat.shape[axis]
        first, second = (np.take(centred, np.arange(start, start + length - 1), axis=axis) for start in (0, 1))
        pairs = np.take(inside, np.arange(length - 1), axis=axis) & np.take(inside, np.arange(1, length), axis=axis)
        energy = np.sqrt((first[pairs] ** 2).sum() * (second[pairs] ** 2).sum())
        if energy > 0:
            correlations.append((first[pairs] * second[pairs]).sum() / energy)
    rho = float(np.mean(correlations)) if correlations else 0.0
    if rho <= 0.0:
        return 0.0
    return float(np.sqrt(-1.0 / (4.0 * np.log(min(rho, 1.0 - 1e-9)))))


@dataclass(frozen=True)
class RandomBaseline:
    """Scores of random smooth maps, one entry per draw."""

    mass_inside: np.ndarray
    pointing_hits: np.ndarray


def random_baseline(
    atrophy_map: torch.Tensor | np.ndarray,
    threshold: float = DEFAULT_ATROPHY_THRESHOLD,
    sigma: float = 0.0,
    support: np.ndarray | None = None,
    draws: int = 20,
    tolerance: int = 1,
    seed: int = 0,
) -> RandomBaseline:
    """Chance level of :func:`saliency_mass_inside` and :func:`pointing_game`: white noise smoothed with ``sigma``
    voxels (match a map with :func:`estimate_smoothness`), scaled to [0, 1] inside ``support`` (e.g. the brain)
    and zero outside, scored like a saliency map. On average its mass inside is the region's share of the support;
    the spread over ``draws`` says how far a map can land from that by chance."""
    if draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws}")
    region_source = _as_volume(atrophy_map, "atrophy_map")
    inside = np.ones(region_source.shape, dtype=bool) if support is None else _as_volume(support, "support") > 0
    _check_same_shape(inside, region_source, "support", "atrophy_map")
    if not inside.any():
        raise ValueError("support is empty; give a mask of the voxels a saliency map may cover (e.g. the brain)")
    rng = np.random.default_rng(seed)
    shape = region_source.shape
    mass_inside, pointing_hits = np.empty(draws), np.zeros(draws, dtype=bool)
    for draw in range(draws):
        field_values: np.ndarray = rng.standard_normal(shape, dtype=np.float32)
        if sigma > 0:  # in Fourier space: as fast for any sigma; the field wraps around, which noise may
            spectrum = ndimage.fourier_gaussian(np.fft.rfftn(field_values), sigma, n=shape[-1])
            field_values = np.fft.irfftn(spectrum, s=shape)
        low, high = field_values[inside].min(), field_values[inside].max()
        random_map = np.where(inside, (field_values - low) / max(high - low, 1e-12), 0.0)
        mass_inside[draw] = saliency_mass_inside(random_map, region_source, threshold)
        pointing_hits[draw] = pointing_game(random_map, region_source, threshold, tolerance)
    return RandomBaseline(mass_inside=mass_inside, pointing_hits=pointing_hits)


@contextlib.contextmanager
def _hooks_removed_on_exit(module: nn.Module) -> Iterator[None]:
    """Undo what MONAI's ``ModelWithHooks`` does to ``module``: it keeps no handles to the hooks it registers, so
    each call would leave two more behind (holding the last activations and their graph) and an ``inplace`` flag
    turned off."""
    forward_hooks, backward_hooks = set(module._forward_hooks), set(module._backward_hooks)
    was_full_backward_hook = module._is_full_backward_hook
    inplace = module.__dict__.get("inplace")
    try:
        yield
    finally:
        for hook_id in set(module._forward_hooks) - forward_hooks:
            del module._forward_hooks[hook_id]
        for hook_id in set(module._backward_hooks) - backward_hooks:
            del module._backward_hooks[hook_id]
        module._is_full_backward_hook = was_full_backward_hook
        if inplace is not None:
            module.inplace = inplace


def _as_batch(image: torch.Tensor, network: nn.Module) -> torch.Tensor:
    """One channel-first image as a plain float batch of one on the network's device."""
    if image.ndim != 4:
        raise ValueError(
            f"expected one preprocessed image of shape (channels, D, H, W), got shape {tuple(image.shape)}"
        )
    device = next(network.parameters()).device
    return convert_to_tensor(image, track_meta=False).float().unsqueeze(0).to(device)


def _scaled_to_unit(values: torch.Tensor) -> torch.Tensor:
    """Min-max scaling to [0, 1], a constant map becoming zeros (MONAI's default CAM normaliser flips the map)."""
    return convert_to_tensor(ScaleIntensity(minv=0.0, maxv=1.0)(values), track_meta=False).float()


def _class_probabilities(network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with eval_mode(network):
        return network(batch).float().softmax(dim=1)[0].cpu()


def _resolve_target(probabilities: torch.Tensor, target_class: int | None) -> int:
    if target_class is None:
        return int(probabilities.argmax())
    if not 0 <= int(target_class) < probabilities.numel():
        raise ValueError(
            f"target_class {target_class} is out of range: the network gives {probabilities.numel()} classes "
            f"(0..{probabilities.numel() - 1})"
        )
    return int(target_class)


def _as_volume(values: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    """A 3D float array; singleton axes (a channel, a trailing 4th axis) are dropped."""
    array = np.asarray(convert_to_tensor(values, track_meta=False).detach().cpu(), dtype=np.float64)
    volume = array.reshape([size for size in array.shape if size != 1])
    if volume.ndim != 3:
        raise ValueError(f"{name} must be a 3D volume (singleton axes allowed), got shape {array.shape}")
    return volume


def _check_same_shape(first: np.ndarray, second: np.ndarray, first_name: str, second_name: str) -> None:
    if first.shape != second.shape:
        raise ValueError(
            f"{first_name} of shape {first.shape} and {second_name} of shape {second.shape} are not on one grid; "
            "map the saliency to the scan's grid with saliency_to_original_space first"
        )


def _heat_and_region(
    saliency: torch.Tensor | np.ndarray, atrophy_map: torch.Tensor | np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    heat, atrophy = _as_volume(saliency, "saliency"), _as_volume(atrophy_map, "atrophy_map")
    _check_same_shape(heat, atrophy, "saliency", "atrophy_map")
    if not np.isfinite(heat).all() or heat.min() < 0:
        raise ValueError("saliency must be finite and non-negative (maps from grad_cam/occlusion_map are in [0, 1])")
    region = atrophy > threshold
    if not region.any():
        raise ValueError(
            f"no voxel of the atrophy map exceeds threshold {threshold} (its maximum is {atrophy.max():.4f}); "
            "lower the threshold or leave this scan out"
        )
    return heat, region
