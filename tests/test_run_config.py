"""The recorded configuration: a run folder describes itself, later steps use it, and resume means one thing.

The bundle cases run the real entry point (``python -m monai.bundle run ...``); refusals are compared verbatim
where the message is the interface, and checked to leave the run folder as it was.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alz_monai.errors import ConfigError
from alz_monai.optim import build_scheduler
from alz_monai.reports import mark_stale_evaluations
from alz_monai.run_config import _check_override_keys, _is_plain, checkpoint_epoch, load_run_config

if TYPE_CHECKING:
    from conftest import BundleCLI, BundleRun

COSINE_LR = 0.01


def cosine_factor(epoch: int, cycle_starts: list[int], num_epochs: int) -> float:
    """The documented schedule: a cosine over each cycle [s, t), restarting at every recorded restart."""
    start = max(s for s in cycle_starts if s <= epoch)
    end = min([s for s in cycle_starts if s > epoch] + [num_epochs])
    return 0.5 * (1 + math.cos(math.pi * (epoch - start) / (end - start)))


def learning_rates(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                   epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_warm_restarts_follow_the_formula() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=COSINE_LR)
    scheduler = build_scheduler("cosine", optimizer, num_epochs=9, restarts=[4, 6])
    expected = [COSINE_LR * cosine_factor(epoch, [0, 4, 6], 9) for epoch in range(9)]
    assert learning_rates(optimizer, scheduler, 9) == pytest.approx(expected)
    assert min(expected) > 0  # no epoch ever trains at learning rate 0


@pytest.mark.parametrize("restarts", [[0], [9], [12]])
def test_restarts_outside_the_schedule_are_refused(restarts: list[int]) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=COSINE_LR)
    with pytest.raises(ConfigError, match=r"lr_restarts .* must lie after the warm-up \(0\) and before num_epochs"):
        build_scheduler("cosine", optimizer, num_epochs=9, restarts=restarts)


def test_unknown_override_keys_name_the_closest_knobs() -> None:
    base = {"num_epochs": 2, "warmup_epochs": 0, "network_def": {"name": "resnet18"}, "augmentation": [{"prob": 1}]}
    _check_override_keys(base, {"num_epochs": 3, "network_def#name": "resnet10", "augmentation#0#prob": 0.5})
    with pytest.raises(ConfigError) as raised:
        _check_override_keys(base, {"num_epoch": 1, "network_def#nam": "x", "zzz": 1})
    message = str(raised.value)
    assert "--num_epoch is not a knob of this bundle (did you mean --num_epochs, --warmup_epochs?)" in message
    assert "--network_def#nam is not a knob of this bundle (did you mean --network_def#name?)" in message
    assert "--zzz is not a knob of this bundle (see the knobs at the top of configs/train.yaml)" in message


def test_plain_values_are_knobs_and_expressions_are_not() -> None:
    assert _is_plain([1, 2.5, "a", None, True, {"k": [1]}])
    assert not _is_plain("$os.getcwd()")
    assert not _is_plain(["@spatial_size"])
    assert not _is_plain({"_target_": "Resized"})


def test_a_truncated_checkpoint_is_named_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"trainer": {"iteration": 6, "epoch_length": 3}}, path)
    assert checkpoint_epoch(path) == (2, None)
    path.write_bytes(path.read_bytes()[:40])
    epoch, problem = checkpoint_epoch(path)
    assert epoch is None and problem.startswith("cannot be read (")
    assert checkpoint_epoch(tmp_path / "missing.pt") == (None, "does not exist")


def test_stale_evaluations_are_marked(tmp_path: Path) -> None:
    current, older = tmp_path / "evaluation" / "test", tmp_path / "evaluation" / "val"
    for folder, digest in ((current, "new"), (older, "old")):
        folder.mkdir(parents=True)
        (folder / f"{folder.name}_metrics.json").write_text(
            f'{{"model": {{"checkpoint": "m.pt", "training_epoch": 2, "sha256": "{digest}"}}}}')
    assert mark_stale_evaluations(tmp_path, "new") == [older / "STALE.txt"]
    assert "training epoch 2" in (older / "STALE.txt").read_text()
    assert not (current / "STALE.txt").exists()


# ---- through the bundles ----------------------------------------------------------------------------------------

def error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("alz-monai:")]
    assert lines, f"no alz-monai error message in the output:\n{output[-3000:]}"
    assert "Traceback" not in output
    return lines[-1]


@pytest.fixture()
def run_copy(stage1_run: BundleRun, tmp_path: Path) -> BundleRun:
    """A copy of the session's finished 4-epoch stage-1 run, to resume or damage."""
    copy = dataclasses.replace(stage1_run, output_dir=tmp_path / "run")
    shutil.copytree(stage1_run.output_dir, copy.output_dir)
    return copy


