"""Temperature scaling (Guo et al., 2017): one scalar T per model, fitted on the validation split, divides the logits.

Dividing every logit by the same T > 0 leaves each scan's arg-max, hence accuracy and every threshold-free ranking
of one class against another, unchanged, and only moves the confidence: T > 1 softens over-confident probabilities,
T < 1 sharpens under-confident ones. T minimises the negative log-likelihood (NLL) of the validation labels.

Logits are not needed: ``log(softmax(z)) = z - logsumexp(z)`` differs from ``z`` by one constant per row, which
softmax ignores, so the log-probabilities of a predictions CSV give the same fit (up to the CSV's 6-decimal
rounding, which :func:`log_probabilities` floors at :data:`PROBABILITY_FLOOR`).

T is searched on ``log T`` within :data:`TEMPERATURE_BOUNDS`. On separable validation data (every scan right, with
margin) the NLL keeps falling as T shrinks and on data that are all wrong it keeps falling as T grows: the fit then
stops at the bound and says so (``at_bound``), since such a T says more about the validation split's size than about
the model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import optimize, special

from alz_monai import layout, metrics, plots
from alz_monai.errors import DataError
from alz_monai.fileio import atomic_write_json
from alz_monai.predictions import Predictions, load_predictions
from alz_monai.run_config import describe_model, load_run_config, record_calibration

__all__ = [
    "PROBABILITY_FLOOR",
    "TEMPERATURE_BOUNDS",
    "TEMPERATURE_NAME",
    "TemperatureFit",
    "TemperatureScaled",
    "apply_temperature",
    "calibrate_predictions",
    "calibrate_run",
    "fit_temperature",
    "fit_temperature_to_predictions",
    "fit_temperature_to_run",
    "load_temperature",
    "log_probabilities",
    "run_temperature",
    "save_temperature",
    "uncalibrated_predictions",
]

logger = logging.getLogger(__name__)

#: Range of T searched: wider than any trained network needs (typically 0.5 to 5), narrow enough to stay finite.
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: Smallest probability taken from a CSV: the file rounds to 6 decimals, so a written 0 means below 5e-7.
PROBABILITY_FLOOR = 1e-7
#: File name of a fitted temperature: beside the model (calibrate_run) or the predictions (fit_temperature_to_run).
TEMPERATURE_NAME = "temperature.json"
# Tolerance of the bounded search, in log T: 1e-6 relative in T, far below what the NLL can resolve.
_LOG_TEMPERATURE_TOLERANCE = 1e-6
# A fit within this distance of a bound (in log T) counts as stopped there.
_AT_BOUND_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature with what it did to the validation split (NLL, ECE, reliability before and after)."""

    temperature: float
    at_bound: bool
    num_samples: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    reliability_before: metrics.ReliabilityCurve
    reliability_after: metrics.ReliabilityCurve
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS
    fitted_on: str = ""

    def to_json(self) -> dict[str, Any]:
        return metrics.to_jsonable(dataclasses.asdict(self))


