"""Report figures (ROC, precision-recall, confusion matrix, per-class bars, reliability, training curves, saliency
slices) as matplotlib Figures, in the form a journal accepts: every title says what was evaluated (split, model, N).

Figures are built with the object-oriented API on an Agg canvas, never through ``pyplot``: they are not registered
in pyplot's global figure list, so nothing leaks and no display is needed; a figure is freed once unreferenced.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from alz_monai import metrics, stats
from alz_monai.fileio import atomic_open
from alz_monai.metrics import Curve, ReliabilityCurve

__all__ = [
    "PER_CLASS_BAR_METRICS",
    "REPORT_FIGURES",
    "FigureContext",
    "figure_to_image",
    "figure_to_png",
    "plot_confusion_matrix",
    "plot_per_class_bars",
    "plot_pr",
    "plot_reliability",
    "plot_roc",
    "plot_saliency_slices",
    "plot_training_curves",
    "report_figures",
    "save_figure",
]

logger = logging.getLogger(__name__)

#: Per-class metrics drawn by :func:`plot_per_class_bars`, in bar order.
PER_CLASS_BAR_METRICS = ("precision", "recall", "f1", "specificity")

#: The figures :func:`report_figures` draws for one evaluation, in display order.
REPORT_FIGURES = ("roc", "pr", "confusion_matrix", "reliability", "per_class")

_CHANCE_STYLE: dict[str, Any] = {"color": "0.45", "linestyle": "--", "linewidth": 1.0}

_SALIENCY_FLOOR = 0.05
"""Saliency below this is left transparent in overlays, so the anatomy stays visible."""

_BRAIN_FRACTION = 0.1
"""Voxels above this fraction of the image's robust intensity range count as head/brain when choosing slices."""

# Positive end of each anatomical axis, as nibabel's aff2axcodes names it, and the opposite end.
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
_VIEW_OF_AXIS = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}


@dataclasses.dataclass(frozen=True)
class FigureContext:
    """What a figure shows, for its title: the split, the model and how many scans (of how many participants)."""

    split: str | None = None
    model: str | None = None
    num_scans: int | None = None
    num_participants: int | None = None

    def describe(self) -> str:
        parts = [self.model or "", f"{self.split} split" if self.split else ""]
        if self.num_scans is not None:
            count = f"N = {self.num_scans} scans"
            if self.num_participants and self.num_participants != self.num_scans:
                count += f" of {self.num_participants} participants"
            parts.append(count)
        return ", ".join(part for part in parts if part)


def _set_title(axes: Any, what: str, context: FigureContext | None, pad: float | None = None) -> None:
    described = context.describe() if context is not None else ""
    axes.set_title(f"{what}\n{described}" if described else what, fontsize=10, pad=pad)


def _new_figure(width: float = 5.0, height: float = 5.0) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _format_score(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def plot_roc(
    curves: Mapping[str, Curve],
    aucs: Mapping[str, float],
    bands: Mapping[str, stats.RocBand] | None = None,
    macro_auc: float | None = None,
    context: FigureContext | None = None,
) -> Figure:
    """One ROC line per class from :func:`alz_monai.metrics.roc_curves`, AUCs in the legend, and the chance line.

    ``bands`` (:func:`alz_monai.stats.bootstrap_roc_band` per class) are shaded in the class colour; ``macro_auc``
    (three or more classes) titles the legend.
    """
    figure = _new_figure(5.0, 5.4)
    axes = figure.add_subplot()
    bands = bands or {}
    for name, (false_positive_rate, true_positive_rate, _) in curves.items():
        label = f"{name} (AUC = {_format_score(aucs[name])})"
        (line,) = axes.plot(false_positive_rate, true_positive_rate, linewidth=2.0, label=label)
        if name in bands:
            band = bands[name]
            axes.fill_between(band.fpr, band.tpr_low, band.tpr_high, color=line.get_color(), alpha=0.18,
                              linewidth=0, step=None)
    axes.plot([0.0, 1.0], [0.0, 1.0], label="Chance", **_CHANCE_STYLE)
    handles, labels = axes.get_legend_handles_labels()
    if bands:
        level = next(iter(bands.values())).level
        handles.append(Patch(color="0.6", alpha=0.4))
        labels.append(f"{100 * level:.0f}% bootstrap band")
    axes.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), xlabel="False positive rate (1 - specificity)",
             ylabel="True positive rate (sensitivity)")
    _set_title(axes, "ROC curve", context)
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    title = f"macro AUC = {_format_score(macro_auc)}" if macro_auc is not None else None
    axes.legend(handles, labels, loc="lower right", title=title, fontsize=9)
    return figure


