"""ResNet image backbones with torchvision's parameter names.

The module tree mirrors ``torchvision.models.resnet.ResNet`` (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` ...) so an ImageNet state dict
loads by name. There is no ``avgpool``/``fc``: the backbone returns the last
feature map, and :func:`tbps_train.backbones.load_image_weights` drops ``fc.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .strides import strided_size


@dataclass(frozen=True)
class ResNetSpec:
    """Depth and widths of one named ResNet.

    ``widths`` are the ``planes`` of layer1..layer4; the stem has ``widths[0]``
    channels, as torchvision's 64-channel stem matches its 64-plane layer1.
    """

    block: str  # "basic" or "bottleneck"
    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)


RESNET_SPECS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec("basic", (2, 2, 2, 2)),
    "resnet34": ResNetSpec("basic", (3, 4, 6, 3)),
    "resnet50": ResNetSpec("bottleneck", (3, 4, 6, 3)),
    "resnet101": ResNetSpec("bottleneck", (3, 4, 23, 3)),
    # Narrow variants (no pretrained weights): a CPU demo and unit tests.
    "resnet_small": ResNetSpec("basic", (1, 1, 1, 1), (32, 64, 128, 256)),
    "resnet_tiny": ResNetSpec("basic", (1, 1, 1, 1), (8, 16, 16, 32)),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution, padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1×1 convolution, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs; the first carries the stride (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, inplanes, H, W) -> (B, planes, H/stride, W/stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (with the stride, as torchvision "v1.5"), 1×1 expand ×4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, inplanes, H, W) -> (B, 4·planes, H/stride, W/stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without ``avgpool``/``fc``, returning layer4's map.

    ``last_stride=1`` (the re-identification convention) keeps layer4 at
    layer3's resolution: a 24×8 map at 384×128 instead of 12×4.
    """

    head_prefixes: tuple[str, ...] = ("fc.",)

    def __init__(self, name: str, spec: ResNetSpec, image_size: tuple[int, int], last_stride: int = 1):
        super().__init__()
        block = Bottleneck if spec.block == "bottleneck" else BasicBlock
        self.name = name
        self.last_stride = last_stride
        self.inplanes = spec.widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        strides = (1, 2, 2, last_stride)
        for i, (planes, blocks, stride) in enumerate(zip(spec.widths, spec.layers, strides)):
            self.add_module(f"layer{i + 1}", self._make_layer(block, planes, blocks, stride))
        self.out_channels: int = spec.widths[3] * block.expansion
        self.feature_hw: tuple[int, int] = self.feature_size(image_size)
        self._init_weights()

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        """One stage; only its first block strides and may need a projection shortcut."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        """torchvision's init: Kaiming-normal (fan_out) convs, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def feature_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the input -> (h, w) of the output map, without running the net."""
        n_strided = 4 + (1 if self.last_stride == 2 else 0)  # stem conv, maxpool, layer2, layer3 [, layer4]
        return strided_size(image_size, n_strided)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, out_channels, h, w), (h, w) = ``feature_size((H, W))``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(pixel_values))))  # (B, C0, H/4, W/4)
        x = self.layer1(x)
        x = self.layer2(x)  # (B, ·, H/8, W/8)
        x = self.layer3(x)  # (B, ·, H/16, W/16)
        return self.layer4(x)  # (B, C, H/16 or H/32, ·)

    @staticmethod
    def remap_checkpoint_key(key: str) -> str:
        """torchvision ResNet names never changed: keys load as they are."""
        return key


def build_resnet(name: str, image_size: tuple[int, int], last_stride: int = 1) -> ResNetBackbone:
    """A ResNet backbone from :data:`RESNET_SPECS` (the caller checked ``name``)."""
    return ResNetBackbone(name, RESNET_SPECS[name], image_size, last_stride)
