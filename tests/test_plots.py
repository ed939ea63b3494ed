"""alz_monai.plots: each figure has the expected artists and titles, no legend or label covers data, saliency views are
labelled from the scan's own grid, and figures save as valid PNGs."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from alz_monai.metrics import (
    classification_report,
    expected_calibration_error,
    pr_curves,
    reliability_curve,
    roc_curves,
)
from alz_monai.plots import (
    PER_CLASS_BAR_METRICS,
    REPORT_FIGURES,
    FigureContext,
    figure_to_image,
    figure_to_png,
    plot_confusion_matrix,
    plot_per_class_bars,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_saliency_slices,
    plot_training_curves,
    report_figures,
    save_figure,
)
from alz_monai.stats import bootstrap_roc_band

CLASS_NAMES = {2: ("CN", "AD"), 3: ("CN", "MCI", "AD")}
CONTEXT = FigureContext(split="test", model="resnet18", num_scans=90, num_participants=45)


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


def test_pr_has_curve_and_prevalence_line_per_class_named_in_the_legend() -> None:
    labels, probs, names = make_report_inputs(3)
    curves = pr_curves(labels, probs, names)
    figure = plot_pr(curves, {name: 0.5 for name in names})
    axes = figure.axes[0]
    assert len(axes.lines) == 2 * len(curves)
    prevalence_lines = axes.lines[1::2]
    for line, index in zip(prevalence_lines, range(len(names))):
        assert line.get_ydata()[0] == pytest.approx(np.mean(labels == index))
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend[0::2] == [f"{name} (AP = 0.500)" for name in names]
    assert legend[1::2] == [f"{name} prevalence = {np.mean(labels == index):.2f} (chance)"
                            for index, name in enumerate(names)]


def _window(artist, renderer) -> Bbox:
    return artist.get_window_extent(renderer)


def _overlaps(first: Bbox, second: Bbox) -> bool:
    return first.x0 < second.x1 and second.x0 < first.x1 and first.y0 < second.y1 and second.y0 < first.y1


@pytest.mark.parametrize("num_classes", [2, 3])
def test_titles_say_split_model_and_n(num_classes: int) -> None:
    labels, probs, names = make_report_inputs(num_classes)
    figures = report_figures(labels, probs, names, CONTEXT, groups=np.arange(labels.size) // 2, band_resamples=50)
    assert list(figures) == list(REPORT_FIGURES)
    for kind, figure in figures.items():
        title = figure.axes[0].get_title()
        assert "resnet18, test split, N = 90 scans of 45 participants" in title, kind


def test_roc_band_and_macro_auc_for_three_classes() -> None:
    labels, probs, names = make_report_inputs(3)
    report = classification_report(labels, probs, names)
    curves = roc_curves(labels, probs, names)
    bands = {name: bootstrap_roc_band(labels == index, probs[:, index], n_resamples=100)
             for index, name in enumerate(names)}
    axes = plot_roc(curves, {name: report["per_class"][name]["auc"] for name in names}, bands,
                    macro_auc=report["auc"]).axes[0]
    assert len(axes.collections) == len(names)  # one shaded band per class
    legend = axes.get_legend()
    assert legend.get_title().get_text() == f"macro AUC = {report['auc']:.3f}"
    assert [text.get_text() for text in legend.get_texts()][-1] == "95% bootstrap band"
    for band, line in zip(axes.collections, axes.lines):  # the band has its curve's colour
        assert np.allclose(band.get_facecolor()[0][:3], matplotlib.colors.to_rgb(line.get_color()))


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


def test_per_class_bars_draw_every_metric_with_n_and_no_crowded_labels() -> None:
    labels, probs, names = make_report_inputs(3)
    per_class = classification_report(labels, probs, names)["per_class"]
    figure = plot_per_class_bars(per_class)
    axes = figure.axes[0]
    assert len(axes.patches) == len(names) * len(PER_CLASS_BAR_METRICS)
    heights = sorted(patch.get_height() for patch in axes.patches)
    expected = sorted(per_class[name][metric] for name in names for metric in PER_CLASS_BAR_METRICS)
    np.testing.assert_allclose(heights, expected)
    assert len(axes.texts) == len(axes.patches)  # value labels
    assert [label.get_text() for label in axes.get_xticklabels()] == [
        f"{name}\nN = {per_class[name]['support']}" for name in names]
    renderer = figure.canvas.get_renderer()
    figure.canvas.draw()
    texts = [_window(text, renderer) for text in axes.texts]
    assert not any(_overlaps(a, b) for i, a in enumerate(texts) for b in texts[i + 1:])
    legend = _window(axes.get_legend(), renderer)
    assert not any(_overlaps(legend, _window(patch, renderer)) for patch in axes.patches)
    assert not any(_overlaps(legend, text) for text in texts)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_reliability_diagram_shows_filled_bins_ece_and_a_legend_over_no_bar(num_classes: int) -> None:
    labels, probs, _ = make_report_inputs(num_classes)
    probs = np.where(np.arange(num_classes) == labels[:, None], probs + 2.0, probs)  # confident: tall high bars
    probs /= probs.sum(axis=1, keepdims=True)
    curve = reliability_curve(labels, probs, n_bins=10)
    ece = expected_calibration_error(labels, probs, n_bins=10)
    figure = plot_reliability(curve, ece, num_classes=num_classes)
    curve_axes, count_axes = figure.axes
    assert f"ECE = {ece:.3f}" in curve_axes.get_title()
    assert len(curve_axes.patches) == int(np.sum(curve.counts > 0))
    assert [patch.get_height() for patch in count_axes.patches] == curve.counts.tolist()
    assert curve_axes.get_xlim() == pytest.approx((1.0 / num_classes, 1.0))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = _window(curve_axes.get_legend(), renderer)
    assert not any(_overlaps(legend, _window(patch, renderer)) for patch in curve_axes.patches)


def test_training_curves_draw_a_panel_per_kind_and_mark_the_best_epoch() -> None:
    iterations = (list(range(1, 41)), list(np.linspace(1.0, 0.2, 40)))
    losses = {"train": ([1, 2, 3, 4], [0.9, 0.6, 0.4, 0.3]), "validation": ([1, 2, 3, 4], [1.0, 0.7, 0.6, 0.65])}
    metrics_by_epoch = {"ROC AUC": ([1, 2, 3, 4], [0.6, 0.7, 0.8, 0.75])}
    figure = plot_training_curves(iterations, losses, metrics_by_epoch, best_epoch=3)
    loss_axes, epoch_axes, metric_axes = figure.axes
    assert [line.get_label() for line in epoch_axes.lines] == ["train", "validation", "best epoch (3)"]
    assert list(metric_axes.lines[-1].get_xdata()) == [3, 3]
    assert len(loss_axes.lines) == 2  # raw and running mean
    assert len(plot_training_curves(None, {}, metrics_by_epoch).axes) == 1
    with pytest.raises(ValueError, match="no training curve"):
        plot_training_curves(None, {}, {})


def _oblique_head() -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid 'head' on a grid stored as (A, S, L): array axes are not x, y, z."""
    shape = (30, 24, 20)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    head = ((grid ** 2).sum(axis=0) < 0.7).astype(float) * 100.0
    # world x (R) = -axis 2 (towards L), y (A) = axis 0, z (S) = axis 1, 2 mm voxels
    affine = np.array([[0, 0, -2.0, 20], [2.0, 0, 0, -30], [0, 2.0, 0, -24], [0, 0, 0, 1]])
    return head, affine


