"""Image backbones (ResNet, ViT, MobileNetV2) written in the project, with torchvision's parameter names.

``build_image_backbone(name, image_size)`` returns a module mapping
``(B, 3, H, W)`` pixels to a ``(B, out_channels, *feature_hw)`` feature map;
``load_image_weights`` loads a user's ImageNet checkpoint into it by name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from tbps_runtime.errors import CheckpointError, ConfigError, InputFileNotFoundError

from .mobilenet import MobileNetV2Backbone, build_mobilenet_v2, packaged_mobilenet_v2_weights
from .resnet import RESNET_SPECS, ResNetBackbone, build_resnet
from .vit import VIT_SPECS, ViTBackbone, build_vit

__all__ = ["IMAGE_BACKBONES", "MobileNetV2Backbone", "ResNetBackbone", "ViTBackbone", "build_image_backbone",
           "load_image_weights", "packaged_mobilenet_v2_weights", "resolve_image_weights"]

logger = logging.getLogger(__name__)

IMAGE_BACKBONES: tuple[str, ...] = tuple(RESNET_SPECS) + tuple(VIT_SPECS) + ("mobilenet_v2",)
# ``image_weights`` value meaning "the ImageNet weights that ship offline" (MobileNetV2 only).
PACKAGED_WEIGHTS = "packaged"

# Keys a checkpoint may lack: BatchNorm fills a missing counter with 0 (old
# torchvision ResNet files predate it).
_OPTIONAL_SUFFIXES = (".num_batches_tracked",)
_SHOW = 5  # how many offending keys an error message lists


def build_image_backbone(name: str, image_size: tuple[int, int], last_stride: int = 1) -> nn.Module:
    """A backbone mapping (B, 3, H, W) to (B, ``out_channels``, *``feature_hw``).

    ``image_size`` is (H, W). ``last_stride`` (1 or 2) is layer4's stride for
    ResNets and features.14's for MobileNetV2; ViTs ignore it (their grid is always H/16 × W/16). Raises
    ConfigError for an unknown name, a bad stride or a size a ViT cannot patch.
    """
    if name not in IMAGE_BACKBONES:
        raise ConfigError(f"unknown image backbone {name!r}; choose one of: {', '.join(IMAGE_BACKBONES)}")
    if last_stride not in (1, 2):
        raise ConfigError(f"last_stride must be 1 or 2, got {last_stride!r}")
    if len(image_size) != 2 or min(image_size) < 1:
        raise ConfigError(f"image_size must be (height, width) in pixels, got {image_size!r}")
    if name in RESNET_SPECS:
        return build_resnet(name, tuple(image_size), last_stride)
    if name == "mobilenet_v2":
        return build_mobilenet_v2(tuple(image_size), last_stride)
    return build_vit(name, tuple(image_size))


def resolve_image_weights(name: str, image_weights: str | Path | None) -> Path | None:
    """The file ``image_weights`` names: ``"packaged"`` is the offline MobileNetV2 ImageNet file.

    ``None`` or ``"none"`` means random initialisation. Raises ConfigError when
    ``"packaged"`` is asked of a backbone that has no packaged weights.
    """
    if image_weights is None or str(image_weights) == "none":
        return None
    if str(image_weights) == PACKAGED_WEIGHTS:
        if name != "mobilenet_v2":
            raise ConfigError(f"only mobilenet_v2 has packaged ImageNet weights; for {name} give the path of an "
                              "ImageNet state dict with torchvision names as image_weights",
                              code="image_weights_not_packaged", backbone=name)
        return packaged_mobilenet_v2_weights()
    return Path(image_weights)


def load_image_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load an ImageNet checkpoint (torchvision names) into ``backbone`` in place.

    Accepts a plain state dict or one under ``state_dict``/``model``, with or
    without a ``module.`` prefix. The classifier head (``fc.*``/``heads.*``)
    is skipped. Raises InputFileNotFoundError for a missing file and
    CheckpointError for anything unreadable, missing, unexpected or mis-shaped.
    """
    path = Path(path)
    raw = _read_checkpoint(path)
    state = _normalise_keys(_find_state_dict(raw, path), backbone)
    _check_compatible(state, backbone, path)
    result = backbone.load_state_dict(state, strict=False)
    # Anything left would be an optional buffer the checks above allowed.
    assert not result.unexpected_keys, result.unexpected_keys
    logger.info("loaded %d tensors from %s into %s", len(state), path, _name(backbone))


def _name(backbone: nn.Module) -> str:
    return getattr(backbone, "name", type(backbone).__name__)


def _read_checkpoint(path: Path) -> Any:
    """torch.load with weights only; file problems become typed errors."""
    if not path.exists():
        raise InputFileNotFoundError(f"image backbone weights not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"image backbone weights must be a file, {path} is a directory")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a bad file; the message keeps the cause
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {e}); "
            "pass a state dict saved with torch.save"
        ) from e


def _find_state_dict(raw: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The tensor mapping itself, or the one a training checkpoint keeps under state_dict/model."""
    if isinstance(raw, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(raw.get(key), Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(f"{path} does not hold a state dict (got {type(raw).__name__}); save model.state_dict()")
    bad = [k for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a state dict of tensors: {len(bad)} entries are not, e.g. {bad[:_SHOW]}")
    return raw


def _normalise_keys(state: Mapping[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Strip ``module.``, rename legacy keys, drop the classifier head."""
    heads: tuple[str, ...] = getattr(backbone, "head_prefixes", ())
    remap = getattr(backbone, "remap_checkpoint_key", lambda k: k)
    convert = getattr(backbone, "convert_checkpoint", dict)  # layouts told apart by the whole dict
    out: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in convert({k.removeprefix("module."): v for k, v in state.items()}).items():
        key = remap(key)
        if key.startswith(heads):
            dropped.append(key)
        else:
            out[key] = value
    if dropped:
        logger.debug("ignoring %d classifier-head tensors: %s", len(dropped), ", ".join(dropped))
    return out


def _check_compatible(state: Mapping[str, torch.Tensor], backbone: nn.Module, path: Path) -> None:
    """Raise one CheckpointError listing every kind of mismatch at once."""
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{len(items)} {what}: {', '.join(items[:_SHOW])}{', ...' if len(items) > _SHOW else ''}"
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches (file vs model)", shapes))
        if items
    ]
    if problems:
        name = _name(backbone)
        raise CheckpointError(
            f"{path} does not fit image backbone {name} ({'; '.join(problems)}); "
            f"is this a {name} checkpoint with torchvision parameter names?"
        )
