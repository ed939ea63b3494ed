"""Report figures (ROC, precision-recall, confusion matrix, per-class bars, reliability) as matplotlib Figures.

Figures are built with the object-oriented API on an Agg canvas, never through ``pyplot``: they are not registered
in pyplot's global figure list, so nothing leaks and no display is needed; a figure is freed once unreferenced.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from alz_monai.metrics import Curve, ReliabilityCurve

#: Per-class metrics drawn by :func:`plot_per_class_bars`, in bar order.
PER_CLASS_BAR_METRICS = ("precision", "recall", "f1", "specificity")

_CHANCE_STYLE = {"color": "0.5", "linestyle": "--", "linewidth": 1.0}


def _new_figure(width: float = 5.0, height: float = 5.0) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _format_score(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def plot_roc(curves: Mapping[str, Curve], aucs: Mapping[str, float]) -> Figure:
    """One ROC line per class from :func:`alz_monai.metrics.roc_curves`, AUCs in the legend, and the chance line."""
    figure = _new_figure()
    axes = figure.add_subplot()
    for name, (false_positive_rate, true_positive_rate, _) in curves.items():
        label = f"{name} (AUC = {_format_score(aucs[name])})"
        axes.plot(false_positive_rate, true_positive_rate, linewidth=2.0, label=label)
    axes.plot([0.0, 1.0], [0.0, 1.0], label="Chance", **_CHANCE_STYLE)
    axes.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), xlabel="False positive rate (1 - specificity)",
             ylabel="True positive rate (sensitivity)", title="ROC curve")
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return figure


def plot_pr(curves: Mapping[str, Curve], aps: Mapping[str, float]) -> Figure:
    """One precision-recall line per class from :func:`alz_monai.metrics.pr_curves`, APs in the legend.

    A dotted line of the class colour marks its prevalence, the precision of a random classifier.
    """
    figure = _new_figure()
    axes = figure.add_subplot()
    for name, (precision, recall, _) in curves.items():
        (line,) = axes.plot(recall, precision, linewidth=2.0, label=f"{name} (AP = {_format_score(aps[name])})")
        # sklearn's first point uses the lowest threshold: everything predicted positive, so precision = prevalence.
        axes.axhline(precision[0], color=line.get_color(), linestyle=":", linewidth=1.0)
    axes.set(xlim=(0.0, 1.0), ylim=(0.0, 1.05), xlabel="Recall (sensitivity)", ylabel="Precision (PPV)",
             title="Precision-recall curve")
    axes.set_aspect("equal", adjustable="box")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    return figure


def plot_confusion_matrix(cm: Any, class_names: Sequence[str], normalize: bool = False) -> Figure:
    """Confusion matrix (rows true, columns predicted), each cell annotated with its count and row percentage.

    ``normalize`` colours cells by row fraction instead of count, so that small classes stay visible.
    """
    counts = np.asarray(cm, dtype=np.int64)
    if counts.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"cm must be {len(class_names)} x {len(class_names)} to match class_names, got shape {counts.shape}."
        )
    row_totals = counts.sum(axis=1, keepdims=True)
    row_fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    shown = row_fractions if normalize else counts
    size = 1.5 + 1.2 * len(class_names)
    figure = _new_figure(size + 1.0, size)
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(int(counts.max()), 1))
    figure.colorbar(image, ax=axes, label="Fraction of true class" if normalize else "Scans")
    dark_cell = shown.max() / 2.0 if shown.max() > 0 else 1.0
    for row in range(counts.shape[0]):
        for column in range(counts.shape[1]):
            axes.text(column, row, f"{counts[row, column]}\n({100.0 * row_fractions[row, column]:.1f}%)",
                      ha="center", va="center", color="white" if shown[row, column] > dark_cell else "black")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names)
    axes.set_yticks(ticks, labels=class_names)
    axes.set(xlabel="Predicted class", ylabel="True class", title="Confusion matrix")
    return figure


def plot_per_class_bars(per_class: Mapping[str, Mapping[str, float]]) -> Figure:
    """Grouped bars of precision, recall, F1 and specificity per class (``report["per_class"]``), values on top."""
    class_names = list(per_class)
    figure = _new_figure(2.0 + 1.8 * len(class_names), 4.5)
    axes = figure.add_subplot()
    bar_width = 0.8 / len(PER_CLASS_BAR_METRICS)
    positions = np.arange(len(class_names))
    for offset, metric in enumerate(PER_CLASS_BAR_METRICS):
        values = [per_class[name][metric] for name in class_names]
        bars = axes.bar(positions + (offset - (len(PER_CLASS_BAR_METRICS) - 1) / 2) * bar_width, values, bar_width,
                        label=metric.capitalize() if metric != "f1" else "F1")
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    axes.set_xticks(positions, labels=class_names)
    axes.set(ylim=(0.0, 1.1), ylabel="Score", title="Per-class metrics")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper center", ncols=len(PER_CLASS_BAR_METRICS), fontsize=8)
    return figure


def plot_reliability(reliability: ReliabilityCurve, ece: float) -> Figure:
    """Reliability diagram (accuracy per confidence bin vs the diagonal) over a histogram of bin counts."""
    figure = _new_figure(5.0, 6.0)
    curve_axes, count_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    bin_width = 1.0 / len(reliability.bin_centers)
    filled = reliability.counts > 0
    curve_axes.bar(reliability.bin_centers[filled], reliability.accuracy[filled], bin_width, edgecolor="black",
                   linewidth=0.5, label="Accuracy")
    curve_axes.plot(reliability.confidence[filled], reliability.accuracy[filled], "o", color="tab:red", markersize=4,
                    label="Accuracy at mean confidence")
    curve_axes.plot([0.0, 1.0], [0.0, 1.0], label="Perfect calibration", **_CHANCE_STYLE)
    curve_axes.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), ylabel="Accuracy",
                   title=f"Reliability diagram (ECE = {_format_score(ece)})")
    curve_axes.grid(alpha=0.3)
    curve_axes.legend(loc="upper left")
    count_axes.bar(
        reliability.bin_centers, reliability.counts, bin_width, color="0.6", edgecolor="black", linewidth=0.5
    )
    count_axes.set(xlabel="Confidence (top-class probability)", ylabel="Scans")
    return figure


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) atomically, so readers never see a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(handle)
    try:
        fig.savefig(temporary, dpi=150)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def figure_to_image(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an (H, W, 3) uint8 RGB array, e.g. for ``SummaryWriter.add_image(..., dataformats="HWC")``."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
