"""Paired comparison of two runs on the same scans: metrics with bootstrap CIs, DeLong (AUC) and McNemar tests.

Both runs must have scored exactly the same scans (matched by image path) with the same true labels, otherwise a
paired test would compare different populations. The tests treat scans as independent; when participants have
several sessions their p-values are somewhat optimistic (the bootstrap intervals resample participants and are not).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alz_monai import metrics, stats
from alz_monai.errors import DataError
from alz_monai.fileio import atomic_write_json
from alz_monai.layout import EVALUATION_DIRNAME, REPORTS_DIRNAME
from alz_monai.predictions import Predictions, load_predictions, write_predictions  # noqa: F401 (re-exported until callers move)
from alz_monai.reports import SUMMARY_METRICS, format_metrics_table

__all__ = [
    "align_predictions",
    "default_output",
    "compare_predictions",
    "compare_runs",
    "evaluate_predictions",
    "find_predictions",
    "format_comparison_table",
]

logger = logging.getLogger(__name__)

#: Metrics given a bootstrap confidence interval: the summary metrics the bootstrap can resample.
INTERVAL_METRICS = tuple(name for name in SUMMARY_METRICS if name in stats.BOOTSTRAP_METRICS)
# Longest list of scans quoted in one mismatch message; the rest are counted.
_MAX_LISTED = 10


def _listed(images: Sequence[str]) -> str:
    shown = ", ".join(images[:_MAX_LISTED])
    return shown + (f" and {len(images) - _MAX_LISTED} more" if len(images) > _MAX_LISTED else "")


def align_predictions(
    named: Mapping[str, Predictions],
    hint: str = "Compare predictions made on the same split table (the runs' splits.tsv must agree).",
) -> dict[str, Predictions]:
    """All predictions in the scan order of the first, after checking they cover the same scans and labels.

    Raises :class:`DataError` naming every scan scored by only some of them or given different true labels.
    """
    if not named:
        raise ValueError("align_predictions needs at least one set of predictions.")
    (reference_name, reference), *others = named.items()
    reference_labels = dict(zip(reference.images, reference.labels))
    problems = []
    for name, other in others:
        if other.class_names != reference.class_names:
            problems.append(f"{name} has classes {list(other.class_names)} but {reference_name} has "
                            f"{list(reference.class_names)}")
            continue
        only_reference = sorted(set(reference.images) - set(other.images))
        only_other = sorted(set(other.images) - set(reference.images))
        if only_reference:
            problems.append(f"{len(only_reference)} scan(s) scored by {reference_name} but not by {name}: "
                            f"{_listed(only_reference)}")
        if only_other:
            problems.append(f"{len(only_other)} scan(s) scored by {name} but not by {reference_name}: "
                            f"{_listed(only_other)}")
        relabelled = [f"{image} ({reference.class_names[reference_labels[image]]} in {reference_name}, "
                      f"{other.class_names[label]} in {name})"
                      for image, label in zip(other.images, other.labels)
                      if image in reference_labels and reference_labels[image] != label]
        if relabelled:
            problems.append(f"{len(relabelled)} scan(s) with different true labels: {_listed(relabelled)}")
    if problems:
        sources = ", ".join(f"{name} ({predictions.source})" for name, predictions in named.items())
        raise DataError(problems, source=f"the predictions of {sources}", hint=hint)
    return {name: predictions.reordered(reference.images) for name, predictions in named.items()}


def evaluate_predictions(
    predictions: Predictions, bootstrap_resamples: int = 1000, seed: int = 0
) -> tuple[dict[str, Any], dict[str, dict[str, float | int]]]:
    """The classification report (with calibration error) and participant-level bootstrap CIs of one prediction set."""
    report = metrics.classification_report(predictions.y_true, predictions.probs, predictions.class_names)
    report["expected_calibration_error"] = metrics.expected_calibration_error(predictions.y_true, predictions.probs)
    intervals = stats.bootstrap_ci(predictions.y_true, predictions.probs, predictions.class_names,
                                   groups=predictions.groups, n_resamples=bootstrap_resamples, seed=seed,
                                   metrics=INTERVAL_METRICS)
    return report, intervals


def _delong_per_class(a: Predictions, b: Predictions) -> dict[str, dict[str, Any]]:
    """DeLong test of the positive class (binary) or of every class against the rest (multi-class)."""
    classes = [metrics.POSITIVE_CLASS] if len(a.class_names) == 2 else range(len(a.class_names))
    results: dict[str, dict[str, Any]] = {}
    for index in classes:
        name = a.class_names[index]
        try:
            results[name] = stats.delong_test(a.y_true == index, a.probs[:, index], b.probs[:, index])
        except ValueError as error:
            logger.warning("DeLong test of class %r skipped: %s", name, error)
            results[name] = {"auc_a": None, "auc_b": None, "z": None, "p_value": None, "skipped": str(error)}
    return results


def compare_predictions(
    a: Predictions, b: Predictions, bootstrap_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Metrics with CIs of both prediction sets, DeLong per class for AUC and McNemar for accuracy."""
    a, b = align_predictions({"A": a, "B": b}).values()
    report_a, intervals_a = evaluate_predictions(a, bootstrap_resamples, seed)
    report_b, intervals_b = evaluate_predictions(b, bootstrap_resamples, seed)
    return {
        "runs": {"A": a.source, "B": b.source},
        "class_names": list(a.class_names),
        "num_samples": len(a.images),
        "num_participants": len(set(a.participants)) if a.groups else None,
        "metrics": {"A": report_a, "B": report_b},
        "confidence_intervals": {"A": intervals_a, "B": intervals_b},
        "bootstrap": {"resamples": bootstrap_resamples, "seed": seed,
                      "resampled_unit": "participant" if a.groups else "scan"},
        "delong": _delong_per_class(a, b),
        "mcnemar": stats.mcnemar_test(a.y_true, a.predicted, b.predicted),
    }