@pytest.mark.slow
def test_the_run_folder_records_its_configuration(stage1_run: BundleRun) -> None:
    recorded = load_run_config(stage1_run.output_dir)
    assert recorded is not None
    knobs = recorded["knobs"]
    assert knobs["spatial_size"] == stage1_run.knobs["spatial_size"] and knobs["classes"] == ["CN", "AD"]
    assert knobs["dataset_dir"] == str(stage1_run.dataset_dir)
    assert recorded["components"]["network_def"]["name"] == "resnet18"
    assert {"torch", "monai", "pytorch-ignite", "alz-monai"} <= set(recorded["versions"])
    splits = stage1_run.output_dir / "splits.tsv"
    assert recorded["split_table"]["path"] == str(splits)
    table = pd.read_csv(splits, sep="\t")
    assert recorded["data"]["test"]["scans"] == (table["split"] == "test").sum()
    assert "python -m monai.bundle run training" in recorded["command"]


@pytest.mark.slow
def test_reports_name_the_model_they_evaluated(stage1_run: BundleRun) -> None:
    test = yaml.safe_load((stage1_run.output_dir / "reports" / "test_metrics.json").read_text())
    best_epoch = yaml.safe_load((stage1_run.output_dir / "checkpoints" / "best_metric.json").read_text())["epoch"]
    model_path = stage1_run.output_dir / "checkpoints" / "model_best.pt"
    assert test["model"]["checkpoint"] == str(model_path)
    assert test["model"]["training_epoch"] == best_epoch
    assert "epoch" not in test  # the evaluator's own counter is not the model's epoch
    predictions = pd.read_csv(stage1_run.output_dir / "reports" / "test_predictions.csv")
    assert set(predictions["checkpoint"]) == {str(model_path)} and set(predictions["training_epoch"]) == {best_epoch}
    accumulator = EventAccumulator(str(stage1_run.output_dir / "tensorboard" / "test"))
    accumulator.Reload()
    assert "test/model/text_summary" in accumulator.Tags()["tensors"]


@pytest.mark.slow
def test_an_extended_run_restarts_its_cosine_schedule(stage1_run: BundleRun, bundle_cli: BundleCLI,
                                                      tmp_path: Path) -> None:
    knobs = {**stage1_run.knobs, "scheduler_name": "cosine", "learning_rate": COSINE_LR}
    run = dataclasses.replace(stage1_run, output_dir=tmp_path / "run", knobs=knobs, num_epochs=2)
    bundle_cli.train(run)
    # the resumed command gives no knob but the epochs: everything else comes from run_config.yaml
    resumed = bundle_cli(run.bundle, "run", "training", "--config_file", bundle_cli.configs(run.bundle),
                         "--output_dir", str(run.output_dir), "--resume", "true", "--num_epochs", "4")
    assert "extending the run from 2 to 4 epochs: the cosine schedule restarts at epoch 2" in resumed.stdout

    accumulator = EventAccumulator(str(run.output_dir / "tensorboard" / "train"), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert checkpoint_epoch(run.output_dir / "checkpoints" / "checkpoint_final.pt") == (4, None)
    rates = [event.value for event in accumulator.Scalars("lr")]
    steps_per_epoch = len(rates) // 4
    expected = [COSINE_LR * cosine_factor(epoch, [0, 2], 4) for epoch in range(4) for _ in range(steps_per_epoch)]
    assert rates == pytest.approx(expected, rel=1e-6)
    recorded = load_run_config(run.output_dir)
    assert recorded["knobs"]["lr_restarts"] == [2] and recorded["knobs"]["num_epochs"] == 4
    assert [entry["resume"] for entry in recorded["history"]] == [False, True]


@pytest.mark.slow
@pytest.mark.parametrize(("arguments", "message"), [
    (["--num_epochs", "3"],
     "cannot resume: the checkpoint has trained 4 epochs but --num_epochs is 3; pass --num_epochs 4 or more, or "
     "choose a new --output_dir"),
    (["--num_epochs", "4", "--batch_size", "2"],
     "records other settings: batch_size recorded 4, given 2; choose a new --output_dir for a new run, or pass "
     "--allow_config_change true to continue anyway"),
    (["--num_epochs", "4", "--network_def#name", "resnet10"],
     "records other settings: network_def#name recorded resnet18, given resnet10; choose a new --output_dir"),
    (["--num_epoch", "5"],
     "--num_epoch is not a knob of this bundle (did you mean --num_epochs, --warmup_epochs?)"),
], ids=["fewer_epochs", "batch_size", "network", "misspelled_knob"])
def test_a_resume_that_would_change_the_run_is_refused(run_copy: BundleRun, bundle_cli: BundleCLI,
                                                        arguments: list[str], message: str) -> None:
    latest = run_copy.output_dir / "checkpoints" / "checkpoint_latest.pt"
    before = (latest.read_bytes(), (run_copy.output_dir / "run_config.yaml").read_text())
    refused = bundle_cli(run_copy.bundle, "run", "training", "--config_file", bundle_cli.configs(run_copy.bundle),
                         "--output_dir", str(run_copy.output_dir), "--resume", "true", *arguments,
                         expect_success=False)
    assert refused.returncode != 0
    assert message in error_line(refused.stdout)
    assert (latest.read_bytes(), (run_copy.output_dir / "run_config.yaml").read_text()) == before


@pytest.mark.slow
def test_an_unreadable_latest_checkpoint_names_the_good_ones(run_copy: BundleRun, bundle_cli: BundleCLI) -> None:
    checkpoints = run_copy.output_dir / "checkpoints"
    latest = checkpoints / "checkpoint_latest.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    command = ["run", "training", "--config_file", bundle_cli.configs(run_copy.bundle),
               "--output_dir", str(run_copy.output_dir), "--resume", "true", "--num_epochs", "4"]
    refused = bundle_cli(run_copy.bundle, *command, expect_success=False)
    message = error_line(refused.stdout)
    assert message.startswith(f"alz-monai: cannot resume: {latest} cannot be read (")
    assert message.endswith(f"readable checkpoints in {checkpoints}: checkpoint_final.pt (epoch 4); resume from one "
                            "with --resume_from checkpoint_final.pt")
    # the documented way forward works
    resumed = bundle_cli(run_copy.bundle, *command, "--resume_from", "checkpoint_final.pt")
    assert "resumed from" in resumed.stdout and "checkpoint_final.pt at epoch 4" in resumed.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("arguments", "message"), [
    (["--key_metric", "aucc"], "key_metric 'aucc' is not a metric the validation report computes (did you mean "
                               "auc?); valid names: accuracy, balanced_accuracy,"),
    (["--val_interval", "5"], "val_interval (5) must be between 1 and num_epochs (1), or no epoch would be "
                              "validated and no best model saved"),
], ids=["key_metric", "val_interval"])
def test_settings_that_would_fail_after_training_are_refused_first(stage1_run: BundleRun, bundle_cli: BundleCLI,
                                                                   tmp_path: Path, arguments: list[str],
                                                                   message: str) -> None:
    run = dataclasses.replace(stage1_run, output_dir=tmp_path / "run", num_epochs=1)
    refused = bundle_cli.train(run, *arguments, expect_success=False)
    assert message in error_line(refused.stdout)
    assert not run.output_dir.exists()  # nothing left that could block the corrected command


