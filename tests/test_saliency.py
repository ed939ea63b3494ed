"""Saliency: planted-signal localisation, maps back on the original grid in any storage orientation, scores."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from scipy import ndimage
from torch import nn

from alz_monai import saliency
from alz_monai.networks import Mosa, MosaShared, resnet10_3d

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO / "bundles" / "ad_resnet3d" / "configs" / "train.yaml"
GRID = 32
CUBE = (slice(6, 14), slice(16, 24), slice(10, 18))
"""Where the planted signal sits: an 8^3 cube, 1.6% of the 32^3 volume."""
STORAGE = [("RAS", False), ("LPS", False), ("PIR", False), ("ASL", True)]
"""Orientations the synthetic generator writes, and a 4D scan with a singleton last axis."""


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class BlobDetector(nn.Module):
    """Hand-made classifier whose AD logit grows with the volume of bright blobs (mean of a thresholded 3^3 box
    filter) and whose CN logit falls with it; nothing else in the image matters. Its weights are frozen."""

    def __init__(self, scale: float = 30.0) -> None:
        super().__init__()
        self.detector = nn.Sequential(nn.Conv3d(1, 1, kernel_size=3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Linear(1, 2)
        with torch.no_grad():
            self.detector[0].weight.fill_(1.0 / 27.0)
            self.detector[0].bias.fill_(-1.0)
            self.classifier.weight.copy_(torch.tensor([[-scale], [scale]]))
            self.classifier.bias.zero_()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.detector(x)), 1))


@pytest.fixture(scope="module")
def planted() -> tuple[torch.Tensor, np.ndarray]:
    """A noisy image with a bright cube, and the cube as a ground-truth map."""
    image = 0.1 * torch.randn(1, GRID, GRID, GRID, generator=torch.Generator().manual_seed(1))
    image[(0, *CUBE)] += 3.0
    truth = np.zeros((GRID,) * 3)
    truth[CUBE] = 1.0
    return image, truth


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_planted_signal_is_found_and_beats_random_maps(method: str, planted: tuple[torch.Tensor, np.ndarray]) -> None:
    image, truth = planted
    network = BlobDetector()
    with torch.no_grad():  # saliency must work inside an evaluation loop too
        if method == "gradcam":
            heat = saliency.grad_cam(network, image, layer="detector")
        else:
            heat = saliency.occlusion_map(network, image, mask_size=8, overlap=0.5, batch_size=64)
    assert type(heat) is torch.Tensor and heat.shape == (1, GRID, GRID, GRID) and heat.dtype == torch.float32
    assert heat.min() == 0.0 and heat.max() == 1.0

    mass = saliency.saliency_mass_inside(heat, truth, threshold=0.5)
    chance = saliency.random_baseline(truth, 0.5, sigma=saliency.estimate_smoothness(heat), draws=10)
    uniform_share = truth.mean()
    assert mass > (0.9 if method == "gradcam" else 0.4)  # occlusion blurs by the mask size
    assert mass > 20 * uniform_share and mass > 10 * chance.mass_inside.max()
    assert saliency.pointing_game(heat, truth, threshold=0.5, tolerance=0)
    assert chance.pointing_hits.mean() < 0.5


def test_no_evidence_for_a_class_gives_an_all_zero_map(planted: tuple[torch.Tensor, np.ndarray]) -> None:
    image, _ = planted
    network = BlobDetector()
    assert saliency.grad_cam(network, image, target_class=0, layer="detector").abs().max() == 0.0
    assert saliency.occlusion_map(network, image, target_class=0, mask_size=8, batch_size=64).abs().max() == 0.0


def test_grad_cam_leaves_the_network_as_it_found_it(planted: tuple[torch.Tensor, np.ndarray]) -> None:
    image, _ = planted
    network = BlobDetector().train()
    relu = network.detector[1]
    relu.inplace = True
    for _ in range(2):
        saliency.grad_cam(network, image, target_class=1, layer="detector.1")
    assert not relu._forward_hooks and not relu._backward_hooks and relu.inplace
    assert network.training
    assert all(param.grad is None for param in network.parameters())


def test_default_cam_layer_and_grad_cam_of_the_project_networks() -> None:
    resnet = resnet10_3d(num_classes=2)
    assert saliency.default_cam_layer(resnet) == "layer4"
    tiny_transformer = {"embed_dim": 16, "depth": 1, "num_heads": 2}
    for mosa_class in (Mosa, MosaShared):
        mosa = mosa_class((GRID,) * 3, backbone="resnet10", **tiny_transformer)
        assert saliency.default_cam_layer(mosa) == "backbone.layer4"
    heat = saliency.grad_cam(resnet, torch.randn(1, GRID, GRID, GRID), layer="layer2")
    assert heat.shape == (1, GRID, GRID, GRID) and torch.isfinite(heat).all()
    assert 0.0 <= heat.min() and heat.max() == 1.0
    with pytest.raises(ValueError, match="layer="):
        saliency.default_cam_layer(nn.Sequential(nn.Conv3d(1, 1, 3)))
    with pytest.raises(ValueError, match="no module named 'layer9'"):
        saliency.grad_cam(resnet, torch.randn(1, GRID, GRID, GRID), layer="layer9")
    with pytest.raises(ValueError, match="out of range"):
        saliency.occlusion_map(resnet, torch.randn(1, GRID, GRID, GRID), target_class=2)
    with pytest.raises(ValueError, match="channels, D, H, W"):
        saliency.grad_cam(resnet, torch.randn(1, 1, GRID, GRID, GRID))


def test_mass_inside_and_pointing_game_on_hand_made_maps() -> None:
    atrophy = np.zeros((5, 5, 5))
    atrophy[1, 1, 1] = 0.3
    atrophy[1, 1, 2] = 0.05  # not above the threshold
    heat = np.zeros((5, 5, 5))
    heat[1, 1, 1], heat[1, 1, 2], heat[4, 4, 4] = 0.5, 0.25, 0.25
    assert saliency.saliency_mass_inside(heat, atrophy, threshold=0.05) == pytest.approx(0.5)
    assert saliency.saliency_mass_inside(heat, atrophy, threshold=0.01) == pytest.approx(0.75)
    assert np.isnan(saliency.saliency_mass_inside(np.zeros((5, 5, 5)), atrophy, threshold=0.05))
    # a singleton channel (or a 4D scan's last axis) is fine
    assert saliency.saliency_mass_inside(torch.from_numpy(heat)[None], atrophy[..., None], 0.05) == pytest.approx(0.5)

    assert saliency.pointing_game(heat, atrophy, threshold=0.05)
    off_by_one = np.zeros((5, 5, 5))
    off_by_one[2, 2, 2] = 1.0  # a diagonal neighbour of the region
    assert saliency.pointing_game(off_by_one, atrophy, threshold=0.05, tolerance=1)
    assert not saliency.pointing_game(off_by_one, atrophy, threshold=0.05, tolerance=0)
    off_by_two = np.zeros((5, 5, 5))
    off_by_two[3, 1, 1] = 1.0
    assert not saliency.pointing_game(off_by_two, atrophy, threshold=0.05, tolerance=1)
    assert not saliency.pointing_game(np.full((5, 5, 5), 0.5), atrophy, threshold=0.05)

    with pytest.raises(ValueError, match="not on one grid"):
        saliency.saliency_mass_inside(np.ones((4, 5, 5)), atrophy)
    with pytest.raises(ValueError, match="exceeds threshold 0.5"):
        saliency.pointing_game(heat, atrophy, threshold=0.5)
    with pytest.raises(ValueError, match="non-negative"):
        saliency.saliency_mass_inside(-heat, atrophy)


def test_smoothness_estimate_and_random_baseline() -> None:
    rng = np.random.default_rng(0)
    for sigma in (2.0, 4.0):
        smooth = ndimage.gaussian_filter(rng.standard_normal((48, 48, 48)), sigma)
        assert saliency.estimate_smoothness(smooth) == pytest.approx(sigma, rel=0.15)
    assert saliency.estimate_smoothness(rng.standard_normal((24, 24, 24))) < 0.5

    half = np.zeros((24, 24, 24))
    half[:12] = 1.0
    support = np.zeros((24, 24, 24), dtype=bool)
    support[6:] = True  # the region covers a third of the support
    baseline = saliency.random_baseline(half, 0.5, sigma=2.0, support=support, draws=30, seed=3)
    assert baseline.mass_inside.mean() == pytest.approx(1 / 3, abs=0.08)
    assert 0.0 < baseline.pointing_hits.mean() < 1.0
    again = saliency.random_baseline(half, 0.5, sigma=2.0, support=support, draws=30, seed=3)
    np.testing.assert_array_equal(baseline.mass_inside, again.mass_inside)
    outside = saliency.random_baseline(half, 0.5, sigma=2.0, support=~(half > 0), draws=5)
    assert (outside.mass_inside == 0).all() and not outside.pointing_hits.any()


@pytest.fixture(scope="module")
def stored_scans(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> dict[str, Path]:
    """One synthetic scan stored in several orientations, one of them as a 4D scan with a singleton last axis."""
    root = tmp_path_factory.mktemp("saliency")
    canonical = nib.as_closest_canonical(nib.load(sorted(tiny_dataset.rglob("*_T1w.nii.gz"))[0]))
    data = np.asarray(canonical.dataobj, dtype=np.float32).reshape(canonical.shape[:3])
    ras = nib.Nifti1Image(data, canonical.affine)
    scans = {}
    for axcodes, singleton_4d in STORAGE:
        stored = ras.as_reoriented(nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(axcodes)))
        volume = np.asarray(stored.dataobj)
        image = nib.Nifti1Image(volume[..., None] if singleton_4d else volume, stored.affine)
        image.set_qform(stored.affine, code=1)
        image.set_sform(stored.affine, code=1)
        scans[axcodes] = root / "scans" / f"sub-01_{axcodes}_T1w.nii.gz"
        scans[axcodes].parent.mkdir(exist_ok=True)
        nib.save(image, scans[axcodes])
    return scans


@pytest.fixture(scope="module")
def transform():
    """The bundle's inference preprocessing at 32^3 and 6 mm."""
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser.update({"spatial_size": [GRID] * 3, "pixdim": [6.0] * 3, "cache_device": "cpu"})
    return parser.get_parsed_content("validate#transforms")