def find_predictions(run: str | Path, split: str = "test") -> Path:
    """A run's ``<split>_predictions.csv``: ``run`` if a file, else in ``reports/`` or ``evaluation/<split>/``."""
    run = Path(run)
    if run.is_file():
        return run
    name = f"{split}_predictions.csv"
    candidates = [run / REPORTS_DIRNAME / name, run / EVALUATION_DIRNAME / split / name]
    found = [path for path in candidates if path.is_file()]
    if not found:
        raise FileNotFoundError(
            f"no {name} in {run} (looked for {' and '.join(map(str, candidates))}); evaluate the run on the "
            f"{split} split first or pass the predictions CSV itself.")
    if len(found) > 1:
        logger.warning("%s has %s and %s; comparing the first (pass the other CSV itself to compare it instead)",
                       run, *found)
    return found[0]


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    split: str = "test",
    output: str | Path | None = None,
    bootstrap_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare two run folders (or predictions CSVs) on ``split``; the JSON result goes to ``output`` if given."""
    result = compare_predictions(load_predictions(find_predictions(run_a, split)),
                                 load_predictions(find_predictions(run_b, split)), bootstrap_resamples, seed)
    result = metrics.to_jsonable({"split": split, **result})
    if output is not None:
        atomic_write_json(output, result)
        logger.info("comparison written to %s", output)
    return result


def format_comparison_table(result: Mapping[str, Any]) -> str:
    """Metrics of A and B side by side with 95% CIs, and the p-value of the paired test of each tested metric."""
    class_names = result["class_names"]
    binary = len(class_names) == 2
    per_class_auc = [] if binary else [f"auc/{name}" for name in class_names]
    columns = {}
    for run in ("A", "B"):
        report = result["metrics"][run]
        columns[run] = {**report, **{f"auc/{name}": report["per_class"][name]["auc"] for name in class_names}}
    delong = result["delong"]
    p_values = {"accuracy": result["mcnemar"]["p_value"]}
    if binary:
        p_values["auc"] = delong[class_names[metrics.POSITIVE_CLASS]]["p_value"]
    else:
        p_values.update({f"auc/{name}": delong[name]["p_value"] for name in class_names})
    columns["p-value"] = p_values
    table = format_metrics_table(columns, metric_names=(*SUMMARY_METRICS, *per_class_auc),
                                 intervals=result["confidence_intervals"])
    mcnemar = result["mcnemar"]
    lines = [
        f"{result['split']} split: {result['num_samples']} scans"
        + (f" of {result['num_participants']} participants" if result.get("num_participants") else ""),
        f"A: {result['runs']['A']}",
        f"B: {result['runs']['B']}",
        table,
        f"accuracy: McNemar ({mcnemar['method']}), {mcnemar['b']} scans right only by A, "
        f"{mcnemar['c']} only by B",
        f"AUC: paired DeLong test{'' if binary else ' per class, one vs rest'}; "
        f"95% CIs: bootstrap over {result['bootstrap']['resampled_unit']}s ({result['bootstrap']['resamples']} "
        "resamples)",
    ]
    return "\n".join(lines)


def default_output(run_a: Path, run_b: Path, split: str) -> Path:
    """``<A>/comparisons/<split>_vs_<B>.json``: beside the first run's results, never in the current folder."""
    folder = run_a.parent if run_a.is_file() else run_a
    other = run_b.parent.name if run_b.is_file() else run_b.name
    return folder / "comparisons" / f"{split}_vs_{other}.json"
