"""Turn off AMP loss scaling when autocast runs in bfloat16."""

from __future__ import annotations

import logging

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

__all__ = ["SkipBFloat16LossScaling"]

logger = logging.getLogger(__name__)


class SkipBFloat16LossScaling:
    """MONAI's trainer builds a ``GradScaler`` whenever ``amp`` is on. bfloat16 has float32's exponent range,
    so scaling the loss buys nothing, and ``GradScaler.step`` reads its found-inf flag on the host: one
    device synchronisation per step. At STARTED (after ``Trainer.run`` made the scaler) this swaps in a
    disabled scaler, which passes ``scale``/``step``/``update`` straight through; autocast stays on.
    """

    def attach(self, engine: SupervisedTrainer) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: SupervisedTrainer) -> None:
        amp_dtype = (getattr(engine, "amp_kwargs", None) or {}).get("dtype")
        if getattr(engine, "amp", False) and amp_dtype == torch.bfloat16:
            # MONAI infers the attribute as the deprecated torch.cuda.amp.GradScaler, which torch.amp's replaces
            engine.scaler = torch.amp.GradScaler("cuda", enabled=False)  # type: ignore[assignment]
            logger.info("bfloat16 autocast: loss scaling off")
