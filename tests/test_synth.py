"""Synthetic cohort generator: determinism, disease signal, Bayes accuracy, label shuffling, storage realism."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from alz_monai.cli import _site_from_arguments, build_parser
from alz_monai.data import synth

TINY = {"subjects": 8, "sessions": 2, "spacing": 6.0, "effect": 3.0, "progress": False}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "seed0"
    synth.generate_synthetic_dataset(out, seed=0, **TINY)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _scans(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "scans.tsv", sep="\t")


def _canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.load(path))
    return np.asarray(image.dataobj, dtype=np.float64).reshape(image.shape[:3]), image.affine


def _world_coordinates(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    indices = np.stack(np.meshgrid(*(np.arange(n) for n in shape[:3]), indexing="ij"), axis=-1)
    return nib.affines.apply_affine(affine, indices)


def _ventricle_volume_ml(path: Path) -> float:
    """Dark (CSF-like) voxels in a box around the lateral ventricles, relative to the scan's bright tissue."""
    data, affine = _canonical(path)
    x, y, z = np.moveaxis(_world_coordinates(affine, data.shape), -1, 0)
    box = (np.abs(x) < 25) & (y > -45) & (y < 30) & (z > 0) & (z < 30)
    dark = box & (data < 0.5 * np.percentile(data, 99))
    return float(dark.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000.0)


def _hippocampal_intensity(path: Path) -> float:
    """Mean intensity within 8 mm of both hippocampal centres, relative to the scan's bright tissue."""
    data, affine = _canonical(path)
    world = _world_coordinates(affine, data.shape)
    near = np.zeros(data.shape, dtype=bool)
    for centre in synth.HIPPOCAMPUS_CENTRES_MM:
        near |= np.linalg.norm(world - np.array(centre), axis=-1) < 8.0
    return float(data[near].mean() / np.percentile(data, 99))


def test_same_seed_gives_identical_files_whatever_the_workers_and_another_seed_differs(dataset, tmp_path):
    again = synth.generate_synthetic_dataset(tmp_path / "again", seed=0, workers=2, **TINY)
    synth.generate_synthetic_dataset(tmp_path / "other", seed=1, **TINY)
    reference = _files(dataset)
    assert _files(tmp_path / "again") == reference
    assert again == json.loads((dataset / "synth_parameters.json").read_text())

    other = _files(tmp_path / "other")
    assert other["participants.tsv"] != reference["participants.tsv"]
    first_scan = _scans(dataset)["image"][0]
    assert not np.allclose(_canonical(dataset / first_scan)[0], _canonical(tmp_path / "other" / first_scan)[0])


def test_tables_and_parameters_describe_the_written_files(dataset):
    scans = _scans(dataset)
    participants = pd.read_csv(dataset / "participants.tsv", sep="\t")
    parameters = json.loads((dataset / "synth_parameters.json").read_text())

    assert list(scans.columns[:7]) == ["image", "label", "participant_id", "session_id", "age", "sex", "atrophy_map"]
    assert list(participants.columns) == ["participant_id", "diagnosis", "age", "sex", "severity"]
    assert len(scans) == 16 and len(participants) == 8
    assert sorted(scans["session_id"].unique()) == ["ses-M00", "ses-M12"]
    assert all((dataset / path).is_file() for path in [*scans["image"], *scans["atrophy_map"]])
    assert scans["image"][0] == "sub-0001/ses-M00/anat/sub-0001_ses-M00_T1w.nii.gz"
    follow_up = scans.groupby("participant_id")["age"].agg(["min", "max"])
    np.testing.assert_allclose(follow_up["max"] - follow_up["min"], 1.0, atol=0.11)
    assert participants["age"].between(60, 90).all()

    assert parameters["participants_per_class"] == {"CN": 4, "AD": 4}
    assert parameters["scans_per_class"] == {"CN": 8, "AD": 8}
    assert parameters["seed"] == 0 and parameters["effect"] == 3.0 and parameters["classes"] == ["CN", "AD"]
    assert parameters["nilearn_version"] and parameters["generator_version"] == synth.GENERATOR_VERSION
    assert parameters["theoretical_best_accuracy"] == synth.theoretical_best_accuracy(3.0, sessions=2)
    assert json.loads((dataset / "dataset_description.json").read_text())["DatasetType"] == "raw"


