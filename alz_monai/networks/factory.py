"""Build any supported classifier by name, so configs and the CLI share one switch."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from monai.networks.nets import DenseNet121, ViT
from torch import nn

from alz_monai.errors import ConfigError

from .mosa import Mosa, MosaShared
from .resnet3d import RESNET_ARCHITECTURES, build_resnet3d
from .space_to_depth import space_to_depth_stems

__all__ = ["NETWORK_NAMES", "STEM_MODES", "ViTClassifier", "get_network", "to_device"]

logger = logging.getLogger(__name__)


class ViTClassifier(nn.Module):
    """MONAI's 3D ViT returning logits only (MONAI returns ``(logits, hidden_states)``).

    The head has no Tanh (MONAI's default ``post_activation``), which would squash logits into [-1, 1].
    """

    def __init__(
        self, in_channels: int, num_classes: int, spatial_size: Sequence[int], patch_size: int = 16, **vit_options
    ) -> None:
        super().__init__()
        if any(size % patch_size for size in spatial_size):
            suggestion = tuple(max(patch_size, round(size / patch_size) * patch_size) for size in spatial_size)
            raise ConfigError(
                f"ViT needs every spatial dimension divisible by patch_size={patch_size}, got {tuple(spatial_size)}; "
                f"resize the images to e.g. {suggestion}"
            )
        self.vit = ViT(
            in_channels=in_channels,
            img_size=tuple(spatial_size),
            patch_size=patch_size,
            classification=True,
            num_classes=num_classes,
            post_activation=None,
            **vit_options,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)[0]


def _require_spatial_size(name: str, spatial_size: Sequence[int] | None) -> Sequence[int]:
    if spatial_size is None:
        raise ConfigError(f"Network {name!r} needs spatial_size, the (D, H, W) input size, e.g. (96, 112, 96)")
    return spatial_size


def _build_resnet(name: str) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, spatial_size: Sequence[int] | None, **options) -> nn.Module:
        return build_resnet3d(name, in_channels=in_channels, num_classes=num_classes, **options)

    return build


def _build_mosa(name: str, mosa_class: type[Mosa] | type[MosaShared]) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, spatial_size: Sequence[int] | None, **options) -> nn.Module:
        return mosa_class(
            _require_spatial_size(name, spatial_size), in_channels=in_channels, num_classes=num_classes, **options
        )

    return build


def _build_densenet121(
    in_channels: int, num_classes: int, spatial_size: Sequence[int] | None, **options
) -> nn.Module:
    return DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, **options)


def _build_vit(in_channels: int, num_classes: int, spatial_size: Sequence[int] | None, **options) -> nn.Module:
    return ViTClassifier(in_channels, num_classes, _require_spatial_size("vit", spatial_size), **options)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    **{name: _build_resnet(name) for name in RESNET_ARCHITECTURES},
    "mosa": _build_mosa("mosa", Mosa),
    "mosa_shared": _build_mosa("mosa_shared", MosaShared),
    "densenet121": _build_densenet121,
    "vit": _build_vit,
}

#: Names accepted by ``get_network``.
NETWORK_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def get_network(
    name: str, *, in_channels: int = 1, num_classes: int = 2, spatial_size: Sequence[int] | None = None, **options
) -> nn.Module:
    """Build network ``name`` (one of ``NETWORK_NAMES``).

    ``spatial_size`` is required by ``mosa``, ``mosa_shared`` and ``vit`` and ignored by the others, so one config
    can pass it to every network. Other ``options`` go to the network's constructor (e.g. ``dropout`` for ResNets,
    ``embed_dim`` or ``backbone_weights`` for Mosa, ``dropout_prob`` for DenseNet121, ``hidden_size`` for ViT).
    """
    builder = _BUILDERS.get(name.lower())
    if builder is None:
        raise ConfigError(f"Unknown network {name!r}; valid names: {', '.join(NETWORK_NAMES)}")
    return builder(in_channels=in_channels, num_classes=num_classes, spatial_size=spatial_size, **options)


STEM_MODES = ("auto", "space_to_depth", "direct")


def to_device(
    network: nn.Module, device: torch.device | str, channels_last: bool = False, space_to_depth: bool | None = None,
    stem: str = "auto",
) -> nn.Module:
    """Move a network to ``device``; ``channels_last`` stores its 3D convolution weights channels-last.

    Only the 5D weights change layout (``Module.to(memory_format=...)`` refuses modules that also hold
    4D parameters, such as Mosa's positional embeddings); cuDNN then picks its channels-last kernels.
    ``space_to_depth`` computes the strided one-channel stem by space-to-depth (``space_to_depth_stems``: same
    parameters, checkpoints and results); ``None`` takes the faster way on the device: space-to-depth on CUDA,
    where cuDNN has no tensor-core kernel for the direct stem, the direct convolution on the CPU, where oneDNN's is
    faster (``benchmarks/stem_layout.py``). ``stem`` says the same as a recipe knob: ``auto`` (that choice),
    ``space_to_depth`` or ``direct``; ``space_to_depth``, when given, wins.
    """
    if stem not in STEM_MODES:
        raise ConfigError(f"stem must be one of {', '.join(STEM_MODES)}, got {stem!r}")
    if space_to_depth is None and stem != "auto":
        space_to_depth = stem == "space_to_depth"
    network = network.to(device)
    if channels_last:
        for module in network.modules():
            if isinstance(module, nn.Conv3d):
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
    if space_to_depth is None:
        space_to_depth = torch.device(device).type == "cuda"
    if space_to_depth:
        converted = space_to_depth_stems(network)
        logger.debug("Stem convolutions computed by space-to-depth: %s", converted)
    return network
