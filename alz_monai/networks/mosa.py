"""Mosa: a 3D ResNet whose 5-level feature pyramid is summarised by transformers and fused for classification.

Each pyramid level is cut into patches by a strided Conv3d, a transformer (cls token + learned positions) summarises
the level, and an MLP classifies the concatenated cls tokens. ``Mosa`` gives every level its own transformer;
``MosaShared`` shares one transformer between levels and tells them apart with a learned scale embedding.

Token grid rule: every level is tokenised on the layer4 grid, ``ceil(spatial_size / 32)`` per axis, so token ``j`` of
every level covers the same input region (voxels ``32j .. 32j+31``). A level downsampled ``d`` times therefore uses
patches of ``32 / d`` feature voxels (8, 8, 4, 2, 1 for a ResNet), whatever the input size. When an axis is an odd
multiple of 16 (112 in 96x112x96: layer4 has 4 cells for 3.5 x 32 voxels), the backbone rounds its map sizes up, and
each level is zero-padded at the far end to fill its last patch. Axes must be multiples of 16 so that this last
token is at least half image; 96x112x96 gives a 3x4x3 grid, 128^3 the original tool's 4x4x4.

Token reshapes are einops ``Rearrange`` layers (einops' functions cannot be compiled by TorchScript; its layers can,
and they hold no parameters, so checkpoints are unchanged). Axis names: b batch, l token, c channel, d/h/w space,
v pyramid level.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from monai.networks.blocks import MLPBlock
from torch import nn

from alz_monai.errors import ConfigError

from .resnet3d import ResNet3D, build_resnet3d
from .weights import load_backbone_weights

__all__ = ["Mosa", "MosaShared", "token_grid_for"]

logger = logging.getLogger(__name__)

SPATIAL_MULTIPLE = 16


def token_grid_for(spatial_size: Sequence[int], deepest_downsampling: int = 32) -> tuple[int, ...]:
    """Token grid shared by all levels for an input of ``spatial_size``; raises ValueError for unsupported sizes."""
    spatial_size = tuple(int(size) for size in spatial_size)
    if len(spatial_size) != 3 or any(size % SPATIAL_MULTIPLE or size <= 0 for size in spatial_size):
        suggestion = tuple(max(SPATIAL_MULTIPLE, round(size / SPATIAL_MULTIPLE) * SPATIAL_MULTIPLE)
                           for size in spatial_size)
        raise ConfigError(
            f"Mosa needs 3 spatial dimensions, each a positive multiple of {SPATIAL_MULTIPLE}, got {spatial_size}; "
            f"resize or pad the images to e.g. {suggestion}"
        )
    return tuple(math.ceil(size / deepest_downsampling) for size in spatial_size)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (fused kernels, dropout only in training).

    MONAI's ``SABlock`` shares one rate between attention and output dropout and applies its fused-path dropout in
    eval mode too, hence this small block.
    """

    def __init__(self, embed_dim: int, num_heads: int, qkv_bias: bool, attn_drop_rate: float, drop_rate: float) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= attn_drop_rate < 1.0:
            raise ConfigError(f"attn_drop_rate must be in [0, 1), got {attn_drop_rate}")
        self.attn_drop_rate = attn_drop_rate
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_bias)
        self.split_heads = Rearrange("b l (qkv heads c) -> qkv b heads l c", qkv=3, heads=num_heads)
        self.merge_heads = Rearrange("b heads l c -> b l (heads c)")
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_dropout = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.split_heads(self.qkv(x))
        query, key, value = qkv[0], qkv[1], qkv[2]
        dropout_p = self.attn_drop_rate if self.training else 0.0
        attended = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)
        return self.proj_dropout(self.proj(self.merge_heads(attended)))


class TransformerEncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(
        self, embed_dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_rate: float, attn_drop_rate: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = SelfAttention(embed_dim, num_heads, qkv_bias, attn_drop_rate, drop_rate)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = MLPBlock(embed_dim, int(embed_dim * mlp_ratio), drop_rate, act="GELU")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """``depth`` pre-norm blocks and a final LayerNorm; returns the normalised cls token."""

    def __init__(self, depth: int, **block_options) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(TransformerEncoderBlock(**block_options) for _ in range(depth)))
        self.norm = nn.LayerNorm(block_options["embed_dim"])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(tokens))[:, 0]


class LevelTokenizer(nn.Module):
    """Turns one pyramid level into ``[cls, patch tokens] + positions`` on the shared token grid."""

    def __init__(
        self, in_channels: int, embed_dim: int, patch_size: int, level_size: Sequence[int], token_grid: Sequence[int]
    ) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv3d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.to_tokens = Rearrange("b c d h w -> b (d h w) c")
        # F.pad takes (last axis low, high, ..., first axis low, high); pad only the high end (see module docstring).
        far_end_padding = [grid * patch_size - size for grid, size in zip(token_grid, level_size)]
        self.padding = [amount for pad in reversed(far_end_padding) for amount in (0, pad)]
        self.needs_padding = any(far_end_padding)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + math.prod(token_grid), embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        if self.needs_padding:
            level = F.pad(level, self.padding)
        tokens = self.to_tokens(self.patch_embedding(level))
        cls_token = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls_token, tokens], dim=1) + self.position_embedding


