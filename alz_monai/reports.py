"""Run-level reports: the end-of-training summary and metric tables."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alz_monai import layout
from alz_monai.fileio import atomic_write_json, atomic_write_text

__all__ = ["SUMMARY_METRICS", "format_metrics_table", "load_json", "mark_stale_evaluations", "print_split_report",
           "write_run_summary"]

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "auc", "average_precision", "sensitivity", "specificity",
                   "f1_macro", "mcc", "expected_calibration_error")


def load_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; has the run that writes it finished?")
    return json.loads(path.read_text(encoding="utf-8"))


def write_run_summary(output_dir: str | Path, key_metric: str, eval_split: str = "test") -> dict[str, Any]:
    """``summary_all.json``: the best validation metrics with their epoch and the evaluation split's metrics
    of the best checkpoint, logged as a table too. Earlier ``run evaluating`` reports of another model are
    marked stale (:func:`mark_stale_evaluations`)."""
    output_dir = Path(output_dir)
    best = load_json(output_dir / layout.CHECKPOINTS_DIRNAME / layout.BEST_METRIC_NAME)
    evaluation = load_json(output_dir / layout.REPORTS_DIRNAME / f"{eval_split}_metrics.json")
    summary = {
        "key_metric": key_metric,
        "best_epoch": best.get("epoch"),
        "model": evaluation.get("model"),
        "best_validation": best.get("metrics", {}),
        eval_split: {name: evaluation.get(name) for name in (*SUMMARY_METRICS, "confusion_matrix", "num_samples")},
        f"{eval_split}_confidence_intervals": evaluation.get("confidence_intervals", {}),
        f"{eval_split}_per_class": evaluation.get("per_class", {}),
    }
    atomic_write_json(output_dir / layout.SUMMARY_NAME, summary)
    mark_stale_evaluations(output_dir, (evaluation.get("model") or {}).get("sha256"))
    table = format_metrics_table({f"validation (epoch {summary['best_epoch']})": summary["best_validation"],
                                  eval_split: summary[eval_split]},
                                 intervals={eval_split: summary[f"{eval_split}_confidence_intervals"]})
    logger.info("summary of %s\n%s", output_dir, table)
    return summary


def mark_stale_evaluations(run_dir: str | Path, model_sha256: str | None) -> list[Path]:
    """Write ``STALE.txt`` into every ``evaluation/<split>/`` whose report evaluated another model than the run's
    current best (the run was resumed and improved since), so nobody publishes an old model's numbers."""
    stale = []
    for report_path in sorted((Path(run_dir) / layout.EVALUATION_DIRNAME).glob("*/*_metrics.json")):
        if report_path.name.endswith("_per_class_metrics.json"):
            continue
        model = load_json(report_path).get("model") or {}
        if model_sha256 is not None and model.get("sha256") == model_sha256:
            continue
        marker = report_path.parent / layout.STALE_MARKER_NAME
        atomic_write_text(marker, f"The reports in this folder evaluated {model.get('checkpoint', 'an unnamed model')} "
                          f"(training epoch {model.get('training_epoch', 'unknown')}), which is no longer the run's "
                          "best model. Re-evaluate with `run evaluating ... --overwrite true`.\n")
        logger.warning("%s evaluated an older model than the run's best: marked with %s", report_path.parent,
                       layout.STALE_MARKER_NAME)
        stale.append(marker)
    return stale


def format_metrics_table(
    columns: Mapping[str, Mapping[str, Any]],
    metric_names: Sequence[str] = SUMMARY_METRICS,
    intervals: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
) -> str:
    """A plain-text table, one row a metric and one column a run or split; ``[low, high]`` where a 95% CI exists."""
    intervals = intervals or {}
    header = ["metric", *columns]
    rows = [header]
    for name in metric_names:
        row = [name]
        for column, values in columns.items():
            value = values.get(name)
            cell = "-" if value is None else f"{value:.4f}"
            ci = intervals.get(column, {}).get(name)
            if ci and ci.get("low") is not None and value is not None:
                cell += f" [{ci['low']:.3f}, {ci['high']:.3f}]"
            row.append(cell)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def print_split_report(report_dir: str | Path, split: str) -> dict[str, Any]:
    """Log the metrics (with 95% CIs) of an evaluation written by ``ClassificationReport``."""
    report = load_json(Path(report_dir) / f"{split}_metrics.json")
    model = report.get("model") or {}
    if model:
        logger.info("model: %s (training epoch %s)", model.get("checkpoint"), model.get("training_epoch"))
    table = format_metrics_table({split: report}, intervals={split: report.get("confidence_intervals", {})})
    logger.info("%s split (%s scans), reports in %s\n%s", split, report.get("num_samples"), report_dir, table)
    return report
