"""Resume a run from its latest full checkpoint through MONAI's CheckpointLoader."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointLoader
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from alz_monai.handlers.checkpoint import RunCheckpointer, trainer_state_entries
from alz_monai.run_dir import RunDirError

__all__ = ["RunResumer"]

logger = logging.getLogger(__name__)


class RunResumer(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that also restores the trainer it is attached to, its AMP scaler and
    the checkpointer's best-metric record: the same entries :class:`RunCheckpointer` saves.

    Those entries cannot be written in the bundle's ``load_dict``: the trainer does not exist yet while its
    own handler list is being built. Attach it first among the trainer's handlers (it loads at STARTED).
    """

    def __init__(self, load_path: str | os.PathLike, load_dict: Mapping[str, Any], checkpointer: RunCheckpointer,
                 map_location: Any = None) -> None:
        super().__init__(load_path=str(load_path), load_dict=dict(load_dict), map_location=map_location)
        self.checkpointer = checkpointer

    def attach(self, engine: Engine) -> None:
        self.load_dict = {**trainer_state_entries(engine), **self.load_dict,
                          RunCheckpointer.SELF_KEY: self.checkpointer}
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except (RuntimeError, KeyError, ValueError) as error:  # a state dict of another network or optimiser
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RunDirError(
                f"{self.load_path} does not fit this run ({reason[:300]}); resume with the settings it was trained "
                "with (its folder's run_config.yaml), or start a new run in a new --output_dir") from error
        for obj in self.load_dict.values():
            if isinstance(obj, LRScheduler):
                _apply_schedule(obj)
        logger.info("resumed from %s at epoch %d, iteration %d", self.load_path, engine.state.epoch,
                    engine.state.iteration)


def _apply_schedule(scheduler: LRScheduler) -> None:
    """Set the optimizer's learning rates to the schedule's value for the epoch about to run.

    The checkpoint's optimizer holds the rates of the schedule it was saved with; a run extended to more epochs
    has a rebuilt schedule (e.g. a cosine warm restart, :func:`alz_monai.optim.build_scheduler`) whose value for
    the next epoch differs, and the scheduler only steps at the end of that epoch.
    """
    if not isinstance(scheduler, LambdaLR):
        return
    for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
