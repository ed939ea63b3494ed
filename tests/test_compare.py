"""alz_monai.compare: loading and matching predictions, paired tests equal to alz_monai.stats, table, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from alz_monai import stats
from alz_monai.cli import build_parser
from alz_monai.compare import (
    align_predictions,
    compare_runs,
    find_predictions,
    format_comparison_table,
    load_predictions,
    write_predictions,
)
from alz_monai.errors import DataError

CLASS_NAMES = {2: ("CN", "AD"), 3: ("CN", "MCI", "AD")}


def fabricate(num_classes: int, num_participants: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two models' probabilities (6 decimals, as in the CSVs) on the same scans, two scans per participant."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, num_classes, num_participants), 2)
    models = []
    for strength in (1.5, 0.5):
        logits = rng.normal(size=(labels.size, num_classes))
        logits[np.arange(labels.size), labels] += strength
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        models.append(np.array([[float(f"{p:.6f}") for p in row] for row in probs]))
    return labels, models[0], models[1]


def image_of(index: int) -> str:
    return f"/data/sub-{index // 2:03d}/ses-{index % 2}/T1w.nii.gz"


def write_csv(path: Path, labels: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...],
              order: np.ndarray | None = None) -> Path:
    """A predictions CSV in ClassificationReport's layout, rows in ``order``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["participant_id", "session_id", "image", "true_label", "predicted_label",
                         *[f"prob_{name}" for name in class_names]])
        for i in (range(labels.size) if order is None else order):
            writer.writerow([f"sub-{i // 2:03d}", f"ses-{i % 2}", image_of(i), class_names[labels[i]],
                             class_names[probs[i].argmax()], *[f"{p:.6f}" for p in probs[i]]])
    return path


@pytest.mark.parametrize("num_classes", [2, 3])
def test_compare_runs_matches_stats_on_the_same_arrays(tmp_path: Path, num_classes: int) -> None:
    class_names = CLASS_NAMES[num_classes]
    labels, probs_a, probs_b = fabricate(num_classes, 40, seed=num_classes)
    write_csv(tmp_path / "a" / "reports" / "test_predictions.csv", labels, probs_a, class_names)
    shuffled = np.random.default_rng(7).permutation(labels.size)  # B lists the scans in another order
    write_csv(tmp_path / "b" / "reports" / "test_predictions.csv", labels, probs_b, class_names, order=shuffled)

    output = tmp_path / "out" / "comparison.json"
    result = compare_runs(tmp_path / "a", tmp_path / "b", output=output, bootstrap_resamples=50)

    expected_mcnemar = stats.mcnemar_test(labels, probs_a.argmax(axis=1), probs_b.argmax(axis=1))
    assert result["mcnemar"] == expected_mcnemar
    tested = [1] if num_classes == 2 else range(num_classes)
    assert set(result["delong"]) == {class_names[i] for i in tested}
    for index in tested:
        expected = stats.delong_test(labels == index, probs_a[:, index], probs_b[:, index])
        assert result["delong"][class_names[index]] == pytest.approx(expected, rel=1e-12)
    assert result["metrics"]["A"]["accuracy"] == pytest.approx(skm.accuracy_score(labels, probs_a.argmax(axis=1)))
    assert result["metrics"]["B"]["accuracy"] == pytest.approx(skm.accuracy_score(labels, probs_b.argmax(axis=1)))
    assert result["num_samples"] == labels.size and result["num_participants"] == 40
    assert result["bootstrap"]["resampled_unit"] == "participant"
    interval = result["confidence_intervals"]["A"]["auc"]
    assert interval["low"] <= result["metrics"]["A"]["auc"] <= interval["high"]
    assert json.loads(output.read_text()) == result


def test_table_shows_both_runs_and_p_values(tmp_path: Path) -> None:
    labels, probs_a, probs_b = fabricate(2, 30, seed=3)
    result = compare_runs(write_csv(tmp_path / "a.csv", labels, probs_a, CLASS_NAMES[2]),
                          write_csv(tmp_path / "b.csv", labels, probs_b, CLASS_NAMES[2]), bootstrap_resamples=20)
    table = format_comparison_table(result)
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.split()}
    assert rows["accuracy"][-1] == f"{result['mcnemar']['p_value']:.4f}"
    assert rows["auc"][-1] == f"{result['delong']['AD']['p_value']:.4f}"
    assert rows["auc"][1] == f"{result['metrics']['A']['auc']:.4f}"
    assert rows["specificity"][-1] == "-"  # no paired test for it


def test_mismatched_scans_and_labels_are_named(tmp_path: Path) -> None:
    labels, probs_a, probs_b = fabricate(2, 10, seed=1)
    path_a = write_csv(tmp_path / "a.csv", labels, probs_a, CLASS_NAMES[2])
    path_b = write_csv(tmp_path / "b.csv", labels, probs_b, CLASS_NAMES[2], order=np.arange(1, labels.size))
    with pytest.raises(DataError, match="1 scan\\(s\\) scored by A but not by B") as error:
        compare_runs(path_a, path_b, bootstrap_resamples=10)
    assert image_of(0) in str(error.value)

    relabelled = labels.copy()
    relabelled[3] = 1 - relabelled[3]
    path_c = write_csv(tmp_path / "c.csv", relabelled, probs_b, CLASS_NAMES[2])
    with pytest.raises(DataError, match="different true labels") as error:
        compare_runs(path_a, path_c, bootstrap_resamples=10)
    assert image_of(3) in str(error.value) and image_of(2) not in str(error.value)

    other_classes = write_csv(tmp_path / "d.csv", labels, probs_b, ("CN", "MCI"))
    with pytest.raises(DataError, match="classes"):
        compare_runs(path_a, other_classes, bootstrap_resamples=10)