def test_alzheimer_scans_show_more_atrophy_than_controls(dataset):
    scans = _scans(dataset)
    scans["ventricles_ml"] = [_ventricle_volume_ml(dataset / path) for path in scans["image"]]
    scans["hippocampus"] = [_hippocampal_intensity(dataset / path) for path in scans["image"]]
    scans["atrophy_mass"] = [_canonical(dataset / path)[0].sum() for path in scans["atrophy_map"]]
    means = scans.groupby("label")[["ventricles_ml", "hippocampus", "atrophy_mass", "latent_atrophy"]].mean()

    assert means.loc["AD", "ventricles_ml"] > 1.3 * means.loc["CN", "ventricles_ml"]
    assert means.loc["AD", "hippocampus"] < means.loc["CN", "hippocampus"]
    assert means.loc["AD", "atrophy_mass"] > 1.5 * means.loc["CN", "atrophy_mass"]
    assert (scans.loc[scans["label"] == "CN", "atrophy_mass"] > 0).all()  # ageing atrophies controls too
    progression = scans.pivot(index="participant_id", columns="session_id", values="latent_atrophy")
    labels = scans.groupby("participant_id")["label"].first()
    yearly = (progression["ses-M12"] - progression["ses-M00"]).groupby(labels).mean()
    assert yearly["AD"] > yearly["CN"] > 0


def test_more_atrophy_load_darkens_hippocampi_and_enlarges_ventricles_of_the_same_scan(tmp_path):
    def render(load: float) -> Path:
        image = tmp_path / f"load{load}.nii.gz"
        synth._synthesise_scan(synth._ScanPlan(
            seed=3, spacing=6.0, subject_index=0, session_index=0, atrophy_load=load, axcodes="RAS", dtype="float32",
            singleton_4d=False, image_path=image, atrophy_path=tmp_path / f"atrophy{load}.nii.gz"))
        return image

    mild, severe = render(0.5), render(4.0)
    assert _hippocampal_intensity(severe) < _hippocampal_intensity(mild) - 0.02
    assert _ventricle_volume_ml(severe) > 1.5 * _ventricle_volume_ml(mild)
    mild_map, severe_map = (_canonical(tmp_path / f"atrophy{load}.nii.gz")[0] for load in (0.5, 4.0))
    assert severe_map.sum() > 3 * mild_map.sum() and 0 <= mild_map.min() and severe_map.max() <= 1


def test_three_classes_are_ordered_cn_mci_ad(tmp_path):
    synth.generate_synthetic_dataset(tmp_path / "three", subjects=30, sessions=1, classes=("CN", "MCI", "AD"),
                                     spacing=6.0, seed=2, progress=False)
    scans = _scans(tmp_path / "three")
    scans["atrophy_mass"] = [_canonical(tmp_path / "three" / path)[0].sum() for path in scans["atrophy_map"]]
    means = scans.groupby("label")[["latent_atrophy", "atrophy_mass"]].mean()
    for column in means:
        assert means.loc["CN", column] < means.loc["MCI", column] < means.loc["AD", column]
    assert scans["label"].value_counts().to_dict() == {"CN": 10, "MCI": 10, "AD": 10}


def test_theoretical_best_accuracy_is_calibrated_and_increases_with_the_effect():
    default = synth.theoretical_best_accuracy(synth.DEFAULT_EFFECT)
    assert 0.86 <= default <= 0.90
    accuracies = [synth.theoretical_best_accuracy(effect, draws=200_000) for effect in (0.0, 1.0, 2.0, 3.0, 4.0)]
    assert accuracies == sorted(accuracies) and len(set(accuracies)) == 5
    assert accuracies[0] == pytest.approx(0.5, abs=0.005)
    # Without ageing or follow-up the latent is N(0, 1) vs N(effect, 1): Bayes accuracy Phi(effect / 2).
    exact = synth.theoretical_best_accuracy(2.0, sessions=1, age_effect=0.0)
    assert exact == pytest.approx(norm.cdf(1.0), abs=0.002)
    three = synth.theoretical_best_accuracy(0.0, classes=("CN", "MCI", "AD"), draws=200_000)
    assert three == pytest.approx(1 / 3, abs=0.005)
    assert synth.theoretical_best_accuracy(2.0, draws=10_000, seed=5) == synth.theoretical_best_accuracy(
        2.0, draws=10_000, seed=5)