def plot_pr(curves: Mapping[str, Curve], aps: Mapping[str, float], context: FigureContext | None = None) -> Figure:
    """One precision-recall line per class from :func:`alz_monai.metrics.pr_curves`, APs in the legend.

    A dotted line of the class colour marks its prevalence, the precision of a random classifier, named in the
    legend with its value.
    """
    figure = _new_figure(5.0, 5.4)
    axes = figure.add_subplot()
    for name, (precision, recall, _) in curves.items():
        (line,) = axes.plot(recall, precision, linewidth=2.0, label=f"{name} (AP = {_format_score(aps[name])})")
        # sklearn's first point uses the lowest threshold: everything predicted positive, so precision = prevalence.
        axes.axhline(precision[0], color=line.get_color(), linestyle=":", linewidth=1.2,
                     label=f"{name} prevalence = {precision[0]:.2f} (chance)")
    axes.set(xlim=(0.0, 1.0), ylim=(0.0, 1.05), xlabel="Recall (sensitivity)", ylabel="Precision (PPV)")
    _set_title(axes, "Precision-recall curve", context)
    axes.set_aspect("equal", adjustable="box")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=9)
    return figure


def plot_confusion_matrix(
    cm: Any, class_names: Sequence[str], normalize: bool = False, context: FigureContext | None = None
) -> Figure:
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
    size = 2.0 + 1.2 * len(class_names)
    figure = _new_figure(size + 1.0, size + 0.3)
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(int(counts.max()), 1))
    figure.colorbar(image, ax=axes, label="Fraction of true class" if normalize else "Scans", shrink=0.8)
    dark_cell = shown.max() / 2.0 if shown.max() > 0 else 1.0
    for row in range(counts.shape[0]):
        for column in range(counts.shape[1]):
            axes.text(column, row, f"{counts[row, column]}\n({100.0 * row_fractions[row, column]:.1f}%)",
                      ha="center", va="center", color="white" if shown[row, column] > dark_cell else "black")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names)
    axes.set_yticks(ticks, labels=[f"{name}\n(N = {int(total)})" for name, total in zip(class_names,
                                                                                      row_totals[:, 0])])
    axes.set(xlabel="Predicted class", ylabel="True class")
    _set_title(axes, "Confusion matrix", context)
    return figure


def plot_per_class_bars(
    per_class: Mapping[str, Mapping[str, float]], context: FigureContext | None = None
) -> Figure:
    """Grouped bars of precision, recall, F1 and specificity per class (``report["per_class"]``), values on top,
    each class labelled with its number of scans; the legend sits above the axes so it covers no bar."""
    class_names = list(per_class)
    figure = _new_figure(1.5 + 2.2 * len(class_names), 4.6)
    axes = figure.add_subplot()
    bar_width = 0.8 / len(PER_CLASS_BAR_METRICS)
    positions = np.arange(len(class_names))
    for offset, metric in enumerate(PER_CLASS_BAR_METRICS):
        values = [per_class[name][metric] for name in class_names]
        bars = axes.bar(positions + (offset - (len(PER_CLASS_BAR_METRICS) - 1) / 2) * bar_width, values, bar_width,
                        label=metric.capitalize() if metric != "f1" else "F1")
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    tick_labels = [f"{name}\nN = {per_class[name]['support']}" if "support" in per_class[name] else name
                   for name in class_names]
    axes.set_xticks(positions, labels=tick_labels)
    axes.set(ylim=(0.0, 1.08), ylabel="Score")
    _set_title(axes, "Per-class metrics", context, pad=22)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=len(PER_CLASS_BAR_METRICS), fontsize=8,
                frameon=False)
    return figure


