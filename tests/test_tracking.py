"""MLflow tracking of a bundle run (``--tracking configs/mlflow.yaml``), read back with MLflow's own client.

A tiny two-epoch stage-1 run logs into the SQLite store of its run folder; ``run evaluating`` on it logs into a
store and experiment given on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import STAGE1, TINY_TRAINING, BundleCLI, BundleRun
from monai.utils import path_to_sqlite_uri

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'alz-monai[mlflow]')")
from mlflow.tracking import MlflowClient  # noqa: E402 (after the skip)

pytestmark = pytest.mark.slow

TRACKING = ("--tracking", "configs/mlflow.yaml")
NUM_EPOCHS = 2
LEARNING_RATE = 0.0003  # not the recipe's default: the logged parameter must be the run's value
EVALUATION_EXPERIMENT = "alz-monai-evaluation"


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path, bundle_cli: BundleCLI) -> BundleRun:
    run = BundleRun(STAGE1, tiny_dataset, tmp_path_factory.mktemp("tracked") / "run",
                    {**TINY_TRAINING, "learning_rate": LEARNING_RATE}, num_epochs=NUM_EPOCHS)
    bundle_cli.train(run, *TRACKING)
    return run


def _only_run(client: MlflowClient, experiment_name: str) -> Any:
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"no MLflow experiment {experiment_name!r}"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _artifacts(client: MlflowClient, run_id: str) -> set[str]:
    return {artifact.path for artifact in client.list_artifacts(run_id)}


def test_training_run_is_logged_to_the_run_folder(tracked_run: BundleRun) -> None:
    client = MlflowClient(path_to_sqlite_uri(str(tracked_run.output_dir / "mlruns.db")))
    run = _only_run(client, "alz-monai")
    assert run.info.run_name == tracked_run.output_dir.name
    assert run.info.status == "FINISHED"

    knobs = yaml.safe_load((tracked_run.output_dir / "run_config.yaml").read_text(encoding="utf-8"))["knobs"]
    params = run.data.params
    assert params["learning_rate"] == str(LEARNING_RATE) == str(knobs["learning_rate"])
    assert params["spatial_size"] == str(TINY_TRAINING["spatial_size"]) == str(knobs["spatial_size"])
    assert params["max_epochs"] == str(NUM_EPOCHS)
    assert "resume" not in params and "output_dir" not in params  # the command's own settings, not the run's

    for name in ("auc", "balanced_accuracy", "epoch_loss/train", "epoch_loss/validation"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [metric.step for metric in history] == list(range(1, NUM_EPOCHS + 1)), name
    best = yaml.safe_load((tracked_run.output_dir / "checkpoints" / "best_metric.json").read_text(encoding="utf-8"))
    auc_by_epoch = {metric.step: metric.value for metric in client.get_metric_history(run.info.run_id, "auc")}
    assert auc_by_epoch[best["epoch"]] == pytest.approx(best["value"])

    test_metrics = yaml.safe_load((tracked_run.output_dir / "reports" / "test_metrics.json").read_text(
        encoding="utf-8"))
    assert run.data.metrics["test/auc"] == pytest.approx(test_metrics["auc"])
    assert run.data.metrics["test/balanced_accuracy"] == pytest.approx(test_metrics["balanced_accuracy"])
    assert {"report.html", "test_metrics.json", "best_val_metrics.json"} <= _artifacts(client, run.info.run_id)


def test_evaluation_is_logged_to_a_given_store(tracked_run: BundleRun, bundle_cli: BundleCLI,
                                               tmp_path: Path) -> None:
    store = path_to_sqlite_uri(str(tmp_path / "store" / "mlruns.db"))
    bundle_cli(STAGE1, "run", "evaluating", "--config_file", bundle_cli.configs(STAGE1, "evaluate"),
               "--output_dir", str(tracked_run.output_dir), *TRACKING, "--tracking_uri", store,
               "--experiment_name", EVALUATION_EXPERIMENT)
    client = MlflowClient(store)
    run = _only_run(client, EVALUATION_EXPERIMENT)
    assert run.info.run_name == tracked_run.output_dir.name and run.info.status == "FINISHED"
    assert run.data.params["learning_rate"] == str(LEARNING_RATE)
    test_metrics = yaml.safe_load((tracked_run.output_dir / "evaluation" / "test" / "test_metrics.json").read_text(
        encoding="utf-8"))
    assert run.data.metrics["test/auc"] == pytest.approx(test_metrics["auc"])
    assert {"report.html", "test_metrics.json"} <= _artifacts(client, run.info.run_id)
