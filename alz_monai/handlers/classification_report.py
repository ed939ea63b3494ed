"""Collect an evaluator's predictions on the device and turn them into a full classification report."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys, evenly_divisible_all_gather

from alz_monai import calibration, metrics, plots, stats
from alz_monai.fileio import atomic_write_json
from alz_monai.handlers.events import RunEvents, register_run_events
from alz_monai.handlers.temperature import calibration_of
from alz_monai.layout import PATH_KEY
from alz_monai.predictions import Predictions, check_finite, write_predictions
from alz_monai.run_config import describe_model

__all__ = ["ClassificationReport"]

logger = logging.getLogger(__name__)

# Scalars streamed to TensorBoard at every evaluation; the JSON reports hold everything.
TENSORBOARD_SCALARS = ("accuracy", "balanced_accuracy", "auc", "average_precision", "f1_macro", "sensitivity",
                       "specificity", "mcc")
METADATA_KEYS = ("participant_id", "session_id")


class ClassificationReport:
    """Metrics, figures, per-class JSON and a predictions CSV for one evaluator.

    Predictions stay on the device during the epoch (no host synchronisation per iteration), are gathered
    from every rank at the end, and are reported once. Scalar metrics go to ``engine.state.metrics`` so
    that checkpointing and learning-rate schedules can use them.

    ``artifacts`` chooses when files and figures are written: ``"on_best"`` (validation: when the
    checkpointer fires ``RunEvents.BEST_METRIC_IMPROVED``, as ``best_val_*``), ``"always"`` (test and
    evaluation runs), or ``"never"``. ``model_path`` names the model evaluated in every report (JSON ``model``,
    CSV columns, TensorBoard text): with ``"on_best"`` the model of the current trainer epoch, otherwise the
    checkpoint file with the training epoch it holds. ``prefix_metrics`` names the scalars in ``state.metrics``
    ``<prefix>/<name>`` as in TensorBoard: the test report's, so that trackers logging ``state.metrics`` (MONAI's
    MLFlowHandler) keep them apart from the validation curves, whose names stay bare (``key_metric``). Behind an
    :class:`~alz_monai.handlers.ApplyTemperature`, the report states the temperature and the ECE before scaling,
    and draws the unscaled reliability diagram beside the scaled one.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_dir: str | Path,
        prefix: str = "val",
        artifacts: str = "on_best",
        summary_writer: Any = None,
        global_step_transform: Callable[[int], int] | None = None,
        bootstrap_resamples: int = 0,
        calibration_bins: int = 15,
        seed: int = 0,
        model_path: str | Path | None = None,
        model_name: str | None = None,
        prefix_metrics: bool = False,
    ) -> None:
        if artifacts not in ("on_best", "always", "never"):
            raise ValueError(f"artifacts must be 'on_best', 'always' or 'never', got {artifacts!r}")
        self.class_names = list(class_names)
        self.output_dir = Path(output_dir)
        self.prefix = prefix
        self.artifacts = artifacts
        self.prefix_metrics = prefix_metrics
        self.summary_writer = summary_writer
        self.global_step_transform = global_step_transform or (lambda epoch: epoch)
        self.bootstrap_resamples = bootstrap_resamples
        self.calibration_bins = calibration_bins
        self.seed = seed
        self.model_path = model_path
        self.model_name = model_name
        self.report: dict[str, Any] | None = None
        self._uncalibrated: Predictions | None = None
        self._reset()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._compute)
        if self.artifacts == "always":
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.write_artifacts)
        elif self.artifacts == "on_best":
            register_run_events(engine)
            engine.add_event_handler(RunEvents.BEST_METRIC_IMPROVED, self.write_artifacts)

    def _reset(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._meta: dict[str, list[str]] = {"image": [], **{key: [] for key in METADATA_KEYS}}

    def _collect(self, engine: Engine) -> None:
        # ignite annotates State.output and State.batch as int: they are MONAI's dicts
        output, batch = cast(dict[str, Any], engine.state.output), cast(dict[str, Any], engine.state.batch)
        logits = output[CommonKeys.PRED]
        self._probs.append(torch.softmax(logits.detach().float(), dim=1))
        self._labels.append(output[CommonKeys.LABEL].detach().reshape(-1))
        count = logits.shape[0]
        self._meta["image"].extend(_as_list(batch.get(PATH_KEY), count))
        for key in METADATA_KEYS:
            self._meta[key].extend(_as_list(batch.get(key), count))

    def _gather(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[str]]]:
        probs = torch.cat(self._probs) if self._probs else torch.zeros(0, len(self.class_names))
        labels = torch.cat(self._labels) if self._labels else torch.zeros(0, dtype=torch.long)
        meta = self._meta
        if idist.get_world_size() > 1:  # ranks hold uneven shares of the split: gather them all
            probs = evenly_divisible_all_gather(probs, concat=True)
            labels = evenly_divisible_all_gather(labels, concat=True)
            meta = {key: _all_gather_list(values) for key, values in meta.items()}
        return probs.cpu(), labels.cpu().long(), meta

    def _compute(self, engine: Engine) -> None:
        probs, labels, meta = self._gather()
        if labels.numel() == 0:
            raise RuntimeError(
                f"{self.prefix}: the evaluator produced no predictions; is the {self.prefix} split empty?")
        predictions = Predictions(source=f"the {self.prefix} split", class_names=tuple(self.class_names),
                                  images=tuple(meta["image"]), participants=tuple(meta["participant_id"]),
                                  sessions=tuple(meta["session_id"]), y_true=labels.numpy(),
                                  probs=probs.numpy().astype(float))
        check_finite(predictions)  # a scan whose preprocessing gave NaN is named here, not as a metric error
        report = metrics.classification_report(labels.numpy(), probs.numpy(), self.class_names)
        report["expected_calibration_error"] = metrics.expected_calibration_error(
            labels.numpy(), probs.numpy(), n_bins=self.calibration_bins)
        self._uncalibrated = None
        applied = calibration_of(engine)
        if applied is not None:
            report["calibration"] = {"temperature": applied.temperature, "source": applied.reason}
            if applied.temperature is not None:
                predictions = dataclasses.replace(predictions, temperature=applied.temperature)
                self._uncalibrated = calibration.uncalibrated_predictions(predictions)
                report["calibration"]["expected_calibration_error_uncalibrated"] = \
                    metrics.expected_calibration_error(labels.numpy(), self._uncalibrated.probs,
                                                       n_bins=self.calibration_bins)
        self.report = report
        self._predictions = predictions
        scalars = metrics.scalar_metrics(report)
        engine.state.metrics.update(
            {f"{self.prefix}/{name}": value for name, value in scalars.items()} if self.prefix_metrics else scalars)
        step = self.global_step_transform(engine.state.epoch)
        logger.info("%s epoch %d: %s", self.prefix, step,
                    ", ".join(f"{name}={scalars[name]:.4f}" for name in TENSORBOARD_SCALARS if name in scalars))
        if self.summary_writer is not None and idist.get_rank() == 0:
            for name in TENSORBOARD_SCALARS:
                if name in scalars:
                    self.summary_writer.add_scalar(f"{self.prefix}/{name}", scalars[name], step)
            self.summary_writer.flush()

    def _model(self, engine: Engine) -> dict[str, Any] | None:
        if self.model_path is None:
            return None
        if self.artifacts == "on_best":
            return {"checkpoint": str(Path(self.model_path).absolute()), "training_epoch": engine.state.epoch}
        return describe_model(self.model_path)

    def write_artifacts(self, engine: Engine) -> None:
        """JSON reports, predictions CSV and figures (PNG and TensorBoard) of the last evaluation."""
        if self.report is None or idist.get_rank() != 0:
            return
        name = "best_val" if self.artifacts == "on_best" else self.prefix
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        predictions = self._predictions
        y_true, y_prob = predictions.y_true, predictions.probs
        report = dict(self.report)
        model = self._model(engine)
        if model is not None:
            report["model"] = model
            predictions = dataclasses.replace(predictions, checkpoint=model["checkpoint"],
                                              training_epoch=model["training_epoch"])
        step = self.global_step_transform(engine.state.epoch)
        if self.artifacts == "on_best":
            report["epoch"] = step
        if self.bootstrap_resamples > 0:
            report["confidence_intervals"] = stats.bootstrap_ci(
                y_true, y_prob, self.class_names, groups=predictions.groups,
                n_resamples=self.bootstrap_resamples, seed=self.seed)
        if predictions.groups is not None:
            report["participant_level"] = self._participant_level(predictions)
        atomic_write_json(out / f"{name}_metrics.json", stats.rounded(metrics.to_jsonable(report)))
        atomic_write_json(out / f"{name}_per_class_metrics.json",
                          stats.rounded(metrics.to_jsonable(report["per_class"])))
        write_predictions(out / f"{name}_predictions.csv", predictions)
        if self.summary_writer is not None and model is not None:
            self.summary_writer.add_text(f"{name}/model", f"{model['checkpoint']} (training epoch "
                                         f"{model['training_epoch']})", step)
        self._write_figures(name, predictions, step)
        logger.info("%s reports written to %s", name, out)

    def _participant_level(self, predictions: Predictions) -> dict[str, Any]:
        """The same report on probabilities averaged over each participant's sessions, which are not independent
        evidence: one participant, one vote."""
        rows = metrics.average_by_participant(predictions.y_true, predictions.probs, predictions.participants)
        level = metrics.classification_report(rows.y_true, rows.probs, self.class_names)
        level["expected_calibration_error"] = metrics.expected_calibration_error(
            rows.y_true, rows.probs, n_bins=self.calibration_bins)
        if self.bootstrap_resamples > 0:
            level["confidence_intervals"] = stats.bootstrap_ci(
                rows.y_true, rows.probs, self.class_names, groups=rows.participants,
                n_resamples=self.bootstrap_resamples, seed=self.seed)
        return level

    def _write_figures(self, name: str, predictions: Predictions, step: int) -> None:
        groups = predictions.groups
        context = plots.FigureContext(split="validation" if name == "best_val" else self.prefix, model=self.model_name,
                                      num_scans=len(predictions.images),
                                      num_participants=len(set(groups)) if groups else None)
        figures = plots.report_figures(predictions.y_true, predictions.probs, self.class_names, context, groups=groups,
                                       band_resamples=self.bootstrap_resamples, calibration_bins=self.calibration_bins,
                                       seed=self.seed)
        if self._uncalibrated is not None:  # the same scans before temperature scaling, beside the scaled ones
            labels, probs = self._uncalibrated.y_true, self._uncalibrated.probs
            figures["reliability_uncalibrated"] = plots.plot_reliability(
                metrics.reliability_curve(labels, probs, n_bins=self.calibration_bins),
                metrics.expected_calibration_error(labels, probs, n_bins=self.calibration_bins),
                num_classes=len(self.class_names),
                context=dataclasses.replace(context, model=f"{self.model_name or 'model'} before temperature scaling"))
        for kind, fig in figures.items():
            if self.summary_writer is not None:
                self.summary_writer.add_figure(f"{name}/{kind}", fig, step, close=False)
            plots.save_figure(fig, self.output_dir / f"{name}_{kind}.png")
        if self.summary_writer is not None:
            self.summary_writer.flush()


def _as_list(values: Any, count: int) -> list[str]:
    """Collated metadata as a list of strings of the batch's length ('' where absent)."""
    if values is None:
        return [""] * count
    if isinstance(values, (str, Path)):
        values = [values]
    values = [str(v) for v in values]
    if len(values) != count:
        return [""] * count
    return values


def _all_gather_list(values: list[str]) -> list[str]:
    gathered: list[list[str]] = [[] for _ in range(idist.get_world_size())]
    torch.distributed.all_gather_object(gathered, values)
    return [value for part in gathered for value in part]
