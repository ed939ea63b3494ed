"""End-to-end tests of the ad_resnet3d and ad_mosa bundles through ``python -m monai.bundle``.

Every command here is one that the bundle READMEs list (plus a test-only overlay that kills a run). The expensive
runs are shared: conftest.py trains each bundle once per session; only the resume tests train runs of their own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser
from sklearn import metrics as skm
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from alz_monai.recipes import config_files

if TYPE_CHECKING:
    from conftest import BundleCLI, BundleRun

pytestmark = pytest.mark.slow

META_FILE = "configs/metadata.json"
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "shared" / "monai" / "meta_schema_20240725.json"
BUNDLES = ("ad_resnet3d", "ad_mosa")
CLASSES = ("CN", "AD")
PROB_COLUMNS = [f"prob_{name}" for name in CLASSES]
FIGURES = ("roc", "pr", "confusion_matrix", "reliability", "per_class")
VAL_SCALARS = ("val/accuracy", "val/balanced_accuracy", "val/auc", "val/f1_macro", "val/sensitivity",
               "val/specificity", "val/mcc")
SPLIT_OF_REPORT = {"best_val": "val", "test": "test"}
KILLED_IN_EPOCH = 3
# Layered on train.yaml: SIGKILL in epoch 3 once its validation is logged, before its checkpoint is saved, so the
# folder holds what a crash leaves: checkpoint_latest.pt of epoch 2 and TensorBoard events of epoch 3. The trainer
# is built first, as in train.yaml: the order in which components draw from the seeded generator decides the run.
KILL_OVERLAY = f"""
+imports:
  - $import signal
training:
  - $@train#trainer
  - "$@validate#evaluator.add_event_handler(ignite.engine.Events.COMPLETED(event_filter=lambda engine, event:
      @train#trainer.state.epoch == {KILLED_IN_EPOCH}), lambda engine: (@train_writer.flush(),
      os.kill(os.getpid(), signal.SIGKILL)))"
  - $@train#trainer.run()
"""


@pytest.fixture(scope="module", params=BUNDLES)
def finished_run(request: pytest.FixtureRequest) -> BundleRun:
    """The session's finished run of each bundle."""
    return request.getfixturevalue("stage1_run" if request.param == "ad_resnet3d" else "stage2_run")


