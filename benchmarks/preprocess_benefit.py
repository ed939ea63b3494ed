"""What preprocessing buys: the stage-1 bundle trained on raw heads as scanned and on their ``alz-monai preprocess``
output, with the same bundle settings and the same participant-level split.

The raw dataset comes from ``alz-monai synth --raw`` (or any dataset ``load_records`` reads). Both conditions read
a table with absolute image paths and an explicit split column computed once from the raw records, so that they
differ only in the images. Test balanced accuracy and AUC come with the bundle's bootstrap 95% CIs.

    alz-monai synth --raw data/raw --subjects 40 --sessions 1 --spacing 2
    python benchmarks/preprocess_benefit.py data/raw runs/preprocess_benefit --resolution 2 --workers 2 -- \
        --num_epochs 20 --spatial_size "[96,112,96]" --pixdim "[2,2,2]"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result  # noqa: E402

from alz_monai.data.records import load_records  # noqa: E402
from alz_monai.data.splits import assign_splits  # noqa: E402
from alz_monai.preprocess import PreprocessSettings, preprocess_dataset  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent
SPLIT_KEY = ("participant_id", "session_id")


def split_tables(raw: Path, preprocessed: Path, out: Path, ratios: list[float], seed: int) -> dict[str, Path]:
    """``scans.tsv`` per condition: absolute images, the raw dataset's columns, one shared split."""
    raw_records = assign_splits(load_records(raw), ratios=ratios, seed=seed)
    splits = {tuple(record[key] for key in SPLIT_KEY): record["split"] for record in raw_records}
    tables = {}
    for condition, records in (("raw", raw_records), ("preprocessed", load_records(preprocessed))):
        rows = [{"image": record["image"], "label": record["label_name"], "participant_id": record["participant_id"],
                 "session_id": record["session_id"], "split": splits[tuple(record[key] for key in SPLIT_KEY)]}
                for record in records]
        path = out / f"tables_{condition}" / "scans.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
        tables[condition] = path
    return tables


def train(table: Path, run_dir: Path, condition: str, bundle: str, overrides: list[str]) -> dict[str, Any]:
    """One training run through the bundle entry point; its test metrics and CIs."""
    subprocess.run([sys.executable, str(BENCHMARKS / "bundle_throughput.py"), "--bundle", bundle, "--name",
                    f"preprocess_benefit_{condition}", "--", "--dataset_dir", str(table), "--output_dir",
                    str(run_dir), *overrides], check=True)
    summary = json.loads((run_dir / "summary_all.json").read_text())
    test, intervals = summary["test"], summary.get("test_confidence_intervals", {})

    def interval(metric: str) -> list[float]:
        return [round(intervals.get(metric, {}).get(bound) or float("nan"), 3) for bound in ("low", "high")]

    return {"condition": condition, "best_epoch": summary["best_epoch"],
            "test_balanced_accuracy": round(test["balanced_accuracy"], 3), "bacc_ci": interval("balanced_accuracy"),
            "test_auc": round(test["auc"], 3), "auc_ci": interval("auc"), "test_scans": test["num_samples"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path, help="raw dataset (e.g. from alz-monai synth --raw)")
    parser.add_argument("output", type=Path, help="folder for the preprocessed data, tables and runs")
    parser.add_argument("--bundle", default="ad_resnet3d")
    parser.add_argument("--resolution", type=float, default=1.0, help="preprocess output voxel size (mm)")
    parser.add_argument("--workers", type=int, default=1, help="scans preprocessed at once")
    parser.add_argument("--ratios", type=float, nargs=3, default=[0.6, 0.2, 0.2], help="train val test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared split")
    parser.add_argument("--label", default="", help="suffix of the result file")
    args, overrides = parser.parse_known_args()  # everything else goes to the bundle
    overrides = [item for item in overrides if item != "--"]

    started = time.perf_counter()
    preprocessed = args.output / "preprocessed"
    summary = preprocess_dataset(args.raw, preprocessed, settings=PreprocessSettings(resolution=args.resolution),
                                 workers=args.workers)
    preprocess_s = time.perf_counter() - started
    if summary.failures:
        raise SystemExit("preprocessing failed for:\n" + "\n".join(summary.failures))
    tables = split_tables(args.raw, preprocessed, args.output, args.ratios, args.seed)
    rows = []
    for condition, table in tables.items():
        rows.append(train(table, args.output / f"run_{condition}", condition, args.bundle, overrides))
        print_table(rows[-1:], list(rows[-1]))
    print_table(rows, list(rows[0]))
    bound = json.loads((args.raw / "synth_parameters.json").read_text()).get("theoretical_best_accuracy") \
        if (args.raw / "synth_parameters.json").is_file() else None
    name = f"preprocess_benefit_{args.label}" if args.label else "preprocess_benefit"
    print(write_result(name, {
        "rows": rows, "overrides": overrides, "dataset": str(args.raw), "bundle": args.bundle,
        "theoretical_best_accuracy": bound, "preprocess_resolution_mm": args.resolution,
        "preprocess_seconds": round(preprocess_s, 1), "preprocessed_scans": summary.processed + summary.resumed,
        "qc_flagged": summary.flagged}))


if __name__ == "__main__":
    main()
