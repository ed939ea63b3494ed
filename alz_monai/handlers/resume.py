"""Resume a run from its latest full checkpoint through MONAI's CheckpointLoader."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from alz_monai.handlers.checkpoint import RunCheckpointer, trainer_state_entries

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
        super().__call__(engine)
        logger.info("resumed from %s at epoch %d, iteration %d", self.load_path, engine.state.epoch,
                    engine.state.iteration)
