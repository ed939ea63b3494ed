"""Time to result: synthetic 1-mm scans through stage 1, stage 2 and the test evaluation, seconds per phase.

Makes ``--scans`` synthetic scans (``alz-monai synth``, two sessions per participant; kept in ``WORK/data`` for a
second run), then runs the real bundles as a user does: ``ad_resnet3d`` training (which ends with the test
evaluation of its best model), then ``ad_mosa`` initialised from that model. Each run's log is parsed into
phases by its timestamps:

- startup: process start to the dataset table being read (imports, config parsing);
- data validation: the data checks (``alz_monai.data.validate``), when they run;
- cache fill + network: from there to the trainer's start (splits, train/val cache fill, network, optimiser);
- epoch 1: the first epoch, whole (cuDNN autotuning, compilation, first validation);
- epochs 2..N, split as in ``bundle_throughput.py`` into training iterations, validation (with the best-model
  saves and reports it triggers) and the per-epoch checkpoint handlers after it;
- final checkpoint: the trainer's last epoch to its end;
- test evaluation: the trainer's end to the test evaluator's (the test split's loading included);
- teardown: the run summary and process exit.

Arguments after ``--`` go to both bundles (e.g. the GPU settings), ``--stage2-overrides`` to ``ad_mosa`` alone.
The table, the phases and the figures of the epochs (samples/s of the training iterations and of whole epochs)
go to ``time_to_result_<label>_<date>.json`` and the two logs to ``logs/time_to_result_<label>_stage{1,2}.log``
under the results folder. ``--from-logs`` recomputes the phases of saved logs (then startup counts from the first
log line and the run ends at the last).

    python benchmarks/time_to_result.py /tmp/ttr --scans 600 --label h200 -- --spatial_size "[128,128,128]" \\
        --batch_size 16 --cache_device cuda:0 --augmentation_on batch --amp true --channels_last true \\
        --background_checkpoint true
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundle_throughput import train_samples_per_epoch  # noqa: E402
from common import ENGINE_LOGGING_ARGS, RESULTS_DIR, print_table, write_result  # noqa: E402

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
STAGE2_CONFIG = "['../ad_resnet3d/configs/train.yaml','configs/mosa.yaml']"
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - (?:(\S+) - )?(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) - "
                  r"(.*)$", re.MULTILINE)
EPOCH = re.compile(r"Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")
PHASES = ("startup", "data validation", "cache fill + network", "epoch 1", "epochs 2..N: training iterations",
          "epochs 2..N: validation", "epochs 2..N: checkpoint handlers", "final checkpoint", "test evaluation",
          "teardown", "total")


def parse(log: str) -> list[tuple[datetime.datetime, str, str]]:
    """(time, logger, message) of every timestamped log line."""
    return [(datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f"), name or "", message)
            for stamp, name, message in LINE.findall(log)]


def epochs(lines: list, engine: str, until: datetime.datetime | None = None) -> dict[int, tuple]:
    """Per epoch of ``engine`` logged before ``until``: when it ended and the seconds Ignite reports."""
    found = {}
    for logged, name, message in lines:
        match = EPOCH.match(message)
        if match and name.endswith(engine) and (until is None or logged <= until):
            hours, minutes, seconds = int(match.group(2)), int(match.group(3)), float(match.group(4))
            found[int(match.group(1))] = (logged, hours * 3600 + minutes * 60 + seconds)
    return found


def phases(log: str, launched: datetime.datetime, finished: datetime.datetime,
           samples_per_epoch: int) -> dict[str, float | None]:
    """Seconds per phase of one bundle run (see the module docstring), and the epochs' throughput."""
    lines = parse(log)

    def first(predicate) -> datetime.datetime | None:
        return next((logged for logged, name, message in lines if predicate(name, message)), None)

    def last(predicate) -> datetime.datetime | None:
        return next((logged for logged, name, message in reversed(lines) if predicate(name, message)), None)

    loaded = first(lambda name, message: re.match(r"Loaded \d+ scans", message))
    validated = last(lambda name, message: name == "alz_monai.data.validate")
    trainer_start = first(lambda name, message: name.endswith("SupervisedTrainer")
                          and message.startswith("Engine run"))
    trainer_end = last(lambda name, message: name.endswith("SupervisedTrainer")
                       and message.startswith("Engine run finished"))
    test_end = last(lambda name, message: name.endswith("SupervisedEvaluator")
                    and message.startswith("Engine run finished"))
    if None in (loaded, trainer_start, trainer_end, test_end):
        raise SystemExit("the log lacks the dataset, trainer or evaluator lines this script reads (a run cut short?)")
    trainer = epochs(lines, "SupervisedTrainer")
    validation = epochs(lines, "SupervisedEvaluator", until=trainer_end)  # not the test evaluator's epoch 1
    training, evaluating, handlers = [], [], []
    for epoch, (trainer_logged, trainer_s) in trainer.items():
        if epoch < 2:
            continue
        validation_logged, validation_s = validation.get(epoch, (trainer_logged, 0.0))
        handlers.append((trainer_logged - validation_logged).total_seconds())
        evaluating.append(validation_s)
        training.append(trainer_s - validation_s - handlers[-1])

    def seconds(start: datetime.datetime, end: datetime.datetime) -> float:
        return round((end - start).total_seconds(), 2)

    data_ready = validated or loaded
    median = sorted(training)[len(training) // 2] if training else None
    whole = sorted(t for e, (_, t) in trainer.items() if e >= 2)
    return {
        "startup": seconds(launched, loaded),
        "data validation": seconds(loaded, validated) if validated else None,
        "cache fill + network": seconds(data_ready, trainer_start),
        "epoch 1": round(trainer[1][1], 2) if 1 in trainer else None,
        "epochs 2..N: training iterations": round(sum(training), 2),
        "epochs 2..N: validation": round(sum(evaluating), 2),
        "epochs 2..N: checkpoint handlers": round(sum(handlers), 2),
        "final checkpoint": seconds(max(logged for logged, _ in trainer.values()), trainer_end),
        "test evaluation": seconds(trainer_end, test_end),
        "teardown": seconds(test_end, finished),
        "total": seconds(launched, finished),
        "epochs": len(trainer),
        "train_samples_per_epoch": samples_per_epoch,
        "samples_per_s_training_median": round(samples_per_epoch / median, 1) if median else None,
        "samples_per_s_epoch_median": round(samples_per_epoch / whole[len(whole) // 2], 1) if whole else None,
    }


def run_bundle(bundle: str, config: str, overrides: list[str], log_path: Path) -> tuple[str, datetime.datetime,
                                                                                          datetime.datetime]:
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config,
               *ENGINE_LOGGING_ARGS, *overrides]
    print("$ (cd", BUNDLES / bundle, ";", " ".join(command), ")", flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    launched = datetime.datetime.now()
    with log_path.open("w") as log_file:  # written as it runs: a run cut short leaves its log
        result = subprocess.run(command, cwd=BUNDLES / bundle, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finished = datetime.datetime.now()
    log = log_path.read_text()
    if result.returncode != 0:
        print(log[-4000:])
        raise SystemExit(f"{bundle} failed ({result.returncode}); log in {log_path}")
    return log, launched, finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", help="folder for the data and the two runs (runs must not exist yet)")
    parser.add_argument("--scans", type=int, default=600)
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--synth-workers", type=int, default=os.cpu_count())
    parser.add_argument("--stage1-epochs", type=int, default=40)
    parser.add_argument("--stage2-epochs", type=int, default=30)
    parser.add_argument("--stage2-config", default=STAGE2_CONFIG, help="config_file of the ad_mosa run")
    parser.add_argument("--stage2-overrides", default="", help="more arguments for ad_mosa only, one string")
    parser.add_argument("--label", required=True, help="names the result file, e.g. h200 or cpu")
    parser.add_argument("--from-logs", nargs="+", default=None, help="saved logs of stage 1 (and stage 2)")
    parser.add_argument("--train-samples", type=int, default=None, help="with --from-logs: samples per epoch")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    if args.from_logs:
        stages = {}
        for stage, path in zip(("stage1", "stage2"), args.from_logs):
            lines = parse(Path(path).read_text())
            stages[stage] = phases(Path(path).read_text(), lines[0][0], lines[-1][0], args.train_samples)
        report(stages, args, None, {"recomputed_from_logs": args.from_logs})
        return
    work = Path(args.work).resolve()
    data = work / "data"
    synth_s = None
    if not (data / "scans.tsv").exists():
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "alz_monai.cli", "synth", str(data), "--subjects",
                        str(args.scans // 2), "--sessions", "2", "--spacing", str(args.spacing), "--workers",
                        str(args.synth_workers)], check=True)
        synth_s = round(time.perf_counter() - began, 1)
    logs = Path(os.environ.get("BENCH_OUT", RESULTS_DIR)) / "logs"
    batch_size = int(dict(zip(overrides[::2], overrides[1::2])).get("--batch_size", 4))
    stages = {}
    for stage, bundle, config, epochs_n, extra in (
        ("stage1", "ad_resnet3d", "configs/train.yaml", args.stage1_epochs, []),
        ("stage2", "ad_mosa", args.stage2_config, args.stage2_epochs,
         ["--stage1_model", str(work / "stage1" / "checkpoints" / "model_best.pt"),
          *shlex.split(args.stage2_overrides)]),
    ):
        output_dir = work / stage
        log, launched, finished = run_bundle(
            bundle, config, ["--dataset_dir", str(data), "--output_dir", str(output_dir), "--num_epochs",
                             str(epochs_n), *extra, *overrides], logs / f"time_to_result_{args.label}_{stage}.log")
        stages[stage] = phases(log, launched, finished, train_samples_per_epoch(output_dir, batch_size))
    report(stages, args, synth_s, {"bundle_overrides": overrides})


def report(stages: dict[str, dict], args: argparse.Namespace, synth_s: float | None, source: dict) -> None:
    rows = [{"phase": phase, **{stage: figures[phase] for stage, figures in stages.items()},
             "both": round(sum(figures[phase] or 0.0 for figures in stages.values()), 2)} for phase in PHASES]
    print_table(rows, ["phase", *stages, "both"])
    for stage, figures in stages.items():
        print(stage, {key: value for key, value in figures.items() if key not in PHASES})
    print(write_result(f"time_to_result_{args.label}", {
        "scans": args.scans, "spacing_mm": args.spacing, "synth_s": synth_s, "stages": stages, "table": rows,
        "args": vars(args), **source}))


if __name__ == "__main__":
    main()
