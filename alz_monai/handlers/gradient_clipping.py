"""Gradient-norm clipping between backward and the optimizer step of MONAI's SupervisedTrainer."""

from __future__ import annotations

import torch
from monai.engines import IterationEvents, SupervisedTrainer

__all__ = ["GradientClipping"]


class GradientClipping:
    """Clips the global gradient norm at ``max_norm`` on ``BACKWARD_COMPLETED``.

    Under AMP the gradients are unscaled first so the threshold means the same with and without it.
    The norm stays on the device: no host synchronisation per step.
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        if max_norm <= 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}")
        self.max_norm = max_norm
        self.norm_type = norm_type

    def attach(self, engine: SupervisedTrainer) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: SupervisedTrainer) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        params = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type, foreach=True)
