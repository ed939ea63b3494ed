"""End-to-end training throughput of the real bundle (``python -m monai.bundle run training``).

Runs the bundle in a subprocess with the given overrides, keeps its log, and reads Ignite's per-epoch
times of the trainer. The first epoch fills the cache; the samples/s reported are those of the later
epochs (training samples per epoch over the trainer's epoch time, validation excluded).

    python benchmarks/bundle_throughput.py --bundle ad_resnet3d --name r18_gpu -- --dataset_dir D \
        --output_dir O --num_epochs 5 --batch_size 16 --amp true --channels_last true ...
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result  # noqa: E402

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
EPOCH_LINE = re.compile(r"(SupervisedTrainer|SupervisedEvaluator) - INFO - Epoch\[(\d+)\] Complete\. "
                        r"Time taken: (\d+):(\d+):([\d.]+)")


def epoch_times(log: str, engine: str) -> dict[int, float]:
    times = {}
    for match in EPOCH_LINE.finditer(log):
        if match.group(1) == engine:
            hours, minutes, seconds = int(match.group(3)), int(match.group(4)), float(match.group(5))
            times[int(match.group(2))] = hours * 3600 + minutes * 60 + seconds
    return times


def train_samples_per_epoch(output_dir: Path, batch_size: int) -> int:
    rows = (output_dir / "splits.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    split_column = header.index("split")
    train = sum(1 for row in rows[1:] if row.split("\t")[split_column] == "train")
    return (train // batch_size) * batch_size if train > batch_size else train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="ad_resnet3d")
    parser.add_argument("--name", required=True, help="label of this configuration in the results")
    parser.add_argument("--launcher", default="", help="e.g. 'torchrun --nproc_per_node=2' (then add the overlay)")
    parser.add_argument("--config", default="configs/train.yaml", help="config_file argument")
    args, overrides = parser.parse_known_args()  # everything else goes to the bundle
    overrides = [o for o in overrides if o != "--"]
    get = {overrides[i].lstrip("-"): overrides[i + 1] for i in range(0, len(overrides) - 1, 2)}
    output_dir = Path(get["output_dir"])
    launcher = args.launcher.split() if args.launcher else [sys.executable]
    command = [*launcher, "-m", "monai.bundle", "run", "training", "--config_file", args.config, *overrides]
    began = time.perf_counter()
    result = subprocess.run(command, cwd=BUNDLES / args.bundle, capture_output=True, text=True)
    wall = time.perf_counter() - began
    log = result.stdout + result.stderr
    (output_dir / "benchmark.log").write_text(log)
    if result.returncode != 0:
        print(log[-4000:])
        raise SystemExit(f"bundle run failed ({result.returncode})")
    train_times = epoch_times(log, "SupervisedTrainer")
    val_times = epoch_times(log, "SupervisedEvaluator")
    per_epoch = train_samples_per_epoch(output_dir, int(get.get("batch_size", 4)))
    steady = [t for epoch, t in train_times.items() if epoch >= 2]
    steady_time = sorted(steady)[len(steady) // 2] if steady else float("nan")
    row = {"name": args.name, "bundle": args.bundle, "train_samples_per_epoch": per_epoch,
           "first_epoch_s": round(train_times.get(1, float("nan")), 3),
           "steady_epoch_s_median": round(steady_time, 3),
           "samples_per_s": round(per_epoch / steady_time, 1) if steady else None,
           "validation_s_median": round(sorted(val_times.values())[len(val_times) // 2], 3) if val_times else None,
           "wall_s": round(wall, 1)}
    print_table([row], list(row))
    print(write_result(f"bundle_throughput_{args.name}", {"row": row, "epochs": train_times, "command": command}))


if __name__ == "__main__":
    main()
