"""Batched random augmentation that runs where the batch already is (the GPU, when the cache lives there).

MONAI's dictionary transforms draw and apply one sample at a time; at hundreds of 128^3 volumes per second
their per-call overhead, not the arithmetic, becomes the bottleneck. This module draws per-sample
parameters for the whole batch and applies each augmentation in one vectorised call, with the same
intent as the bundle's MONAI list (and the original tool): left-right flip, small affine (rotation and
scale), Gaussian noise, smooth multiplicative bias field and contrast (gamma).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import PrepareBatch
from monai.utils import CommonKeys

__all__ = ["BatchAugmentation", "DeviceBatch"]


class BatchAugmentation(torch.nn.Module):
    """Per-sample random augmentation of a batch ``(B, C, D, H, W)``.

    Each augmentation is applied to a sample with its probability; flips and the affine share one
    ``grid_sample`` call. Random numbers come from ``generator`` (its own state, saved with the run).
    """

    def __init__(
        self,
        flip_prob: float = 0.5,
        affine_prob: float = 0.3,
        rotate_degrees: float = 10.0,
        scale_range: float = 0.1,
        noise_prob: float = 0.3,
        noise_std: float = 0.05,
        bias_prob: float = 0.3,
        bias_coeff: float = 0.1,
        contrast_prob: float = 0.3,
        gamma_range: Sequence[float] = (0.8, 1.2),
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, prob in (("flip_prob", flip_prob), ("affine_prob", affine_prob), ("noise_prob", noise_prob),
                           ("bias_prob", bias_prob), ("contrast_prob", contrast_prob)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {prob}")
        self.flip_prob, self.affine_prob = flip_prob, affine_prob
        self.max_angle, self.scale_range = math.radians(rotate_degrees), scale_range
        self.noise_prob, self.noise_std = noise_prob, noise_std
        self.bias_prob, self.bias_coeff = bias_prob, bias_coeff
        self.contrast_prob, self.gamma_range = contrast_prob, tuple(gamma_range)
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator) * (high - low) + low

    def _affine_matrices(self, batch: int) -> torch.Tensor:
        """Rotation x scale x flip as (B, 3, 4) matrices for ``affine_grid``; identity where not drawn."""
        angles = self._uniform(batch, 3, low=-self.max_angle, high=self.max_angle)
        scales = self._uniform(batch, 3, low=1 - self.scale_range, high=1 + self.scale_range)
        use_affine = self._uniform(batch) < self.affine_prob
        angles = torch.where(use_affine[:, None], angles, torch.zeros_like(angles))
        scales = torch.where(use_affine[:, None], scales, torch.ones_like(scales))
        cos, sin = angles.cos(), angles.sin()
        one, zero = torch.ones(batch), torch.zeros(batch)
        rx = torch.stack([one, zero, zero, zero, cos[:, 0], -sin[:, 0], zero, sin[:, 0], cos[:, 0]], 1).view(-1, 3, 3)
        ry = torch.stack([cos[:, 1], zero, sin[:, 1], zero, one, zero, -sin[:, 1], zero, cos[:, 1]], 1).view(-1, 3, 3)
        rz = torch.stack([cos[:, 2], -sin[:, 2], zero, sin[:, 2], cos[:, 2], zero, zero, zero, one], 1).view(-1, 3, 3)
        flips = torch.where(self._uniform(batch) < self.flip_prob, -1.0, 1.0)
        # affine_grid's last coordinate is the first spatial axis (D): the left-right axis in RAS volumes
        flip = torch.diag_embed(torch.stack([one, one, flips], 1))
        linear = rz @ ry @ rx @ torch.diag_embed(scales) @ flip
        return torch.cat([linear, torch.zeros(batch, 3, 1)], dim=2)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, device = images.shape[0], images.device
        images = images.float()
        theta = self._affine_matrices(batch).to(device, non_blocking=True)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

        if self.bias_prob > 0:
            coarse = self._uniform(batch, 1, 4, 4, 4, low=-1.0, high=1.0).to(device, non_blocking=True)
            field = F.interpolate(coarse, size=images.shape[2:], mode="trilinear", align_corners=True)
            use = (self._uniform(batch) < self.bias_prob).to(device).view(-1, 1, 1, 1, 1)
            images = images * torch.where(use, torch.exp(self.bias_coeff * field), 1.0)
        if self.contrast_prob > 0:
            gamma = self._uniform(batch, low=self.gamma_range[0], high=self.gamma_range[1])
            gamma = torch.where(self._uniform(batch) < self.contrast_prob, gamma, 1.0).to(device).view(-1, 1, 1, 1, 1)
            flat = images.flatten(1)
            low = flat.amin(1).view(-1, 1, 1, 1, 1)
            span = (flat.amax(1).view(-1, 1, 1, 1, 1) - low).clamp_min(1e-6)
            images = ((images - low) / span).pow(gamma) * span + low
        if self.noise_prob > 0:
            use = (self._uniform(batch) < self.noise_prob).to(device).view(-1, 1, 1, 1, 1)
            # a device generator seeded from ours keeps the whole augmentation reproducible from one state
            seed = int(torch.randint(2**62, (1,), generator=self.generator))
            device_generator = torch.Generator(device=device).manual_seed(seed)
            noise = torch.randn(images.shape, device=device, dtype=images.dtype, generator=device_generator)
            images = images + use * self.noise_std * noise
        return images

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Any:  # type: ignore[override]
        self.generator.set_state(state["generator"])


class DeviceBatch(PrepareBatch):
    """The trainer's ``prepare_batch``: moves the batch to the device, then optionally augments it there and
    converts it to ``channels_last_3d`` (the memory layout cuDNN's fastest 3D convolutions want)."""

    def __init__(self, augmentation: BatchAugmentation | None = None, channels_last: bool = False) -> None:
        self.augmentation = augmentation
        self.channels_last = channels_last

    def __call__(self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = batchdata[CommonKeys.IMAGE]
        images = images.as_tensor() if hasattr(images, "as_tensor") else images
        images = images.to(device=device, non_blocking=non_blocking, **kwargs)
        if self.augmentation is not None:
            images = self.augmentation(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        labels = batchdata.get(CommonKeys.LABEL)  # absent at inference
        if labels is not None:
            labels = labels.to(device=device, non_blocking=non_blocking)
        return images, labels
