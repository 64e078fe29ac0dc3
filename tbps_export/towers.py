"""The two exported graphs as nn.Modules: each runs one modality end to end.

Each tower holds the whole trained model (so the shared decoder is in both
graphs) and emits per-slot L2-normalised (B, K, d) embeddings, so that Eq. 14
is one dot product at run time. Forward arguments are named after the
contract's inputs and in its order; :func:`sample_inputs` builds example
tensors and :func:`dynamic_shapes` the ``torch.export`` dims, both from the
contract (``tbps_runtime.contract``), never from repeated tensor names.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from tbps_runtime.contract import IMAGE_TOWER, TEXT_TOWER, TensorSpec, TowerSpec
from tbps_train.model import TextBasedPersonSearch, normalize_slots

# Sample sizes for dynamic axes: torch.export specialises on sizes 0 and 1.
SAMPLE_BATCH = 2
SAMPLE_SEQUENCE = 7


class ImageTower(nn.Module):
    """(B, 3, H, W) normalised pixels -> (B, K, d) unit-norm slot embeddings."""

    def __init__(self, model: TextBasedPersonSearch):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return normalize_slots(self.model.encode_image(pixel_values).slots)


class TextTower(nn.Module):
    """(B, L) int64 token ids and mask -> (B, K, d) unit-norm slot embeddings."""

    def __init__(self, model: TextBasedPersonSearch):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return normalize_slots(self.model.encode_text(input_ids, attention_mask).slots)


_IDS, MASK = TEXT_TOWER.inputs

TOWER_MODULES: dict[str, type[nn.Module]] = {IMAGE_TOWER.name: ImageTower, TEXT_TOWER.name: TextTower}
# Inputs are passed by name: each forward's parameters are the contract's inputs, in order.
for _spec in (IMAGE_TOWER, TEXT_TOWER):
    assert list(inspect.signature(TOWER_MODULES[_spec.name].forward).parameters)[1:] == [
        t.name for t in _spec.inputs], f"{_spec.name} forward() does not take the contract's inputs"


def build_tower(spec: TowerSpec, model: TextBasedPersonSearch) -> nn.Module:
    """The eval-mode module exporting ``spec`` from ``model``."""
    return TOWER_MODULES[spec.name](model).eval()


def axis_sizes(model: TextBasedPersonSearch, batch: int = SAMPLE_BATCH,
               sequence: int = SAMPLE_SEQUENCE) -> dict[str, int]:
    """Values for the contract's symbolic axes (``batch``, ``sequence``, ``height``...)."""
    cfg = model.config
    return {"batch": batch, "sequence": sequence, "height": cfg.image_size[0], "width": cfg.image_size[1],
            "slots": cfg.num_slots, "dim": cfg.embed_dim}


def sample_inputs(spec: TowerSpec, model: TextBasedPersonSearch, batch: int = SAMPLE_BATCH,
                  sequence: int = SAMPLE_SEQUENCE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Example inputs of ``spec``, keyed by tensor name: random pixels, or random
    token ids with a mask whose last row is half padding."""
    sizes = axis_sizes(model, batch, sequence)
    generator = torch.Generator().manual_seed(seed)
    vocab = model.text_backbone.config.vocab_size
    inputs = {}
    for tensor in spec.inputs:
        shape = [sizes[a] if isinstance(a, str) else a for a in tensor.axes]
        inputs[tensor.name] = _sample_tensor(tensor, shape, vocab, generator)
    return inputs


def _sample_tensor(tensor: TensorSpec, shape: list[int], vocab: int, generator: torch.Generator) -> torch.Tensor:
    if tensor.dtype == "float32":
        return torch.randn(shape, generator=generator)
    if tensor == MASK:  # (B, L): ones, with the last row padded so the mask is not all ones
        mask = torch.ones(shape, dtype=torch.int64)
        mask[-1, max(1, shape[1] // 2):] = 0
        return mask
    return torch.randint(1, vocab, shape, generator=generator, dtype=torch.int64)


def dynamic_shapes(spec: TowerSpec, model: TextBasedPersonSearch) -> dict[str, dict[int, torch.export.Dim]]:
    """``torch.export`` dynamic shapes for ``spec``'s inputs: one Dim per symbolic
    axis name, shared across inputs; the sequence axis is capped at the model's max length."""
    limits = {"sequence": model.config.max_text_length}
    dims: dict[str, torch.export.Dim] = {}
    shapes: dict[str, dict[int, torch.export.Dim]] = {}
    for tensor in spec.inputs:
        axes = {}
        for index, axis in enumerate(tensor.axes):
            if axis in tensor.dynamic:
                if axis not in dims:
                    dims[axis] = torch.export.Dim(axis, min=1, max=limits.get(axis))
                axes[index] = dims[axis]
        shapes[tensor.name] = axes
    return shapes
