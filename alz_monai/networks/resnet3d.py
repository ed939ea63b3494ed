"""3D ResNet for whole-brain classification, with torchvision's attribute names.

The names (``conv1, bn1, layer1.0.conv1, ..., fc``) match the original tool's and MedicalNet's checkpoints, so
their state dicts load without renaming. Unlike MONAI's ``ResNet`` (stride-1 stem by default) the stem downsamples
by 4 (7^3 stride-2 convolution, then a stride-2 max pool), which keeps full-brain volumes affordable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from alz_monai.errors import ConfigError

__all__ = [
    "RESNET_ARCHITECTURES",
    "BasicBlock",
    "Bottleneck",
    "ResNet3D",
    "StemMaxPool3d",
    "build_resnet3d",
    "resnet10_3d",
    "resnet18_3d",
    "resnet34_3d",
    "resnet50_3d",
    "resnet101_3d",
]

STEM_CHANNELS = 64
STAGE_PLANES = (64, 128, 256, 512)


def _conv3x3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


@torch.compiler.disable
def _aten_max_pool3d(x: torch.Tensor, kernel_size: int, stride: int, padding: int) -> torch.Tensor:
    return F.max_pool3d(x, kernel_size, stride, padding)


class StemMaxPool3d(nn.MaxPool3d):
    """The stem's max-pool, left to ATen's kernel when the network is compiled (a graph break).

    Inductor's own max-pool over the channels-last stem output took 7.2 ms forward + backward where ATen's took
    3.1 ms, and the compiled ResNet18-3D step 18.5 ms instead of 15.9 ms (H200, bf16, batch 16, 128^3,
    ``benchmarks/stem_variants.py``). Eager and TorchScript run ``nn.MaxPool3d`` unchanged; no parameters.
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.max_pool3d(x, self.kernel_size, self.stride, self.padding)
        return _aten_max_pool3d(x, self.kernel_size, self.stride, self.padding)


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with an identity (or projected) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1x1 reduce, 3x3x3 (strided), 1x1x1 expand by 4: cheaper than BasicBlock at high channel counts."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3x3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = _conv1x1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet3D(nn.Module):
    """3D ResNet classifier that also exposes its 5-level feature pyramid (see ``forward_features``).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in each of the 4 stages.
        in_channels: input image channels.
        num_classes: output logits; 0 gives a headless backbone whose ``forward`` returns pooled features.
        zero_init_residual: start every residual branch at zero (each block begins as identity), which often
            helps training from scratch.
        dropout: dropout probability applied to the pooled features before ``fc``.
    """

    #: Downsampling factor of each ``forward_features`` map relative to the input.
    feature_downsampling: tuple[int, ...] = (4, 4, 8, 16, 32)
    # Construction-time helpers that TorchScript need not compile.
    __jit_unused_properties__ = ["feature_channels", "num_features"]

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        in_channels: int = 1,
        num_classes: int = 2,
        zero_init_residual: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != len(STAGE_PLANES):
            raise ConfigError(f"ResNet3D needs {len(STAGE_PLANES)} stage depths, got layers={list(layers)}")
        self.block_expansion = block.expansion
        self.conv1 = nn.Conv3d(in_channels, STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = StemMaxPool3d()
        stage_in = STEM_CHANNELS
        self.layer1, stage_in = self._make_stage(block, stage_in, STAGE_PLANES[0], layers[0], stride=1)
        self.layer2, stage_in = self._make_stage(block, stage_in, STAGE_PLANES[1], layers[1], stride=2)
        self.layer3, stage_in = self._make_stage(block, stage_in, STAGE_PLANES[2], layers[2], stride=2)
        self.layer4, stage_in = self._make_stage(block, stage_in, STAGE_PLANES[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.reset_classifier(num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    @staticmethod
    def _make_stage(
        block: type[BasicBlock] | type[Bottleneck], in_channels: int, planes: int, num_blocks: int, stride: int
    ) -> tuple[nn.Sequential, int]:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(_conv1x1x1(in_channels, out_channels, stride), nn.BatchNorm3d(out_channels))
        blocks = [block(in_channels, planes, stride, downsample)]
        blocks += [block(out_channels, planes) for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks), out_channels

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of each ``forward_features`` map (ResNet18: 64/64/128/256/512, ResNet50: 64/256/.../2048)."""
        return (STEM_CHANNELS, *(planes * self.block_expansion for planes in STAGE_PLANES))

    @property
    def num_features(self) -> int:
        """Width of the pooled feature vector that ``fc`` classifies."""
        return STAGE_PLANES[-1] * self.block_expansion

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a freshly initialised one (``num_classes=0`` removes it)."""
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Maps after stem+maxpool, layer1, layer2, layer3 and layer4 (downsampled 4, 4, 8, 16, 32 times)."""
        stem = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        level1 = self.layer1(stem)
        level2 = self.layer2(level1)
        level3 = self.layer3(level2)
        level4 = self.layer4(level3)
        return [stem, level1, level2, level3, level4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deepest = self.forward_features(x)[-1]
        pooled = torch.flatten(self.avgpool(deepest), 1)
        return self.fc(self.dropout(pooled))


#: Block type and stage depths of each supported depth.
RESNET_ARCHITECTURES: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet10": (BasicBlock, (1, 1, 1, 1)),
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def build_resnet3d(name: str, **kwargs) -> ResNet3D:
    """Build a ResNet3D by depth name (``"resnet18"``); kwargs go to ``ResNet3D``."""
    if name not in RESNET_ARCHITECTURES:
        raise ConfigError(f"Unknown ResNet3D {name!r}; valid names: {', '.join(RESNET_ARCHITECTURES)}")
    block, layers = RESNET_ARCHITECTURES[name]
    return ResNet3D(block, layers, **kwargs)


def resnet10_3d(**kwargs) -> ResNet3D:
    return build_resnet3d("resnet10", **kwargs)


def resnet18_3d(**kwargs) -> ResNet3D:
    return build_resnet3d("resnet18", **kwargs)


def resnet34_3d(**kwargs) -> ResNet3D:
    return build_resnet3d("resnet34", **kwargs)


def resnet50_3d(**kwargs) -> ResNet3D:
    return build_resnet3d("resnet50", **kwargs)


def resnet101_3d(**kwargs) -> ResNet3D:
    return build_resnet3d("resnet101", **kwargs)