def test_explain_scan_writes_maps_on_the_original_grid_in_every_orientation(
    stored_scans: dict[str, Path], transform, tmp_path: Path
) -> None:
    network = resnet10_3d(num_classes=2)
    canonical_maps = {}
    for axcodes, scan in stored_scans.items():
        explanation = saliency.explain_scan(
            network, transform, scan, tmp_path / axcodes, class_names=("CN", "AD"), target_class="AD",
            gradcam_layer="layer2", occlusion_mask_size=16, occlusion_overlap=0.5,
        )
        assert explanation.target_class == "AD" and sum(explanation.probabilities.values()) == pytest.approx(1.0)
        reference = nib.load(scan)
        for method in saliency.SALIENCY_METHODS:
            path = explanation.saliency_paths[method]
            assert path == tmp_path / axcodes / f"{scan.name[:-7]}_{method}.nii.gz"
            written = nib.load(path)
            assert written.shape == reference.shape
            np.testing.assert_allclose(written.affine, reference.affine, atol=1e-4)
            assert nib.aff2axcodes(written.affine) == tuple(axcodes)
            values = np.asarray(written.dataobj)
            assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.1
            canonical = nib.as_closest_canonical(written)
            canonical_maps.setdefault(method, []).append(np.asarray(canonical.dataobj).reshape(canonical.shape[:3]))
            assert explanation.overlay_paths[method].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same brain in any storage order gives the same map in world space
    for maps in canonical_maps.values():
        for other in maps[1:]:
            np.testing.assert_allclose(other, maps[0], atol=1e-5)


