"""Do the saliency maps of a stage-1 model point at the atrophy? Grad-CAM and occlusion against the synthetic truth.

For every AD scan of the evaluation split (test by default) of a synthetic dataset, both maps are computed through
``alz_monai.saliency.explain_scan`` (so on the scan's own grid, as a user gets them) and scored against the scan's
ground-truth atrophy map: the share of saliency mass inside the atrophied region (atrophy > --threshold) and the
pointing game (peak within --tolerance voxels of it). Chance levels: random smooth maps as smooth as each saliency
map (the estimate of ``estimate_smoothness``), confined to the scan's foreground, scored the same way; and the
region's share of the foreground, which a uniform map would score. The share of saliency on the foreground at all
tells a model that looks at the brain from one that keys on the background.

Usage:
  python benchmarks/saliency_validation.py --quick     # CPU smoke check: tiny data, 3 epochs (about a minute)
  python benchmarks/saliency_validation.py             # generate data, train with the bundle, score
  python benchmarks/saliency_validation.py --dataset DATA --run-dir RUN [--set KEY=VALUE ...]  # a trained run

``--set`` takes the bundle overrides the run was trained with (``--set spatial_size=[96,112,96]
--set network_def#name=resnet10``); they also go to the training when this script trains. Prints a table and writes
``saliency_validation_<date>.json`` (date, device, versions, settings, per-scan scores) to --output-dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import yaml
from monai.bundle import ConfigParser
from scipy import stats

from alz_monai.data import ForegroundThreshold
from alz_monai.data.synth import generate_synthetic_dataset
from alz_monai.demo import BUNDLES_DIR, run_bundle
from alz_monai.saliency import (
    DEFAULT_ATROPHY_THRESHOLD,
    SALIENCY_METHODS,
    estimate_smoothness,
    explain_scan,
    pointing_game,
    random_baseline,
    saliency_mass_inside,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, write_result  # noqa: E402

logger = logging.getLogger("saliency_validation")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = "ad_resnet3d"
TARGET_CLASS = "AD"
# Settings --quick and a full run use unless given: (full, quick).
PRESETS: dict[str, tuple[Any, Any]] = {
    "subjects": (200, 16),
    "spacing": (2.0, 6.0),
    "epochs": (50, 3),
    "occlusion_mask_size": (16, 8),
    "random_draws": (20, 5),
    "gradcam_layer": (None, "layer2"),  # layer4 of a 32^3 input is a single voxel
    "work_dir": (REPO / "runs" / "saliency_validation", REPO / "runs" / "saliency_validation_quick"),
}
# Bundle overrides of --quick (the full run keeps the bundle's defaults); --set wins over them.
QUICK_OVERRIDES = {
    "spatial_size": "[32,32,32]",
    "pixdim": "[6,6,6]",
    "network_def#name": "resnet10",
    "split_ratios": "[0.5,0.2,0.3]",
    "bootstrap_resamples": "50",
}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny CPU-sized smoke check (not a result)")
    parser.add_argument("--dataset", type=Path, help="synthetic dataset folder (scans.tsv with atrophy_map); "
                        "default: generate one in --work-dir")
    parser.add_argument("--run-dir", type=Path, help="trained run (checkpoints/model_best.pt, splits.tsv); "
                        "default: train one with the bundle in --work-dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="bundle config override (YAML value), repeatable: those the run was trained with")
    parser.add_argument("--work-dir", type=Path, help="generated data, trained run and saliency maps go here")
    parser.add_argument("--subjects", type=int, help="participants of a generated dataset")
    parser.add_argument("--sessions", type=int, default=2, help="sessions per participant of a generated dataset")
    parser.add_argument("--spacing", type=float, help="voxel size (mm) of a generated dataset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated dataset and random maps")
    parser.add_argument("--workers", type=int, default=1, help="processes generating the dataset")
    parser.add_argument("--epochs", type=int, help="training epochs when this script trains")
    parser.add_argument("--methods", nargs="+", default=list(SALIENCY_METHODS), choices=SALIENCY_METHODS)
    parser.add_argument("--threshold", type=float, default=DEFAULT_ATROPHY_THRESHOLD,
                        help="atrophied region: voxels whose tissue loss exceeds this fraction")
    parser.add_argument("--tolerance", type=int, default=1, help="pointing-game tolerance (voxels)")
    parser.add_argument("--random-draws", type=int, help="random smooth maps per scan and method")
    parser.add_argument("--gradcam-layer", help="Grad-CAM layer (default: the network's deepest stage)")
    parser.add_argument("--occlusion-mask-size", type=int, help="occlusion box edge (voxels of the network input)")
    parser.add_argument("--occlusion-overlap", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=16, help="occluded copies per forward pass")
    parser.add_argument("--max-scans", type=int, default=None, help="score at most this many AD scans")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    for name, (full, quick) in PRESETS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.run_dir is not None and args.dataset is None:
        parser.error("--run-dir needs --dataset, the dataset that run was trained on")
    overrides = dict(QUICK_OVERRIDES) if args.quick else {}
    for item in args.overrides:
        key, separator, value = item.partition("=")
        if not separator or not key:
            parser.error(f"--set expects KEY=VALUE (e.g. spatial_size=[96,112,96]), got {item!r}")
        overrides[key] = value
    args.overrides = overrides
    return args


def prepare_dataset(args: argparse.Namespace) -> Path:
    """The given dataset, or one generated in the work folder (reused when made with the same settings)."""
    if args.dataset is not None:
        return args.dataset
    dataset = args.work_dir / "synthetic"
    wanted = {"subjects": args.subjects, "sessions": args.sessions, "spacing_mm": args.spacing, "seed": args.seed}
    parameters_path = dataset / "synth_parameters.json"
    if parameters_path.is_file():
        stored = json.loads(parameters_path.read_text(encoding="utf-8"))
        if any(stored.get(key) != value for key, value in wanted.items()):
            raise SystemExit(f"{dataset} was generated with other settings than {wanted}; "
                             "choose another --work-dir or remove it")
        logger.info("reusing the dataset in %s", dataset)
        return dataset
    generate_synthetic_dataset(dataset, subjects=args.subjects, sessions=args.sessions, spacing=args.spacing,
                               seed=args.seed, workers=args.workers)
    return dataset


def prepare_run(args: argparse.Namespace, dataset: Path) -> Path:
    """The given run, or one trained here through the bundle (reused once it has a best model)."""
    if args.run_dir is not None:
        return args.run_dir
    run_dir = args.work_dir / "run"
    if (run_dir / "checkpoints" / "model_best.pt").is_file():
        logger.info("reusing the trained run in %s", run_dir)
        return run_dir
    run_bundle(BUNDLE, "training", ["configs/train.yaml"], {
        "dataset_dir": str(dataset.resolve()), "output_dir": str(run_dir.resolve()), "num_epochs": str(args.epochs),
        **args.overrides,
    })
    return run_dir


def load_run(args: argparse.Namespace, dataset: Path, run_dir: Path) -> dict[str, Any]:
    """Network with the run's best weights, the inference preprocessing, classes and evaluation records."""
    model_path = run_dir / "checkpoints" / "model_best.pt"
    if not model_path.is_file():
        raise SystemExit(f"{model_path} not found; --run-dir must be a finished training run")
    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / BUNDLE / "configs" / "train.yaml"))
    parser.update({"bundle_root": str(BUNDLES_DIR / BUNDLE), "dataset_dir": str(dataset), "output_dir": str(run_dir),
                   "validate_data": False})
    parser.update({key: yaml.safe_load(value) for key, value in args.overrides.items()})
    classes = list(parser.get_parsed_content("classes"))
    if TARGET_CLASS not in classes:
        raise SystemExit(f"the run's classes {classes} have no {TARGET_CLASS}; nothing to validate")
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    network = parser.get_parsed_content("network_def").to(device)
    network.load_state_dict(torch.load(model_path, map_location=device, weights_only=True))
    records = parser.get_parsed_content("test#records")
    missing = [record["image"] for record in records if not record.get("atrophy_map")]
    if missing:
        raise SystemExit(f"{len(missing)} scans have no atrophy_map (first: {missing[0]}); use a dataset made by "
                         "`alz-monai synth`, whose scans.tsv has that column")
    return {
        "network": network,
        "transform": parser.get_parsed_content("validate#transforms"),
        "classes": classes,
        "records": [record for record in records if record["label_name"] == TARGET_CLASS],
        "split": parser.get_parsed_content("eval_split"),
        "foreground": ForegroundThreshold(parser.get_parsed_content("foreground_fraction")),
        "device": device,
    }


