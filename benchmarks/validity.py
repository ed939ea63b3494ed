"""Scientific validity on the synthetic data: does the pipeline learn what is there, and only that?

Three trainings of the stage-1 bundle on one synthetic dataset, each reporting test balanced accuracy and
AUC against the generator's theoretical best accuracy:

- ``participant``: the default (subject-level split) -- should come close to the bound;
- ``shuffled``: the same images with labels permuted by participant (the generator's --shuffle-labels
  control, written as a table here so the images are shared) -- should score near chance;
- ``scan`` (``--leaky``): every scan treated as its own participant, so sessions of one subject land in
  different splits: the leakage the default cannot produce; the difference shows what leakage does;
- ``shuffled_scan`` (``--leaky`` too): both at once. Labels carry no disease signal, but a subject's
  sessions share one label, so a network that recognises subjects scores above chance: leakage made visible.

    python benchmarks/validity.py DATASET_DIR OUTPUT_DIR [--leaky] -- <bundle overrides>
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent


def write_table(source: Path, target: Path, shuffle_seed: int | None = None, scan_as_participant: bool = False) -> Path:
    """A copy of ``scans.tsv`` with absolute image paths, optionally shuffled by participant or leaky."""
    with open(source / "scans.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    for row in rows:
        row["image"] = str((source / row["image"]).resolve())
        row.pop("atrophy_map", None)
    if shuffle_seed is not None:
        participants = sorted({row["participant_id"] for row in rows})
        first_label = {}
        for row in rows:
            first_label.setdefault(row["participant_id"], row["label"])
        permuted = np.random.default_rng(shuffle_seed).permutation([first_label[p] for p in participants])
        new_label = dict(zip(participants, permuted))
        for row in rows:
            row["label"] = new_label[row["participant_id"]]
    if scan_as_participant:
        for row in rows:
            row["participant_id"] = Path(row["image"]).name.split(".")[0]
    target.mkdir(parents=True, exist_ok=True)
    path = target / "scans.tsv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--leaky", action="store_true", help="also run the deliberately leaky split-by-scan")
    parser.add_argument("--conditions", default="participant,shuffled")
    parser.add_argument("--label", default="", help="suffix of the result file")
    args, overrides = parser.parse_known_args()  # everything else goes to the bundle
    overrides = [o for o in overrides if o != "--"]
    bound = json.loads((args.dataset / "synth_parameters.json").read_text())["theoretical_best_accuracy"]
    conditions = args.conditions.split(",") + (["scan", "shuffled_scan"] if args.leaky else [])
    rows = []
    for condition in conditions:
        table = write_table(args.dataset, args.output / f"tables_{condition}",
                            shuffle_seed=1 if condition.startswith("shuffled") else None,
                            scan_as_participant=condition.endswith("scan"))
        run_dir = args.output / condition
        subprocess.run([sys.executable, str(BENCHMARKS / "bundle_throughput.py"), "--name", f"validity_{condition}",
                        "--", "--dataset_dir", str(table), "--output_dir", str(run_dir), *overrides], check=True)
        summary = json.loads((run_dir / "summary_all.json").read_text())
        test = summary["test"]
        intervals = summary.get("test_confidence_intervals", {})
        rows.append({"split_by": condition, "best_epoch": summary["best_epoch"],
                     "test_balanced_accuracy": round(test["balanced_accuracy"], 3),
                     "bacc_ci": [round(intervals.get("balanced_accuracy", {}).get(k) or float("nan"), 3)
                                 for k in ("low", "high")],
                     "test_auc": round(test["auc"], 3),
                     "auc_ci": [round(intervals.get("auc", {}).get(k) or float("nan"), 3) for k in ("low", "high")],
                     "test_scans": test["num_samples"], "theoretical_best_accuracy": round(bound, 3),
                     "gap_to_bound": round(bound - test["balanced_accuracy"], 3)})
        print_table(rows[-1:], list(rows[-1]))
    print_table(rows, list(rows[0]))
    name = f"validity_{args.label}" if args.label else "validity"
    print(write_result(name, {"rows": rows, "overrides": overrides, "dataset": str(args.dataset)}))


if __name__ == "__main__":
    main()