def test_inverse_mapping_puts_each_value_at_its_world_position(stored_scans: dict[str, Path], transform) -> None:
    """A map equal to each voxel's world x coordinate on the preprocessed grid must come back as the world x
    coordinate of each original voxel (up to interpolation), for a scan stored with permuted and flipped axes."""
    scan = stored_scans["PIR"]
    image = transform({"image": str(scan)})["image"]
    preprocessed_affine = np.asarray(image.affine, dtype=np.float64)
    world_x = _world_coordinates(preprocessed_affine, image.shape[1:])[..., 0]
    low, high = world_x.min(), world_x.max()
    ramp = torch.from_numpy((world_x - low) / (high - low)).float()[None]

    original = saliency.saliency_to_original_space(ramp, image, transform)
    reference = nib.load(scan)
    assert tuple(original.shape) == (1, *reference.shape[:3])
    np.testing.assert_allclose(np.asarray(original.affine), reference.affine, atol=1e-4)
    original_world = _world_coordinates(reference.affine, reference.shape[:3])
    # compare where the original voxel lies well inside the preprocessed grid (away from its zero-padded border)
    position = np.einsum("ij,...j->...i", np.linalg.inv(preprocessed_affine)[:3, :3], original_world)
    position += np.linalg.inv(preprocessed_affine)[:3, 3]
    inside = np.all((position >= 1.0) & (position <= GRID - 2.0), axis=-1)
    assert inside.sum() > 1000
    expected = (original_world[..., 0] - low) / (high - low)
    np.testing.assert_allclose(original[0].numpy()[inside], expected[inside], atol=0.02)


