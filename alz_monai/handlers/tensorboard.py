"""TensorBoard handlers MONAI lacks: resume-safe curves, learning rates by parameter group, losses per epoch (training
beside validation), weight and gradient histograms, and hyperparameters for TensorBoard's HPARAMS tab.

A run writes two TensorBoard folders: ``<output>/tensorboard/train`` with iteration steps (loss, lr) and
``<output>/tensorboard/val`` with trainer-epoch steps (metrics, epoch losses, figures, histograms). Never mix step
kinds in one writer: :class:`TensorBoardResume` purges by step number.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from torch.utils.tensorboard.summary import hparams

from alz_monai.handlers.checkpoint import unwrap_network

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["EPOCH_LOSS_TAG", "EpochLossLogger", "HParamsLogger", "HistogramLogger", "LearningRateLogger",
           "TensorBoardResume"]

logger = logging.getLogger(__name__)

STEP_KINDS = ("iteration", "epoch")

#: Epoch losses are logged as ``epoch_loss/train`` and ``epoch_loss/validation``: one TensorBoard section, the
#: training and validation curves side by side with the same epoch steps (and in one chart of the layout that
#: :meth:`EpochLossLogger.add_layout` registers).
EPOCH_LOSS_TAG = "epoch_loss"


class TensorBoardResume:
    """Hides what a killed run logged after its last checkpoint, once the run resumes from it.

    A run killed during epoch 3 has written epoch-3 events, and the run resumed from the epoch-2 checkpoint
    writes them again. At the trainer's STARTED event after a resume (``state.iteration > 0``) this writes a
    ``SessionLog.START`` event at the first step still to come, as torch's ``SummaryWriter(purge_step=...)``
    does; TensorBoard then drops every earlier-written event at or after that step.

    Attach it to the trainer after ``CheckpointLoader``, one per writer, with the step kind of that writer.

    Args:
        summary_writer: a torch or tensorboardX ``SummaryWriter``.
        step: "iteration" when the writer logs at trainer iterations, "epoch" at trainer epochs.
    """

    def __init__(self, summary_writer: SummaryWriter, step: str = "iteration") -> None:
        if step not in STEP_KINDS:
            raise ValueError(f"step must be one of {STEP_KINDS}, got {step!r}")
        self.summary_writer = summary_writer
        self.step = step

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration == 0:
            return
        completed = engine.state.iteration if self.step == "iteration" else engine.state.epoch
        purge_step = completed + 1
        # Both torch's and tensorboardX's writers expose their event-file writer this way only.
        file_writer = self.summary_writer._get_file_writer()
        file_writer.add_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        file_writer.flush()
        logger.info("resumed: TensorBoard hides earlier events of %s >= %d", self.step, purge_step)


class LearningRateLogger:
    """Logs each optimizer param group's learning rate, as ``tag`` (one group) or ``tag/<group name>``.

    A group is named by its ``"name"`` entry (Mosa's ``param_groups`` name theirs ``backbone`` and ``fusion``),
    else ``group<i>``. The values are the Python floats of ``param_groups``, so logging costs no device
    synchronisation. Attached after an iteration-level LR scheduler, it logs the rate of the next iteration.

    Args:
        summary_writer: the writer (the iteration-step one unless ``epoch_level``).
        optimizer: the optimizer whose rates to log.
        tag: scalar tag.
        epoch_level: log at EPOCH_COMPLETED with the epoch as step, instead of every iteration.
    """

    def __init__(
        self,
        summary_writer: SummaryWriter,
        optimizer: torch.optim.Optimizer,
        tag: str = "lr",
        epoch_level: bool = False,
    ) -> None:
        self.summary_writer = summary_writer
        self.optimizer = optimizer
        self.tag = tag
        self.epoch_level = epoch_level

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        step = engine.state.epoch if self.epoch_level else engine.state.iteration
        groups = self.optimizer.param_groups
        for index, group in enumerate(groups):
            tag = self.tag if len(groups) == 1 else f"{self.tag}/{group.get('name') or f'group{index}'}"
            self.summary_writer.add_scalar(tag, float(group["lr"]), step)


class EpochLossLogger:
    """Mean loss of an engine's epoch as ``epoch_loss/<name>``, at the trainer's epoch as step.

    On the trainer it averages the training loss (``output["loss"]``); on the validation evaluator, given the
    training ``loss_function``, it computes the same loss on the evaluator's predictions, so that the two curves
    compare. The sum stays on the device during the epoch (no host synchronisation per iteration) and is
    all-reduced over ranks at its end; every rank must attach it, and only rank 0 needs a writer.

    Args:
        summary_writer: the writer with trainer-epoch steps, or None (ranks other than 0).
        name: ``train`` or ``validation``, the last part of the tag.
        loss_function: the training loss, to evaluate on ``output["pred"]`` and ``output["label"]``; None reads
            ``output["loss"]`` (the trainer).
        global_step_transform: step of an engine epoch (default: ``engine.state.epoch``, which MONAI's evaluators
            set to the trainer's epoch).
        add_to_metrics: also put the mean into ``engine.state.metrics`` under the tag, for handlers that log
            ``state.metrics`` (MONAI's MLFlowHandler); a TensorBoardStatsHandler on the same writer would then log
            the tag twice.
    """

    def __init__(
        self,
        summary_writer: SummaryWriter | None,
        name: str,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        global_step_transform: Callable[[int], int] | None = None,
        add_to_metrics: bool = False,
    ) -> None:
        self.summary_writer = summary_writer
        self.name = name
        self.loss_function = loss_function
        self.global_step_transform = global_step_transform or (lambda epoch: epoch)
        self.add_to_metrics = add_to_metrics
        self.last_value: float | None = None
        self._reset()

    @property
    def tag(self) -> str:
        return f"{EPOCH_LOSS_TAG}/{self.name}"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log)

    def _reset(self) -> None:
        self._sum: torch.Tensor | None = None
        self._count = 0

    def _accumulate(self, engine: Engine) -> None:
        output = engine.state.output
        if self.loss_function is None:
            loss, count = _batch_value(output, CommonKeys.LOSS), 1
        else:
            prediction, label = _batch_value(output, CommonKeys.PRED), _batch_value(output, CommonKeys.LABEL)
            with torch.no_grad():
                loss = self.loss_function(prediction.float(), label)
            count = int(prediction.shape[0])
        value = torch.as_tensor(loss).detach().float() * count
        self._sum = value if self._sum is None else self._sum + value
        self._count += count

    def _log(self, engine: Engine) -> None:
        device = self._sum.device if self._sum is not None else idist.device()
        total = torch.stack([self._sum if self._sum is not None else torch.zeros((), device=device),
                             torch.tensor(float(self._count), device=device)])
        total = cast(torch.Tensor, idist.all_reduce(total))  # ignite's signature: float in, float out
        if total[1] <= 0:
            return
        self.last_value = float(total[0] / total[1])
        if self.add_to_metrics:
            engine.state.metrics[self.tag] = self.last_value
        if self.summary_writer is not None:
            self.summary_writer.add_scalar(self.tag, self.last_value, self.global_step_transform(engine.state.epoch))

    @staticmethod
    def add_layout(summary_writer: SummaryWriter | None) -> None:
        """One chart with both epoch-loss curves in TensorBoard's CUSTOM SCALARS tab."""
        if summary_writer is not None:
            summary_writer.add_custom_scalars({"loss": {"training and validation loss per epoch": [
                "Multiline", [f"{EPOCH_LOSS_TAG}/train", f"{EPOCH_LOSS_TAG}/validation"]]}})


class HistogramLogger:
    """Histograms of the network's parameters (``parameters/<name>``) and gradients (``gradients/<name>``)
    every ``interval`` epochs, with the epoch as step; give it the epoch-step writer.

    It runs at ITERATION_COMPLETED of the epoch's last iteration rather than at EPOCH_COMPLETED: the
    gradients are then those of that iteration's backward pass, whatever EPOCH_COMPLETED handlers
    (validation, schedulers) do before a later handler would see them.

    Args:
        summary_writer: the writer with trainer-epoch steps.
        network: the model (unwrapped from DDP, so names lack ``module.``).
        interval: log every this many epochs.
    """

    def __init__(self, summary_writer: SummaryWriter, network: torch.nn.Module, interval: int = 1) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an integer >= 1, got {interval!r}")
        self.summary_writer = summary_writer
        self.network = network
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._ends_logged_epoch), self)

    def _ends_logged_epoch(self, engine: Engine, iteration: int) -> bool:
        epoch, epoch_length = engine.state.epoch, engine.state.epoch_length
        return epoch_length is not None and iteration == epoch_length * epoch and epoch % self.interval == 0

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        for name, parameter in unwrap_network(self.network).named_parameters():
            self.summary_writer.add_histogram(f"parameters/{name}", parameter.detach(), epoch)
            if parameter.grad is not None:
                self.summary_writer.add_histogram(f"gradients/{name}", parameter.grad.detach(), epoch)


def _batch_value(output: Any, key: str) -> torch.Tensor:
    """``output[key]`` of a batch, also when the engine decollated its output into one dict per sample."""
    if isinstance(output, Mapping):
        return output[key]
    if key == CommonKeys.LOSS:  # every sample's dict carries the batch loss
        return output[0][key]
    return torch.stack([torch.as_tensor(item[key]) for item in output])


class HParamsLogger:
    """The run's hyperparameters and the metrics to judge them by, for TensorBoard's HPARAMS tab.

    At the engine's STARTED event it writes the hparams plugin's experiment and session-start summaries into
    ``summary_writer``'s folder, and a session-end summary at COMPLETED. TensorBoard reads each metric from the
    scalars of that same folder, so give the writer that logs them: the test writer, whose report logs
    ``test/auc`` and the other test scalars.

    Args:
        summary_writer: the writer of the folder holding the metric scalars.
        hyperparameters: name to value; numbers, strings and booleans are kept, anything else (lists, None) is
            shown as text.
        metric_tags: scalar tags of the metrics, e.g. ``["test/auc", "test/balanced_accuracy"]``.
    """

    def __init__(self, summary_writer: SummaryWriter, hyperparameters: Mapping[str, Any],
                 metric_tags: Sequence[str]) -> None:
        if not metric_tags:
            raise ValueError("metric_tags must name at least one scalar, e.g. ['test/auc']")
        self.summary_writer = summary_writer
        self.hyperparameters = {str(key): _hparam_value(value) for key, value in hyperparameters.items()}
        self.metric_tags = list(metric_tags)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self._end)

    def _start(self, engine: Engine) -> None:
        experiment, session_start, _ = hparams(self.hyperparameters, {tag: 0.0 for tag in self.metric_tags})
        file_writer = self.summary_writer._get_file_writer()
        file_writer.add_summary(experiment)
        file_writer.add_summary(session_start)
        file_writer.flush()

    def _end(self, engine: Engine) -> None:
        _, _, session_end = hparams(self.hyperparameters, {tag: 0.0 for tag in self.metric_tags})
        file_writer = self.summary_writer._get_file_writer()
        file_writer.add_summary(session_end)
        file_writer.flush()


def _hparam_value(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