def score_scan(args: argparse.Namespace, run: dict[str, Any], record: dict[str, Any], index: int,
               maps_dir: Path) -> list[dict[str, Any]]:
    """One row per method for one scan, or none when its atrophied region is empty at --threshold."""
    atrophy = _volume(record["atrophy_map"])
    foreground = np.asarray(run["foreground"](_volume(record["image"])))
    region = (atrophy > args.threshold) & foreground
    if not region.any():
        logger.warning("%s: no foreground voxel has atrophy above %s; left out", record["image"], args.threshold)
        return []
    started = time.perf_counter()
    explanation = explain_scan(
        run["network"], run["transform"], record["image"], maps_dir, methods=args.methods,
        class_names=run["classes"], target_class=TARGET_CLASS, gradcam_layer=args.gradcam_layer,
        occlusion_mask_size=args.occlusion_mask_size, occlusion_overlap=args.occlusion_overlap,
        batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - started
    scan = {
        "image": record["image"],
        "participant_id": record["participant_id"],
        "session_id": record["session_id"],
        "latent_atrophy": float(record["latent_atrophy"]),
        "p_ad": explanation.probabilities[TARGET_CLASS],
        "predicted_class": explanation.predicted_class,
        "region_voxels": int(region.sum()),
        "uniform_mass_inside": float(region.sum() / foreground.sum()),
        "explain_seconds": seconds,
    }
    rows = []
    for method in args.methods:
        heat = _volume(explanation.saliency_paths[method])
        sigma = estimate_smoothness(heat, foreground)
        chance = random_baseline(atrophy, args.threshold, sigma, support=foreground, draws=args.random_draws,
                                 tolerance=args.tolerance, seed=args.seed + index)
        rows.append({
            **scan,
            "method": method,
            "mass_inside": saliency_mass_inside(heat, atrophy, args.threshold),
            "mass_in_brain": saliency_mass_inside(heat, foreground.astype(np.float32), 0.5),
            "pointing_hit": pointing_game(heat, atrophy, args.threshold, args.tolerance),
            "smoothness_sigma_voxels": sigma,
            "random_mass_inside_mean": float(chance.mass_inside.mean()),
            "random_mass_inside_p95": float(np.percentile(chance.mass_inside, 95)),
            "random_pointing_hit_rate": float(chance.pointing_hits.mean()),
        })
    return rows


def summarise(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per method: mean scores, chance levels and a one-sided Wilcoxon test of mass inside against random maps."""
    summary = {}
    for method, group in rows.groupby("method", sort=False):
        scored = group.dropna(subset=["mass_inside"])  # an all-zero map has no mass to place
        excess = scored["mass_inside"] - scored["random_mass_inside_mean"]
        summary[method] = {
            "scans": len(group),
            "all_zero_maps": int(group["mass_inside"].isna().sum()),
            "mass_inside_mean": _mean(scored["mass_inside"]),
            "mass_inside_sd": float(scored["mass_inside"].std()) if len(scored) > 1 else None,
            "random_mass_inside_mean": _mean(scored["random_mass_inside_mean"]),
            "uniform_mass_inside_mean": _mean(group["uniform_mass_inside"]),
            "mass_in_brain_mean": _mean(scored["mass_in_brain"]),
            "share_above_random_p95": _mean(scored["mass_inside"] > scored["random_mass_inside_p95"]),
            "pointing_hit_rate": _mean(group["pointing_hit"]),
            "random_pointing_hit_rate": _mean(group["random_pointing_hit_rate"]),
            "wilcoxon_p_mass_above_random": (float(stats.wilcoxon(excess, alternative="greater").pvalue)
                                             if len(excess) >= 5 and excess.any() else None),
            "smoothness_sigma_voxels_mean": _mean(group["smoothness_sigma_voxels"]),
        }
    return summary


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    columns = [
        ("scans", "scans", "{:d}"),
        ("all_zero_maps", "zero maps", "{:d}"),
        ("mass_inside_mean", "mass in", "{:.3f}"),
        ("random_mass_inside_mean", "random", "{:.3f}"),
        ("uniform_mass_inside_mean", "uniform", "{:.3f}"),
        ("mass_in_brain_mean", "in brain", "{:.3f}"),
        ("share_above_random_p95", ">p95 rnd", "{:.2f}"),
        ("pointing_hit_rate", "pointing", "{:.2f}"),
        ("random_pointing_hit_rate", "rnd point", "{:.2f}"),
        ("wilcoxon_p_mass_above_random", "wilcoxon p", "{:.2g}"),
    ]
    lines = [f"{'method':<10}" + "".join(f"{title:>11}" for _, title, _ in columns)]
    for method, values in summary.items():
        cells = ["-" if values[key] is None else template.format(values[key]) for key, _, template in columns]
        lines.append(f"{method:<10}" + "".join(f"{cell:>11}" for cell in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    dataset = prepare_dataset(args)
    run_dir = prepare_run(args, dataset)
    run = load_run(args, dataset, run_dir)
    records = run["records"][: args.max_scans]
    if not records:
        raise SystemExit(f"no {TARGET_CLASS} scan in the {run['split']} split of {dataset}; use more subjects")
    logger.info("%d %s scans of the %s split, methods %s, on %s", len(records), TARGET_CLASS, run["split"],
                args.methods, run["device"])
    maps_dir = args.work_dir / "saliency"
    rows = [row for index, record in enumerate(records) for row in score_scan(args, run, record, index, maps_dir)]
    if not rows:
        raise SystemExit(f"no scan had atrophy above --threshold {args.threshold}; lower it")
    table = pd.DataFrame(rows)
    summary = summarise(table)

    test_metrics_path = run_dir / "reports" / f"{run['split']}_metrics.json"
    model_metrics = json.loads(test_metrics_path.read_text(encoding="utf-8")) if test_metrics_path.is_file() else {}
    report = {
        "mode": "quick" if args.quick else "full",
        "device": str(run["device"]),
        "dataset": str(dataset),
        "run_dir": str(run_dir),
        "overrides": args.overrides,
        "settings": {key: getattr(args, key) for key in (
            "methods", "threshold", "tolerance", "random_draws", "gradcam_layer", "occlusion_mask_size",
            "occlusion_overlap", "seed")},
        "model_metrics": {key: model_metrics.get(key) for key in ("auc", "balanced_accuracy", "accuracy")},
        "split": run["split"],
        "summary": summary,
        "scans": table.to_dict(orient="records"),
    }
    output = write_result("saliency_validation", report, args.output_dir)
    metrics = ", ".join(f"{key} {value:.3f}" for key, value in report["model_metrics"].items() if value is not None)
    print(f"model on the {run['split']} split: {metrics or 'no report found'}")
    print(f"saliency for {TARGET_CLASS} on {table['image'].nunique()} {TARGET_CLASS} scans, region = atrophy > "
          f"{args.threshold}; mass in = share of saliency inside it (random: smooth random maps, uniform: region "
          f"share of the brain); in brain = share of saliency on the brain at all; pointing = peak within "
          f"{args.tolerance} voxel(s)")
    print(format_table(summary))
    print(f"wrote {output}")


def _volume(path: str | Path) -> np.ndarray:
    image = nib.load(path)
    return np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3])


def _mean(values: pd.Series) -> float | None:
    return float(values.mean()) if len(values) else None


if __name__ == "__main__":
    main()
