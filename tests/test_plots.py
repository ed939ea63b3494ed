"""alz_monai.plots: each figure has the expected artists, saves as a valid PNG and renders to an RGB array."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from alz_monai.metrics import (
    classification_report,
    expected_calibration_error,
    pr_curves,
    reliability_curve,
    roc_curves,
)
from alz_monai.plots import (
    PER_CLASS_BAR_METRICS,
    figure_to_image,
    plot_confusion_matrix,
    plot_per_class_bars,
    plot_pr,
    plot_reliability,
    plot_roc,
    save_figure,
)

CLASS_NAMES = {2: ("CN", "AD"), 3: ("CN", "MCI", "AD")}


def make_report_inputs(num_classes: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, 90)
    logits = rng.normal(size=(labels.size, num_classes))
    logits[np.arange(labels.size), labels] += 1.5
    probs = np.exp(logits)
    return labels, probs / probs.sum(axis=1, keepdims=True), CLASS_NAMES[num_classes]


@pytest.mark.parametrize("num_classes", [2, 3])
def test_roc_has_one_line_per_curve_plus_chance_and_aucs_in_legend(num_classes: int) -> None:
    labels, probs, names = make_report_inputs(num_classes)
    report = classification_report(labels, probs, names)
    curves = roc_curves(labels, probs, names)
    figure = plot_roc(curves, {name: report["per_class"][name]["auc"] for name in names})
    axes = figure.axes[0]
    assert len(axes.lines) == len(curves) + 1
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend[-1] == "Chance"
    for name in curves:
        assert f"{name} (AUC = {report['per_class'][name]['auc']:.3f})" in legend
    assert axes.get_aspect() == 1.0
    assert axes.get_xlabel() and axes.get_ylabel() and axes.get_title()


def test_pr_has_curve_and_prevalence_line_per_class() -> None:
    labels, probs, names = make_report_inputs(3)
    curves = pr_curves(labels, probs, names)
    figure = plot_pr(curves, {name: 0.5 for name in names})
    axes = figure.axes[0]
    assert len(axes.lines) == 2 * len(curves)
    prevalence_lines = axes.lines[1::2]
    for line, index in zip(prevalence_lines, range(len(names))):
        assert line.get_ydata()[0] == pytest.approx(np.mean(labels == index))
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [f"{name} (AP = 0.500)" for name in names]


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_annotates_counts_and_row_percentages(normalize: bool) -> None:
    confusion = [[8, 2, 0], [1, 3, 0], [0, 0, 0]]
    figure = plot_confusion_matrix(confusion, CLASS_NAMES[3], normalize=normalize)
    axes = figure.axes[0]
    texts = [text.get_text() for text in axes.texts]
    assert len(texts) == 9
    assert texts[0] == "8\n(80.0%)" and texts[3] == "1\n(25.0%)" and texts[8] == "0\n(0.0%)"
    shown = axes.images[0].get_array()
    assert shown.max() == pytest.approx(0.8 if normalize else 8)
    assert [label.get_text() for label in axes.get_xticklabels()] == list(CLASS_NAMES[3])


def test_confusion_matrix_rejects_mismatched_class_names() -> None:
    with pytest.raises(ValueError, match="cm must be 2 x 2"):
        plot_confusion_matrix([[1, 2, 3]], CLASS_NAMES[2])


def test_per_class_bars_draw_every_metric_of_every_class() -> None:
    labels, probs, names = make_report_inputs(3)
    per_class = classification_report(labels, probs, names)["per_class"]
    axes = plot_per_class_bars(per_class).axes[0]
    assert len(axes.patches) == len(names) * len(PER_CLASS_BAR_METRICS)
    heights = sorted(patch.get_height() for patch in axes.patches)
    expected = sorted(per_class[name][metric] for name in names for metric in PER_CLASS_BAR_METRICS)
    np.testing.assert_allclose(heights, expected)
    assert len(axes.texts) == len(axes.patches)  # value labels


def test_reliability_diagram_shows_filled_bins_and_ece() -> None:
    labels, probs, _ = make_report_inputs(2)
    curve = reliability_curve(labels, probs, n_bins=10)
    ece = expected_calibration_error(labels, probs, n_bins=10)
    figure = plot_reliability(curve, ece)
    curve_axes, count_axes = figure.axes
    assert f"ECE = {ece:.3f}" in curve_axes.get_title()
    assert len(curve_axes.patches) == int(np.sum(curve.counts > 0))
    assert [patch.get_height() for patch in count_axes.patches] == curve.counts.tolist()


def test_save_figure_writes_valid_png_atomically(tmp_path: Path) -> None:
    labels, probs, names = make_report_inputs(2)
    figure = plot_confusion_matrix(classification_report(labels, probs, names)["confusion_matrix"], names)
    target = save_figure(figure, tmp_path / "figures" / "confusion.png")
    assert target == tmp_path / "figures" / "confusion.png"
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(target)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert list(target.parent.iterdir()) == [target]  # no temporary file left behind


def test_figure_to_image_returns_rgb_uint8() -> None:
    figure = Figure(figsize=(3, 2), dpi=50)
    figure.add_subplot().plot([0, 1], [1, 0], color="red")
    image = figure_to_image(figure)
    assert image.shape == (100, 150, 3) and image.dtype == np.uint8
    assert np.any((image[..., 0] > 200) & (image[..., 1] < 80))  # the red line is there
