"""The three-class task (CN/MCI/AD) end to end, through ``python -m monai.bundle`` as a user runs it.

One tiny three-class cohort trains a ResNet (ad_resnet3d) and a Mosa from scratch (ad_mosa) for two epochs each;
their reports are checked against scikit-learn and then compared with ``alz-monai compare``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import STAGE1, STAGE2, TINY_MOSA, TINY_TRAINING, BundleCLI, BundleRun, make_synthetic_dataset
from matplotlib import image as mpimg
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alz_monai import metrics, plots
from alz_monai.cli import main as alz_monai_main

pytestmark = pytest.mark.slow

CLASSES = ("CN", "MCI", "AD")
CLASS_INDICES = list(range(len(CLASSES)))
PROB_COLUMNS = [f"prob_{name}" for name in CLASSES]
NUM_EPOCHS = 2
# 4 participants per class; TINY_TRAINING's split ratios 0.5/0.25/0.25 give each class 2/1/1 of them, so every
# class is in the validation and test splits and every one-vs-rest AUC is defined.
THREE_CLASS_DATASET = {"subjects": 12, "sessions": 2, "spacing": 6.0, "seed": 0, "classes": CLASSES}
THREE_CLASS_TRAINING = {**TINY_TRAINING, "classes": f"[{','.join(CLASSES)}]"}  # as a user types it: [CN,MCI,AD]
VAL_SCALARS = ("val/accuracy", "val/balanced_accuracy", "val/auc", "val/f1_macro", "val/sensitivity",
               "val/specificity", "val/mcc")
SPLIT_OF_REPORT = {"best_val": "val", "test": "test"}
COMPARE_RESAMPLES = 50


@pytest.fixture(scope="module")
def three_class_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory, "data3", **THREE_CLASS_DATASET)


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory: pytest.TempPathFactory, three_class_dataset: Path,
               bundle_cli: BundleCLI) -> BundleRun:
    run = BundleRun(STAGE1, three_class_dataset, tmp_path_factory.mktemp("resnet3") / "run",
                    {**THREE_CLASS_TRAINING, "network_def#name": "resnet10"}, num_epochs=NUM_EPOCHS)
    bundle_cli.train(run)
    return run


@pytest.fixture(scope="module")
def mosa_run(tmp_path_factory: pytest.TempPathFactory, three_class_dataset: Path, bundle_cli: BundleCLI) -> BundleRun:
    run = BundleRun(STAGE2, three_class_dataset, tmp_path_factory.mktemp("mosa3") / "run",
                    {**THREE_CLASS_TRAINING, **TINY_MOSA, "from_scratch": "true"}, num_epochs=NUM_EPOCHS)
    bundle_cli.train(run)
    return run


@pytest.fixture(scope="module", params=[STAGE1, STAGE2])
def three_class_run(request: pytest.FixtureRequest) -> BundleRun:
    return request.getfixturevalue("resnet_run" if request.param == STAGE1 else "mosa_run")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_predictions(path: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A predictions CSV with its true labels and class probabilities as class indices and an array."""
    table = pd.read_csv(path)
    y_true = table["true_label"].map({name: index for index, name in enumerate(CLASSES)}).to_numpy()
    return table, y_true, table[PROB_COLUMNS].to_numpy()


def sklearn_per_class(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray) -> dict[str, dict[str, float]]:
    confusion = skm.confusion_matrix(y_true, y_pred, labels=CLASS_INDICES)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=CLASS_INDICES,
                                                                        zero_division=0)
    # specificity of class k: the scans of the other classes not predicted as k, over all scans of the other classes
    others = confusion.sum() - confusion.sum(axis=1)
    specificity = (others - (confusion.sum(axis=0) - np.diag(confusion))) / others
    return {name: {"precision": precision[k], "recall": recall[k], "f1": f1[k], "specificity": specificity[k],
                   "support": support[k], "auc": skm.roc_auc_score(y_true == k, probs[:, k]),
                   "average_precision": skm.average_precision_score(y_true == k, probs[:, k])}
            for k, name in enumerate(CLASSES)}


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


