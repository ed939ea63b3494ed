"""3D classifiers: ResNet3D, Mosa (ResNet3D + multi-scale transformer fusion), and a name-based factory."""

from .factory import NETWORK_NAMES, ViTClassifier, get_network, to_device
from .mosa import Mosa, MosaShared, token_grid_for
from .resnet3d import (
    RESNET_ARCHITECTURES,
    BasicBlock,
    Bottleneck,
    ResNet3D,
    build_resnet3d,
    resnet10_3d,
    resnet18_3d,
    resnet34_3d,
    resnet50_3d,
    resnet101_3d,
)
from .space_to_depth import SpaceToDepthConv3d, space_to_depth_stems
from .weights import LoadReport, initialize_backbone, load_backbone_weights

__all__ = [
    "NETWORK_NAMES",
    "RESNET_ARCHITECTURES",
    "BasicBlock",
    "Bottleneck",
    "LoadReport",
    "Mosa",
    "MosaShared",
    "ResNet3D",
    "SpaceToDepthConv3d",
    "ViTClassifier",
    "build_resnet3d",
    "get_network",
    "initialize_backbone",
    "space_to_depth_stems",
    "load_backbone_weights",
    "resnet10_3d",
    "resnet18_3d",
    "resnet34_3d",
    "resnet50_3d",
    "resnet101_3d",
    "to_device",
    "token_grid_for",
]
