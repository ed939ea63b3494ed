"""Classification losses by name, all taking logits (B, C) and integer labels (B,)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import FocalLoss
from torch import nn

from alz_monai.errors import ConfigError

__all__ = ["LOSS_NAMES", "build_loss", "ClassificationFocalLoss"]

LOSS_NAMES = ("cross_entropy", "focal")


class ClassificationFocalLoss(nn.Module):
    """MONAI's softmax focal loss with integer labels, as the original tool's focal loss took them.

    ``alpha`` is a scalar (weight of the positive classes, binary convention) or one weight per class.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None) -> None:
        super().__init__()
        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma, alpha=alpha)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.focal(logits.float(), labels.reshape(-1, 1).long())


def build_loss(
    name: str = "cross_entropy",
    label_smoothing: float = 0.0,
    class_weights: Sequence[float] | torch.Tensor | None = None,
    focal_gamma: float = 2.0,
    focal_alpha: float | Sequence[float] | None = None,
) -> nn.Module:
    """The loss named in the bundle config; unknown names list the valid ones."""
    if name == "cross_entropy":
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if name == "focal":
        if class_weights is not None and focal_alpha is None:
            focal_alpha = [float(w) for w in torch.as_tensor(class_weights)]
        return ClassificationFocalLoss(gamma=focal_gamma, alpha=focal_alpha)
    raise ConfigError(f"unknown loss {name!r}; valid losses: {', '.join(LOSS_NAMES)}")
