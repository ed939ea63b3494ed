"""What the bundles need of distributed training beyond ``ignite.distributed``: joining torchrun's process group
and each rank's share of the records. Every function works unchanged in a single process."""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from typing import Any

import ignite.distributed as idist
import torch
from monai.data import partition_dataset

__all__ = ["init_distributed", "is_main_process", "local_device", "rank_partition"]

logger = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0, or a single process: the one that writes checkpoints, logs and reports."""
    return idist.get_rank() == 0


def local_device() -> torch.device:
    """``cuda:$LOCAL_RANK`` when CUDA is there, else the CPU (a CPU run of the same code path uses gloo); known
    before the process group is joined, so the recipe can place its network."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(timeout_minutes: int = 30) -> torch.device:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs) and return this rank's device."""
    device = local_device()
    if idist.get_world_size() == 1 and "WORLD_SIZE" in os.environ:
        idist.initialize("nccl" if device.type == "cuda" else "gloo",
                         timeout=datetime.timedelta(minutes=timeout_minutes))
    logger.info("rank %d of %d on %s", idist.get_rank(), idist.get_world_size(), device)
    return device


def rank_partition(records: Sequence[dict[str, Any]], seed: int = 0, even_divisible: bool = True) -> list[Any]:
    """This rank's share of the records, so each rank caches only its own part of the data.

    Training partitions are even (every rank runs the same number of steps: DDP needs that); evaluation
    partitions are not (no scan counted twice), and the report handler gathers them all.
    """
    if idist.get_world_size() == 1:
        return list(records)
    parts = partition_dataset(list(records), num_partitions=idist.get_world_size(), shuffle=True, seed=seed,
                              even_divisible=even_divisible)
    return parts[idist.get_rank()]