def plot_reliability(
    reliability: ReliabilityCurve, ece: float, num_classes: int | None = None, context: FigureContext | None = None
) -> Figure:
    """Reliability diagram (accuracy per confidence bin vs the diagonal) over a histogram of bin counts.

    Given ``num_classes``, the confidence axis starts at ``1 / num_classes``, the lowest top-class probability
    there is (0.5 for a binary task), else at 0; the legend sits above the axes so that it covers no bar.
    """
    figure = _new_figure(5.0, 6.2)
    curve_axes, count_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    bin_width = 1.0 / len(reliability.bin_centers)
    filled = reliability.counts > 0
    curve_axes.bar(reliability.bin_centers[filled], reliability.accuracy[filled], bin_width, edgecolor="black",
                   linewidth=0.5, color="#8fb3d9", label="Accuracy per bin")
    curve_axes.plot(reliability.confidence[filled], reliability.accuracy[filled], "o", color="#c0392b",
                    markersize=4, label="at mean confidence")
    lowest = 1.0 / num_classes if num_classes else 0.0
    curve_axes.plot([lowest, 1.0], [lowest, 1.0], label="Perfect calibration", **_CHANCE_STYLE)
    curve_axes.set(xlim=(lowest, 1.0), ylim=(0.0, 1.0), ylabel="Accuracy")
    _set_title(curve_axes, f"Reliability diagram (ECE = {_format_score(ece)})", context, pad=22)
    curve_axes.grid(alpha=0.3)
    curve_axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3, fontsize=8, frameon=False)
    count_axes.bar(
        reliability.bin_centers, reliability.counts, bin_width, color="0.6", edgecolor="black", linewidth=0.5
    )
    count_axes.set(xlabel="Confidence (top-class probability)", ylabel="Scans")
    return figure


def report_figures(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    context: FigureContext | None = None,
    groups: Any = None,
    band_resamples: int = 1000,
    calibration_bins: int = 15,
    seed: int = 0,
) -> dict[str, Figure]:
    """The figures of one evaluation (:data:`REPORT_FIGURES`), from its labels and probabilities.

    ROC bands resample ``groups`` (each scan's participant) like the metric intervals; ``band_resamples=0`` draws
    no band.
    """
    labels, probs, _ = metrics.validate_predictions(y_true, probs, class_names)
    report = metrics.classification_report(labels, probs, class_names)
    per_class = report["per_class"]
    roc = metrics.roc_curves(labels, probs, class_names)
    bands = {}
    if band_resamples > 0:
        for name in roc:
            index = list(class_names).index(name)
            bands[name] = stats.bootstrap_roc_band(labels == index, probs[:, index], groups, band_resamples,
                                                   seed=seed)
    return {
        "roc": plot_roc(roc, {name: per_class[name]["auc"] for name in per_class}, bands,
                        macro_auc=report["auc"] if len(class_names) > 2 else None, context=context),
        "pr": plot_pr(metrics.pr_curves(labels, probs, class_names),
                      {name: per_class[name]["average_precision"] for name in per_class}, context),
        "confusion_matrix": plot_confusion_matrix(report["confusion_matrix"], class_names, context=context),
        "reliability": plot_reliability(metrics.reliability_curve(labels, probs, n_bins=calibration_bins),
                                        metrics.expected_calibration_error(labels, probs, n_bins=calibration_bins),
                                        num_classes=len(class_names), context=context),
        "per_class": plot_per_class_bars(per_class, context),
    }


