"""TensorBoard handlers MONAI lacks: resume-safe curves, learning rates, weight and gradient histograms.

A run writes two TensorBoard folders: ``<output>/tensorboard/train`` with iteration steps (loss, lr) and
``<output>/tensorboard/val`` with trainer-epoch steps (metrics, figures, histograms). Never mix step
kinds in one writer: :class:`TensorBoardResume` purges by step number.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from ignite.engine import Engine, Events
from tensorboard.compat.proto.event_pb2 import Event, SessionLog

from alz_monai.handlers.checkpoint import unwrap_network

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["HistogramLogger", "LearningRateLogger", "TensorBoardResume"]

logger = logging.getLogger(__name__)

STEP_KINDS = ("iteration", "epoch")


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
    """Logs each optimizer param group's learning rate, as ``tag`` (one group) or ``tag/group<i>``.

    The values are the Python floats of ``param_groups``, so logging costs no device synchronisation.
    Attached after an iteration-level LR scheduler, it logs the rate of the next iteration.

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
            tag = self.tag if len(groups) == 1 else f"{self.tag}/group{index}"
            self.summary_writer.add_scalar(tag, float(group["lr"]), step)


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
        epoch = engine.state.epoch
        return iteration == engine.state.epoch_length * epoch and epoch % self.interval == 0

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        for name, parameter in unwrap_network(self.network).named_parameters():
            self.summary_writer.add_histogram(f"parameters/{name}", parameter.detach(), epoch)
            if parameter.grad is not None:
                self.summary_writer.add_histogram(f"gradients/{name}", parameter.grad.detach(), epoch)