@pytest.mark.parametrize("report", ["best_val", "test"])
def test_reports_match_scikit_learn(three_class_run: BundleRun, report: str) -> None:
    reports = three_class_run.output_dir / "reports"
    table, y_true, probs = read_predictions(reports / f"{report}_predictions.csv")
    splits = pd.read_csv(three_class_run.output_dir / "splits.tsv", sep="\t")
    in_split = splits[splits["split"] == SPLIT_OF_REPORT[report]]
    assert sorted(table["image"]) == sorted(str(three_class_run.dataset_dir / image) for image in in_split["image"])
    assert set(in_split["label_name"]) == set(CLASSES)  # else the macro AUC is undefined (NaN)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    y_pred = probs.argmax(axis=1)
    assert (table["predicted_label"] == [CLASSES[k] for k in y_pred]).all()

    summary = load_json(reports / f"{report}_metrics.json")
    per_class = load_json(reports / f"{report}_per_class_metrics.json")
    assert summary["num_samples"] == len(table)
    assert summary["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=CLASS_INDICES).tolist()
    expected_summary = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
        "auc": skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=CLASS_INDICES),
        "average_precision": skm.average_precision_score(label_binarize(y_true, classes=CLASS_INDICES), probs,
                                                         average="macro"),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
        "f1_weighted": skm.f1_score(y_true, y_pred, average="weighted", zero_division=0),
        "sensitivity": skm.recall_score(y_true, y_pred, average="macro", zero_division=0),
        "mcc": skm.matthews_corrcoef(y_true, y_pred),
    }
    assert {name: summary[name] for name in expected_summary} == pytest.approx(expected_summary, abs=1e-6)
    assert summary["per_class"] == per_class
    assert list(per_class) == list(CLASSES)
    for name, expected in sklearn_per_class(y_true, y_pred, probs).items():
        assert {key: per_class[name][key] for key in expected} == pytest.approx(expected, abs=1e-6), name


def test_roc_figure_has_a_curve_per_class(three_class_run: BundleRun) -> None:
    reports = three_class_run.output_dir / "reports"
    png = mpimg.imread(reports / "test_roc.png")
    assert png.ndim == 3 and min(png.shape[:2]) > 100

    _, y_true, probs = read_predictions(reports / "test_predictions.csv")
    per_class = load_json(reports / "test_per_class_metrics.json")
    figure = plots.plot_roc(metrics.roc_curves(y_true, probs, CLASSES), {name: per_class[name]["auc"]
                                                                          for name in CLASSES})
    axes = figure.axes[0]
    assert len(axes.get_lines()) == len(CLASSES) + 1
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == [f"{name} (AUC = {per_class[name]['auc']:.3f})" for name in CLASSES] + ["Chance"]


def test_summary_and_tensorboard_hold_the_three_class_metrics(three_class_run: BundleRun) -> None:
    output_dir = three_class_run.output_dir
    test = load_json(output_dir / "reports" / "test_metrics.json")
    summary = load_json(output_dir / "summary_all.json")
    assert summary["test"] == {name: test[name] for name in summary["test"]}
    assert np.shape(summary["test"]["confusion_matrix"]) == (len(CLASSES), len(CLASSES))
    assert list(summary["test_per_class"]) == list(CLASSES)
    assert summary["best_validation"]["auc"] == pytest.approx(
        load_json(output_dir / "reports" / "best_val_metrics.json")["auc"])

    val = tensorboard_scalars(output_dir / "tensorboard" / "val")
    assert all([step for step, _ in val[tag]] == list(range(1, NUM_EPOCHS + 1)) for tag in VAL_SCALARS)
    assert all(np.isfinite(value) for _, value in val["val/auc"])
    # the JSON keeps 6 significant digits, TensorBoard the float32 value
    assert tensorboard_scalars(output_dir / "tensorboard" / "test")["test/auc"] == [(1, pytest.approx(test["auc"],
                                                                                                      abs=1e-6))]


def test_compare_tests_each_class_of_two_runs(resnet_run: BundleRun, mosa_run: BundleRun, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "comparison.json"
    exit_code = alz_monai_main(["compare", str(resnet_run.output_dir), str(mosa_run.output_dir),
                                "--output", str(output), "--bootstrap-resamples", str(COMPARE_RESAMPLES)])
    printed = capsys.readouterr().out
    assert exit_code == 0
    result = load_json(output)
    assert result["class_names"] == list(CLASSES)

    predictions = [read_predictions(run.output_dir / "reports" / "test_predictions.csv")
                   for run in (resnet_run, mosa_run)]
    (table_a, y_true, probs_a), (table_b, _, probs_b) = predictions
    # the compared scans are matched by image path: put B's rows in A's order
    probs_b = probs_b[table_b.reset_index().set_index("image").loc[table_a["image"], "index"].to_numpy()]
    assert result["num_samples"] == len(table_a)
    assert list(result["delong"]) == list(CLASSES)
    for k, name in enumerate(CLASSES):
        delong = result["delong"][name]
        assert "skipped" not in delong, delong
        assert delong["auc_a"] == pytest.approx(skm.roc_auc_score(y_true == k, probs_a[:, k]))
        assert delong["auc_b"] == pytest.approx(skm.roc_auc_score(y_true == k, probs_b[:, k]))
        assert 0.0 <= delong["p_value"] <= 1.0
    correct_a, correct_b = probs_a.argmax(axis=1) == y_true, probs_b.argmax(axis=1) == y_true
    assert (result["mcnemar"]["b"], result["mcnemar"]["c"]) == (int(np.sum(correct_a & ~correct_b)),
                                                                int(np.sum(~correct_a & correct_b)))

    rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.split()}
    for name in CLASSES:
        assert rows[f"auc/{name}"][-1] == f"{result['delong'][name]['p_value']:.4f}"
