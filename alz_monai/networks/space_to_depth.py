"""Strided convolutions with few input channels (the stem on T1 scans) computed by space-to-depth.

A profile on an H200 (ResNet18-3D, 128^3, batch 16, bf16, channels_last_3d) found one cuDNN fallback kernel,
``implicit_convolveNd_sgemm``, taking 13 of the 42 ms of a training step: the one-channel, 7^3, stride-2 stem has
no tensor-core kernel. Rearranging each s^3 block of the input into channels turns it into a stride-1
convolution with s^3 times the input channels and a ceil(k/s)^3 kernel whose weight is the original one,
zero-padded and rearranged: the same sums on shapes cuDNN handles well, and the parameter keeps its
``[out, in, k, k, k]`` shape, so checkpoints are unchanged. With the first axis's taps folded into channels as well
(8 to 32 input channels per tap) the stem's forward took 1.76 ms instead of 13.4 ms directly (5.7 ms unfolded),
and the ResNet18-3D training step 21.3 ms instead of 42.3 ms (H200, bf16, ``benchmarks/stem_variants.py``). On
the CPU oneDNN's direct convolution is as fast or faster (``benchmarks/stem_layout.py``), so
``alz_monai.networks.to_device`` applies this on CUDA only, unless told otherwise.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpaceToDepthConv3d", "space_to_depth_conv3d", "space_to_depth_stems"]

#: Largest ``in_channels * stride**3`` converted (not tuned): the rearranged input is a full copy of the input,
#: and a convolution with that many input channels already has fast kernels.
MAX_BLOCK_CHANNELS = 64


def space_to_depth_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    fold: tuple[int, int, int] = (1, 1, 1),
) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, stride, padding)`` for a cubic kernel and equal strides, by space-to-depth.

    ``fold[axis]`` (a divisor of the stride-1 kernel's size) moves that many of its taps along the axis into
    channels too (input copies shifted along the axis, stacked): more input channels per tap, where a few
    channels leave the tensor cores idle, for a copy of the input ``fold`` times as large. The inner convolution
    gets channels_last_3d tensors, the layout of cuDNN's fast kernels; the result has the layout that
    convolution returns (channels-last on CUDA), whatever the input's.
    """
    batch, channels = x.shape[0], x.shape[1]
    out_channels, kernel = weight.shape[0], weight.shape[2]
    cube = stride * stride * stride
    taps = (kernel + stride - 1) // stride  # kernel size of the stride-1 convolution on the blocks
    blocks = [(size + 2 * padding - kernel) // stride + taps for size in x.shape[2:]]  # output size + taps - 1
    # zero padding: `padding` before, and after up to a whole number of blocks (cropping samples never used)
    pad: list[int] = []
    for dim in [2, 1, 0]:  # F.pad lists the last dimension first
        pad += [padding, max(stride * blocks[dim] - x.shape[2 + dim] - padding, 0)]
    x = F.pad(x, pad)[:, :, : stride * blocks[0], : stride * blocks[1], : stride * blocks[2]]
    x = x.reshape(batch, channels, blocks[0], stride, blocks[1], stride, blocks[2], stride)
    # one copy, straight into channels-last order: (batch, blocks..., channel x block offsets)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(batch, blocks[0], blocks[1], blocks[2], channels * cube)
    x = x.permute(0, 4, 1, 2, 3)
    extra = stride * taps - kernel
    weight = F.pad(weight, [0, extra, 0, extra, 0, extra])
    weight = weight.reshape(out_channels, channels, taps, stride, taps, stride, taps, stride)
    weight = weight.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(out_channels, channels * cube, taps, taps, taps)
    for axis in range(3):
        if fold[axis] > 1:
            x, weight = _fold_taps(x, weight, 2 + axis, fold[axis])
    return F.conv3d(x.contiguous(memory_format=torch.channels_last_3d),
                    weight.contiguous(memory_format=torch.channels_last_3d), bias)


def _fold_taps(x: torch.Tensor, weight: torch.Tensor, dim: int, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stride-1 convolution of ``x`` with ``weight`` as one with ``factor`` times the input channels and
    ``1 / factor`` of the taps along ``dim``: tap ``group * i + j`` reads input copy ``i`` shifted by ``group * i``."""
    group = weight.shape[dim] // factor
    length = x.shape[dim] - (weight.shape[dim] - group)
    x = torch.cat([x.narrow(dim, group * i, length) for i in range(factor)], dim=1)
    weight = weight.unflatten(dim, (factor, group)).movedim(dim, 1).flatten(1, 2)
    return x, weight


class SpaceToDepthConv3d(nn.Conv3d):
    """``nn.Conv3d`` computed by :func:`space_to_depth_conv3d`; same parameters, same results up to rounding.

    Only for a cubic kernel, equal strides (2 or more, at most the kernel) and equal paddings (below the kernel),
    no groups, dilation or non-zero padding mode. ``fold``: see :func:`space_to_depth_conv3d`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fold = _default_fold(self)
        if not _geometry_supported(self):
            raise ValueError(
                f"SpaceToDepthConv3d needs a cubic kernel, equal strides in [2, kernel], equal paddings below the "
                f"kernel, groups=1, dilation=1 and zero padding; got kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, dilation={self.dilation}, "
                f"padding_mode={self.padding_mode!r}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # int(): _geometry_supported refused string paddings (a plain cast would not script)
        return space_to_depth_conv3d(x, self.weight, self.bias, self.stride[0], int(self.padding[0]), self.fold)


def _default_fold(conv: nn.Conv3d) -> tuple[int, int, int]:
    """All taps of the first axis into channels: the stem's forward took 1.8 ms instead of 5.7 on an H200 (8 to 32
    channels per tap; folding a second axis as well was slower, ``benchmarks/stem_variants.py``)."""
    taps = (conv.kernel_size[0] + conv.stride[0] - 1) // conv.stride[0]
    return (taps, 1, 1)


def _geometry_supported(conv: nn.Conv3d) -> bool:
    stride, kernel, padding = conv.stride[0], conv.kernel_size[0], conv.padding
    return (
        conv.groups == 1
        and conv.padding_mode == "zeros"
        and set(conv.dilation) == {1}
        and set(conv.stride) == {stride}
        and set(conv.kernel_size) == {kernel}
        and isinstance(padding, tuple)
        and set(padding) == {padding[0]}
        and 2 <= stride <= kernel
        and padding[0] < kernel
    )


def _qualifies(conv: nn.Conv3d) -> bool:
    return (
        type(conv) is nn.Conv3d
        and _geometry_supported(conv)
        and conv.in_channels * conv.stride[0] ** 3 <= MAX_BLOCK_CHANNELS
    )


def space_to_depth_stems(network: nn.Module) -> list[str]:
    """Compute every strided few-channel ``nn.Conv3d`` of ``network`` by space-to-depth, in place.

    The modules keep their parameters, buffers and hooks (only their class changes). Returns their names.
    """
    converted = []
    for name, module in network.named_modules():
        if isinstance(module, nn.Conv3d) and _qualifies(module):
            module.__class__ = SpaceToDepthConv3d
            cast(SpaceToDepthConv3d, module).fold = _default_fold(module)
            converted.append(name)
    return converted
