"""End-to-end training throughput of the real bundle (``python -m monai.bundle run training``).

Runs the bundle in a subprocess with the given overrides, keeps its log, and reads Ignite's per-epoch
times from it. Ignite's trainer epoch time includes its EPOCH_COMPLETED handlers (validation, then the
full-state checkpoint), so two rates are reported for the epochs after the first:

- ``samples_per_s_epoch``: training samples over the whole epoch, validation and checkpointing included;
- ``samples_per_s_training``: over the training iterations alone, i.e. the epoch time less the evaluator's
  time and less the time between the evaluator's end and the trainer's (the checkpoint handlers).

``--from-log`` recomputes both from a saved ``benchmark.log`` (the training split size is then given).

    python benchmarks/bundle_throughput.py --bundle ad_resnet3d --name r18_gpu -- --dataset_dir D \
        --output_dir O --num_epochs 5 --batch_size 16 --amp true --channels_last true ...
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ENGINE_LOGGING_ARGS, print_table, write_result  # noqa: E402

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
EPOCH_LINE = re.compile(r"^(\S+ \S+) - ignite\.engine\.engine\.(SupervisedTrainer|SupervisedEvaluator) - INFO - "
                        r"Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)", re.MULTILINE)


def epoch_times(log: str, engine: str) -> dict[int, tuple[datetime.datetime, float]]:
    """Per epoch: when the engine logged its end, and the time Ignite reports for it."""
    times = {}
    for match in EPOCH_LINE.finditer(log):
        if match.group(2) == engine:
            logged = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            hours, minutes, seconds = int(match.group(4)), int(match.group(5)), float(match.group(6))
            times[int(match.group(3))] = (logged, hours * 3600 + minutes * 60 + seconds)
    return times


def throughput(log: str, samples_per_epoch: int) -> dict[str, float | None]:
    trainer, evaluator = epoch_times(log, "SupervisedTrainer"), epoch_times(log, "SupervisedEvaluator")
    whole, training, handlers = [], [], []
    for epoch, (trainer_end, trainer_time) in trainer.items():
        if epoch < 2:
            continue  # the first epoch pays cuDNN autotuning and warm-up
        whole.append(trainer_time)
        if epoch in evaluator:
            evaluator_end, evaluator_time = evaluator[epoch]
            after_validation = (trainer_end - evaluator_end).total_seconds()
            handlers.append(after_validation)
            training.append(trainer_time - evaluator_time - after_validation)
    median = statistics.median
    return {"epochs": len(trainer), "first_epoch_s": round(trainer[1][1], 3) if 1 in trainer else None,
            "epoch_s_median": round(median(whole), 3) if whole else None,
            "samples_per_s_epoch": round(samples_per_epoch / median(whole), 1) if whole else None,
            "training_s_median": round(median(training), 3) if training else None,
            "samples_per_s_training": round(samples_per_epoch / median(training), 1) if training else None,
            "checkpoint_handlers_s_median": round(median(handlers), 3) if handlers else None,
            "validation_s_median": round(median(t for e, (_, t) in evaluator.items() if e >= 2), 3)
            if len(evaluator) > 1 else None}


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
    parser.add_argument("--from-log", default=None, help="recompute from a saved benchmark.log instead of running")
    parser.add_argument("--train-samples", type=int, default=None, help="with --from-log: samples per epoch")
    args, overrides = parser.parse_known_args()  # everything else goes to the bundle
    overrides = [o for o in overrides if o != "--"]
    if args.from_log:
        log, command, wall = Path(args.from_log).read_text(), None, None
        per_epoch = args.train_samples
    else:
        get = {overrides[i].lstrip("-"): overrides[i + 1] for i in range(0, len(overrides) - 1, 2)}
        output_dir = Path(get["output_dir"])
        launcher = args.launcher.split() if args.launcher else [sys.executable]
        command = [*launcher, "-m", "monai.bundle", "run", "training", "--config_file", args.config,
                   *ENGINE_LOGGING_ARGS, *overrides]
        began = time.perf_counter()
        result = subprocess.run(command, cwd=BUNDLES / args.bundle, capture_output=True, text=True)
        wall = round(time.perf_counter() - began, 1)
        log = result.stdout + result.stderr
        (output_dir / "benchmark.log").write_text(log)
        if result.returncode != 0:
            print(log[-4000:])
            raise SystemExit(f"bundle run failed ({result.returncode})")
        per_epoch = train_samples_per_epoch(output_dir, int(get.get("batch_size", 4)))
    row = {"name": args.name, "bundle": args.bundle, "train_samples_per_epoch": per_epoch,
           **throughput(log, per_epoch), "wall_s": wall}
    print_table([row], list(row))
    source = {"recomputed_from_log": args.from_log} if args.from_log else {"command": command}
    print(write_result(f"bundle_throughput_{args.name}", {"row": row, **source}))


if __name__ == "__main__":
    main()