def _as_logits(logits: Any) -> np.ndarray:
    values = np.asarray(logits, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < 2 or values.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty (num_samples, num_classes >= 2) array, got shape {values.shape}.")
    if not np.isfinite(values).all():
        raise ValueError("logits must be finite; take log-probabilities through log_probabilities(), which floors 0.")
    return values


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
    return float(temperature)


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Class probabilities ``softmax(logits / T)``."""
    return special.softmax(_as_logits(logits) / _check_temperature(temperature), axis=1)


def log_probabilities(probs: Any, floor: float = PROBABILITY_FLOOR) -> np.ndarray:
    """Logits equivalent to ``probs`` for softmax and temperature scaling: their logarithm, floored at ``floor``."""
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), floor))


def _negative_log_likelihood(labels: np.ndarray, logits: np.ndarray, temperature: float) -> float:
    """Mean NLL of ``labels`` under ``softmax(logits / T)``, computed in log space (exact for extreme logits)."""
    log_probs = special.log_softmax(logits / temperature, axis=1)
    return float(-log_probs[np.arange(labels.size), labels].mean())


def fit_temperature(
    y_true: Any,
    logits: Any,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    n_bins: int = 15,
    source: str = "the validation predictions",
) -> TemperatureFit:
    """The T in ``bounds`` that minimises the NLL of ``y_true`` under ``softmax(logits / T)``.

    The NLL is convex in 1/T, so a bounded scalar search on log T finds its minimum. A split holding one class alone
    is refused: any T would then only reward always predicting that class with more confidence.
    """
    values = _as_logits(logits)
    low, high = (_check_temperature(bound) for bound in bounds)
    if not low < high:
        raise ValueError(f"temperature bounds must be increasing, got {bounds}.")
    before = special.softmax(values, axis=1)
    labels, _, _ = metrics.validate_predictions(y_true, before)
    present = np.unique(labels)
    if present.size < 2:
        raise DataError(
            [f"all {labels.size} scans have true class index {int(present[0])}: a temperature fitted on one class "
             "only rewards confidence in that class"],
            source=source,
            hint="Fit the temperature on a validation split that holds every class (check the split ratios).")
    if np.ptp(values, axis=1).max() == 0.0:
        raise DataError(["every scan has the same score for every class, so no temperature changes anything"],
                        source=source, hint="Check that the model was trained (its predictions are constant).")

    def objective(log_t: float) -> float:
        return _negative_log_likelihood(labels, values, math.exp(log_t))

    log_low, log_high = math.log(low), math.log(high)
    result = optimize.minimize_scalar(objective, bounds=(log_low, log_high), method="bounded",
                                      options={"xatol": _LOG_TEMPERATURE_TOLERANCE})
    # Brent's search never evaluates the bounds themselves, and on separable data the NLL flattens to 0 in floating
    # point before the lower bound: a bound at least as good as the interior point is the minimum (min keeps the
    # first of equal values).
    log_t = min((log_low, log_high, float(result.x)), key=objective)
    at_bound = min(log_t - log_low, log_high - log_t) < _AT_BOUND_TOLERANCE
    temperature = math.exp(log_t)
    if at_bound:
        logger.warning(
            "temperature stopped at its bound %.3g (bounds %s) on %s: the %d scans are (nearly) separable or all "
            "wrong, so the likelihood keeps improving beyond the bound; calibration on so few or so easy scans is "
            "unreliable.", temperature, list(bounds), source, labels.size)
    after = special.softmax(values / temperature, axis=1)
    fit = TemperatureFit(
        temperature=temperature,
        at_bound=bool(at_bound),
        num_samples=int(labels.size),
        nll_before=_negative_log_likelihood(labels, values, 1.0),
        nll_after=_negative_log_likelihood(labels, values, temperature),
        ece_before=metrics.expected_calibration_error(labels, before, n_bins),
        ece_after=metrics.expected_calibration_error(labels, after, n_bins),
        reliability_before=metrics.reliability_curve(labels, before, n_bins),
        reliability_after=metrics.reliability_curve(labels, after, n_bins),
        bounds=(low, high),
        fitted_on=source,
    )
    logger.info("temperature %.4f fitted on %d scans of %s: NLL %.4f -> %.4f, ECE %.4f -> %.4f", temperature,
                fit.num_samples, source, fit.nll_before, fit.nll_after, fit.ece_before, fit.ece_after)
    return fit


def fit_temperature_to_predictions(predictions: Predictions, **kwargs: Any) -> TemperatureFit:
    """:func:`fit_temperature` on the log-probabilities of a predictions CSV (see the module docstring)."""
    return fit_temperature(predictions.y_true, log_probabilities(predictions.probs), source=predictions.source,
                           **kwargs)


def calibrate_predictions(predictions: Predictions, temperature: float) -> Predictions:
    """The same predictions with probabilities ``softmax(log(probs) / T)``; temperatures compose by product
    (``softmax(z / T1)`` scaled by T2 is ``softmax(z / (T1 T2))``), which ``temperature`` records."""
    probs = apply_temperature(log_probabilities(predictions.probs), temperature)
    source = f"{predictions.source} at temperature {temperature:.4g}"
    total = temperature * (predictions.temperature or 1.0)
    return dataclasses.replace(predictions, probs=probs, source=source, temperature=None if total == 1.0 else total)


def uncalibrated_predictions(predictions: Predictions) -> Predictions:
    """The predictions as the network gave them, before the temperature that their file records."""
    if predictions.temperature is None:
        return predictions
    return calibrate_predictions(predictions, 1.0 / predictions.temperature)


def save_temperature(path: str | Path, fit: TemperatureFit) -> None:
    atomic_write_json(path, fit.to_json())


def load_temperature(path: str | Path) -> float:
    """The temperature of a JSON written by :func:`save_temperature`, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; fit the temperature on the run's validation predictions "
                                "first.")
    try:
        temperature = json.loads(path.read_text(encoding="utf-8"))["temperature"]
        return _check_temperature(temperature)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise DataError([f"no valid 'temperature' (a number > 0): {error}"], source=str(path),
                        hint="Fit it again with alz_monai.calibration.fit_temperature_to_run.") from None


