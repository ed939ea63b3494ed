"""Reliability of training runs: kills at awkward moments, bit-for-bit resumes, one run per folder.

Every run goes through ``python -m monai.bundle`` in a subprocess (see conftest.py). Kills come from test-only
config overlays layered on train.yaml, the way test_bundles.py kills a run after validation; here the kill lands
inside a training iteration, inside validation and inside the write of a checkpoint. CPU runs are reproducible,
so a killed-and-resumed run must end exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from conftest import STAGE1, TINY_TRAINING, BundleRun
from test_bundles import (
    assert_same_curves,
    assert_same_summary,
    iterations_per_epoch,
    load_checkpoint,
    written_steps,
)

from alz_monai.run_dir import PARTIAL_SAVE_GLOB, prepare_run_dir

if TYPE_CHECKING:
    from subprocess import CompletedProcess

    from conftest import BundleCLI, SideBySide

pytestmark = pytest.mark.slow

NUM_EPOCHS = 4
RESUMED_FROM_EPOCHS = 2
KILLED_IN_EPOCH = 2  # every kill below lands in epoch 2, so the run resumes from epoch 1's checkpoint
RELIABILITY_KNOBS = {**TINY_TRAINING, "network_def#name": "resnet10", "deterministic": "true"}
# Both augmentation paths, each with its own random streams: MONAI transforms with the shuffling DataLoader;
# batched augmentation with the class-balanced sampler (a torch.Generator of its own), the latter resuming from
# checkpoints written in the background (the killed runs below use the default, synchronous writes).
AUGMENTATION_KNOBS = {
    "dataset": {"augmentation_on": "dataset"},
    "batch": {"augmentation_on": "batch", "class_balanced_sampling": "true", "background_checkpoint": "true"},
}

# Flushing first puts the killed epoch's events on disk, so the resumed run has stale events to hide.
KILL = "(@train_writer.flush(), @val_writer.flush(), os.kill(os.getpid(), signal.SIGKILL))"
# The trainer is built first, as in train.yaml: the order in which components draw from the seeded generator
# decides the run, and the resumed run must match an uninterrupted one.
KILL_OVERLAYS = {
    # after the backward pass of epoch 2's second iteration, before its optimizer step (MONAI's iteration events
    # take no event filter)
    "mid_iteration": f"""
+imports:
  - $import signal
training:
  - $@train#trainer
  - "$@train#trainer.add_event_handler(monai.engines.utils.IterationEvents.BACKWARD_COMPLETED, lambda engine: {KILL}
      if engine.state.epoch == {KILLED_IN_EPOCH}
      and engine.state.iteration == engine.state.epoch_length * {KILLED_IN_EPOCH - 1} + 2 else None)"
  - $@train#trainer.run()
""",
    # after the validation batch of epoch 2, before the validation metrics are logged
    "validation": f"""
+imports:
  - $import signal
training:
  - $@train#trainer
  - "$@validate#evaluator.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(
      event_filter=lambda engine, count: @train#trainer.state.epoch == {KILLED_IN_EPOCH}), lambda engine: {KILL})"
  - $@train#trainer.run()
""",
    # torch.save of epoch 2's full checkpoint writes half of the file, then the process dies
    "checkpoint_save": f"""
+imports:
  - $import io
  - $import signal
