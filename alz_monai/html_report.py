"""One self-contained HTML page per run, and one for several runs side by side (compare, cross-validation folds,
ensembles): what a person opens once to see the whole result, offline, and prints.

Everything comes from the run folder (see :mod:`alz_monai.layout`): the metrics JSON with its bootstrap intervals,
the predictions CSV, the figures (drawn from the predictions where the folder has none), the TensorBoard events
(read with TensorBoard's own reader, which honours the purges of resumed runs), ``splits.tsv``, the recorded
``run_config.yaml`` and ``timeline.json`` when present, and saliency PNGs. Figures are embedded as base64 PNG and
the page loads nothing from the network.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alz_monai import layout, plots
from alz_monai.crossval import CV_SUMMARY_NAME, fold_dir
from alz_monai.fileio import atomic_write_text
from alz_monai.handlers.tensorboard import EPOCH_LOSS_TAG
from alz_monai.predictions import Predictions, load_predictions
from alz_monai.reports import SUMMARY_METRICS

__all__ = [
    "REPORT_NAME", "TIMELINE_NAME", "RunReport", "load_run", "render_report",
    "write_comparison_report", "write_cv_report", "write_report", "write_run_report",
]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
TIMELINE_NAME = "timeline.json"
BEST_VALIDATION_PREFIX = "best_val"
TRAINING_LOSS_TAG = "loss"
#: Validation curves drawn, in legend order (tags of ClassificationReport's TensorBoard scalars).
VALIDATION_CURVES = ("auc", "balanced_accuracy", "accuracy", "f1_macro")
#: Headline metrics shown as cards, each with its interval where the run has one.
HEADLINE_METRICS = ("balanced_accuracy", "auc", "sensitivity", "specificity", "accuracy", "f1_macro")
METRIC_LABELS = {
    "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "auc": "ROC AUC",
    "average_precision": "Average precision", "sensitivity": "Sensitivity", "specificity": "Specificity",
    "f1_macro": "F1 (macro)", "mcc": "MCC", "expected_calibration_error": "Calibration error (ECE)",
    "precision": "Precision", "recall": "Recall", "f1": "F1",
}
FIGURE_LABELS = {"roc": "ROC", "pr": "Precision-recall", "confusion_matrix": "Confusion matrix",
                 "reliability": "Calibration", "per_class": "Per class", "training": "Training curves"}
# At most this many saliency overlays are embedded, so that a large evaluation keeps the page small.
MAX_SALIENCY_IMAGES = 6
_FIGURE_DPI = 100


@dataclasses.dataclass
class Evaluation:
    """One evaluated split of a run: its metrics JSON, predictions and figures (PNG bytes by kind)."""

    label: str
    split: str
    prefix: str
    """Of the folder's files: the split, or ``best_val`` for the best-validation report."""
    folder: Path
    metrics: dict[str, Any]
    predictions: Predictions | None
    figures: dict[str, bytes]

    @property
    def intervals(self) -> dict[str, Any]:
        return self.metrics.get("confidence_intervals") or {}

    @property
    def num_participants(self) -> int | None:
        if self.predictions is None or self.predictions.groups is None:
            return None
        return len(set(self.predictions.participants))


@dataclasses.dataclass
class Phase:
    """One row of the timeline; ``source`` says where its times come from."""

    name: str
    start: float | None
    seconds: float | None
    source: str


@dataclasses.dataclass
class RunReport:
    """Everything the page shows about one run folder."""

    run_dir: Path
    name: str
    model: str | None
    evaluations: list[Evaluation]
    curves_png: bytes | None
    curves_note: str | None
    config: dict[str, Any] | None
    data_summary: pd.DataFrame | None
    data_sources: list[str]
    timeline: list[Phase]
    saliency: list[tuple[str, bytes]]
    saliency_total: int
    best_epoch: int | None

    @property
    def headline(self) -> Evaluation | None:
        ranked = sorted(self.evaluations, key=lambda e: (e.prefix == BEST_VALIDATION_PREFIX, e.split == "val"))
        return ranked[0] if ranked else None


def _load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _model_name(config: Mapping[str, Any] | None) -> str | None:
    """The recorded network's name; a reference to a knob (Mosa's ``name: '@network_name'``) is looked up."""
    if not config:
        return None
    components = config.get("components") or {}
    network = components.get("network_def") if isinstance(components, Mapping) else None
    name = network.get("name") if isinstance(network, Mapping) else None
    knobs = config.get("knobs") or {}
    if isinstance(name, str) and name.startswith("@"):
        name = knobs.get(name[1:])
    return str(name) if name else None


def _evaluation_folders(run_dir: Path) -> list[tuple[str, str, Path]]:
    """(label, split, folder) of every evaluation the run holds: its test report, ``run evaluating`` reports, and
    the best-validation report."""
    found = []
    reports = run_dir / layout.REPORTS_DIRNAME
    for path in sorted(reports.glob("*_metrics.json")):
        split = path.name[: -len("_metrics.json")]
        if split.endswith("_per_class") or split == BEST_VALIDATION_PREFIX:
            continue
        found.append((f"{split} split", split, reports))
    for path in sorted((run_dir / layout.EVALUATION_DIRNAME).glob("*/*_metrics.json")):
        split = path.name[: -len("_metrics.json")]
        if split == path.parent.name:
            found.append((f"{split} split (run evaluating)", split, path.parent))
        elif split == layout.EXTERNAL_SPLIT and path.parent.name.startswith(f"{layout.EXTERNAL_SPLIT}_"):
            name = path.parent.name[len(layout.EXTERNAL_SPLIT) + 1:]
            found.append((f"external data {name} (run evaluating)", split, path.parent))
    if (reports / f"{BEST_VALIDATION_PREFIX}_metrics.json").is_file():
        found.append(("validation, best epoch", BEST_VALIDATION_PREFIX, reports))
    return found