def test_bad_inputs_are_refused_with_clear_errors(stored_scans: dict[str, Path], transform, tmp_path: Path) -> None:
    scan = stored_scans["RAS"]
    image = transform({"image": str(scan)})["image"]
    with pytest.raises(ValueError, match="no record of the transforms"):
        saliency.saliency_to_original_space(torch.zeros(1, GRID, GRID, GRID), image.as_tensor(), transform)
    with pytest.raises(ValueError, match="does not match the preprocessed image's grid"):
        saliency.saliency_to_original_space(torch.zeros(1, 16, 16, 16), image, transform)
    with pytest.raises(ValueError, match=f"does not fit {scan}"):
        saliency.save_saliency_nifti(np.zeros((GRID,) * 3), scan, tmp_path / "map.nii.gz")
    network = resnet10_3d(num_classes=2)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz does not exist"):
        saliency.explain_scan(network, transform, tmp_path / "missing.nii.gz", tmp_path)
    with pytest.raises(ValueError, match="Unknown saliency methods"):
        saliency.explain_scan(network, transform, scan, tmp_path, methods=("lime",))
    with pytest.raises(ValueError, match="not one of the classes"):
        saliency.explain_scan(network, transform, scan, tmp_path, target_class="MCI")
    with pytest.raises(ValueError, match="gives 2 class scores but class_names has 3"):
        saliency.explain_scan(network, transform, scan, tmp_path, class_names=("CN", "MCI", "AD"))


def test_overlay_png_is_written(tmp_path: Path) -> None:
    image = np.random.default_rng(0).normal(size=(20, 24, 16))
    heat = np.zeros((20, 24, 16))
    heat[5:9, 10:14, 4:8] = 1.0
    out = saliency.plot_saliency_overlay(image, heat, tmp_path / "overlay.png", affine=np.diag([1.0, 1.5, 2.0, 1.0]),
                                         title="t")
    assert out == tmp_path / "overlay.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="not on one grid"):
        saliency.plot_saliency_overlay(image, heat[:10], tmp_path / "bad.png")


def _world_coordinates(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    indices = np.stack(np.meshgrid(*(np.arange(n) for n in shape[:3]), indexing="ij"), axis=-1).astype(np.float64)
    return indices @ affine[:3, :3].T + affine[:3, 3]