#: One TensorBoard scalar series: steps and values.
Series = tuple[Sequence[int], Sequence[float]]


def plot_training_curves(
    iteration_loss: Series | None,
    epoch_losses: Mapping[str, Series],
    validation_metrics: Mapping[str, Series],
    best_epoch: int | None = None,
    title: str | None = None,
) -> Figure:
    """Training loss per iteration (with its running mean), losses per epoch (training beside validation) and
    validation metrics per epoch, one panel each where there is data; the best epoch is marked."""
    panels = [kind for kind, present in (("iteration", iteration_loss is not None and len(iteration_loss[0]) > 0),
                                         ("epoch_loss", bool(epoch_losses)),
                                         ("metrics", bool(validation_metrics))) if present]
    if not panels:
        raise ValueError("no training curve to plot: the run's TensorBoard folders hold no loss or metric")
    figure = _new_figure(4.2 * len(panels), 3.6)
    for axes, panel in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
        if panel == "iteration" and iteration_loss is not None:
            iterations, losses = (np.asarray(part, dtype=float) for part in iteration_loss)
            axes.plot(iterations, losses, color="0.7", linewidth=0.8, label="per iteration")
            window = max(1, len(losses) // 20)
            if window > 1:
                running = np.convolve(losses, np.ones(window) / window, mode="valid")
                axes.plot(iterations[window - 1:], running, color="#1f4e79", linewidth=1.8,
                          label=f"mean of {window} iterations")
            axes.set(xlabel="Training iteration", ylabel="Loss", title="Training loss")
        elif panel == "epoch_loss":
            for name, (steps, values) in epoch_losses.items():
                axes.plot(steps, values, marker="o", markersize=3, linewidth=1.6, label=name)
            axes.set(xlabel="Epoch", ylabel="Loss", title="Loss per epoch")
        else:
            for name, (steps, values) in validation_metrics.items():
                axes.plot(steps, values, marker="o", markersize=3, linewidth=1.6, label=name)
            axes.set(xlabel="Epoch", ylabel="Score", ylim=(-0.02, 1.02), title="Validation metrics")
        if best_epoch is not None and panel != "iteration":
            axes.axvline(best_epoch, color="#c0392b", linestyle=":", linewidth=1.2, label=f"best epoch ({best_epoch})")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def _brain_mask(volume: np.ndarray) -> np.ndarray:
    low, high = np.percentile(volume, [1.0, 99.5])
    mask = volume > low + _BRAIN_FRACTION * (high - low)
    return mask if mask.any() else np.ones(volume.shape, dtype=bool)


def _display_axes(axis: int, codes: Sequence[str]) -> tuple[int, int, str, str]:
    """The array axes shown across and up in the view that slices ``axis``, and the anatomical direction each
    should point to: superior up (anterior in axial views), anterior right in sagittal views, and the patient's
    right on the right otherwise (neurological convention, as nilearn draws)."""
    view = _VIEW_OF_AXIS[codes[axis]]
    up, right = ("A", "R") if view == "axial" else ("S", "A" if view == "sagittal" else "R")
    others = [other for other in range(3) if other != axis]
    vertical = next(other for other in others if up in (codes[other], _OPPOSITE[codes[other]]))
    horizontal = next(other for other in others if other != vertical)
    return horizontal, vertical, right, up


def _view_slice(volume: np.ndarray, axis: int, index: int, codes: Sequence[str]) -> np.ndarray:
    """The slice ``index`` across ``axis`` as (rows up, columns right), flipped (never resampled) so that it points
    the directions of :func:`_display_axes` with ``origin="lower"``."""
    horizontal, vertical, right, up = _display_axes(axis, codes)
    plane = np.take(volume, index, axis=axis)
    remaining = [other for other in range(3) if other != axis]
    rows = plane if remaining.index(vertical) == 0 else plane.T
    if codes[vertical] != up:
        rows = rows[::-1, :]
    if codes[horizontal] != right:
        rows = rows[:, ::-1]
    return rows


def plot_saliency_slices(
    image: np.ndarray,
    saliency: np.ndarray,
    affine: np.ndarray | None = None,
    title: str | None = None,
) -> Figure:
    """Sagittal, coronal and axial slices through the saliency peak inside the head, the map over the image.

    ``image`` and ``saliency`` are 3D arrays on one grid whose voxel-to-world ``affine`` (default: RAS, 1 mm) tells
    the anatomical direction of each array axis: each view is flipped (never resampled) to superior-up and
    labelled L/R, A/P, S/I from that grid, and drawn with its voxel proportions. The peak is sought inside the head
    only, so a background peak cannot pick the slices; a map of zeros (no evidence) is drawn through the head's
    centre, said in the figure, and logged as a warning.
    """
    volume, heat = np.asarray(image, dtype=np.float64), np.asarray(saliency, dtype=np.float64)
    if volume.ndim != 3 or heat.shape != volume.shape:
        raise ValueError(f"image and saliency must be 3D volumes on one grid, got shapes {volume.shape} and "
                         f"{heat.shape}")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    codes = nib.aff2axcodes(affine)
    voxel_size = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    brain = _brain_mask(volume)
    inside_heat = np.where(brain, heat, 0.0)
    empty = not np.any(inside_heat > 0)
    if empty:
        logger.warning("saliency map%s is all zeros inside the head (no evidence for the class): drawn through the "
                       "head's centre", f" of {title}" if title else "")
        centre = np.argwhere(brain).mean(axis=0).round().astype(int)
    else:
        centre = np.array(np.unravel_index(np.argmax(inside_heat), heat.shape))
    low, high = np.percentile(volume, [1.0, 99.5])
    figure = _new_figure(10.5, 4.0)
    views = sorted(range(3), key=lambda axis: ("sagittal", "coronal", "axial").index(_VIEW_OF_AXIS[codes[axis]]))
    overlays = []
    for axes, axis in zip(figure.subplots(1, 3), views):
        horizontal, vertical, right, up = _display_axes(axis, codes)
        shown = {"origin": "lower", "aspect": voxel_size[vertical] / voxel_size[horizontal]}
        axes.imshow(_view_slice(volume, axis, centre[axis], codes), cmap="gray", vmin=low, vmax=high, **shown)
        heat_slice = np.ma.masked_less(_view_slice(heat, axis, centre[axis], codes), _SALIENCY_FLOOR)
        overlays.append(axes.imshow(heat_slice, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.6, **shown))
        marker = {"fontsize": 10, "fontweight": "bold", "color": "#f1c40f", "transform": axes.transAxes}
        axes.text(0.02, 0.5, _OPPOSITE[right], ha="left", va="center", **marker)
        axes.text(0.98, 0.5, right, ha="right", va="center", **marker)
        axes.text(0.5, 0.02, _OPPOSITE[up], ha="center", va="bottom", **marker)
        axes.text(0.5, 0.98, up, ha="center", va="top", **marker)
        axes.set_title(f"{_VIEW_OF_AXIS[codes[axis]]} (slice {centre[axis]} of {volume.shape[axis]})", fontsize=9)
        axes.set_axis_off()
    figure.colorbar(overlays[-1], ax=figure.axes, shrink=0.8, label="saliency (scaled to [0, 1])")
    if empty:
        figure.supxlabel("map is all zeros: no evidence for the class anywhere in the head", color="#c0392b",
                         fontsize=10)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) atomically, so readers never see a half-written file."""
    target = Path(path)
    with atomic_open(target, "wb") as handle:  # readable by colleagues (0644), as every file the project writes
        fig.savefig(handle, format=target.suffix.lstrip(".") or "png", dpi=150)
    return target


def figure_to_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes, e.g. to embed in an HTML page."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def figure_to_image(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an (H, W, 3) uint8 RGB array, e.g. for ``SummaryWriter.add_image(..., dataformats="HWC")``."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