def _figures(folder: Path, prefix: str, predictions: Predictions | None, context: plots.FigureContext,
             band_resamples: int) -> dict[str, bytes]:
    """The evaluation's figures drawn from its predictions (so every report has the current figures, with ROC
    bands); the PNG files of the folder where it has no predictions CSV."""
    if predictions is not None:
        figures = plots.report_figures(predictions.y_true, predictions.probs, predictions.class_names, context,
                                       groups=predictions.groups, band_resamples=band_resamples)
        return {kind: plots.figure_to_png(figure, _FIGURE_DPI) for kind, figure in figures.items()}
    files = {kind: folder / f"{prefix}_{kind}.png" for kind in plots.REPORT_FIGURES}
    return {kind: path.read_bytes() for kind, path in files.items() if path.is_file()}


def _load_evaluations(run_dir: Path, model: str | None, band_resamples: int) -> list[Evaluation]:
    evaluations = []
    for label, prefix, folder in _evaluation_folders(run_dir):
        report = _load_json(folder / f"{prefix}_metrics.json") or {}
        csv_path = folder / f"{prefix}_predictions.csv"
        predictions = load_predictions(csv_path) if csv_path.is_file() else None
        best_validation = prefix == BEST_VALIDATION_PREFIX
        if best_validation and report.get("epoch") is not None:
            label = f"validation, best epoch {report['epoch']}"
        participants = len(set(predictions.participants)) if predictions and predictions.groups else None
        context = plots.FigureContext("validation" if best_validation else prefix, model, report.get("num_samples"),
                                      participants)
        evaluations.append(Evaluation(label, "val" if best_validation else prefix, prefix, folder, report, predictions,
                                      _figures(folder, prefix, predictions, context, band_resamples)))
    return evaluations


def _scalars(folder: Path) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """Every scalar series of a TensorBoard folder: (steps, values, wall times) by tag."""
    if not folder.is_dir() or not any(folder.glob("events.out.tfevents.*")):
        return {}
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 1, "histograms": 1})
    with _quiet("tensorboard"):  # its directory watcher logs each event file it finishes at INFO
        accumulator.Reload()
    series = {}
    for tag in accumulator.Tags().get("scalars", []):
        events = accumulator.Scalars(tag)
        series[tag] = ([e.step for e in events], [e.value for e in events], [e.wall_time for e in events])
    return series


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logger ``name`` at WARNING for the duration of the block."""
    chosen = logging.getLogger(name)
    level = chosen.level
    chosen.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        chosen.setLevel(level)


def _writer_created(folder: Path) -> float | None:
    """When the folder's first event file was opened: TensorBoard writes that time into the file's name."""
    times = []
    for path in folder.glob("events.out.tfevents.*"):
        try:
            times.append(float(path.name.split(".")[3]))
        except (IndexError, ValueError):
            continue
    return min(times) if times else None


def _training_curves(run_dir: Path, best_epoch: int | None) -> tuple[bytes | None, str | None, dict]:
    """The curves figure (PNG), a note on what is missing, and the scalars of both TensorBoard folders."""
    tensorboard = run_dir / layout.TENSORBOARD_DIRNAME
    train, val = _scalars(tensorboard / "train"), _scalars(tensorboard / "val")
    iteration_loss = train.get(TRAINING_LOSS_TAG)
    epoch_losses = {name: val[f"{EPOCH_LOSS_TAG}/{name}"][:2] for name in ("train", "validation")
                    if f"{EPOCH_LOSS_TAG}/{name}" in val}
    validation = {METRIC_LABELS.get(name, name): val[f"val/{name}"][:2] for name in VALIDATION_CURVES
                  if f"val/{name}" in val}
    if not (iteration_loss or epoch_losses or validation):
        return None, f"no TensorBoard curves in {tensorboard}", {"train": train, "val": val}
    figure = plots.plot_training_curves(iteration_loss[:2] if iteration_loss else None, epoch_losses, validation,
                                        best_epoch)
    note = None if epoch_losses else ("validation loss not recorded by this run (its bundle predates the "
                                      f"{EPOCH_LOSS_TAG} curves)")
    return plots.figure_to_png(figure, _FIGURE_DPI), note, {"train": train, "val": val}


def _timeline(run_dir: Path, scalars: Mapping[str, Mapping[str, tuple]], evaluations: Sequence[Evaluation]
              ) -> list[Phase]:
    """Time per phase: ``timeline.json`` when the run wrote one, else derived from TensorBoard event times and the
    report files' modification times."""
    recorded = _load_json(run_dir / TIMELINE_NAME)
    if recorded:
        return [Phase(name, _timestamp(entry.get("start")), entry.get("seconds"), TIMELINE_NAME)
                for name, entry in recorded.items() if isinstance(entry, Mapping)]
    phases = []
    wall_times = {writer: [t for _, _, times in series.values() for t in times] for writer, series in scalars.items()}
    train_times, val_times = wall_times.get("train", []), wall_times.get("val", [])
    opened = _writer_created(run_dir / layout.TENSORBOARD_DIRNAME / "train")
    source = "TensorBoard event times"
    if train_times:
        first, last = min(train_times), max(train_times + val_times)
        if opened is not None and opened <= first:
            phases.append(Phase("set-up until the first logged iteration", opened, first - opened, source))
        epochs = len(set(scalars["val"].get("val/auc", ([], [], []))[0])) if "val" in scalars else 0
        name = f"training ({epochs} epochs, validation included)" if epochs else "training"
        phases.append(Phase(name, first, last - first, source))
        training_end = last
    else:
        training_end = None
    for evaluation in evaluations:
        if evaluation.prefix == BEST_VALIDATION_PREFIX:  # written during training, whose time it is part of
            continue
        path = evaluation.folder / f"{evaluation.prefix}_metrics.json"
        end = path.stat().st_mtime
        start = training_end if evaluation.folder.name == layout.REPORTS_DIRNAME else _writer_created(
            evaluation.folder / layout.TENSORBOARD_DIRNAME)
        if start is not None and start <= end:
            phases.append(Phase(f"evaluation: {evaluation.label}", start, end - start,
                                "event and report file times"))
    return phases


