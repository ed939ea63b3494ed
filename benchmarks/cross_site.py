"""Cross-site generalisation on the synthetic data: trained on some scanner sites, how well on an unseen one?

Every site gets its own synthetic cohort (``alz-monai synth --site NAME``, a distinct seed per site, so the
participants differ too). Each ``--train`` set of sites trains the stage-1 bundle on their pooled scans (train/val/
test split by participant within them), then is scored on its own test split (in-site) and, with
``run evaluating --external_data``, on every scan of each ``--test-site`` (cross-site). ``--stage2`` does the same
with the stage-2 bundle initialised from each stage-1 model. One table: balanced accuracy and AUC with their
participant-bootstrap 95% CIs, ECE after and before the run's temperature scaling, scans.

    python benchmarks/cross_site.py OUTPUT_DIR --train default --train default,siteA --test-site siteC \\
        [--subjects 40 --sessions 2 --spacing 2] [--stage1-overrides "--network_def#name resnet10"] \\
        [--stage2 [--stage2-overrides "--backbone resnet10 --embed_dim 64"]] \\
        -- <overrides of both bundles, e.g. --num_epochs 30 --spatial_size [96,96,96]>
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result  # noqa: E402

from alz_monai.layout import (  # noqa: E402
    BEST_MODEL_NAME,
    CHECKPOINTS_DIRNAME,
    REPORTS_DIRNAME,
    evaluation_dir,
)
from alz_monai.recipes import STAGE1, STAGE2, run_bundle  # noqa: E402
from alz_monai.reports import load_json  # noqa: E402

SYNTH_KEYS = {"subjects": "subjects", "sessions": "sessions", "spacing": "spacing_mm"}
COLUMNS = ["model", "training_sites", "test_site", "evaluation", "balanced_accuracy", "auc", "ece",
           "ece_uncalibrated", "temperature", "scans"]


def site_dataset(data_dir: Path, site: str, seed: int, args: argparse.Namespace) -> Path:
    """The site's synthetic cohort, generated once: a folder made earlier with the same parameters is reused."""
    folder = data_dir / site
    parameters_path = folder / "synth_parameters.json"
    wanted = {"seed": seed, **{key: getattr(args, name) for name, key in SYNTH_KEYS.items()}}
    if parameters_path.is_file():
        made = json.loads(parameters_path.read_text())
        if made["site"]["name"] == site and all(made[key] == value for key, value in wanted.items()):
            print(f"reusing {folder}", flush=True)
            return folder
        raise SystemExit(f"{folder} holds another cohort ({parameters_path}); choose another --data-dir")
    command = [sys.executable, "-m", "alz_monai.cli", "synth", str(folder), "--site", site, "--seed", str(seed),
               "--subjects", str(args.subjects), "--sessions", str(args.sessions), "--spacing", str(args.spacing),
               "--workers", str(args.workers)]
    if args.effect is not None:
        command += ["--effect", str(args.effect)]
    subprocess.run(command, check=True)
    return folder


def pooled_table(sites: Sequence[str], datasets: dict[str, Path], target: Path) -> Path:
    """One ``scans.tsv`` of the sites' scans with absolute paths; participant ids get the site as prefix, since
    every synthetic cohort numbers its participants from sub-0001."""
    rows: list[dict[str, str]] = []
    for site in sites:
        with open(datasets[site] / "scans.tsv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                rows.append({"image": str((datasets[site] / row["image"]).resolve()), "label": row["label"],
                             "participant_id": f"{site}-{row['participant_id']}", "session_id": row["session_id"],
                             "site": site})
    target.mkdir(parents=True, exist_ok=True)
    path = target / "scans.tsv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def override_pairs(tokens: Sequence[str]) -> dict[str, str]:
    """``--key value`` tokens as the mapping run_bundle takes."""
    tokens = [token for token in tokens if token != "--"]
    if len(tokens) % 2 or not all(key.startswith("--") for key in tokens[::2]):
        raise SystemExit(f"bundle overrides must be --key value pairs, got {shlex.join(tokens)}")
    return {key[2:]: value for key, value in zip(tokens[::2], tokens[1::2])}


def _interval(report: dict[str, Any], name: str) -> list[float | None]:
    interval = (report.get("confidence_intervals") or {}).get(name) or {}
    return [interval.get("low"), interval.get("high")]