def test_shuffled_labels_keep_images_and_permute_diagnoses_per_participant(dataset, tmp_path):
    parameters = synth.generate_synthetic_dataset(tmp_path / "shuffled", seed=0, shuffle_labels=True, **TINY)
    original, shuffled = _files(dataset), _files(tmp_path / "shuffled")
    images = [name for name in original if name.endswith(".nii.gz")]
    assert len(images) == 32 and all(shuffled[name] == original[name] for name in images)

    before, after = _scans(dataset), _scans(tmp_path / "shuffled")
    assert (after["image"] == before["image"]).all()
    assert (after.groupby("participant_id")["label"].nunique() == 1).all()
    assert (after["label"] != before["label"]).any()
    assert sorted(after["label"]) == sorted(before["label"])
    diagnosis = pd.read_csv(tmp_path / "shuffled" / "participants.tsv", sep="\t").set_index("participant_id")
    assert (after["label"] == diagnosis.loc[after["participant_id"], "diagnosis"].to_numpy()).all()
    assert parameters["theoretical_best_accuracy"] == 0.5
    assert parameters["theoretical_best_accuracy_unshuffled"] > 0.9


def test_scans_mix_orientations_and_dtypes_yet_share_one_world_grid(dataset):
    scans = _scans(dataset)
    images = [nib.load(dataset / path) for path in scans["image"]]
    orientations = {nib.aff2axcodes(image.affine) for image in images}
    assert len(orientations) >= 3 and ("R", "A", "S") in orientations

    assert any(image.ndim == 4 and image.shape[-1] == 1 for image in images)
    dtypes = {image.get_data_dtype().name for image in images}
    assert dtypes == {"int16", "float32"}
    slopes = [image.dataobj.slope for image in images if image.get_data_dtype() == np.int16]
    assert all(slope not in (0.0, 1.0) for slope in slopes)

    canonical = [_canonical(dataset / path) for path in scans["image"]]
    reference_affine = canonical[0][1]
    assert all(np.allclose(affine, reference_affine) and data.shape == canonical[0][0].shape
               for data, affine in canonical)
    mean_image = np.mean([data / np.percentile(data, 99) for data, _ in canonical], axis=0)
    for data, _ in canonical:
        assert np.corrcoef(data.ravel(), mean_image.ravel())[0, 1] > 0.85

    for path, atrophy_path in zip(scans["image"], scans["atrophy_map"]):
        image, atrophy = nib.load(dataset / path), nib.load(dataset / atrophy_path)
        assert np.allclose(image.affine, atrophy.affine) and image.shape[:3] == atrophy.shape
        assert atrophy.get_data_dtype() == np.float32


@pytest.mark.parametrize("axcodes", synth.STORAGE_ORIENTATIONS)
def test_reorientation_keeps_the_world_space_image(axcodes):
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-4.0, -5.0, -6.0)
    stored = synth._reorient(volume, affine, axcodes)
    assert nib.aff2axcodes(stored.affine) == tuple(axcodes)
    back = nib.as_closest_canonical(stored)
    np.testing.assert_array_equal(np.asarray(back.dataobj), volume)
    np.testing.assert_allclose(back.affine, affine)


def test_interrupted_run_leaves_no_partial_or_temporary_files(tmp_path, monkeypatch):
    real_compress, calls = synth.gzip.compress, []

    def failing_compress(data: bytes, **kwargs) -> bytes:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_compress(data, **kwargs)

    monkeypatch.setattr(synth.gzip, "compress", failing_compress)
    with pytest.raises(KeyboardInterrupt):
        synth.generate_synthetic_dataset(tmp_path / "cut", subjects=2, sessions=1, spacing=6.0, progress=False)
    written = list((tmp_path / "cut").rglob("*.nii.gz"))
    assert len(written) == 2 and all(nib.load(path).get_fdata().size for path in written)
    assert not [path for path in (tmp_path / "cut").rglob("*") if ".tmp" in path.name]


def test_no_temporary_files_remain(dataset):
    assert not [path for path in dataset.rglob("*") if ".tmp" in path.name]