def _timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def _data_summary(run_dir: Path, class_names: Sequence[str]) -> tuple[pd.DataFrame | None, list[str]]:
    """Scans and participants per split and class (in ``class_names`` order, then any other label) from
    ``splits.tsv``, and the folder the scans come from."""
    path = run_dir / layout.SPLIT_TABLE_NAME
    if not path.is_file():
        return None, []
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    label = next((column for column in ("label", "label_name", "diagnosis") if column in table.columns), None)
    if label is None or "split" not in table.columns:
        return None, []
    order = [split for split in ("train", "val", "test") if split in set(table["split"])]
    order += sorted(set(table["split"]) - set(order))
    classes = [name for name in class_names if name in set(table[label])]
    classes += [name for name in dict.fromkeys(table[label]) if name not in classes]
    rows = []
    for split in order:
        part = table[table["split"] == split]
        row = {"split": split}
        for name in [*classes, "all"]:
            chosen = part if name == "all" else part[part[label] == name]
            participants = chosen["participant_id"].nunique() if "participant_id" in chosen else len(chosen)
            row[name] = f"{len(chosen)} ({participants})"
        rows.append(row)
    images = [str(Path(image).parent) for image in table.get("image", [])]
    roots = []
    if images:
        try:
            roots = [os.path.commonpath(images)]
        except ValueError:  # relative and absolute paths mixed
            roots = sorted(set(images))[:3]
    return pd.DataFrame(rows).set_index("split"), roots


def _saliency_images(run_dir: Path) -> tuple[list[tuple[str, bytes]], int]:
    paths = sorted([*(run_dir / layout.SALIENCY_DIRNAME).glob("*.png"),
                    *(run_dir / layout.EVALUATION_DIRNAME).glob(f"*/{layout.SALIENCY_DIRNAME}/*.png")])
    shown = [(str(path.relative_to(run_dir)), path.read_bytes()) for path in paths[:MAX_SALIENCY_IMAGES]]
    return shown, len(paths)


