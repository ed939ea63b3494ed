"""Seeding and small run-wide settings."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

__all__ = ["seed_everything"]

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