def test_align_reorders_to_the_first(tmp_path: Path) -> None:
    labels, probs_a, probs_b = fabricate(3, 6, seed=2)
    order = np.arange(labels.size)[::-1]
    a = load_predictions(write_csv(tmp_path / "a.csv", labels, probs_a, CLASS_NAMES[3]))
    b = load_predictions(write_csv(tmp_path / "b.csv", labels, probs_b, CLASS_NAMES[3], order=order))
    assert b.images[0] == image_of(labels.size - 1)
    aligned = align_predictions({"a": a, "b": b})
    assert aligned["b"].images == a.images
    np.testing.assert_array_equal(aligned["b"].probs, probs_b)
    np.testing.assert_array_equal(aligned["b"].y_true, labels)


def test_write_predictions_round_trips(tmp_path: Path) -> None:
    labels, probs, _ = fabricate(3, 5, seed=4)
    original = load_predictions(write_csv(tmp_path / "a.csv", labels, probs, CLASS_NAMES[3]))
    write_predictions(tmp_path / "copy.csv", original)
    copy = load_predictions(tmp_path / "copy.csv")
    assert (copy.images, copy.participants, copy.sessions, copy.class_names) == (
        original.images, original.participants, original.sessions, original.class_names)
    np.testing.assert_array_equal(copy.probs, original.probs)
    np.testing.assert_array_equal(copy.y_true, original.y_true)


def test_bad_predictions_files_are_reported_by_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("image,true_label,prob_CN,prob_AD\n"
                    "a.nii.gz,CN,0.9,0.1\n"
                    "b.nii.gz,XX,0.2,0.8\n"
                    "a.nii.gz,AD,0.3,zero\n")
    with pytest.raises(DataError) as error:
        load_predictions(path)
    message = str(error.value)
    assert "a.nii.gz: listed on lines 2, 4" in message
    assert "line 3: true_label 'XX'" in message
    assert "line 4: probabilities" in message
    (tmp_path / "nolabel.csv").write_text("image,prob_CN,prob_AD\na,0.5,0.5\n")
    with pytest.raises(DataError, match="missing column 'true_label'"):
        load_predictions(tmp_path / "nolabel.csv")


def test_find_predictions_looks_in_reports_then_evaluation(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="val_predictions.csv"):
        find_predictions(tmp_path, "val")
    evaluated = tmp_path / "evaluation" / "val" / "val_predictions.csv"
    evaluated.parent.mkdir(parents=True)
    evaluated.write_text("")
    assert find_predictions(tmp_path, "val") == evaluated
    reported = tmp_path / "reports" / "val_predictions.csv"
    reported.parent.mkdir()
    reported.write_text("")
    assert find_predictions(tmp_path, "val") == reported
    assert find_predictions(evaluated, "test") == evaluated


def test_cli_writes_json_and_prints_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels, probs_a, probs_b = fabricate(2, 12, seed=5)
    write_csv(tmp_path / "a" / "evaluation" / "val" / "val_predictions.csv", labels, probs_a, CLASS_NAMES[2])
    write_csv(tmp_path / "b" / "reports" / "val_predictions.csv", labels, probs_b, CLASS_NAMES[2])
    parser = build_parser()
    output = tmp_path / "cmp.json"
    args = parser.parse_args(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--split", "val",
                              "--output", str(output), "--bootstrap-resamples", "20"])
    assert args.func(args) == 0
    written = json.loads(output.read_text())
    assert written["split"] == "val" and written["runs"]["B"].endswith("reports/val_predictions.csv")
    printed = capsys.readouterr().out
    assert "p-value" in printed and f"{written['delong']['AD']['p_value']:.4f}" in printed


def test_cli_writes_beside_run_a_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels, probs_a, probs_b = fabricate(2, 12, seed=6)
    write_csv(tmp_path / "a" / "reports" / "val_predictions.csv", labels, probs_a, CLASS_NAMES[2])
    write_csv(tmp_path / "b" / "reports" / "val_predictions.csv", labels, probs_b, CLASS_NAMES[2])
    parser = build_parser()
    command = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--split", "val", "--bootstrap-resamples", "20"]
    args = parser.parse_args(command)
    assert args.func(args) == 0
    output = tmp_path / "a" / "comparisons" / "val_vs_b.json"
    written = output.read_text()
    with pytest.raises(FileExistsError, match=r"val_vs_b.json exists; pass --overwrite to replace it"):
        args.func(parser.parse_args(command))
    assert output.read_text() == written
    args = parser.parse_args([*command, "--overwrite"])
    assert args.func(args) == 0