def test_saliency_views_are_labelled_from_the_grid_and_sliced_through_the_peak_in_the_head() -> None:
    head, affine = _oblique_head()
    heat = np.zeros(head.shape)
    heat[0, 0, 0] = 1.0  # a background peak, outside the head
    heat[18, 10, 7] = 0.8
    figure = plot_saliency_slices(head, heat, affine, title="sub-01")
    views = figure.axes[:3]
    assert [axes.get_title() for axes in views] == ["sagittal (slice 7 of 20)", "coronal (slice 18 of 30)",
                                                     "axial (slice 10 of 24)"]
    markers = [[text.get_text() for text in axes.texts] for axes in views]  # left, right, bottom, top
    assert markers == [["P", "A", "I", "S"], ["L", "R", "I", "S"], ["L", "R", "P", "A"]]
    # coronal view: superior up, the patient's right on the right, whatever the storage order
    coronal = views[1].images[1].get_array()
    row, column = np.argwhere(~np.ma.getmaskarray(coronal))[0]
    assert (row, column) == (10, 20 - 1 - 7)


def test_all_zero_saliency_is_drawn_through_the_head_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    head, affine = _oblique_head()
    with caplog.at_level(logging.WARNING, logger="alz_monai.plots"):
        figure = plot_saliency_slices(head, np.zeros(head.shape), affine, title="sub-02")
    assert "all zeros" in caplog.text
    assert any("all zeros" in text.get_text() for text in figure.texts)
    assert [axes.get_title() for axes in figure.axes[:3]] == ["sagittal (slice 10 of 20)", "coronal (slice 14 of 30)",
                                                               "axial (slice 12 of 24)"]


def test_save_figure_writes_valid_png_atomically(tmp_path: Path) -> None:
    labels, probs, names = make_report_inputs(2)
    figure = plot_confusion_matrix(classification_report(labels, probs, names)["confusion_matrix"], names)
    target = save_figure(figure, tmp_path / "figures" / "confusion.png")
    assert target == tmp_path / "figures" / "confusion.png"
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(target)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert list(target.parent.iterdir()) == [target]  # no temporary file left behind


def test_figure_to_png_returns_png_bytes() -> None:
    figure = Figure(figsize=(2, 1), dpi=50)
    assert figure_to_png(figure, dpi=50)[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_to_image_returns_rgb_uint8() -> None:
    figure = Figure(figsize=(3, 2), dpi=50)
    figure.add_subplot().plot([0, 1], [1, 0], color="red")
    image = figure_to_image(figure)
    assert image.shape == (100, 150, 3) and image.dtype == np.uint8
    assert np.any((image[..., 0] > 200) & (image[..., 1] < 80))  # the red line is there


def test_saved_figures_are_readable_by_colleagues(tmp_path: Path) -> None:
    import os
    import stat

    from matplotlib.figure import Figure

    from alz_monai.plots import save_figure

    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    for name in ("curve.png", "curve.svg"):
        path = save_figure(figure, tmp_path / name)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
        assert path.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "curve.svg"]  # no temporary file left