@pytest.mark.slow
def test_evaluation_refuses_other_geometry_than_the_recorded(stage1_run: BundleRun, bundle_cli: BundleCLI) -> None:
    refused = bundle_cli(stage1_run.bundle, "run", "evaluating", "--config_file",
                         bundle_cli.configs(stage1_run.bundle, "evaluate"), "--output_dir", str(stage1_run.output_dir),
                         "--spatial_size", "[48, 48, 48]", "--eval_split", "val", expect_success=False)
    assert error_line(refused.stdout) == (
        f"alz-monai: {stage1_run.output_dir / 'run_config.yaml'} records other settings: spatial_size recorded "
        "[32, 32, 32], given [48, 48, 48]; drop these overrides to use the recorded values, or pass "
        "--allow_config_change true")


@pytest.mark.slow
def test_stage2_network_builds_without_the_stage1_model(stage2_run: BundleRun, bundle_cli: BundleCLI) -> None:
    knobs = list(stage2_run.knob_args)
    knobs[knobs.index("--stage1_model") + 1] = "/nonexistent/model_best.pt"
    verified = bundle_cli(stage2_run.bundle, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                          "--config_file", bundle_cli.configs(stage2_run.bundle), *knobs,
                          "--_meta_#network_data_format#inputs#image#spatial_shape",
                          str(stage2_run.knobs["spatial_size"]))
    assert "data shape of network is verified with no error" in verified.stdout


@pytest.mark.slow
def test_a_run_that_died_before_its_first_checkpoint_is_restarted(stage1_run: BundleRun, bundle_cli: BundleCLI,
                                                                  tmp_path: Path) -> None:
    run = dataclasses.replace(stage1_run, output_dir=tmp_path / "run", num_epochs=1)
    events = run.output_dir / "tensorboard" / "train" / "events.out.tfevents.cut-short"
    events.parent.mkdir(parents=True)
    events.write_text("epoch 1, cut short")
    restarted = bundle_cli.train(run, "--resume", "true")
    assert "holds no checkpoint yet: the run restarts from its first epoch" in restarted.stdout
    assert (run.output_dir / "summary_all.json").is_file()
    kept = list(run.output_dir.glob("tensorboard.stopped-*/train/events.out.tfevents.cut-short"))
    assert len(kept) == 1 and kept[0].read_text() == "epoch 1, cut short"