def test_non_empty_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="busy.*not empty.*overwrite=True"):
        synth.generate_synthetic_dataset(out, subjects=2, sessions=1, spacing=6.0, progress=False)
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]
    synth.generate_synthetic_dataset(out, subjects=2, sessions=1, spacing=6.0, progress=False, overwrite=True)
    assert (out / "scans.tsv").is_file() and (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"classes": ("CN", "FTD")}, "classes must be"),
        ({"classes": ("CN", "CN")}, "classes must be"),
        ({"subjects": 1}, "at least one participant per class"),
        ({"spacing": 0.5}, "spacing"),
        ({"effect": -1.0}, "effect"),
        ({"sessions": 0}, "sessions"),
    ],
)
def test_bad_parameters_are_refused_with_a_clear_message(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        synth.generate_synthetic_dataset(tmp_path / "bad", **{"progress": False, **arguments})
    assert not (tmp_path / "bad").exists()


def test_plot_examples_writes_a_png(dataset, tmp_path):
    written = synth.plot_examples(dataset, tmp_path / "examples.png", per_class=1)
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="scans.tsv"):
        synth.plot_examples(tmp_path, tmp_path / "none.png")


# A site without random intensity effects, so that one effect at a time can be measured exactly.
CLEAN_SITE = synth.SiteEffects(
    name="clean", noise_fraction_range=(0.0, 0.0), bias_log_sd_range=(0.0, 0.0), gamma_log_sd=0.0,
    signal_scale_range=(1.0, 1.0), orientations=("RAS",), float32_fraction=1.0, singleton_4d_fraction=0.0)


def _render(tmp_path: Path, **site_fields) -> tuple[np.ndarray, np.ndarray]:
    """One scan of participant 0 at 6 mm with ``CLEAN_SITE`` modified by ``site_fields``: (voxels, affine)."""
    site = synth.site_effects(CLEAN_SITE, **site_fields)
    image = tmp_path / f"{site.name}_{abs(hash(site))}.nii.gz"
    synth._synthesise_scan(synth._ScanPlan(
        seed=3, spacing=6.0, subject_index=0, session_index=0, atrophy_load=1.0, axcodes="RAS", dtype="float32",
        singleton_4d=False, image_path=image, atrophy_path=tmp_path / f"atrophy_{image.name}", site=site))
    return _canonical(image)


def test_site_intensity_effects_follow_their_definitions(tmp_path):
    clean, _ = _render(tmp_path)
    brain = clean > 0.05
    # contrast c gives fluid + c * (tissue - fluid): affine in c
    flat, mid = _render(tmp_path, contrast=0.5)[0], _render(tmp_path, contrast=0.75)[0]
    np.testing.assert_allclose(clean - flat, 2.0 * (mid - flat), atol=1e-5)
    assert flat[brain].std() < 0.8 * clean[brain].std()
    # gamma: intensities raised to exp(gamma_log_mean)
    np.testing.assert_allclose(_render(tmp_path, gamma_log_mean=0.2)[0], clean ** np.exp(0.2), rtol=1e-4, atol=1e-6)
    # bias field: the log ratio to the clean scan scales with the bias strength
    weak, strong = (np.log(_render(tmp_path, bias_log_sd_range=(sd, sd))[0][brain] / clean[brain])
                    for sd in (0.15, 0.3))
    assert weak.std() > 0.02 and strong.std() == pytest.approx(2.0 * weak.std(), rel=1e-3)
    # Rician noise of SD 0.05 in the empty background: Rayleigh, mean 0.05 * sqrt(pi / 2)
    noisy = _render(tmp_path, noise_fraction_range=(0.05, 0.05))[0]
    assert noisy[clean == 0].mean() == pytest.approx(0.05 * np.sqrt(np.pi / 2), rel=0.05)


def test_thick_slices_blur_across_the_slice_axis_only(tmp_path):
    thin, affine = _render(tmp_path)
    thick, thick_affine = _render(tmp_path, slice_axis=2, slice_thickness=2.0)
    np.testing.assert_allclose(thick_affine, affine)

    # fine detail (second differences) kept along x, y, z: oblique structures lose some along every axis
    kept = [np.abs(np.diff(thick, n=2, axis=axis)).mean() / np.abs(np.diff(thin, n=2, axis=axis)).mean()
            for axis in range(3)]
    assert kept[2] < 0.7 and kept[2] < 0.8 * min(kept[:2])


