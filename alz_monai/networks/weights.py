"""Load pretrained weights into a network, tolerating the usual checkpoint layouts and reporting what did not fit.

Handles the original tool's ResNet checkpoints, the stage-1 bundle's ``model_best.pt``, Ignite/MONAI checkpoints
(``{'network': ..., 'optimizer': ...}``), DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes, and
MedicalNet backbones (no ``fc``; their ``conv_seg`` segmentation head is reported as unexpected).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alz_monai.errors import ConfigError

__all__ = ["LoadReport", "initialize_backbone", "load_backbone_weights"]

logger = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "network")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Checkpoints from PyTorch < 0.4.1 (MedicalNet) lack these counters; they only matter for BatchNorm(momentum=None).
IGNORED_MISSING_SUFFIX = "num_batches_tracked"


@dataclass(frozen=True)
class LoadReport:
    """What ``load_backbone_weights`` did.

    ``missing``: model keys absent from the checkpoint (they keep their initialisation). ``unexpected``: checkpoint
    keys the model lacks. ``skipped``: classifier keys not loaded because their shape differs (another
    ``num_classes``) or the model has no classifier.
    """

    source: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    skipped: tuple[str, ...]


def load_backbone_weights(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    strict_classifier: bool = False,
    classifier_prefix: str = "fc.",
) -> LoadReport:
    """Copy every matching tensor of ``source`` into ``model`` and report the rest.

    Args:
        model: network to initialise in place.
        source: checkpoint path or an (optionally wrapped) state dict.
        strict_classifier: raise instead of skipping classifier keys that do not fit.
        classifier_prefix: key prefix of the classification head (``fc.`` for ResNet3D).

    Raises:
        FileNotFoundError: the checkpoint path does not exist.
        ValueError: nothing matches, a non-classifier tensor has another shape, or (with ``strict_classifier``)
            the classifier does not fit.
    """
    source_name, state_dict = _read_state_dict(source)
    model_state = model.state_dict()
    loadable: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    skipped: list[str] = []
    for key, tensor in state_dict.items():
        if key in model_state and model_state[key].shape == tensor.shape:
            loadable[key] = tensor
        elif key.startswith(classifier_prefix):
            skipped.append(key)
        elif key in model_state:
            raise ConfigError(
                f"{source_name}: {key} has shape {tuple(tensor.shape)} but {type(model).__name__} expects "
                f"{tuple(model_state[key].shape)}; the checkpoint belongs to another architecture"
            )
        else:
            unexpected.append(key)
    if not loadable:
        raise ConfigError(
            f"{source_name}: no tensor matches {type(model).__name__} (checkpoint keys start {list(state_dict)[:3]}, "
            f"model keys start {list(model_state)[:3]}); check that it is a checkpoint of this architecture"
        )
    if strict_classifier:
        unloaded = sorted(
            set(skipped) | {key for key in model_state if key.startswith(classifier_prefix) and key not in loadable}
        )
        if unloaded:
            shapes = ", ".join(
                f"{key} {_shape_of(state_dict.get(key))} vs model {_shape_of(model_state.get(key))}" for key in unloaded
            )
            raise ConfigError(
                f"{source_name}: strict_classifier is set but the classifier does not fit: {shapes}; "
                "drop strict_classifier to train a new head"
            )
    model.load_state_dict(loadable, strict=False)

    missing = tuple(key for key in model_state if key not in state_dict and not key.endswith(IGNORED_MISSING_SUFFIX))
    report = LoadReport(source_name, tuple(loadable), missing, tuple(unexpected), tuple(skipped))
    logger.info("%s: loaded %d tensors into %s", source_name, len(loadable), type(model).__name__)
    for label, keys in (
        ("missing keys (they keep their initialisation)", missing),
        ("unexpected keys", unexpected),
        ("classifier keys not loaded (other num_classes, or no classifier in the model)", skipped),
    ):
        if keys:
            logger.warning("%s: %d %s: %s", source_name, len(keys), label, ", ".join(keys))
    return report


def initialize_backbone(network: nn.Module, checkpoint: str | os.PathLike) -> LoadReport:
    """Stage 2's initialiser: a stage-1 model's weights into ``network.backbone`` (unwrapped from DDP).

    Kept out of the network's constructor, so that building the architecture (``verify_net_in_out``,
    ``ckpt_export``, evaluation) never needs the stage-1 file.
    """
    model = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ConfigError(f"{type(model).__name__} has no backbone to initialise from {checkpoint}")
    if not Path(checkpoint).is_file():
        raise ConfigError(f"{checkpoint} does not exist: the stage-1 model (train ad_resnet3d first, pass "
                          "--stage1_model PATH, or --from_scratch true)")
    return load_backbone_weights(backbone, checkpoint)


def _read_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """Return a printable name for ``source`` and its flat, prefix-free state dict."""
    checkpoint: object
    if isinstance(source, Mapping):
        source_name, checkpoint = "state dict", source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"Weights file {path} does not exist; check the backbone_weights path")
        source_name, checkpoint = str(path), torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(checkpoint, Mapping) and not any(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        wrapper = next((key for key in WRAPPER_KEYS if isinstance(checkpoint.get(key), Mapping)), None)
        if wrapper is None:
            break
        checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, Mapping):
        raise ConfigError(f"{source_name}: expected a state dict, got {type(checkpoint).__name__}")
    state_dict: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"{source_name}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a state dict or "
                f"a checkpoint wrapping one under one of {WRAPPER_KEYS}"
            )
        state_dict[_strip_wrapper_prefixes(key)] = value
    return source_name, state_dict


def _shape_of(tensor: torch.Tensor | None) -> str:
    return "absent" if tensor is None else str(tuple(tensor.shape))


def _strip_wrapper_prefixes(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = next(key[len(prefix) :] for prefix in WRAPPER_PREFIXES if key.startswith(prefix))
    return key
