"""A strided stem convolution that cuDNN runs fast: the same weights, computed by space-to-depth.

cuDNN has no efficient kernel for a 3D convolution with one input channel, a 7^3 kernel and stride 2 (the
ResNet stem on T1 scans): profiled on an H200 at 128^3, batch 16, bf16, its forward and weight gradient took
about 26 ms of a 42 ms ResNet18-3D training step, whatever the memory layout. Rearranging each s^3 block of the
input into channels (space-to-depth) turns it into a stride-1 convolution with s^3 input channels and a
ceil(k/s)^3 kernel, whose weight is the original one zero-padded and rearranged: the same sums, on tensor-core
friendly shapes. The parameter keeps its ``[out, in, k, k, k]`` shape, so checkpoints are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StridedStemConv3d", "space_to_depth_conv3d"]


def space_to_depth_conv3d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, stride, padding)`` for a cubic kernel and equal strides, by space-to-depth."""
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
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(batch, channels * cube, blocks[0], blocks[1], blocks[2])
    extra = stride * taps - kernel
    weight = F.pad(weight, [0, extra, 0, extra, 0, extra])
    weight = weight.reshape(out_channels, channels, taps, stride, taps, stride, taps, stride)
    weight = weight.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(out_channels, channels * cube, taps, taps, taps)
    return F.conv3d(x.contiguous(memory_format=torch.channels_last_3d),
                    weight.contiguous(memory_format=torch.channels_last_3d), bias)


class StridedStemConv3d(nn.Conv3d):
    """``nn.Conv3d`` (cubic kernel, equal strides and paddings, zero padding) computed by space-to-depth on CUDA.

    On other devices it is a plain ``nn.Conv3d``: the result is the same up to floating-point summation order.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 bias: bool = False) -> None:
        if stride < 2 or kernel_size < stride or padding >= kernel_size:
            raise ValueError(f"a strided stem needs 2 <= stride <= kernel_size and padding < kernel_size, got "
                             f"kernel_size={kernel_size}, stride={stride}, padding={padding}")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return self._conv_forward(x, self.weight, self.bias)
        return space_to_depth_conv3d(x, self.weight, self.bias, self.stride[0], self.padding[0])