def test_named_sites_differ_in_geometry_and_storage_and_are_recorded(tmp_path):
    small = {**TINY, "subjects": 4, "sessions": 1}
    synth.generate_synthetic_dataset(tmp_path / "default", seed=0, **small)
    baseline = _scans(tmp_path / "default")
    for name in ("siteA", "siteB", "siteC"):
        site = synth.SITES[name]
        out = tmp_path / name
        parameters = synth.generate_synthetic_dataset(out, seed=0, site=name, **small)
        assert json.loads((out / "synth_parameters.json").read_text())["site"] == site.as_record()
        voxel = 6.0 * np.array(site.voxel_scale)
        assert parameters["voxel_size_mm"] == voxel.tolist()
        # the same participants and atrophy, whatever the scanner
        assert (out / "participants.tsv").read_bytes() == (tmp_path / "default" / "participants.tsv").read_bytes()
        pd.testing.assert_frame_equal(_scans(out), baseline)

        images = [nib.load(out / path) for path in baseline["image"]]
        assert {"".join(nib.aff2axcodes(image.affine)) for image in images} == set(site.orientations)
        float32 = sum(image.get_data_dtype() == np.float32 for image in images)
        assert float32 == int(np.ceil(site.float32_fraction * len(images)))
        data, affine = _canonical(out / baseline["image"][0])
        np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), voxel)
        if site.field_of_view_mm is not None:
            extent = (np.array(data.shape) - 1) * voxel
            assert np.all(extent >= site.field_of_view_mm) and np.all(extent < np.array(site.field_of_view_mm) + voxel)
        # the brain stays inside the field of view
        assert np.percentile(data, 99) > 10 * np.median(np.concatenate([data[0].ravel(), data[-1].ravel()]))


def test_site_parameters_are_checked(tmp_path):
    assert synth.site_effects("siteA") is synth.SITES["siteA"]
    modified = synth.site_effects("siteA", noise_fraction_range=[0.1, 0.2], contrast=0.9)
    assert modified.name == "siteA+contrast+noise_fraction_range" and modified.noise_fraction_range == (0.1, 0.2)
    assert modified.voxel_scale == synth.SITES["siteA"].voxel_scale
    with pytest.raises(ValueError, match="unknown site 'siteZ'.*siteA"):
        synth.site_effects("siteZ")
    with pytest.raises(ValueError, match="unknown site parameters \\['loudness'\\]"):
        synth.site_effects("siteA", loudness=2)
    with pytest.raises(ValueError, match="noise_fraction_range must be.*orientations must be"):
        synth.SiteEffects(noise_fraction_range=(0.2, 0.1), orientations=("RAX",))
    with pytest.raises(ValueError, match="finer than the 1 mm template"):
        synth.generate_synthetic_dataset(tmp_path / "fine", spacing=1.0, progress=False,
                                         site=synth.SiteEffects(voxel_scale=(0.8, 1.0, 1.0)))
    assert not (tmp_path / "fine").exists()


def test_every_site_parameter_has_a_command_line_option():
    parser = build_parser()
    given = {"voxel_scale": "1,1,2", "slice_axis": "0", "slice_thickness": "1.5", "field_of_view_mm": "200,220,200",
             "field_of_view_shift_mm": "0,-5,10", "contrast": "0.9", "gamma_log_mean": "0.1", "gamma_log_sd": "0.2",
             "bias_log_sd_range": "0.1,0.3", "noise_fraction_range": "0.02,0.03", "signal_scale_range": "100,200",
             "orientations": "RAS,LPS", "float32_fraction": "0.5", "singleton_4d_fraction": "0.2"}
    assert set(given) == set(synth.SITE_PARAMETERS)
    arguments = ["synth", "out", "--site", "siteC", *[token for name, value in given.items()
                                      for token in ("--" + name.replace("_", "-"), value)]]
    site = _site_from_arguments(parser.parse_args(arguments))
    assert site.voxel_scale == (1.0, 1.0, 2.0) and site.slice_axis == 0 and site.orientations == ("RAS", "LPS")
    assert site.noise_fraction_range == (0.02, 0.03) and site.name.startswith("siteC+")
    assert _site_from_arguments(parser.parse_args(["synth", "out", "--site", "siteA"])) is synth.SITES["siteA"]
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "out", "--voxel-scale", "1,2"])