def fit_temperature_to_run(val_predictions: str | Path, output: str | Path | None = None, **kwargs: Any
                           ) -> TemperatureFit:
    """Fit on a run's ``best_val_predictions.csv`` and save to ``output`` (default: ``temperature.json`` beside it)."""
    val_predictions = Path(val_predictions)
    fit = fit_temperature_to_predictions(load_predictions(val_predictions), **kwargs)
    save_temperature(val_predictions.parent / TEMPERATURE_NAME if output is None else output, fit)
    return fit


class TemperatureScaled(torch.nn.Module):
    """``network`` whose logits are divided by a stored temperature; the temperature is a buffer of the state dict.

    Load the trained weights into ``network`` before wrapping it (its keys gain a ``network.`` prefix here).
    """

    temperature: torch.Tensor

    def __init__(self, network: torch.nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("temperature", torch.tensor(_check_temperature(temperature), dtype=torch.float32))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.network(*args, **kwargs) / self.temperature

    @classmethod
    def from_file(cls, network: torch.nn.Module, path: str | Path) -> TemperatureScaled:
        return cls(network, load_temperature(path))


def calibrate_run(output_dir: str | Path, model_path: str | Path,
                  predictions_path: str | Path | None = None) -> TemperatureFit | None:
    """After training: fit T on the validation predictions of the run's best model, save it beside the model
    (``temperature.json``, naming the model's sha256), record it in the run's ``run_config.yaml`` and draw the
    validation reliability diagram after scaling (``best_val_reliability_calibrated.png``).

    A T at its search bound, or validation predictions that admit no fit, are recorded with the reason and left
    unapplied: the run then reports uncalibrated probabilities rather than losing its test evaluation."""
    output_dir, model_path = Path(output_dir), Path(model_path)
    reports = output_dir / layout.REPORTS_DIRNAME
    predictions_path = Path(predictions_path) if predictions_path else reports / "best_val_predictions.csv"
    model = describe_model(model_path)
    record: dict[str, Any] = {"model": model["checkpoint"], "model_sha256": model["sha256"],
                              "fitted_on": str(predictions_path.absolute())}
    try:
        predictions = load_predictions(predictions_path)
        fit = fit_temperature_to_predictions(predictions)
    except DataError as error:
        reason = f"no temperature could be fitted: {error}"
        logger.warning("%s; evaluations of %s report uncalibrated probabilities", reason, model_path.name)
        record_calibration(output_dir, {**record, "applied": False, "reason": reason})
        return None
    applied = not fit.at_bound
    record.update(temperature=fit.temperature, applied=applied, num_samples=fit.num_samples,
                  nll_before=fit.nll_before, nll_after=fit.nll_after, ece_before=fit.ece_before,
                  ece_after=fit.ece_after)
    if applied:
        record["reason"] = f"fitted on {fit.num_samples} validation scans of {predictions_path.absolute()}"
    else:
        why = ("too few or too easy scans to calibrate on" if fit.temperature < 1.0 else
               "the model is confidently wrong there, so any temperature only flattens its probabilities")
        record["reason"] = (f"the temperature fitted on {fit.num_samples} validation scans stopped at its bound "
                            f"({fit.temperature:.3g}): {why}")
        logger.warning("%s; evaluations of %s report uncalibrated probabilities", record["reason"], model_path.name)
    atomic_write_json(model_path.parent / TEMPERATURE_NAME, {**fit.to_json(), "applied": applied, "model": model})
    record_calibration(output_dir, metrics.to_jsonable(record))
    context = plots.FigureContext(split="validation", model=f"temperature {fit.temperature:.3g}",
                                  num_scans=fit.num_samples)
    figure = plots.plot_reliability(fit.reliability_after, fit.ece_after, len(predictions.class_names), context)
    plots.save_figure(figure, reports / "best_val_reliability_calibrated.png")
    return fit


def run_temperature(output_dir: str | Path, model_path: str | Path) -> tuple[float | None, str]:
    """The temperature a run recorded for the model at ``model_path`` and where it comes from, or None and why not
    (none fitted, stopped at its bound, or fitted for another model: checked by the model file's sha256)."""
    recorded = load_run_config(output_dir) or {}
    record = recorded.get("calibration")
    if not isinstance(record, dict) or "applied" not in record:
        return None, f"{Path(output_dir) / layout.RUN_CONFIG_NAME} records no temperature (trained with calibrate " \
                     "false, or before calibration existed)"
    if not record.get("applied"):
        return None, str(record.get("reason", "the recorded temperature is not applied"))
    sha256 = describe_model(model_path)["sha256"]
    if sha256 != record.get("model_sha256"):
        return None, f"the recorded temperature belongs to {record.get('model')}, not to {Path(model_path).absolute()}"
    return _check_temperature(record.get("temperature")), str(record.get("reason", ""))
