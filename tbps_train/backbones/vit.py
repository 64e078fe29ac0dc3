"""Vision Transformer image backbones with torchvision's parameter names.

The module tree mirrors ``torchvision.models.vision_transformer.VisionTransformer``
(``conv_proj``, ``class_token``, ``encoder.pos_embedding``,
``encoder.layers.encoder_layer_{i}.{ln_1,self_attention,ln_2,mlp.0,mlp.3}``,
``encoder.ln``) so an ImageNet state dict loads by name; ``heads.*`` is not
built and :func:`tbps_train.backbones.load_image_weights` drops it.

Position embeddings stay at the pretrained shape, ``(1, 1 + 14·14, D)`` for
ViT-B/16, so a 224-resolution checkpoint loads unchanged (and checkpoints we
save keep that shape). Every forward resizes them bicubically to the grid of
the configured image size, e.g. 24×8 at 384×128. The target size is a Python
constant fixed at construction, so the resize exports to ONNX as a ``Resize``
on a constant; at the pretrained grid it is skipped altogether.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tbps_runtime.errors import ConfigError

LAYER_NORM_EPS = 1e-6  # torchvision's ViT value; PyTorch's default is 1e-5


@dataclass(frozen=True)
class ViTSpec:
    """Size of one named ViT.

    ``pretrained_grid`` is the patch grid its position embeddings are stored at
    (that of its ImageNet checkpoints); ``None`` means the configured image
    size's own grid (no checkpoint exists, nothing to interpolate).
    """

    patch_size: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    pretrained_grid: tuple[int, int] | None = None


VIT_SPECS: dict[str, ViTSpec] = {
    "vit_b_16": ViTSpec(16, 768, 12, 12, 3072, pretrained_grid=(14, 14)),
    "vit_tiny": ViTSpec(16, 64, 2, 2, 128),  # unit tests only
}


def resize_pos_embedding(pos: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize the patch part of position embeddings; the class token's is kept.

    pos: (1, 1 + src_h·src_w, D) -> (1, 1 + dst_h·dst_w, D).
    """
    dim = pos.shape[-1]
    cls_pos, grid = pos[:, :1], pos[:, 1:]
    grid = grid.reshape(1, src_grid[0], src_grid[1], dim).permute(0, 3, 1, 2)  # (1, D, sh, sw)
    grid = F.interpolate(grid, size=dst_grid, mode="bicubic", align_corners=False)  # (1, D, dh, dw)
    grid = grid.flatten(2).transpose(1, 2)  # (1, dh·dw, D)
    return torch.cat([cls_pos, grid], dim=1)


class MLPBlock(nn.Sequential):
    """Linear, GELU, Dropout, Linear, Dropout: indices 0 and 3 hold the weights, as in torchvision."""

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__(
            nn.Linear(in_dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, in_dim), nn.Dropout(dropout)
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=LAYER_NORM_EPS)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=LAYER_NORM_EPS)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Position embeddings, the blocks, the final LayerNorm."""

    def __init__(self, spec: ViTSpec, pretrained_grid: tuple[int, int], grid: tuple[int, int]):
        super().__init__()
        self.pretrained_grid = pretrained_grid
        self.grid = grid
        seq_length = 1 + pretrained_grid[0] * pretrained_grid[1]
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, spec.hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(spec.num_layers):
            layers[f"encoder_layer_{i}"] = EncoderBlock(spec.num_heads, spec.hidden_dim, spec.mlp_dim)
        self.layers = nn.Sequential(layers)
        self.ln = nn.LayerNorm(spec.hidden_dim, eps=LAYER_NORM_EPS)

    def position_embedding(self) -> torch.Tensor:
        """(1, 1 + h·w, D) for the configured grid; resized from the stored grid when they differ."""
        if self.grid == self.pretrained_grid:
            return self.pos_embedding
        return resize_pos_embedding(self.pos_embedding, self.pretrained_grid, self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + h·w, D) tokens -> (B, 1 + h·w, D) normalised tokens."""
        x = x + self.position_embedding()
        return self.ln(self.layers(self.dropout(x)))


class ViTBackbone(nn.Module):
    """A torchvision VisionTransformer without ``heads``, returning patch tokens as a map.

    The input size is fixed at construction (it sets the position-embedding
    grid); ``last_stride`` has no meaning for a ViT and is not taken.
    """

    head_prefixes: tuple[str, ...] = ("heads.",)

    def __init__(self, name: str, spec: ViTSpec, image_size: tuple[int, int]):
        super().__init__()
        self.name = name
        self.patch_size = spec.patch_size
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.feature_hw: tuple[int, int] = self.feature_size(self.image_size)
        self.out_channels: int = spec.hidden_dim
        self.conv_proj = nn.Conv2d(3, spec.hidden_dim, kernel_size=spec.patch_size, stride=spec.patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, spec.hidden_dim))
        self.encoder = Encoder(spec, spec.pretrained_grid or self.feature_hw, self.feature_hw)
        fan_in = 3 * spec.patch_size * spec.patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)

    def feature_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the input -> (H/patch, W/patch) patch grid."""
        return image_size[0] // self.patch_size, image_size[1] // self.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) at the configured (H, W) -> (B, D, H/patch, W/patch)."""
        if tuple(pixel_values.shape[-2:]) != self.image_size:
            raise ValueError(
                f"{self.name} was built for {self.image_size[0]}×{self.image_size[1]} images, got "
                f"{tuple(pixel_values.shape[-2:])}; resize the input or rebuild with that image_size"
            )
        x = self.conv_proj(pixel_values).flatten(2).transpose(1, 2)  # (B, h·w, D)
        cls = self.class_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = self.encoder(torch.cat([cls, x], dim=1))  # (B, 1 + h·w, D)
        return x[:, 1:].transpose(1, 2).unflatten(2, self.feature_hw)  # (B, D, h, w)

    @staticmethod
    def remap_checkpoint_key(key: str) -> str:
        """Rename the legacy MLP keys (``mlp.linear_1/2``) that torchvision's released ViT files still use."""
        return key.replace(".mlp.linear_1.", ".mlp.0.").replace(".mlp.linear_2.", ".mlp.3.")


def build_vit(name: str, image_size: tuple[int, int], spec: ViTSpec | None = None) -> ViTBackbone:
    """A ViT backbone from :data:`VIT_SPECS` (or an explicit ``spec``).

    Raises ConfigError when the image size is not a multiple of the patch size.
    """
    spec = spec or VIT_SPECS[name]
    p = spec.patch_size
    if image_size[0] % p or image_size[1] % p or min(image_size) < p:
        raise ConfigError(
            f"{name} needs an image size that is a positive multiple of its patch size {p}, got "
            f"{image_size[0]}×{image_size[1]}; e.g. use 384×128"
        )
    return ViTBackbone(name, spec, image_size)
