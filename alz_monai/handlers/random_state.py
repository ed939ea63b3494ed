"""Every random-number stream of a run as checkpointable state, so a resumed run draws what the
uninterrupted run would have drawn."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable, Transform

__all__ = ["RandomStateRecorder", "find_random_states"]

logger = logging.getLogger(__name__)


def find_random_states(transforms: Any) -> list[np.random.RandomState]:
    """The ``R`` of every MONAI ``Randomizable`` in ``transforms``, searched recursively.

    The search goes through lists, tuples, dicts and the attributes of MONAI transforms, because
    dictionary transforms draw from inner array transforms (``RandGaussianNoised.rand_gaussian_noise``)
    and composes nest (``Compose.transforms``, ``OneOf``). Order is the pipeline's construction order;
    a RandomState shared by several transforms is listed once.
    """
    states: dict[int, np.random.RandomState] = {}
    visited: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in visited:
            return
        visited.add(id(obj))
        if isinstance(obj, Randomizable):
            states.setdefault(id(obj.R), obj.R)
        if isinstance(obj, (list, tuple)):
            children: Iterable[Any] = obj
        elif isinstance(obj, dict):
            children = obj.values()
        elif isinstance(obj, (Randomizable, Transform)):
            children = vars(obj).values()
        else:
            return
        for child in children:
            visit(child)

    visit(transforms)
    return list(states.values())


def _mt19937_to_plain(state: tuple) -> dict[str, Any]:
    """numpy's ('MT19937', keys, pos, has_gauss, cached_gaussian) with the uint32 keys as an int64 tensor."""
    _, keys, pos, has_gauss, cached_gaussian = state
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _mt19937_from_plain(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    return ("MT19937", keys, state["pos"], state["has_gauss"], state["cached_gaussian"])


class RandomStateRecorder:
    """Captures and restores the torch CPU, CUDA, numpy-global and Python ``random`` generators, each MONAI
    random transform's ``R`` in ``transforms`` and each torch.Generator in ``generators`` (e.g. a sampler's).

    Put it in the checkpointer's ``save_dict`` and the loader's ``load_dict``. Its state is tensors, ints,
    floats and lists only, so ``torch.load(weights_only=True)`` reads it.

    Transforms running in DataLoader worker processes draw from per-worker seeds that the DataLoader
    derives from the torch CPU generator, so restoring that generator covers them; ``R`` matters for
    transforms run in the main process (``ThreadDataLoader``, ``num_workers=0``).

    Args:
        transforms: a MONAI Compose, a transform, or a list of them; None: no transform streams.
        generators: torch generators to capture as well, or objects that draw from one (their ``generator``
            attribute: a sampler, the batch augmentation); None entries (a component the recipe disabled) are skipped.
    """

    def __init__(self, transforms: Any = None, generators: Iterable[Any] = ()) -> None:
        self.transform_states = find_random_states(transforms) if transforms is not None else []
        self.generators = [getattr(g, "generator", g) for g in generators if g is not None]
        not_generators = [type(g).__name__ for g in self.generators if not isinstance(g, torch.Generator)]
        if not_generators:
            raise TypeError(f"generators must be torch.Generator objects, got {not_generators}")

    def state_dict(self) -> dict[str, Any]:
        python_version, python_internal, python_gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # numpy's stub types get_state() as a dict: it is the legacy tuple unless legacy=False
            "numpy": _mt19937_to_plain(np.random.get_state()),  # type: ignore[arg-type]
            "python": {
                "version": python_version,
                "internal": torch.tensor(python_internal, dtype=torch.int64),
                "gauss_next": python_gauss_next,
            },
            "transforms": [_mt19937_to_plain(state.get_state())  # type: ignore[arg-type]  # as numpy's above
                           for state in self.transform_states],
            "generators": [generator.get_state() for generator in self.generators],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, current in (("transforms", self.transform_states), ("generators", self.generators)):
            if len(state[key]) != len(current):
                raise ValueError(
                    f"the checkpoint holds {len(state[key])} random {key} but this run has {len(current)}: "
                    "the pipeline changed since the checkpoint was saved; resume with the same configuration"
                )
        # .cpu(): a loader's map_location may have moved these tensors to a GPU
        torch.set_rng_state(state["torch"].cpu())
        self._load_cuda(state["cuda"])
        np.random.set_state(_mt19937_from_plain(state["numpy"]))
        python = state["python"]
        random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
        for random_state, saved in zip(self.transform_states, state["transforms"]):
            random_state.set_state(_mt19937_from_plain(saved))
        for generator, saved in zip(self.generators, state["generators"]):
            generator.set_state(saved.cpu())

    @staticmethod
    def _load_cuda(saved: list[torch.Tensor]) -> None:
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if len(saved) != available:
            logger.warning(
                "the checkpoint holds %d CUDA generator states but %d GPUs are visible: restoring the first %d",
                len(saved),
                available,
                min(len(saved), available),
            )
        for device, device_state in enumerate(saved[:available]):
            torch.cuda.set_rng_state(device_state.cpu(), device)
