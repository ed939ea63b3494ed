"""Atomic, resumable checkpoints of a training run, plus the best model by the evaluator's key metric."""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from alz_monai.fileio import atomic_torch_save, atomic_write_json
from alz_monai.handlers.events import RunEvents, register_run_events
from alz_monai.layout import (
    BEST_METRIC_NAME,
    BEST_MODEL_NAME,
    FINAL_CHECKPOINT_NAME,
    LATEST_CHECKPOINT_NAME,
    epoch_checkpoint_name,
)

__all__ = ["GradScalerState", "RunCheckpointer", "trainer_state_entries", "unwrap_network"]

logger = logging.getLogger(__name__)

KEY_METRIC_MODES = ("max", "min")


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DataParallel/DistributedDataParallel wrapper, so saved keys lack ``module.``."""
    if isinstance(network, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return network.module
    return network


def _snapshot_state(value: Any) -> Any:
    """A copy of a state dict that later training steps cannot change: tensors copied to host memory, every
    container rebuilt (optimizer state dicts share their tensors and per-parameter dicts with the optimizer).

    CUDA tensors go to pinned buffers (PyTorch's host allocator reuses them epoch after epoch) through
    non-blocking copies, followed by one synchronisation, so the copy costs a fraction of a serialised write.
    """
    cuda_devices: set[torch.device] = set()
    copied = _copy_to_host(value, cuda_devices)
    for device in cuda_devices:
        torch.cuda.synchronize(device)
    return copied


def _copy_to_host(value: Any, cuda_devices: set[torch.device]) -> Any:
    if isinstance(value, torch.Tensor):
        if value.device.type == "cuda":
            cuda_devices.add(value.device)
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            return host.copy_(value.detach(), non_blocking=True)
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        mapping_type: Any = type(value)  # a concrete mapping (dict, OrderedDict) built from its pairs
        copied = mapping_type((key, _copy_to_host(item, cuda_devices)) for key, item in value.items())
        if hasattr(value, "_metadata"):  # module state dicts carry per-module versions that loading relies on
            copied._metadata = copy.deepcopy(value._metadata)
        return copied
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_copy_to_host(item, cuda_devices) for item in value)
    return copy.deepcopy(value)


def _to_plain(value: Any) -> Any:
    """Tensors and numpy values as Python numbers/lists, so the record is weights_only- and JSON-safe."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(key): _to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(item) for item in value]
    return value


class GradScalerState:
    """Checkpoint entry for a MONAI trainer's AMP GradScaler (loss scale and growth tracker).

    MONAI's ``Trainer.run()`` builds a new GradScaler each time it is called, after the save and load
    dicts were built, so ``trainer.scaler`` cannot go into them directly: this looks the scaler up at save
    and load time (``CheckpointLoader`` loads at STARTED, after ``run()`` has built it). Without AMP, or
    from a checkpoint saved without it, there is nothing to save or restore.
    """

    def __init__(self, trainer: Engine) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        scaler = getattr(self.trainer, "scaler", None)
        return scaler.state_dict() if scaler is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        scaler = getattr(self.trainer, "scaler", None)
        if state and scaler is not None:
            scaler.load_state_dict(dict(state))


def trainer_state_entries(trainer: Engine) -> dict[str, Any]:
    """Checkpoint entries that belong to the trainer itself: its counters and its AMP scaler."""
    return {"trainer": trainer, "scaler": GradScalerState(trainer)}


class RunCheckpointer:
    """Saves the run so that a kill at any moment loses at most one epoch (two with ``background``), and never
    leaves a half-written file under a final name.

    Files, all written atomically (temporary file, fsync, rename) into ``save_dir``:

    - ``checkpoint_latest.pt`` after every trainer epoch, ``checkpoint_epoch=<N>.pt`` every ``save_freq``
      epochs and ``checkpoint_final.pt`` when training completes: ``{key: obj.state_dict()}`` for every
      object of ``save_dict`` plus this checkpointer under ``"checkpointer"`` (its best-metric record), the
      layout ``monai.handlers.CheckpointLoader`` reads back; give it a ``load_dict`` with the same keys;
    - ``model_best.pt`` (the network's plain state_dict) and ``best_metric.json`` whenever the evaluator's
      key metric improves. A NaN or infinite value never counts as an improvement.

    Order matters: attach it to the trainer after ``ValidationHandler``, so that ``checkpoint_latest.pt``
    of an epoch already holds that epoch's best-metric record; and after any handler that fills the
    evaluator's ``state.metrics`` at its EPOCH_COMPLETED (MONAI evaluators' own metrics always are).

    Args:
        save_dir: folder of the checkpoints, normally ``<output>/checkpoints``.
        save_dict: objects with ``state_dict()`` to save, e.g. network, optimizer, lr_scheduler, trainer,
            scaler, random-state recorder. Everything must save as plain tensors/numbers/strings, since
            resuming loads with ``torch.load(weights_only=True)``.
        network: the model whose weights go to ``model_best.pt`` (unwrapped from DDP).
        evaluator: engine whose ``state.metrics[key_metric_name]`` decides the best model; None: no best.
        key_metric_name: metric deciding the best model.
        key_metric_mode: "max" when higher is better, "min" when lower is.
        save_freq: also keep ``checkpoint_epoch=<N>.pt`` every this many epochs; 0: never.
        background: write the per-epoch checkpoints in a background thread from a host copy of the state
            taken at the end of the epoch, so training goes on while the file is serialised and fsync'd. On
            short epochs (small datasets, fast GPUs) the full-state write is otherwise as long as the epoch.
            The trade-off: a kill while the write is still running loses that epoch too (the previous
            checkpoint stays whole). The next save, and the end of training, wait for the write and raise
            its error, if any. The final and best-model files are always written before training ends.
        enabled: False makes :meth:`attach` do nothing (e.g. on ranks other than 0).
    """

    SELF_KEY = "checkpointer"

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        network: torch.nn.Module,
        evaluator: Engine | None = None,
        key_metric_name: str = "auc",
        key_metric_mode: str = "max",
        save_freq: int = 0,
        background: bool = False,
        enabled: bool = True,
    ) -> None:
        if key_metric_mode not in KEY_METRIC_MODES:
            raise ValueError(f"key_metric_mode must be one of {KEY_METRIC_MODES}, got {key_metric_mode!r}")
        if not isinstance(save_freq, int) or save_freq < 0:
            raise ValueError(f"save_freq must be an integer >= 0 (0 = no per-epoch copies), got {save_freq!r}")
        if not save_dict:
            raise ValueError("save_dict is empty: give the objects to checkpoint (network, optimizer, trainer, ...)")
        missing = [key for key, obj in save_dict.items() if not hasattr(obj, "state_dict")]
        if missing:
            raise TypeError(f"save_dict entries {missing} have no state_dict() method and cannot be checkpointed")
        if save_dict.get(self.SELF_KEY, self) is not self:
            raise ValueError(f"save_dict key {self.SELF_KEY!r} is reserved for the RunCheckpointer itself")
        self.save_dir = Path(save_dir)
        self.save_dict = {**save_dict, self.SELF_KEY: self}
        self.network = network
        self.evaluator = evaluator
        self.key_metric_name = key_metric_name
        self.key_metric_mode = key_metric_mode
        self.save_freq = save_freq
        self.background = background
        self.enabled = enabled
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, Any] = {}

    def attach(self, trainer: Engine) -> None:
        """Also adds the trainer (epoch, iteration) and its AMP scaler to the saved state: the trainer cannot
        be named in a bundle's ``save_dict`` since this handler is one of the trainer's own handlers."""
        if not self.enabled:
            return
        self.save_dict = {**trainer_state_entries(trainer), **self.save_dict}
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._save_epoch)
        trainer.add_event_handler(Events.COMPLETED, self._save_final)
        if self.evaluator is not None:
            register_run_events(self.evaluator)
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._update_best, trainer)

    def state_dict(self) -> dict[str, Any]:
        return {
            "key_metric_name": self.key_metric_name,
            "key_metric_mode": self.key_metric_mode,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (state["key_metric_name"], state["key_metric_mode"]) != (self.key_metric_name, self.key_metric_mode):
            logger.warning(
                "the checkpoint ranked models by %s (%s) but this run ranks them by %s (%s): "
                "starting a new best-model record",
                state["key_metric_name"],
                state["key_metric_mode"],
                self.key_metric_name,
                self.key_metric_mode,
            )
            return
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.best_metrics = dict(state["best_metrics"])

    def _full_state(self) -> dict[str, Any]:
        return {
            key: unwrap_network(obj).state_dict() if isinstance(obj, torch.nn.Module) else obj.state_dict()
            for key, obj in self.save_dict.items()
        }

    def _save_epoch(self, trainer: Engine) -> None:
        paths = [self.save_dir / LATEST_CHECKPOINT_NAME]
        epoch = trainer.state.epoch
        if self.save_freq and epoch % self.save_freq == 0:
            paths.append(self.save_dir / epoch_checkpoint_name(epoch))
        self.wait_for_writes()
        if not self.background:
            self._write(self._full_state(), paths)
            return
        self._writer = threading.Thread(
            target=self._write_recording_error, args=(_snapshot_state(self._full_state()), paths),
            name="checkpoint-writer",
        )  # not a daemon: an interpreter exiting on an error still finishes the file
        self._writer.start()

    @staticmethod
    def _write(state: Mapping[str, Any], paths: list[Path]) -> None:
        for path in paths:
            atomic_torch_save(state, path)

    def _write_recording_error(self, state: Mapping[str, Any], paths: list[Path]) -> None:
        try:
            self._write(state, paths)
        except BaseException as error:  # logged now, raised in the training thread by its next wait_for_writes
            logger.error("writing a checkpoint into %s failed: %s", self.save_dir, error)
            self._writer_error = error

    def wait_for_writes(self) -> None:
        """Wait for a background checkpoint write; raise its error here, in the training thread."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._writer_error is not None:
            error, self._writer_error = self._writer_error, None
            raise RuntimeError(f"writing a checkpoint into {self.save_dir} failed: {error}") from error

    def _save_final(self, trainer: Engine) -> None:
        self.wait_for_writes()
        atomic_torch_save(self._full_state(), self.save_dir / FINAL_CHECKPOINT_NAME)
        logger.info("saved the final checkpoint to %s", self.save_dir / FINAL_CHECKPOINT_NAME)

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.key_metric_mode == "max" else value < self.best_value

    def _update_best(self, evaluator: Engine, trainer: Engine) -> None:
        metrics = evaluator.state.metrics
        if self.key_metric_name not in metrics:
            raise KeyError(
                f"the evaluator's metrics {sorted(metrics)} lack the key metric {self.key_metric_name!r}; "
                "set key_metric_name to one of them"
            )
        value = float(metrics[self.key_metric_name])
        if not self._improves(value):
            return
        epoch = trainer.state.epoch
        self.best_value, self.best_epoch, self.best_metrics = value, epoch, _to_plain(metrics)
        atomic_torch_save(unwrap_network(self.network).state_dict(), self.save_dir / BEST_MODEL_NAME)
        atomic_write_json(
            self.save_dir / BEST_METRIC_NAME,
            {"metric": self.key_metric_name, "value": value, "epoch": epoch, "metrics": self.best_metrics},
            default=str,
        )
        logger.info("best %s %.4f at epoch %d: saved %s", self.key_metric_name, value, epoch, BEST_MODEL_NAME)
        evaluator.fire_event(RunEvents.BEST_METRIC_IMPROVED)
