"""Optimizers and warm-up learning-rate schedules by name, for the bundle configs."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from alz_monai.errors import ConfigError

__all__ = ["OPTIMIZER_NAMES", "SCHEDULER_NAMES", "build_optimizer", "build_scheduler", "WarmupPlateau",
           "scheduler_step_transform"]

OPTIMIZER_NAMES = ("adam", "adamw", "sgd")
SCHEDULER_NAMES = ("cosine", "step", "plateau", "constant")


def build_optimizer(
    name: str,
    params: nn.Module | Iterable[Any],
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> Optimizer:
    """``params`` is a network (all its trainable parameters) or parameter groups (e.g. Mosa's
    ``param_groups`` with a backbone learning-rate multiplier)."""
    if isinstance(params, nn.Module):
        params = [p for p in params.parameters() if p.requires_grad]
    name = name.lower()
    fused: dict[str, Any] = {"fused": True} if torch.cuda.is_available() else {}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    raise ConfigError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZER_NAMES)}")


def build_scheduler(
    name: str,
    optimizer: Optimizer,
    num_epochs: int,
    warmup_epochs: int = 0,
    step_size: int = 10,
    gamma: float = 0.1,
    min_lr_ratio: float = 0.0,
    plateau_patience: int = 5,
    plateau_mode: str = "max",
    restarts: Sequence[int] = (),
) -> LRScheduler | ReduceLROnPlateau:
    """An epoch-level schedule with ``warmup_epochs`` of linear warm-up.

    ``plateau`` is stepped with the validation key metric (``LrScheduleHandler(step_transform=...)``).
    ``restarts`` are epochs (0-based) at which the cosine schedule starts a new cycle at the base learning rate
    (a warm restart, Loshchilov & Hutter 2017, without warm-up), each cycle ending at the next restart or at
    ``num_epochs``. A resumed run that is given more epochs gets one at its resume epoch, so its learning rate
    follows, for epoch ``e`` of the cycle ``[s, t)``: ``lr * (min_lr_ratio + (1 - min_lr_ratio) * (1 +
    cos(pi * (e - s) / (t - s))) / 2)``; it never trains an epoch at learning rate 0. Other schedules ignore it:
    a step or constant schedule simply goes on.
    """
    name = name.lower()
    if name not in SCHEDULER_NAMES:
        raise ConfigError(f"unknown scheduler {name!r}; valid schedulers: {', '.join(SCHEDULER_NAMES)}")
    if warmup_epochs < 0 or (warmup_epochs > 0 and warmup_epochs >= num_epochs):
        raise ConfigError(f"warmup_epochs ({warmup_epochs}) must be >= 0 and below num_epochs ({num_epochs})")
    if name == "plateau":
        return WarmupPlateau(optimizer, warmup_epochs=warmup_epochs, mode=plateau_mode, factor=gamma,
                             patience=plateau_patience)

    bad = [epoch for epoch in restarts if not warmup_epochs < epoch < num_epochs]
    if bad:
        raise ConfigError(f"lr_restarts {bad} must lie after the warm-up ({warmup_epochs}) and before num_epochs "
                          f"({num_epochs})")
    cycle_starts = [warmup_epochs, *sorted(set(restarts))]

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        if name == "cosine":
            start = max(s for s in cycle_starts if s <= epoch)
            end = min([s for s in cycle_starts if s > epoch] + [num_epochs])
            progress = (epoch - start) / max(end - start, 1)
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if name == "step":
            return gamma ** ((epoch - warmup_epochs) // step_size)
        return 1.0

    return LambdaLR(optimizer, factor)


class WarmupPlateau(ReduceLROnPlateau):
    """ReduceLROnPlateau preceded by a linear warm-up, since torch's SequentialLR cannot chain it."""

    def __init__(self, optimizer: Optimizer, warmup_epochs: int = 0, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.warmup_epochs = warmup_epochs
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.warmup_step = 0
        if warmup_epochs > 0:
            self._set_warmup_lr()

    def _set_warmup_lr(self) -> None:
        scale = (self.warmup_step + 1) / (self.warmup_epochs + 1)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * scale

    def step(self, metrics: float, epoch: int | None = None) -> None:  # type: ignore[override]
        if self.warmup_step < self.warmup_epochs:
            self.warmup_step += 1
            self._set_warmup_lr()
            return
        super().step(metrics, epoch)


def scheduler_step_transform(
    scheduler: LRScheduler | ReduceLROnPlateau, evaluator: Any, metric_name: str
) -> Callable[[Any], tuple]:
    """The arguments MONAI's ``LrScheduleHandler`` passes to ``scheduler.step``: the validation key metric
    for a plateau schedule, nothing for the others."""
    if not isinstance(scheduler, ReduceLROnPlateau):
        return lambda engine: ()

    def latest_metric(engine: Any) -> tuple:
        value = evaluator.state.metrics.get(metric_name)
        if value is None:
            raise RuntimeError(f"the plateau scheduler needs validation metric {metric_name!r} every epoch; "
                               "set val_interval: 1 or choose another scheduler")
        return (value,)

    return latest_metric
