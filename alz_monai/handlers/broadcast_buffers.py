"""Make every rank evaluate the same model: copy rank 0's buffers (BatchNorm statistics) before evaluation."""

from __future__ import annotations

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

__all__ = ["BroadcastBuffers"]


class BroadcastBuffers:
    """DDP averages gradients but each rank updates its own BatchNorm running statistics, so without this
    the ranks would validate slightly different networks, none of them the checkpoint rank 0 saves.
    A no-op in a single process."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_world_size() == 1:
            return
        for buffer in self.network.buffers():
            dist.broadcast(buffer, src=0)