def load_run(run_dir: str | os.PathLike, name: str | None = None, band_resamples: int = 1000) -> RunReport:
    """Read everything the report shows from a run folder (or an ensemble's output folder)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run folder; pass the --output_dir of a training run")
    config_path = run_dir / layout.RUN_CONFIG_NAME
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None
    model = _model_name(config)
    evaluations = _load_evaluations(run_dir, model, band_resamples)
    if not evaluations:
        raise FileNotFoundError(f"no evaluation in {run_dir}: neither {layout.REPORTS_DIRNAME}/<split>_metrics.json "
                                f"nor {layout.EVALUATION_DIRNAME}/<split>/; has its training finished?")
    best = _load_json(run_dir / layout.CHECKPOINTS_DIRNAME / layout.BEST_METRIC_NAME) or {}
    best_epoch = best.get("epoch")
    curves_png, curves_note, scalars = _training_curves(run_dir, best_epoch)
    class_names = next((list(e.predictions.class_names) for e in evaluations if e.predictions is not None),
                       list((config or {}).get("knobs", {}).get("classes") or []))
    data_summary, sources = _data_summary(run_dir, class_names)
    saliency, saliency_total = _saliency_images(run_dir)
    return RunReport(
        run_dir=run_dir.absolute(), name=name or run_dir.absolute().name, model=model, evaluations=evaluations,
        curves_png=curves_png, curves_note=curves_note, config=config if isinstance(config, dict) else None,
        data_summary=data_summary, data_sources=sources, timeline=_timeline(run_dir, scalars, evaluations),
        saliency=saliency, saliency_total=saliency_total, best_epoch=best_epoch)


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _number(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _interval(interval: Mapping[str, Any] | None) -> str:
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return ""
    return f"[{_number(interval['low'])}, {_number(interval['high'])}]"


def _model_note(evaluation: Evaluation) -> str:
    """Which model the evaluation scored, and a warning when the folder marks the report as stale."""
    model = evaluation.metrics.get("model") or {}
    note = ""
    if model.get("checkpoint"):
        note = f"Model: {Path(model['checkpoint']).name}"
        if model.get("training_epoch") is not None:
            note += f", training epoch {model['training_epoch']}"
        note += "."
    stale = evaluation.folder / layout.STALE_MARKER_NAME
    if stale.is_file():
        note += " Stale: " + stale.read_text(encoding="utf-8").strip()
    return note.strip()


def _interval_note(evaluation: Evaluation) -> str:
    """How the intervals were made, from what they state (level, resamples, unit) or the run's defaults."""
    if not evaluation.intervals:
        return "no confidence intervals in this report"
    first = next(iter(evaluation.intervals.values()))
    level = first.get("level", 0.95)
    resamples = f"{first['resamples']} resamples" if "resamples" in first else "resamples"
    unit = first.get("unit", "participant")
    return f"{100 * level:.0f}% percentile bootstrap intervals ({resamples} of {unit}s)"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _clock(timestamp: float | None) -> str:
    if timestamp is None:
        return "–"
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _config_sections(config: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The recorded configuration as titled sections: a mapping of plain values becomes a two-column table,
    anything nested a YAML block, single values one table together."""
    if not config:
        return []
    singles, sections = [], []
    for key, value in config.items():
        if isinstance(value, Mapping) and value and all(not isinstance(v, (Mapping, list)) or _short(v)
                                                        for v in value.values()):
            sections.append({"title": key.replace("_", " "), "yaml": "",
                             "rows": [(str(k), _plain(v)) for k, v in value.items()]})
        elif isinstance(value, (Mapping, list)) and value:
            sections.append({"title": key.replace("_", " "), "rows": [],
                             "yaml": yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=100)})
        else:
            singles.append((key.replace("_", " "), _plain(value)))
    if singles:
        sections.insert(0, {"title": "run", "rows": singles, "yaml": ""})
    return sections


def _short(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(item, (Mapping, list)) for item in value) and len(value) <= 8


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_plain(item) for item in value) + "]"
    if value is None:
        return "null"
    return str(value)


def _metric_rows(reports: Sequence[Evaluation], mark_best: bool) -> list[dict[str, Any]]:
    """One row per summary metric: value and interval in every column, the best column marked if ``mark_best``."""
    rows = []
    for name in SUMMARY_METRICS:
        values = [evaluation.metrics.get(name) for evaluation in reports]
        if all(value is None for value in values):
            continue
        finite = [value for value in values if isinstance(value, (int, float)) and math.isfinite(value)]
        lower_is_better = name == "expected_calibration_error"
        best = (min(finite) if lower_is_better else max(finite)) if mark_best and len(finite) > 1 else None
        rows.append({"label": METRIC_LABELS.get(name, name), "cells": [
            {"value": _number(value), "interval": _interval(evaluation.intervals.get(name)),
             "best": best is not None and value == best}
            for value, evaluation in zip(values, reports)]})
    return rows


def _per_class_rows(evaluation: Evaluation) -> list[dict[str, str]]:
    rows = []
    for name, values in (evaluation.metrics.get("per_class") or {}).items():
        rows.append({"name": name, "support": str(values.get("support", "–")),
                     **{key: _number(values.get(key)) for key in
                        ("precision", "recall", "f1", "specificity", "auc", "average_precision")}})
    return rows


def _run_context(report: RunReport) -> dict[str, Any]:
    headline = report.headline
    cards = []
    if headline is not None:
        for name in HEADLINE_METRICS:
            if name in headline.metrics:
                cards.append({"label": METRIC_LABELS[name], "value": _number(headline.metrics[name]),
                              "interval": _interval(headline.intervals.get(name))})
    evaluations = [{
        "label": evaluation.label,
        "slug": f"{evaluation.prefix}-{index}",
        "n": evaluation.metrics.get("num_samples"),
        "participants": evaluation.num_participants,
        "interval_note": _interval_note(evaluation),
        "model_note": _model_note(evaluation),
        "per_class": _per_class_rows(evaluation),
        "figures": [{"kind": kind, "label": FIGURE_LABELS[kind], "src": _data_uri(png)}
                    for kind, png in evaluation.figures.items()],
    } for index, evaluation in enumerate(report.evaluations)]
    data = None
    if report.data_summary is not None:
        data = {"columns": list(report.data_summary.columns),
                "rows": [(split, list(row)) for split, row in report.data_summary.iterrows()]}
    config = report.config or {}
    return {
        "name": report.name,
        "path": str(report.run_dir),
        "model": report.model,
        "headline": headline,
        "headline_label": headline.label if headline else "",
        "headline_n": headline.metrics.get("num_samples") if headline else None,
        "headline_participants": headline.num_participants if headline else None,
        "headline_note": _interval_note(headline) if headline else "",
        "cards": cards,
        "metric_rows": _metric_rows(report.evaluations, mark_best=False),
        "evaluation_labels": [evaluation.label for evaluation in report.evaluations],
        "evaluations": evaluations,
        "curves": _data_uri(report.curves_png) if report.curves_png else None,
        "curves_note": report.curves_note,
        "best_epoch": report.best_epoch,
        "data": data,
        "sources": report.data_sources,
        "config_sections": _config_sections(report.config),
        "git_commit": config.get("git_commit"),
        "timeline": [{"name": phase.name, "start": _clock(phase.start), "duration": _duration(phase.seconds),
                      "source": phase.source} for phase in report.timeline],
        "saliency": [{"caption": caption, "src": _data_uri(png)} for caption, png in report.saliency],
        "saliency_total": report.saliency_total,
    }


_ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                  lstrip_blocks=True)

_STYLE = """
:root { --ink: #1d2733; --muted: #5b6776; --line: #dde3ea; --band: #14365c; --band2: #1f5a8f; --accent: #e0a526;
        --good: #2e7d4f; --paper: #ffffff; --tint: #f4f7fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: var(--tint);
       font: 15px/1.5 "Helvetica Neue", Helvetica, Arial, "Liberation Sans", sans-serif; }
header.band { background: linear-gradient(120deg, var(--band), var(--band2)); color: #fff; padding: 28px 40px 22px; }
header.band .kicker { font-size: 12px; text-transform: uppercase; letter-spacing: 1.5px; opacity: .75; }
header.band h1 { margin: 0 0 4px; font-size: 26px; font-weight: 600; letter-spacing: .2px; }
header.band .sub { opacity: .85; font-size: 14px; }
header.band .sub code { color: #fff; background: rgba(255,255,255,.12); padding: 1px 5px; border-radius: 3px; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; margin-top: 18px; }
.card { background: rgba(255,255,255,.10); border: 1px solid rgba(255,255,255,.22); border-radius: 8px;
        padding: 10px 16px; min-width: 150px; }
.card .label { font-size: 12px; text-transform: uppercase; letter-spacing: .6px; opacity: .8; }
.card .value { font-size: 30px; font-weight: 600; line-height: 1.15; font-variant-numeric: tabular-nums; }
.card .ci { font-size: 13px; opacity: .85; font-variant-numeric: tabular-nums; }
.note { color: var(--muted); font-size: 13px; }
header.band .note { color: rgba(255,255,255,.8); margin-top: 10px; }
main { max-width: 1280px; margin: 0 auto; padding: 8px 40px 40px; }
section { background: var(--paper); border: 1px solid var(--line); border-radius: 8px; margin: 22px 0;
          padding: 18px 24px; break-inside: avoid-page; }
h2 { font-size: 18px; margin: 0 0 12px; color: var(--band); border-bottom: 2px solid var(--accent);
     display: inline-block; padding-bottom: 2px; }
h3 { font-size: 15px; margin: 18px 0 8px; color: var(--ink); }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 13px; }
th:first-child, td:first-child { text-align: left; }
td.best { font-weight: 700; color: var(--good); }
td .ci { color: var(--muted); font-size: 12px; margin-left: 4px; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 14px; }
figure { margin: 0; text-align: center; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
figcaption { font-size: 12px; color: var(--muted); }
img.wide { width: 100%; height: auto; }
.side { display: grid; gap: 14px; }
.config { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 6px 28px; }
.config .wide { grid-column: 1 / -1; }
.kvs { font-size: 13px; }
.wide .kvs { columns: 3 260px; column-gap: 28px; }
.kv { display: flex; justify-content: space-between; gap: 14px; padding: 3px 0; border-bottom: 1px solid var(--line);
      break-inside: avoid; }
.kv .k { color: var(--muted); white-space: nowrap; }
.kv .v { text-align: right; overflow-wrap: anywhere; font-variant-numeric: tabular-nums; }
pre { background: var(--tint); border: 1px solid var(--line); border-radius: 4px; padding: 8px 10px;
      font-size: 12px; overflow: auto; white-space: pre-wrap; max-height: 420px; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 10px; }
@media print {
  body { background: #fff; font-size: 11pt; }
  header.band { -webkit-print-color-adjust: exact; print-color-adjust: exact; padding: 16px 20px; }
  main { padding: 0 10px; max-width: none; }
  section { border: none; padding: 6px 0; margin: 10px 0; }
  .figures { grid-template-columns: repeat(3, 1fr); }
  figure, table, .card { break-inside: avoid; }
  pre { max-height: none; }
  a { color: inherit; text-decoration: none; }
}
"""

# The page may load nothing: only its own inline style, script and data: images.
_CONTENT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

# Tells a headless browser (and a reader of the DOM) whether every embedded figure decoded.
_FIGURE_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  document.body.setAttribute("data-figures", images.length);
  document.body.setAttribute("data-figures-loaded", images.length - broken.length);
});
"""

_TEMPLATE = _ENVIRONMENT.from_string("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{{ content_policy }}">
<title>{{ title }}</title>
<style>{{ style | safe }}</style>
</head>
<body>
<header class="band">
  <div class="kicker">{{ kicker }}</div>
  <h1>{{ title }}</h1>
  <div class="sub">{{ subtitle }}</div>
  {% if cards %}
  <div class="cards">
    {% for card in cards %}
    <div class="card"><div class="label">{{ card.label }}</div><div class="value">{{ card.value }}</div>
      <div class="ci">{{ card.interval or "&nbsp;" | safe }}</div></div>
    {% endfor %}
  </div>
  {% endif %}
  {% if band_note %}<div class="note">{{ band_note }}</div>{% endif %}
</header>
<main>
{% for block in blocks %}{{ block | safe }}{% endfor %}
</main>
<footer>alz-monai report, written {{ written }}{% if git_commit %}, code at commit {{ git_commit }}{% endif %}.
  Self-contained: nothing loads from the network.</footer>
<script>{{ figure_check | safe }}</script>
</body>
</html>
""")

_RUN_BLOCKS = _ENVIRONMENT.from_string("""
{% macro metric_table(labels, rows) %}
<table>
  <tr><th>metric</th>{% for label in labels %}<th>{{ label }}</th>{% endfor %}</tr>
  {% for row in rows %}
  <tr><td>{{ row.label }}</td>{% for cell in row.cells %}<td{% if cell.best %} class="best"{% endif %}>{{ cell.value }}
    {% if cell.interval %}<span class="ci">{{ cell.interval }}</span>{% endif %}</td>{% endfor %}</tr>
  {% endfor %}
</table>
{% endmacro %}
<section id="metrics"><h2>Metrics</h2>
{{ metric_table(run.evaluation_labels, run.metric_rows) }}
<p class="note">{{ run.headline_note }}.</p>
</section>
{% for evaluation in run.evaluations %}
<section id="evaluation-{{ evaluation.slug }}"><h2>{{ evaluation.label | capitalize }}</h2>
<p class="note">N = {{ evaluation.n }} scans
  {%- if evaluation.participants %} of {{ evaluation.participants }} participants{% endif %};
  {{ evaluation.interval_note }}.</p>
{% if evaluation.model_note %}<p class="note">{{ evaluation.model_note }}</p>{% endif %}
{% if evaluation.per_class %}
<h3>Per class</h3>
<table>
  <tr><th>class</th><th>N</th><th>precision</th><th>recall</th><th>F1</th><th>specificity</th><th>ROC AUC</th>
    <th>AP</th></tr>
  {% for row in evaluation.per_class %}
  <tr><td>{{ row.name }}</td><td>{{ row.support }}</td><td>{{ row.precision }}</td><td>{{ row.recall }}</td>
    <td>{{ row.f1 }}</td><td>{{ row.specificity }}</td><td>{{ row.auc }}</td><td>{{ row.average_precision }}</td></tr>
  {% endfor %}
</table>
{% endif %}
{% if evaluation.figures %}
<h3>Figures</h3>
<div class="figures">
  {% for figure in evaluation.figures %}
  <figure><img src="{{ figure.src }}" alt="{{ figure.label }}, {{ evaluation.label }}"><figcaption>{{ figure.label }}
    </figcaption></figure>
  {% endfor %}
</div>
{% else %}<p class="note">No figures: the folder holds neither figure files nor a predictions CSV.</p>{% endif %}
</section>
{% endfor %}
<section id="training"><h2>Training</h2>
{% if run.curves %}<img class="wide" src="{{ run.curves }}" alt="training and validation curves">{% endif %}
{% if run.curves_note %}<p class="note">{{ run.curves_note }}.</p>{% endif %}
{% if run.best_epoch %}
<p class="note">Best validation epoch: {{ run.best_epoch }} (its model is the one evaluated).</p>
{% endif %}
</section>
<section id="data"><h2>Data</h2>
{% if run.data %}
<table>
  <tr><th>split</th>{% for column in run.data.columns %}<th>{{ column }}</th>{% endfor %}</tr>
  {% for split, cells in run.data.rows %}<tr><td>{{ split }}</td>{% for cell in cells %}<td>{{ cell }}</td>
    {% endfor %}</tr>{% endfor %}
</table>
<p class="note">Scans (participants) per split and class, from splits.tsv
  {%- if run.sources %}; scans under <code>{{ run.sources | join(", ") }}</code>{% endif %}.</p>
{% else %}<p class="note">No splits.tsv in this folder.</p>{% endif %}
</section>
<section id="timeline"><h2>Timeline</h2>
{% if run.timeline %}
<table>
  <tr><th>phase</th><th>started</th><th>duration</th><th>from</th></tr>
  {% for phase in run.timeline %}<tr><td>{{ phase.name }}</td><td>{{ phase.start }}</td><td>{{ phase.duration }}</td>
    <td class="note">{{ phase.source }}</td></tr>{% endfor %}
</table>
{% else %}<p class="note">No timing information: the run has no timeline.json and no TensorBoard events.</p>{% endif %}
</section>
{% if run.saliency %}
<section id="saliency"><h2>Saliency</h2>
<p class="note">{{ run.saliency | length }} of {{ run.saliency_total }} overlays shown.</p>
<div class="side">
  {% for image in run.saliency %}<figure><img class="wide" src="{{ image.src }}" alt="saliency {{ image.caption }}">
    <figcaption>{{ image.caption }}</figcaption></figure>{% endfor %}
</div>
</section>
{% endif %}
<section id="configuration"><h2>Configuration</h2>
{% if run.config_sections %}
<div class="config">
  {% for section in run.config_sections %}
  <div{% if section.rows | length > 16 %} class="wide"{% endif %}><h3>{{ section.title }}</h3>
    {% if section.rows %}<div class="kvs">{% for key, value in section.rows %}<div class="kv">
      <span class="k">{{ key }}</span><span class="v">{{ value }}</span></div>{% endfor %}</div>
    {% else %}<pre>{{ section.yaml }}</pre>{% endif %}</div>
  {% endfor %}
</div>
{% else %}<p class="note">This run recorded no run_config.yaml (it predates the recorded configuration).</p>{% endif %}
</section>
""")

_COMPARISON_BLOCKS = _ENVIRONMENT.from_string("""
<section id="metrics"><h2>Metrics side by side</h2>
<table>
  <tr><th>metric</th>{% for run in runs %}<th>{{ run.name }}</th>{% endfor %}</tr>
  {% for row in metric_rows %}
  <tr><td>{{ row.label }}</td>{% for cell in row.cells %}<td{% if cell.best %} class="best"{% endif %}>{{ cell.value }}
    {% if cell.interval %}<span class="ci">{{ cell.interval }}</span>{% endif %}</td>{% endfor %}</tr>
  {% endfor %}
</table>
<p class="note">{{ split_note }} Bold: the best of the columns; intervals that overlap do not show a difference.</p>
{% if tests %}<h3>Paired tests</h3><table><tr><th>test</th><th>result</th></tr>
  {% for name, value in tests %}<tr><td>{{ name }}</td><td>{{ value }}</td></tr>{% endfor %}</table>{% endif %}
</section>
{% for kind in figure_kinds %}
<section id="figures-{{ kind.kind }}"><h2>{{ kind.label }}</h2>
<div class="figures">
  {% for run in runs %}{% if run.figures[kind.kind] %}<figure>
    <img src="{{ run.figures[kind.kind] }}" alt="{{ kind.label }}, {{ run.name }}"><figcaption>{{ run.name }}
      </figcaption></figure>{% endif %}{% endfor %}
</div>
</section>
{% endfor %}
<section id="training"><h2>Training curves</h2>
<div class="side">
{% for run in runs %}{% if run.curves %}<figure>
  <img class="wide" src="{{ run.curves }}" alt="training curves, {{ run.name }}"><figcaption>{{ run.name }}
    </figcaption></figure>{% endif %}{% endfor %}
</div>
</section>
<section id="runs"><h2>Runs</h2>
<table><tr><th>column</th><th>folder</th><th>model</th><th>evaluated</th></tr>
  {% for run in runs %}<tr><td>{{ run.name }}</td><td><code>{{ run.path }}</code></td><td>{{ run.model or "–" }}</td>
    <td>{{ run.label }}</td></tr>{% endfor %}
</table>
{% if differences %}<h3>Recorded settings that differ</h3>
<table><tr><th>knob</th>{% for run in runs %}<th>{{ run.name }}</th>{% endfor %}</tr>
  {% for key, values in differences %}<tr><td>{{ key }}</td>{% for value in values %}<td>{{ value }}</td>{% endfor %}
    </tr>{% endfor %}
</table>{% endif %}
</section>
""")


def render_report(report: RunReport) -> str:
    """The HTML page of one run, titled by its model and task (``resnet18: CN vs AD``)."""
    run = _run_context(report)
    headline = report.headline
    classes = " vs ".join(headline.predictions.class_names) if headline and headline.predictions else ""
    title = ": ".join(part for part in (report.model, classes) if part) or report.name
    count = ""
    if run["headline_n"] is not None:
        count = f"N = {run['headline_n']} scans"
        if run["headline_participants"]:
            count += f" of {run['headline_participants']} participants"
    subtitle = " · ".join(part for part in (f"run {report.name}", run["headline_label"], count) if part)
    return _TEMPLATE.render(
        kicker="alz-monai run report", title=title, subtitle=subtitle, cards=run["cards"],
        band_note=run["headline_note"], blocks=[_RUN_BLOCKS.render(run=run)], written=_now(),
        git_commit=run["git_commit"], style=_STYLE, figure_check=_FIGURE_CHECK,
        content_policy=_CONTENT_POLICY)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_run_report(run_dir: str | os.PathLike, output: str | os.PathLike | None = None,
                     band_resamples: int = 1000) -> Path:
    """Write ``<run_dir>/report.html`` (or ``output``) atomically; returns its path."""
    report = load_run(run_dir, band_resamples=band_resamples)
    target = Path(output) if output is not None else Path(run_dir) / REPORT_NAME
    atomic_write_text(target, render_report(report))
    logger.info("report of %s written to %s", run_dir, target)
    return target


def _differences(reports: Sequence[RunReport]) -> list[tuple[str, list[str]]]:
    knobs = [(report.config or {}).get("knobs") or {} for report in reports]
    if sum(1 for k in knobs if k) < 2:
        return []
    skipped = ("output_dir", "run_id", "bundle_root")
    keys = sorted({key for k in knobs for key in k} - set(skipped))
    rows = []
    for key in keys:
        values = [_plain(k.get(key, "–")) for k in knobs]
        if len(set(values)) > 1:
            rows.append((key, values))
    return rows


def _paired_tests(comparison: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if not comparison:
        return []
    tests = []
    mcnemar = comparison.get("mcnemar") or {}
    if mcnemar.get("p_value") is not None:
        tests.append(("accuracy, McNemar", f"p = {mcnemar['p_value']:.3g} ({mcnemar.get('b')} scans right only "
                                             f"by A, {mcnemar.get('c')} only by B)"))
    for name, delong in (comparison.get("delong") or {}).items():
        if delong.get("p_value") is not None:
            tests.append((f"AUC of {name}, paired DeLong", f"p = {delong['p_value']:.3g}"))
    return tests


def write_comparison_report(
    runs: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    title: str = "Comparison",
    split: str = "test",
    comparison: Mapping[str, Any] | None = None,
    band_resamples: int = 1000,
) -> Path:
    """Write one page showing several runs (or ensemble / cross-validation folders) side by side: metrics with
    intervals, each figure kind in one row, the training curves and the recorded settings that differ.

    ``runs`` maps column names to folders (a sequence is named by folder); ``comparison`` is the result of
    :func:`alz_monai.compare.compare_runs`, whose paired tests are shown.
    """
    named = dict(runs) if isinstance(runs, Mapping) else {Path(run).absolute().name: run for run in runs}
    if len(named) < 2:
        raise ValueError(f"a comparison report needs at least 2 runs, got {len(named)}; for one run use "
                         "write_run_report")
    reports = [load_run(folder, name, band_resamples) for name, folder in named.items()]
    chosen: list[Evaluation] = []
    for report in reports:
        evaluation = next((e for e in report.evaluations if e.split == split), report.headline)
        if evaluation is None:
            raise FileNotFoundError(f"{report.run_dir} holds no evaluation report; evaluate the run first")
        chosen.append(evaluation)
    columns: list[dict[str, Any]] = []
    for report, evaluation in zip(reports, chosen):
        columns.append({"name": report.name, "path": str(report.run_dir), "model": report.model,
                        "label": evaluation.label,
                        "figures": {kind: _data_uri(png) for kind, png in evaluation.figures.items()},
                        "curves": _data_uri(report.curves_png) if report.curves_png else None})
    kinds = [{"kind": kind, "label": FIGURE_LABELS[kind]} for kind in plots.REPORT_FIGURES
             if any(column["figures"].get(kind) for column in columns)]
    sizes = sorted({str(evaluation.metrics.get("num_samples")) for evaluation in chosen})
    split_note = f"{split} split, N = {' / '.join(sizes)} scans; {_interval_note(chosen[0])}."
    scanned = {frozenset(e.predictions.images) for e in chosen if e.predictions is not None}
    if len(scanned) > 1:
        split_note += " The runs scored different scans: read their columns as separate estimates, not a paired test."
    blocks = _COMPARISON_BLOCKS.render(
        runs=columns, metric_rows=_metric_rows(chosen, mark_best=True), split_note=split_note,
        tests=_paired_tests(comparison), figure_kinds=kinds, differences=_differences(reports))
    cards = [{"label": report.name, "value": _number(evaluation.metrics.get("auc")),
              "interval": f"ROC AUC {_interval(evaluation.intervals.get('auc'))}".strip()}
             for report, evaluation in zip(reports, chosen)]
    page = _TEMPLATE.render(
        kicker="alz-monai comparison report", title=title, subtitle=f"{len(reports)} runs on the {split} split",
        cards=cards, band_note="", blocks=[blocks], written=_now(), git_commit=None, style=_STYLE,
        figure_check=_FIGURE_CHECK, content_policy=_CONTENT_POLICY)
    target = Path(output)
    atomic_write_text(target, page)
    logger.info("comparison report of %s written to %s", ", ".join(named), target)
    return target


def write_cv_report(cv_dir: str | os.PathLike, output: str | os.PathLike | None = None,
                    band_resamples: int = 1000) -> Path:
    """The folds of an ``alz-monai cv`` folder beside their ensemble, in ``<cv_dir>/report.html``."""
    cv_dir = Path(cv_dir)
    summary = _load_json(cv_dir / CV_SUMMARY_NAME)
    if summary is None:
        raise FileNotFoundError(f"{cv_dir / CV_SUMMARY_NAME} does not exist; run `alz-monai cv` to the end first")
    runs: dict[str, Path] = {f"fold {fold}": fold_dir(cv_dir, fold) for fold in summary.get("folds", [])}
    runs["ensemble"] = cv_dir
    return write_comparison_report(runs, output or cv_dir / REPORT_NAME,
                                   title=f"Cross-validation, {len(runs) - 1} of {summary.get('num_folds')} folds",
                                   band_resamples=band_resamples)


def write_report(runs: Sequence[str | os.PathLike], output: str | os.PathLike | None = None, split: str = "test",
                 band_resamples: int = 1000) -> Path:
    """The page ``alz-monai report`` writes: one run's (a cross-validation folder's: its folds beside the
    ensemble), or the comparison of several runs, which needs ``output``."""
    folders = [Path(run) for run in runs]
    if len(folders) == 1:
        folder = folders[0]
        if (folder / CV_SUMMARY_NAME).is_file():
            return write_cv_report(folder, output, band_resamples)
        return write_run_report(folder, output, band_resamples)
    if output is None:
        raise ValueError("several runs make a comparison report: name its file with --output, e.g. "
                         "--output comparison.html")
    return write_comparison_report(folders, output, split=split, band_resamples=band_resamples)