@pytest.fixture(scope="module")
def evaluation_on_val(stage1_run: BundleRun, bundle_cli: BundleCLI) -> Path:
    """The ``evaluating`` workflow on the stage-1 run's validation split; its report folder."""
    bundle_cli(stage1_run.bundle, "run", "evaluating",
               "--config_file", bundle_cli.configs(stage1_run.bundle, "evaluate"),
               "--output_dir", str(stage1_run.output_dir), "--eval_split", "val")
    return stage1_run.output_dir / "evaluation" / "val"


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_checkpoint(run: BundleRun, name: str) -> dict[str, Any]:
    return torch.load(run.output_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


def build_best_network(run: BundleRun, monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    """The network of the run's configuration, built by MONAI's ConfigParser, holding ``model_best.pt``."""
    monkeypatch.chdir(run.bundle_dir)  # the recipe's config files are relative to the bundle's folder
    parser = ConfigParser()
    parser.read_config(config_files(run.bundle))
    parser.update(run.knobs)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(load_checkpoint(run, "model_best.pt"))
    return network.eval()


def iterations_per_epoch(run: BundleRun) -> int:
    return load_checkpoint(run, "checkpoint_final.pt")["trainer"]["iteration"] // run.num_epochs


def tensorboard_series(folder: Path) -> dict[str, list[tuple[int, float | None]]]:
    """What TensorBoard shows of a run folder, purges applied: per tag, ``(step, value)`` of the scalars and
    ``(step, None)`` of the figures, in the order read."""
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    series: dict[str, list[tuple[int, float | None]]] = {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in tags["scalars"]}
    series.update({tag: [(event.step, None) for event in accumulator.Images(tag)] for tag in tags["images"]})
    return series


def steps_of(series: dict[str, list[tuple[int, float | None]]], tag: str) -> list[int]:
    return [step for step, _ in series[tag]]


def written_steps(folder: Path, tag: str) -> list[int]:
    """Every step written for ``tag`` into the event files of ``folder``, including those TensorBoard hides."""
    return [event.step
            for path in sorted(folder.glob("events.out.tfevents.*"))
            for event in EventFileLoader(str(path)).Load()
            for value in event.summary.value if value.tag == tag]


def improving_epochs(auc_series: list[tuple[int, float | None]]) -> list[int]:
    """Epochs whose validation AUC beat every earlier one: those that saved a best model."""
    epochs, best = [], -math.inf
    for epoch, value in auc_series:
        if value is not None and math.isfinite(value) and value > best:
            epochs.append(epoch)
            best = value
    return epochs


def assert_same_summary(run_dir: Path, reference_dir: Path) -> None:
    """Same summary as the reference run's, the same model (by hash and epoch) in another folder."""
    summary, reference = load_json(run_dir / "summary_all.json"), load_json(reference_dir / "summary_all.json")
    model, reference_model = summary.pop("model"), reference.pop("model")
    assert summary == reference
    assert model["checkpoint"] == str(run_dir / "checkpoints" / "model_best.pt")
    assert (model["sha256"], model["training_epoch"]) == (reference_model["sha256"], reference_model["training_epoch"])


def assert_same_curves(run_dir: Path, reference_dir: Path) -> None:
    """The train and val TensorBoard folders of ``run_dir`` show the reference's tags at the same steps, each
    step once and in increasing order, with the same values."""
    for writer in ("train", "val"):
        series = tensorboard_series(run_dir / "tensorboard" / writer)
        reference = tensorboard_series(reference_dir / "tensorboard" / writer)
        assert {tag: steps_of(series, tag) for tag in series} == {tag: steps_of(reference, tag) for tag in reference}
        for tag, points in series.items():
            steps = [step for step, _ in points]
            assert all(earlier < later for earlier, later in pairwise(steps)), f"{writer}/{tag} steps {steps}"
            values = [value for _, value in points]
            if values[0] is not None:
                assert values == pytest.approx([value for _, value in reference[tag]], abs=1e-5), f"{writer}/{tag}"


def read_predictions(path: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """A report's predictions CSV and its true labels, predicted labels and probabilities as class indices."""
    table = pd.read_csv(path)
    index = {name: position for position, name in enumerate(CLASSES)}
    return (table, table["true_label"].map(index).to_numpy(), table["predicted_label"].map(index).to_numpy(),
            table[PROB_COLUMNS].to_numpy())


def sklearn_report(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """Summary and per-class metrics recomputed with scikit-learn; AD is the positive class."""
    labels = list(range(len(CLASSES)))
    confusion = skm.confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                                        zero_division=0)
    # specificity of class k: true negatives over all samples of the other classes
    others = confusion.sum() - confusion.sum(axis=1)
    false_positives = confusion.sum(axis=0) - np.diag(confusion)
    specificity = (others - false_positives) / others
    positive = CLASSES.index("AD")
    summary = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
        "auc": skm.roc_auc_score(y_true == positive, probs[:, positive]),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
        "f1_weighted": skm.f1_score(y_true, y_pred, average="weighted", zero_division=0),
        "sensitivity": recall[positive],
        "specificity": specificity[positive],
        "mcc": skm.matthews_corrcoef(y_true, y_pred),
    }
    per_class = {
        name: {"precision": precision[k], "recall": recall[k], "f1": f1[k], "specificity": specificity[k],
               "support": support[k], "auc": skm.roc_auc_score(y_true == k, probs[:, k])}
        for k, name in enumerate(CLASSES)
    }
    return summary, {"confusion_matrix": confusion.tolist(), **per_class}


def error_line(output: str) -> str:
    """The one-line message a bundle run that refused to start printed (no traceback)."""
    lines = [line for line in output.splitlines() if line.startswith("alz-monai:")]
    assert lines, f"no alz-monai error message in the output:\n{output[-3000:]}"
    assert "Traceback" not in output
    return lines[-1]


def test_training_saves_loadable_checkpoints(finished_run: BundleRun, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoints = {name: load_checkpoint(finished_run, name)
                   for name in ("checkpoint_latest.pt", "checkpoint_final.pt", "model_best.pt")}
    latest, final = checkpoints["checkpoint_latest.pt"], checkpoints["checkpoint_final.pt"]
    assert {"network", "optimizer", "lr_scheduler", "random_state", "trainer", "scaler", "checkpointer"} <= set(latest)
    assert latest["trainer"]["max_epochs"] == finished_run.num_epochs
    assert final["trainer"]["iteration"] == latest["trainer"]["iteration"] > 0
    best = load_json(finished_run.output_dir / "checkpoints" / "best_metric.json")
    assert best["metric"] == "auc" and 1 <= best["epoch"] <= finished_run.num_epochs
    assert latest["checkpointer"]["best_epoch"] == best["epoch"]
    assert latest["checkpointer"]["best_value"] == pytest.approx(best["value"])

    network = build_best_network(finished_run, monkeypatch)  # strict load: every key, every shape
    with torch.no_grad():
        logits = network(torch.zeros(1, 1, *finished_run.knobs["spatial_size"]))
    assert logits.shape == (1, len(CLASSES))


def test_tensorboard_shows_curves_and_figures(finished_run: BundleRun) -> None:
    tensorboard = finished_run.output_dir / "tensorboard"
    iterations = load_checkpoint(finished_run, "checkpoint_final.pt")["trainer"]["iteration"]
    epochs = list(range(1, finished_run.num_epochs + 1))

    train = tensorboard_series(tensorboard / "train")
    assert steps_of(train, "loss") == list(range(1, iterations + 1))
    lr_tags = [tag for tag in train if tag.split("/")[0] == "lr"]  # "lr", or "lr/backbone" and "lr/fusion" for Mosa
    assert lr_tags and all(steps_of(train, tag) == list(range(1, iterations + 1)) for tag in lr_tags)

    val = tensorboard_series(tensorboard / "val")
    assert all(steps_of(val, tag) == epochs for tag in VAL_SCALARS)
    best_epochs = improving_epochs(val["val/auc"])
    assert best_epochs[-1] == load_json(finished_run.output_dir / "checkpoints" / "best_metric.json")["epoch"]
    assert all(steps_of(val, f"best_val/{figure}") == best_epochs for figure in FIGURES)

    test = tensorboard_series(tensorboard / "test")
    test_auc = load_json(finished_run.output_dir / "reports" / "test_metrics.json")["auc"]
    assert test["test/auc"] == [(1, pytest.approx(test_auc))]
    assert all(steps_of(test, f"test/{figure}") == [1] for figure in FIGURES)


@pytest.mark.parametrize("report", ["best_val", "test"])
def test_json_reports_match_scikit_learn(finished_run: BundleRun, report: str) -> None:
    reports = finished_run.output_dir / "reports"
    table, y_true, y_pred, probs = read_predictions(reports / f"{report}_predictions.csv")
    splits = pd.read_csv(finished_run.output_dir / "splits.tsv", sep="\t")
    in_split = splits[splits["split"] == SPLIT_OF_REPORT[report]]
    assert sorted(table["image"]) == sorted(str(finished_run.dataset_dir / image) for image in in_split["image"])
    assert all(figure_file.is_file() for figure_file in (reports / f"{report}_{figure}.png" for figure in FIGURES))

    expected_summary, expected_classes = sklearn_report(y_true, y_pred, probs)
    metrics = load_json(reports / f"{report}_metrics.json")
    per_class = load_json(reports / f"{report}_per_class_metrics.json")
    assert metrics["num_samples"] == len(table)
    assert metrics["confusion_matrix"] == expected_classes.pop("confusion_matrix")
    assert {name: metrics[name] for name in expected_summary} == pytest.approx(expected_summary, abs=1e-6)
    assert metrics["per_class"] == per_class
    for name, expected in expected_classes.items():
        assert {key: per_class[name][key] for key in expected} == pytest.approx(expected, abs=1e-6), name


def test_summary_holds_best_epoch_validation_and_test(finished_run: BundleRun) -> None:
    summary = load_json(finished_run.output_dir / "summary_all.json")
    best = load_json(finished_run.output_dir / "checkpoints" / "best_metric.json")
    best_val = load_json(finished_run.output_dir / "reports" / "best_val_metrics.json")
    test = load_json(finished_run.output_dir / "reports" / "test_metrics.json")
    assert summary["key_metric"] == best["metric"] == "auc"
    assert summary["best_epoch"] == best["epoch"] == best_val["epoch"]
    assert summary["best_validation"] == best["metrics"]
    assert summary["best_validation"]["auc"] == pytest.approx(best["value"]) == best_val["auc"]
    assert summary["test"] == {name: test[name] for name in summary["test"]}
    assert {"accuracy", "balanced_accuracy", "auc", "f1_macro", "mcc", "confusion_matrix"} <= set(summary["test"])
    assert summary["test_confidence_intervals"] == test["confidence_intervals"]
    assert summary["test_per_class"] == test["per_class"]


def test_stage2_tests_on_participants_stage1_never_trained_on(stage1_run: BundleRun, stage2_run: BundleRun) -> None:
    splits = [pd.read_csv(run.output_dir / "splits.tsv", sep="\t").sort_values("image", ignore_index=True)
              for run in (stage1_run, stage2_run)]
    pd.testing.assert_frame_equal(*splits)


def test_resumed_run_continues_like_an_uninterrupted_one(stage1_run: BundleRun, bundle_cli: BundleCLI,
                                                         tmp_path: Path) -> None:
    run = dataclasses.replace(stage1_run, output_dir=tmp_path / "run", num_epochs=2)
    bundle_cli.train(run)
    bundle_cli.train(dataclasses.replace(run, num_epochs=stage1_run.num_epochs), "--resume", "true")

    assert_same_curves(run.output_dir, stage1_run.output_dir)
    # the test of the 4-epoch best model hides the one of the 2-epoch run
    test_dir = run.output_dir / "tensorboard" / "test"
    assert written_steps(test_dir, "test/auc") == [1, 1]
    assert steps_of(tensorboard_series(test_dir), "test/auc") == [1]
    assert_same_summary(run.output_dir, stage1_run.output_dir)


def test_killed_run_resumes_and_hides_stale_events(stage1_run: BundleRun, bundle_cli: BundleCLI,
                                                   tmp_path: Path) -> None:
    overlay = tmp_path / "killed.yaml"
    overlay.write_text(KILL_OVERLAY, encoding="utf-8")
    run = dataclasses.replace(stage1_run, output_dir=tmp_path / "run")
    killed = bundle_cli.train(run, extra_configs=(overlay,), expect_success=False)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]

    per_epoch = iterations_per_epoch(stage1_run)
    saved_iteration = load_checkpoint(run, "checkpoint_latest.pt")["trainer"]["iteration"]
    assert saved_iteration == (KILLED_IN_EPOCH - 1) * per_epoch
    train_dir, val_dir = run.output_dir / "tensorboard" / "train", run.output_dir / "tensorboard" / "val"
    assert max(written_steps(train_dir, "loss")) == KILLED_IN_EPOCH * per_epoch
    assert max(written_steps(val_dir, "val/auc")) == KILLED_IN_EPOCH

    bundle_cli.train(run, "--resume", "true")
    assert written_steps(train_dir, "loss").count(saved_iteration + 1) == 2
    assert written_steps(val_dir, "val/auc").count(KILLED_IN_EPOCH) == 2
    assert_same_curves(run.output_dir, stage1_run.output_dir)
    assert_same_summary(run.output_dir, stage1_run.output_dir)


def test_stage2_run_resumes_to_more_epochs(stage2_run: BundleRun, bundle_cli: BundleCLI, tmp_path: Path) -> None:
    """Mosa's network and its two learning-rate groups go through stage 1's resume recipe."""
    run = dataclasses.replace(stage2_run, output_dir=tmp_path / "run", num_epochs=stage2_run.num_epochs + 1)
    shutil.copytree(stage2_run.output_dir, run.output_dir)
    resumed = bundle_cli.train(run, "--resume", "true")

    per_epoch = iterations_per_epoch(stage2_run)
    assert f"at epoch {stage2_run.num_epochs}, iteration {stage2_run.num_epochs * per_epoch}" in resumed.stdout
    assert load_checkpoint(run, "checkpoint_final.pt")["trainer"]["iteration"] == run.num_epochs * per_epoch
    train = tensorboard_series(run.output_dir / "tensorboard" / "train")
    assert {tag: steps_of(train, tag) for tag in train} == {
        tag: list(range(1, run.num_epochs * per_epoch + 1)) for tag in ("loss", "lr/backbone", "lr/fusion")}
    val = tensorboard_series(run.output_dir / "tensorboard" / "val")
    assert all(steps_of(val, tag) == list(range(1, run.num_epochs + 1)) for tag in VAL_SCALARS)


# "--resume false" reaches the config as the string 'false', which must not mean true
@pytest.mark.parametrize("resume_args", [(), ("--resume", "false")], ids=["default", "resume_false"])
def test_training_refuses_a_folder_that_holds_a_run(stage1_run: BundleRun, bundle_cli: BundleCLI,
                                                    resume_args: tuple[str, ...]) -> None:
    latest = stage1_run.output_dir / "checkpoints" / "checkpoint_latest.pt"
    saved_at = latest.stat().st_mtime_ns
    refused = bundle_cli.train(stage1_run, *resume_args, expect_success=False)
    assert refused.returncode != 0
    message = error_line(refused.stdout)
    assert "already holds a run" in message and "--resume" in message and "--output_dir" in message
    assert latest.stat().st_mtime_ns == saved_at


def test_evaluation_reproduces_the_test_report(finished_run: BundleRun, bundle_cli: BundleCLI) -> None:
    # every knob comes from the run's run_config.yaml: the command names the run folder only
    bundle_cli(finished_run.bundle, "run", "evaluating",
               "--config_file", bundle_cli.configs(finished_run.bundle, "evaluate"),
               "--output_dir", str(finished_run.output_dir))
    evaluation = finished_run.output_dir / "evaluation" / "test"
    written = {path.name for path in evaluation.iterdir()}
    assert {"test_metrics.json", "test_per_class_metrics.json", "test_predictions.csv",
            *(f"test_{figure}.png" for figure in FIGURES)} <= written
    # the same model on the same scans, with the same bootstrap seed
    reports = finished_run.output_dir / "reports"
    assert load_json(evaluation / "test_metrics.json") == load_json(reports / "test_metrics.json")
    assert steps_of(tensorboard_series(evaluation / "tensorboard"), "test/auc") == [1]


def test_evaluation_on_val_split_reproduces_best_validation(stage1_run: BundleRun, evaluation_on_val: Path) -> None:
    evaluation = load_json(evaluation_on_val / "val_metrics.json")
    best_val = load_json(stage1_run.output_dir / "reports" / "best_val_metrics.json")
    assert evaluation["num_samples"] == best_val["num_samples"]
    assert evaluation["confusion_matrix"] == best_val["confusion_matrix"]
    for name in ("accuracy", "balanced_accuracy", "auc", "f1_macro", "f1_weighted", "mcc"):
        assert evaluation[name] == pytest.approx(best_val[name], abs=1e-6), name
    for name, metrics in best_val["per_class"].items():
        assert evaluation["per_class"][name] == pytest.approx(metrics, abs=1e-6), name


def test_evaluation_keeps_reports_unless_overwrite(stage1_run: BundleRun, evaluation_on_val: Path,
                                                   bundle_cli: BundleCLI) -> None:
    command = ("run", "evaluating", "--config_file", bundle_cli.configs(stage1_run.bundle, "evaluate"),
               "--output_dir", str(stage1_run.output_dir), "--eval_split", "val")
    saved_at = (evaluation_on_val / "val_metrics.json").stat().st_mtime_ns
    refused = bundle_cli(stage1_run.bundle, *command, expect_success=False)
    assert refused.returncode != 0
    assert "--overwrite" in error_line(refused.stdout)
    assert (evaluation_on_val / "val_metrics.json").stat().st_mtime_ns == saved_at

    bundle_cli(stage1_run.bundle, *command, "--overwrite", "true")
    assert (evaluation_on_val / "val_metrics.json").stat().st_mtime_ns > saved_at
    # TensorBoard shows the second evaluation only
    tensorboard = evaluation_on_val / "tensorboard"
    assert written_steps(tensorboard, "val/auc") == [1, 1]
    assert steps_of(tensorboard_series(tensorboard), "val/auc") == [1]


def test_inference_writes_class_probabilities(finished_run: BundleRun, bundle_cli: BundleCLI) -> None:
    splits = pd.read_csv(finished_run.output_dir / "splits.tsv", sep="\t")
    participant = splits.loc[splits["split"] == "test", "participant_id"].iloc[0]
    bundle_cli(finished_run.bundle, "run", "inferring",
               "--config_file", bundle_cli.configs(finished_run.bundle, "inference"),
               "--output_dir", str(finished_run.output_dir), "--input", str(finished_run.dataset_dir / participant))

    predictions = pd.read_csv(finished_run.output_dir / "inference" / "predictions.csv")
    assert len(predictions) == (splits["participant_id"] == participant).sum()
    assert np.allclose(predictions[PROB_COLUMNS].sum(axis=1), 1.0, atol=1e-5)
    # the same model on the same scans as the test report
    test = pd.read_csv(finished_run.output_dir / "reports" / "test_predictions.csv")
    matched = predictions.merge(test, on=["participant_id", "session_id"], suffixes=("", "_test"))
    assert len(matched) == len(predictions)
    assert np.allclose(matched[PROB_COLUMNS], matched[[f"{column}_test" for column in PROB_COLUMNS]], atol=1e-6)
    assert (matched["predicted_label"] == matched["predicted_label_test"]).all()


@pytest.mark.skipif(not SCHEMA_FILE.is_file(), reason=f"the offline bundle schema {SCHEMA_FILE} is absent")
@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_follows_the_bundle_schema(bundle: str, bundle_cli: BundleCLI) -> None:
    verified = bundle_cli(bundle, "verify_metadata", "--meta_file", META_FILE, "--filepath", str(SCHEMA_FILE))
    assert "metadata is verified with no error" in verified.stdout


def test_network_input_and_output_match_the_metadata(finished_run: BundleRun, bundle_cli: BundleCLI) -> None:
    # verify_net_in_out feeds a tensor of the metadata's spatial_shape; Mosa accepts only its spatial_size
    verified = bundle_cli(finished_run.bundle, "verify_net_in_out", "network_def", "--meta_file", META_FILE,
                          "--config_file", bundle_cli.configs(finished_run.bundle), *finished_run.knob_args,
                          "--_meta_#network_data_format#inputs#image#spatial_shape",
                          json.dumps(finished_run.knobs["spatial_size"]))
    assert "data shape of network is verified with no error" in verified.stdout


def test_torchscript_export_matches_the_checkpoint(finished_run: BundleRun, bundle_cli: BundleCLI, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    exported = tmp_path / f"{finished_run.bundle}.ts"
    bundle_cli(finished_run.bundle, "ckpt_export", "network_def", "--filepath", str(exported),
               "--ckpt_file", str(finished_run.output_dir / "checkpoints" / "model_best.pt"),
               "--meta_file", META_FILE, "--config_file", bundle_cli.configs(finished_run.bundle),
               *finished_run.knob_args)
    extra_files = {"metadata.json": ""}
    scripted = torch.jit.load(str(exported), map_location="cpu", _extra_files=extra_files)
    assert json.loads(extra_files["metadata.json"])["name"] == load_json(finished_run.bundle_dir / META_FILE)["name"]

    eager = build_best_network(finished_run, monkeypatch)
    images = torch.randn(2, 1, *finished_run.knobs["spatial_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), eager(images), atol=1e-5, rtol=0)


def test_multi_gpu_overlay_trains_with_two_processes(stage1_run: BundleRun, tmp_path: Path) -> None:
    """The DDP overlay on CPU processes (gloo): every rank caches its share, rank 0 writes, all ranks test the model
    rank 0 saved, and the report covers the whole test split once."""
    import os
    import subprocess
    import sys

    from alz_monai.recipes import config_argument

    run_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run",
               "training", "--config_file", config_argument(config_files(stage1_run.bundle, "multi_gpu_train")),
               "--dataset_dir", str(stage1_run.dataset_dir), "--output_dir", str(run_dir), *stage1_run.knob_args,
               "--num_epochs", "1", "--progress_bar", "false"]
    finished = subprocess.run(command, cwd=stage1_run.bundle_dir, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, check=False)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    splits = pd.read_csv(run_dir / "splits.tsv", sep="\t")
    test = load_json(run_dir / "reports" / "test_metrics.json")
    assert test["num_samples"] == (splits["split"] == "test").sum()
    assert load_json(run_dir / "summary_all.json")["best_epoch"] == 1
