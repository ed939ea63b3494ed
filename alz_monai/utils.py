"""Seeding and small run-wide settings."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from alz_monai.errors import ConfigError

__all__ = ["check_flags", "parse_flag", "seed_everything"]

logger = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; ``deterministic`` also asks for deterministic kernels.

    Unlike ``monai.utils.set_determinism``, a non-deterministic run keeps cuDNN's benchmark mode on:
    picking the fastest 3D convolution algorithm is worth far more than bitwise reproducibility on the GPU.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    logger.info("seed %d, deterministic %s", seed, deterministic)


def parse_flag(name: str, value: object) -> bool:
    """A bundle flag as a bool. ``python -m monai.bundle`` passes ``--amp false`` as the string ``'false'``,
    which Python takes as true, so every boolean knob of the bundles goes through this."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{name} must be true or false, got {value!r}; pass --{name} true or --{name} false")


def check_flags(**flags: object) -> None:
    """Check every boolean knob of a bundle at start-up, before any data is read."""
    for name, value in flags.items():
        parse_flag(name, value)