class MosaBase(nn.Module):
    """Backbone, per-level tokenizers, classification head and optimiser groups shared by both Mosa variants.

    Args:
        spatial_size: input size (D, H, W); each a multiple of 16. Fixes the token grid and positional embeddings.
        backbone: a ``ResNet3D`` (its ``fc`` is removed) or a name such as ``"resnet18"``.
        in_channels: image channels (must match a given backbone).
        num_classes: output logits.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer width, blocks per transformer, attention
            heads, MLP width as a multiple of ``embed_dim``, bias of the query/key/value projection.
        drop_rate: dropout after attention/MLP projections and in the head.
        attn_drop_rate: dropout on attention weights (training only).
        backbone_weights: checkpoint for the backbone, loaded with ``load_backbone_weights`` (report logged).
        freeze_backbone: keep the backbone's weights and BatchNorm statistics fixed.
    """

    def __init__(
        self,
        spatial_size: Sequence[int],
        backbone: ResNet3D | str = "resnet18",
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        embed_dim: int = 256,
        depth: int = 2,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        backbone_weights: str | os.PathLike | None = None,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        downsampling = ResNet3D.feature_downsampling
        self.spatial_size = tuple(int(size) for size in spatial_size)
        self.token_grid = token_grid_for(self.spatial_size, downsampling[-1])
        self.patch_sizes = tuple(downsampling[-1] // factor for factor in downsampling)
        self._expected_input = [in_channels, *self.spatial_size]
        self.backbone = self._resolve_backbone(backbone, in_channels)
        if backbone_weights is not None:
            load_backbone_weights(self.backbone, backbone_weights)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)

        # Every stride-2 layer of the backbone rounds up, so a level downsampled d times has ceil(size / d) voxels.
        self.tokenizers = nn.ModuleList(
            LevelTokenizer(
                channels,
                embed_dim,
                patch,
                [math.ceil(size / factor) for size in self.spatial_size],
                self.token_grid,
            )
            for channels, patch, factor in zip(self.backbone.feature_channels, self.patch_sizes, downsampling)
        )
        self.num_levels = len(self.tokenizers)
        self._build_encoders(
            depth,
            embed_dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
        )
        fused_width = self.num_levels * embed_dim
        self.head = nn.Sequential(
            nn.LayerNorm(fused_width),
            nn.Linear(fused_width, embed_dim),
            nn.GELU(),
            nn.Dropout(drop_rate),
            nn.Linear(embed_dim, num_classes),
        )
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith("backbone."):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        logger.debug(
            "%s: spatial size %s, token grid %s, patch sizes %s",
            type(self).__name__,
            self.spatial_size,
            self.token_grid,
            self.patch_sizes,
        )

    @staticmethod
    def _resolve_backbone(backbone: ResNet3D | str, in_channels: int) -> ResNet3D:
        if isinstance(backbone, str):
            return build_resnet3d(backbone, in_channels=in_channels, num_classes=0)
        if not isinstance(backbone, ResNet3D):
            raise TypeError(
                f"Mosa backbone must be a ResNet3D or a name like 'resnet18', got {type(backbone).__name__}")
        if backbone.conv1.in_channels != in_channels:
            raise ConfigError(
                f"Mosa got in_channels={in_channels} but its backbone takes {backbone.conv1.in_channels} channels"
            )
        backbone.reset_classifier(0)
        return backbone

    def _build_encoders(self, depth: int, **block_options) -> None:
        raise NotImplementedError

    def train(self, mode: bool = True) -> MosaBase:
        """Like ``nn.Module.train``, but a frozen backbone stays in eval mode so BatchNorm statistics stay fixed."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def param_groups(self, lr: float, backbone_lr_multiplier: float = 1.0) -> list[dict]:
        """Optimizer groups: trainable backbone parameters at ``lr * backbone_lr_multiplier``, the rest at ``lr``."""
        backbone_params = [param for param in self.backbone.parameters() if param.requires_grad]
        backbone_ids = {id(param) for param in self.backbone.parameters()}
        fusion_params = [param for param in self.parameters() if param.requires_grad and id(param) not in backbone_ids]
        groups = [{"name": "fusion", "params": fusion_params, "lr": lr}]
        if backbone_params:
            groups.insert(0, {"name": "backbone", "params": backbone_params, "lr": lr * backbone_lr_multiplier})
        return groups

    def tokenize(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Token sequences ``(batch, 1 + tokens, embed_dim)`` of every pyramid level."""
        if not torch.jit.is_tracing() and (x.dim() != 5 or list(x.shape[1:]) != self._expected_input):
            raise ConfigError(
                f"Mosa was built for input (batch, {self._expected_input[0]}, {self._expected_input[1]}, "
                f"{self._expected_input[2]}, {self._expected_input[3]}), got {list(x.shape)}; resize the input or "
                "build the network with that spatial_size"
            )
        levels = self.backbone.forward_features(x)
        return [tokenizer(levels[index]) for index, tokenizer in enumerate(self.tokenizers)]


class Mosa(MosaBase):
    """Mosa with one transformer per pyramid level. See ``MosaBase`` for the arguments."""

    def _build_encoders(self, depth: int, **block_options) -> None:
        self.encoders = nn.ModuleList(TransformerEncoder(depth, **block_options) for _ in range(self.num_levels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token_sets = self.tokenize(x)
        summaries = [encoder(token_sets[index]) for index, encoder in enumerate(self.encoders)]
        return self.head(torch.cat(summaries, dim=1))


class MosaShared(MosaBase):
    """Mosa with one transformer shared by all levels plus a learned per-level scale embedding.

    See ``MosaBase`` for the arguments.
    """

    def _build_encoders(self, depth: int, **block_options) -> None:
        self.encoder = TransformerEncoder(depth, **block_options)
        self.scale_embedding = nn.Parameter(torch.zeros(self.num_levels, 1, 1, block_options["embed_dim"]))
        nn.init.trunc_normal_(self.scale_embedding, std=0.02)
        self.levels_as_batch = Rearrange("v b l c -> (v b) l c")
        self.concat_levels = Rearrange("(v b) c -> b (v c)", v=self.num_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # All levels have the same token count, so one encoder call handles them as a (levels * batch) batch.
        tokens = torch.stack(self.tokenize(x)) + self.scale_embedding
        return self.head(self.concat_levels(self.encoder(self.levels_as_batch(tokens))))