def result_row(model: str, training_sites: str, test_site: str, evaluation: str, metrics_path: Path) -> dict[str, Any]:
    report = load_json(metrics_path)
    calibration = report.get("calibration") or {}
    return {"model": model, "training_sites": training_sites, "test_site": test_site, "evaluation": evaluation,
            "balanced_accuracy": report.get("balanced_accuracy"),
            "balanced_accuracy_ci": _interval(report, "balanced_accuracy"),
            "auc": report.get("auc"), "auc_ci": _interval(report, "auc"),
            "ece": report.get("expected_calibration_error"),
            "ece_uncalibrated": calibration.get("expected_calibration_error_uncalibrated"),
            "temperature": calibration.get("temperature"), "scans": report.get("num_samples"),
            "report": str(metrics_path)}


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def display_row(row: dict[str, Any]) -> dict[str, Any]:
    shown = dict(row)
    for name in ("balanced_accuracy", "auc"):
        low, high = row[f"{name}_ci"]
        shown[name] = f"{_number(row[name])} [{_number(low)}, {_number(high)}]"
    for name in ("ece", "ece_uncalibrated", "temperature"):
        shown[name] = _number(row[name])  # no temperature: the run could not calibrate, its ECE is uncalibrated
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--train", action="append", required=True,
                        help="comma-separated sites trained on together; repeat for another training set")
    parser.add_argument("--test-site", action="append", required=True, help="an unseen site; may be repeated")
    parser.add_argument("--data-dir", type=Path, default=None, help="site cohorts (default OUTPUT/data)")
    parser.add_argument("--subjects", type=int, default=40, help="participants per site")
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size of the synthetic scans in mm")
    parser.add_argument("--effect", type=float, default=None, help="class separation (the generator's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first site; each next site adds one")
    parser.add_argument("--workers", type=int, default=1, help="processes generating the synthetic scans")
    parser.add_argument("--stage2", action="store_true", help="also train and evaluate the stage-2 bundle")
    parser.add_argument("--stage1-overrides", default="", help="overrides of the stage-1 bundle alone")
    parser.add_argument("--stage2-overrides", default="", help="overrides of the stage-2 bundle alone")
    parser.add_argument("--label", default="", help="suffix of the result file")
    args, rest = parser.parse_known_args()  # everything else goes to both bundles
    common = override_pairs(rest)
    only = {STAGE1: override_pairs(shlex.split(args.stage1_overrides)),
            STAGE2: override_pairs(shlex.split(args.stage2_overrides))}
    training_sets = [[site.strip() for site in spec.split(",") if site.strip()] for spec in args.train]
    for sites in training_sets:
        seen = sorted(set(sites) & set(args.test_site))
        if seen:
            raise SystemExit(f"--train {','.join(sites)} includes the test site(s) {', '.join(seen)}")
    output = args.output.absolute()
    all_sites = list(dict.fromkeys([*(site for sites in training_sets for site in sites), *args.test_site]))
    data_dir = (args.data_dir or output / "data").absolute()
    datasets = {site: site_dataset(data_dir, site, args.seed + index, args) for index, site in enumerate(all_sites)}

    rows: list[dict[str, Any]] = []
    for sites in training_sets:
        name = "+".join(sites)
        table = pooled_table(sites, datasets, output / "tables" / name)
        run_dirs = {STAGE1: output / "runs" / name / STAGE1, STAGE2: output / "runs" / name / STAGE2}
        bundles = [STAGE1, STAGE2] if args.stage2 else [STAGE1]
        for bundle in bundles:
            run_dir = run_dirs[bundle]
            overrides = {**common, **only[bundle], "dataset_dir": str(table), "output_dir": str(run_dir)}
            if bundle == STAGE2:
                overrides["stage1_model"] = str(run_dirs[STAGE1] / CHECKPOINTS_DIRNAME / BEST_MODEL_NAME)
            logs = output / "logs" / name
            print(f"training {bundle} on {name}, log in {logs}", flush=True)
            run_bundle(bundle, "training", (), overrides, log_path=logs / f"{bundle}_training.log")
            rows.append(result_row(bundle, name, name, "in-site", run_dir / REPORTS_DIRNAME / "test_metrics.json"))
            print_table([display_row(rows[-1])], COLUMNS)
            for test_site in args.test_site:
                # every knob of the run comes from its run_config.yaml; only the data are another site's
                run_bundle(bundle, "evaluating", ("evaluate",),
                           {"output_dir": str(run_dir), "external_data": str(datasets[test_site])},
                           log_path=logs / f"{bundle}_evaluating_{test_site}.log")
                report_dir = evaluation_dir(run_dir, "external", datasets[test_site])
                rows.append(result_row(bundle, name, test_site, "cross-site", report_dir / "external_metrics.json"))
                print_table([display_row(rows[-1])], COLUMNS)
    print()
    print_table([display_row(row) for row in rows], COLUMNS)
    result_name = f"cross_site_{args.label}" if args.label else "cross_site"
    print(write_result(result_name, {
        "rows": rows, "overrides": common, "stage1_overrides": only[STAGE1], "stage2_overrides": only[STAGE2],
        "data": {site: {"folder": str(folder), "seed": args.seed + index}
                 for index, (site, folder) in enumerate(datasets.items())},
        "subjects_per_site": args.subjects, "sessions": args.sessions, "spacing_mm": args.spacing}))


if __name__ == "__main__":
    main()
