"""Entropy-adaptive learning rate: the rate follows how uncertain the network's training predictions are."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, cast

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys, convert_to_tensor

__all__ = ["EntropyAdaptiveLR", "mean_normalised_entropy"]

logger = logging.getLogger(__name__)

MODES = ("linear", "tanh", "sigmoid", "inverse", "pid")


def mean_normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch (and any spatial axes) of the softmax entropy divided by log(classes), in [0, 1].

    Logits are channel-first (B, C, ...); a single channel is read as the logit of a binary sigmoid output.
    The result stays on the logits' device.
    """
    logits = convert_to_tensor(logits, track_meta=False).detach().float()
    if logits.shape[1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    log_probabilities = torch.log_softmax(logits, dim=1)
    entropy = -(log_probabilities.exp() * log_probabilities).sum(dim=1)
    return entropy.mean() / math.log(logits.shape[1])


class EntropyAdaptiveLR:
    """Sets every param group's learning rate from the entropy H of the training predictions.

    H is the mean normalised softmax entropy of the batch (1: uniform, unsure; 0: certain), smoothed by an
    exponential moving average: ``H <- ema * H + (1 - ema) * H_new``. The rate is
    ``clamp(base_lr * warmup * scale(H), min_lr, max_lr)``, where ``base_lr`` is each group's rate when the
    handler is built, ``warmup`` rises linearly from 1/warmup_steps to 1 over the first ``warmup_steps``
    iterations, and ``scale`` by ``mode`` (all rise with H: an unsure network takes larger steps):

    - ``linear``: ``min_scale + (max_scale - min_scale) * H``;
    - ``sigmoid``: ``min_scale + (max_scale - min_scale) * sigmoid(gain * (H - target_entropy))``;
    - ``tanh``: ``min_scale + (max_scale - min_scale) * (1 + tanh(gain * (H - target_entropy))) / 2``, the
      sigmoid curve twice as steep at the same gain;
    - ``inverse``: ``1 / (1 + gain * (1 - H))``, from ``1 / (1 + gain)`` at H = 0 to 1 at H = 1;
    - ``pid``: ``clamp(1 + kp * e + ki * sum(e) + kd * delta(e), min_scale, max_scale)`` with
      ``e = H - target_entropy`` per entropy reading, so the rate grows while the network stays less
      certain than the target and shrinks while it is more certain. Anti-windup: the sum stops growing
      while the output is saturated in the direction of the error. Set ``max_scale > 1`` for it to raise
      the rate above ``base_lr``.

    Reading a GPU value into Python waits for the GPU, so the per-batch entropies accumulate on the device
    and are read (and averaged across distributed ranks) only every ``update_every`` iterations; H, and
    with it the scale, changes at that pace, while the warm-up advances every iteration.

    It runs at MONAI's ``IterationEvents.FORWARD_COMPLETED``, where ``engine.state.output["pred"]`` holds
    the raw logits of the batch (by ITERATION_COMPLETED MONAI may have decollated them and applied the
    trainer's ``postprocessing``, e.g. a softmax), so the rate it sets is used by the same iteration's
    optimizer step. It overwrites the rate each iteration: do not combine it with an LR scheduler.

    Args:
        optimizer: the trainer's optimizer.
        mode: one of "linear", "tanh", "sigmoid", "inverse", "pid".
        ema: smoothing factor in [0, 1); 0 uses each reading as is.
        min_scale: lowest scale of linear/tanh/sigmoid/pid.
        max_scale: highest scale of linear/tanh/sigmoid/pid.
        target_entropy: centre of tanh/sigmoid, set point of pid, in [0, 1].
        gain: steepness of tanh/sigmoid and strength of inverse, > 0.
        kp: pid proportional gain.
        ki: pid integral gain.
        kd: pid derivative gain.
        warmup_steps: iterations of linear warm-up; 0: none.
        min_lr: lowest learning rate after scaling.
        max_lr: highest learning rate after scaling; None: no limit.
        update_every: iterations between entropy readings.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        mode: str = "linear",
        ema: float = 0.9,
        min_scale: float = 0.1,
        max_scale: float = 1.0,
        target_entropy: float = 0.5,
        gain: float = 5.0,
        kp: float = 1.0,
        ki: float = 0.1,
        kd: float = 0.0,
        warmup_steps: int = 0,
        min_lr: float = 0.0,
        max_lr: float | None = None,
        update_every: int = 10,
    ) -> None:
        max_lr = math.inf if max_lr is None else max_lr
        checks = [
            (mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}"),
            (0 <= ema < 1, f"ema must be in [0, 1), got {ema}"),
            (0 <= min_scale <= max_scale, f"need 0 <= min_scale <= max_scale, got {min_scale} and {max_scale}"),
            (0 <= target_entropy <= 1, f"target_entropy must be in [0, 1], got {target_entropy}"),
            (gain > 0, f"gain must be > 0, got {gain}"),
            (min(kp, ki, kd) >= 0, f"kp, ki and kd must be >= 0, got {kp}, {ki}, {kd}"),
            (
                isinstance(warmup_steps, int) and warmup_steps >= 0,
                f"warmup_steps must be an integer >= 0, got {warmup_steps!r}",
            ),
            (0 <= min_lr <= max_lr, f"need 0 <= min_lr <= max_lr, got {min_lr} and {max_lr}"),
            (
                isinstance(update_every, int) and update_every >= 1,
                f"update_every must be an integer >= 1, got {update_every!r}",
            ),
        ]
        problems = [message for valid, message in checks if not valid]
        if problems:
            raise ValueError("EntropyAdaptiveLR: " + "; ".join(problems))
        self.optimizer = optimizer
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.mode = mode
        self.ema = ema
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.target_entropy = target_entropy
        self.gain = gain
        self.kp, self.ki, self.kd = kp, ki, kd
        self.warmup_steps = warmup_steps
        self.min_lr = min_lr
        self.max_lr = max_lr
        self.update_every = update_every
        self.step = 0
        self.smoothed_entropy: float | None = None
        self.scale = 1.0
        self.integral = 0.0
        self.previous_error: float | None = None
        self._window_sum: torch.Tensor | float = 0.0
        self._window_count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = cast(dict[str, Any], engine.state.output)  # ignite annotates State.output as int
        self._window_sum = self._window_sum + mean_normalised_entropy(output[CommonKeys.PRED])
        self._window_count += 1
        self.step += 1
        if self.smoothed_entropy is None or self._window_count >= self.update_every:
            self._read_entropy()
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.learning_rate(base_lr)

    def learning_rate(self, base_lr: float) -> float:
        warmup = min(1.0, self.step / self.warmup_steps) if self.warmup_steps else 1.0
        return min(self.max_lr, max(self.min_lr, base_lr * warmup * self.scale))

    def _read_entropy(self) -> None:
        window_mean = idist.all_reduce(self._window_sum / self._window_count) / idist.get_world_size()
        entropy = float(window_mean)  # the one host-device synchronisation per window
        self._window_sum, self._window_count = 0.0, 0
        previous = self.smoothed_entropy
        smoothed = entropy if previous is None else self.ema * previous + (1 - self.ema) * entropy
        self.smoothed_entropy = smoothed
        self.scale = self._pid_scale(smoothed) if self.mode == "pid" else self._curve_scale(smoothed)
        logger.debug("entropy %.4f, smoothed %.4f: lr scale %.4f", entropy, self.smoothed_entropy, self.scale)

    def _curve_scale(self, entropy: float) -> float:
        span = self.max_scale - self.min_scale
        if self.mode == "linear":
            return self.min_scale + span * entropy
        if self.mode == "sigmoid":
            return self.min_scale + span / (1 + math.exp(-self.gain * (entropy - self.target_entropy)))
        if self.mode == "tanh":
            return self.min_scale + span * (1 + math.tanh(self.gain * (entropy - self.target_entropy))) / 2
        return 1 / (1 + self.gain * (1 - entropy))

    def _pid_scale(self, entropy: float) -> float:
        error = entropy - self.target_entropy
        derivative = 0.0 if self.previous_error is None else error - self.previous_error
        self.previous_error = error
        unclamped = 1 + self.kp * error + self.ki * (self.integral + error) + self.kd * derivative
        saturated = (unclamped > self.max_scale and error > 0) or (unclamped < self.min_scale and error < 0)
        if not saturated:
            self.integral += error
        output = 1 + self.kp * error + self.ki * self.integral + self.kd * derivative
        return min(self.max_scale, max(self.min_scale, output))

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "smoothed_entropy": self.smoothed_entropy,
            "scale": self.scale,
            "integral": self.integral,
            "previous_error": self.previous_error,
            "window_sum": float(self._window_sum),
            "window_count": self._window_count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.smoothed_entropy = state["smoothed_entropy"]
        self.scale = float(state["scale"])
        self.integral = float(state["integral"])
        self.previous_error = state["previous_error"]
        self._window_sum = float(state["window_sum"])
        self._window_count = int(state["window_count"])