training:
  - $@train#trainer
  - "$setattr(torch, 'save', (lambda save: lambda obj, f, *args, **kwargs:
      (lambda data: (f.write(data[:len(data) // 2]), f.flush(), {KILL}))(
        (lambda buffer: (save(obj, buffer), buffer.getvalue())[1])(io.BytesIO()))
      if isinstance(obj, dict) and 'trainer' in obj and @train#trainer.state.epoch == {KILLED_IN_EPOCH}
      else save(obj, f, *args, **kwargs))(torch.save))"
  - $@train#trainer.run()
""",
}
# The holder of a run folder waits, its lock taken, until the test creates this file.
HOLD_OVERLAY = """
+imports:
  - $import time
+setup:
  - "$[time.sleep(0.1) for _ in iter(lambda: os.path.exists({release!r}), True)]"
"""
LOCK_TIMEOUT_S = 300


def last_written_steps(kill_point: str, per_epoch: int) -> dict[str, int]:
    """The last loss iteration and val/auc epoch that a kill leaves in the event files. They come after the
    saved epoch: the resumed run writes these steps again and TensorBoard must show each once."""
    killed_epoch_start = (KILLED_IN_EPOCH - 1) * per_epoch
    return {
        "mid_iteration": {"loss": killed_epoch_start + 1, "val/auc": KILLED_IN_EPOCH - 1},
        "validation": {"loss": killed_epoch_start + per_epoch, "val/auc": KILLED_IN_EPOCH - 1},
        "checkpoint_save": {"loss": killed_epoch_start + per_epoch, "val/auc": KILLED_IN_EPOCH},
    }[kill_point]


def reliability_run(dataset_dir: Path, output_dir: Path, augmentation: str, num_epochs: int = NUM_EPOCHS) -> BundleRun:
    return BundleRun(STAGE1, dataset_dir, output_dir, {**RELIABILITY_KNOBS, **AUGMENTATION_KNOBS[augmentation]},
                     num_epochs=num_epochs)


def partial_saves(run: BundleRun) -> list[str]:
    return sorted(path.name for path in (run.output_dir / "checkpoints").glob(PARTIAL_SAVE_GLOB))


def assert_ends_like(run: BundleRun, reference: BundleRun) -> None:
    """Same final trainer counters, weights (within 1e-6), TensorBoard curves and summary as the uninterrupted
    reference."""
    final, expected = (load_checkpoint(r, "checkpoint_final.pt") for r in (run, reference))
    assert final["trainer"] == expected["trainer"]
    assert final["network"].keys() == expected["network"].keys()
    for name, weights in final["network"].items():
        torch.testing.assert_close(weights, expected["network"][name], rtol=0, atol=1e-6, msg=name)
    assert_same_curves(run.output_dir, reference.output_dir)
    assert_same_summary(run.output_dir, reference.output_dir)


@pytest.fixture(scope="module")
def reference_runs(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory, bundle_cli: BundleCLI,
                   run_side_by_side: SideBySide) -> dict[str, BundleRun]:
    """Uninterrupted deterministic runs of NUM_EPOCHS epochs, one per augmentation path."""
    runs = {name: reliability_run(tiny_dataset, tmp_path_factory.mktemp(f"reference_{name}") / "run", name)
            for name in AUGMENTATION_KNOBS}
    run_side_by_side({name: lambda run=run: bundle_cli.train(run) for name, run in runs.items()})
    return runs


@pytest.fixture(scope="module")
def resumed_runs(reference_runs: dict[str, BundleRun], tmp_path_factory: pytest.TempPathFactory, bundle_cli: BundleCLI,
                 run_side_by_side: SideBySide) -> dict[str, tuple[BundleRun, CompletedProcess[str]]]:
    """Per augmentation path: a run of RESUMED_FROM_EPOCHS epochs, resumed to NUM_EPOCHS, and its resumed log."""

    def train_then_resume(reference: BundleRun, output_dir: Path) -> tuple[BundleRun, CompletedProcess[str]]:
        run = dataclasses.replace(reference, output_dir=output_dir, num_epochs=RESUMED_FROM_EPOCHS)
        bundle_cli.train(run)
        run = dataclasses.replace(run, num_epochs=NUM_EPOCHS)
        return run, bundle_cli.train(run, "--resume", "true")

    return run_side_by_side({
        name: lambda reference=reference, name=name: train_then_resume(
            reference, tmp_path_factory.mktemp(f"resumed_{name}") / "run")
        for name, reference in reference_runs.items()})


@dataclasses.dataclass(frozen=True)
class KilledRun:
    """A run killed by one of KILL_OVERLAYS, what its folder held right after the kill, and its resumption."""

    run: BundleRun
    latest_trainer_state: dict[str, int]  # checkpoint_latest.pt as torch.load(weights_only=True) reads it
    final_named_files: dict[str, str]  # each checkpoints/ file with its final name: "ok" or why it does not load
    partial_saves: list[str]
    last_written_steps: dict[str, int]  # the last step of loss and val/auc in the event files
    resumed: CompletedProcess[str]


def load_status(path: Path) -> str:
    """Whether a file of a checkpoint folder loads as its kind (torch with weights_only, or JSON): "ok" or why not."""
    try:
        if path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
        else:
            json.loads(path.read_text(encoding="utf-8"))
    except Exception as error:  # noqa: BLE001 (any failure to load is what the test reports)
        return f"{type(error).__name__}: {error}"
    return "ok"


@pytest.fixture(scope="module")
def killed_runs(reference_runs: dict[str, BundleRun], tmp_path_factory: pytest.TempPathFactory,
                bundle_cli: BundleCLI, run_side_by_side: SideBySide) -> dict[str, KilledRun]:
    """Per kill point: the deterministic dataset-augmentation run, killed, then resumed with ``--resume true``."""

    def kill_then_resume(kill_point: str) -> KilledRun:
        folder = tmp_path_factory.mktemp(f"killed_{kill_point}")
        overlay = folder / "kill.yaml"
        overlay.write_text(KILL_OVERLAYS[kill_point], encoding="utf-8")
        run = dataclasses.replace(reference_runs["dataset"], output_dir=folder / "run")
        killed = bundle_cli.train(run, extra_configs=(overlay,), expect_success=False)
        if killed.returncode != -signal.SIGKILL:
            pytest.fail(f"{kill_point}: the run was not killed (exit {killed.returncode}):\n{killed.stdout[-3000:]}")
        checkpoints = run.output_dir / "checkpoints"
        final_named = sorted(path for path in checkpoints.iterdir() if not path.name.startswith("."))
        tensorboard = run.output_dir / "tensorboard"
        after_kill = {
            "latest_trainer_state": dict(load_checkpoint(run, "checkpoint_latest.pt")["trainer"]),
            "final_named_files": {path.name: load_status(path) for path in final_named},
            "partial_saves": partial_saves(run),
            "last_written_steps": {"loss": max(written_steps(tensorboard / "train", "loss")),
                                   "val/auc": max(written_steps(tensorboard / "val", "val/auc"))},
        }
        resumed = bundle_cli.train(run, "--resume", "true")
        return KilledRun(run=run, resumed=resumed, **after_kill)

    return run_side_by_side({kill_point: lambda kill_point=kill_point: kill_then_resume(kill_point)
                             for kill_point in KILL_OVERLAYS})


@pytest.mark.parametrize("augmentation", list(AUGMENTATION_KNOBS))
def test_deterministic_resume_reproduces_an_uninterrupted_run(
        augmentation: str, reference_runs: dict[str, BundleRun],
        resumed_runs: dict[str, tuple[BundleRun, CompletedProcess[str]]]) -> None:
    reference = reference_runs[augmentation]
    run, resumed = resumed_runs[augmentation]
    per_epoch = iterations_per_epoch(reference)
    assert "deterministic True" in resumed.stdout
    assert f"at epoch {RESUMED_FROM_EPOCHS}, iteration {RESUMED_FROM_EPOCHS * per_epoch}" in resumed.stdout
    assert_ends_like(run, reference)


@pytest.mark.parametrize("kill_point", list(KILL_OVERLAYS))
def test_killed_run_keeps_its_last_checkpoint_and_resumes_like_an_uninterrupted_run(
        kill_point: str, killed_runs: dict[str, KilledRun], reference_runs: dict[str, BundleRun]) -> None:
    outcome, reference = killed_runs[kill_point], reference_runs["dataset"]
    per_epoch = iterations_per_epoch(reference)

    # the kill cost the killed epoch only; every file under a final name is whole
    saved_iteration = (KILLED_IN_EPOCH - 1) * per_epoch
    assert outcome.latest_trainer_state["iteration"] == saved_iteration
    assert {"checkpoint_latest.pt", "model_best.pt", "best_metric.json"} <= set(outcome.final_named_files)
    assert set(outcome.final_named_files.values()) == {"ok"}, outcome.final_named_files
    # atomic_open's temporary file: ".<final name>.<random>.tmp"
    expected_partial = [".checkpoint_latest.pt"] if kill_point == "checkpoint_save" else []
    assert [name.rsplit(".", 2)[0] for name in outcome.partial_saves] == expected_partial
    assert outcome.last_written_steps == last_written_steps(kill_point, per_epoch)

    # the resumed run continues the trainer's counters, drops the partial save and ends like the reference
    assert f"at epoch {KILLED_IN_EPOCH - 1}, iteration {saved_iteration}" in outcome.resumed.stdout
    assert partial_saves(outcome.run) == []
    assert_ends_like(outcome.run, reference)


def test_resume_removes_partial_saves_and_keeps_checkpoints(tmp_path: Path) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "checkpoint_latest.pt").write_bytes(b"whole")
    (checkpoints / ".checkpoint_latest.pt.x1y2z3.tmp").write_bytes(b"half")
    (checkpoints / ".model_best.pt.a1b2c3.tmp").write_bytes(b"")
    with prepare_run_dir(tmp_path / "run", resume=True):
        assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint_latest.pt"]


def test_one_run_per_folder(tiny_dataset: Path, tmp_path: Path, bundle_cli: BundleCLI) -> None:
    """A second run on a folder in use is refused by the lock; once the first is done, a new run there is
    refused too, naming both ways forward; the first run itself completes untouched."""
    run = reliability_run(tiny_dataset, tmp_path / "run", "dataset", num_epochs=1)
    release = tmp_path / "release"
    overlay = tmp_path / "hold.yaml"
    overlay.write_text(HOLD_OVERLAY.format(release=str(release)), encoding="utf-8")
    lock_file = run.output_dir / ".lock"
    with ThreadPoolExecutor(max_workers=1) as pool:
        holder = pool.submit(bundle_cli.train, run, extra_configs=(overlay,))
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while not (lock_file.is_file() and lock_file.read_text(encoding="utf-8").strip()):
                assert not holder.done() and time.monotonic() < deadline, "the first run never took the lock"
                time.sleep(0.2)
            holder_pid = lock_file.read_text(encoding="utf-8").strip()
            concurrent = bundle_cli.train(run, expect_success=False)
        finally:
            release.touch()
        holder.result()

    assert concurrent.returncode != 0
    assert (f"alz-monai: another run is using {run.output_dir} (pid {holder_pid}); wait for it or choose another "
            "--output_dir") in concurrent.stdout
    assert "Traceback" not in concurrent.stdout and "Epoch[1]" not in concurrent.stdout
    assert (run.output_dir / "summary_all.json").is_file()

    latest = run.output_dir / "checkpoints" / "checkpoint_latest.pt"
    saved_at = latest.stat().st_mtime_ns
    second = bundle_cli.train(run, expect_success=False)
    assert second.returncode != 0
    assert (f"alz-monai: {run.output_dir} already holds a run; pass --resume true to continue it, or choose a new "
            "--output_dir") in second.stdout
    assert "Traceback" not in second.stdout and "Epoch[1]" not in second.stdout
    assert latest.stat().st_mtime_ns == saved_at
