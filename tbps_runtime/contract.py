"""The export contract, declared once: tower I/O, dynamic axes, opset, tolerances, file names.

The exporter builds its dummy inputs and dynamic shapes from these specs, the
manifest records them, and the runtime feeds tensors by these names; nobody
repeats a tensor name as a string literal. Also declared once here: how a list is
cut into blocks (gallery shards, training processes) and the one type check of
records read from files.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from tbps_runtime.text import short

OPSET = 18
# Export validation, in the spirit of Hugging Face's exporters: embeddings are
# L2-normalised per slot, so an absolute tolerance is meaningful.
PARITY_ATOL = 1e-4

BUNDLE_FORMAT, BUNDLE_VERSION = "tbps-bundle", 1
# Version 2: paths inside the gallery's folder are recorded relative to it (version 1: all absolute).
GALLERY_FORMAT, GALLERY_VERSION = "tbps-gallery", 2
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
# Held-out captions of the training data (one per line, UTF-8): a store calibrates its threshold on them
# (tbps calibrate --gallery). Optional: bundles exported before it have none.
CAPTIONS_FILE = "heldout_captions.txt"
HELDOUT_CAPTIONS = 2000  # captions exported, evenly spaced over the val split (test when there is none)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``axes`` holds a symbolic name for a dynamic
    axis and an int or a manifest key (``"height"``, ``"slots"``...) for a fixed one."""

    name: str
    dtype: str  # numpy dtype name
    axes: tuple[str | int, ...]
    dynamic: tuple[str, ...] = ()  # which of ``axes`` vary at run time

    def shape(self, sizes: dict[str, int]) -> list[str | int]:
        """The declared shape with fixed axes resolved from ``sizes``; dynamic ones stay names."""
        return [a if isinstance(a, int) or a in self.dynamic else sizes[a] for a in self.axes]


@dataclass(frozen=True)
class TowerSpec:
    """One exported graph."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def check_feeds(self, feeds: Mapping[str, Any]) -> None:
        """Refuse feeds not named exactly as this tower's inputs (a caller's bug: ``ValueError``)."""
        expected = {spec.name for spec in self.inputs}
        if set(feeds) != expected:
            raise ValueError(f"{self.name} takes inputs {sorted(expected)}, got {sorted(feeds)}")

    def call_sizes(self, feeds: Mapping[str, Any]) -> dict[str, int]:
        """The dynamic axes' sizes in one call's ``feeds`` (``batch``, ``sequence``): its outputs must have them."""
        sizes: dict[str, int] = {}
        for spec in self.inputs:
            for axis, size in zip(spec.axes, getattr(feeds.get(spec.name), "shape", ())):
                if axis in spec.dynamic:
                    sizes.setdefault(axis, int(size))
        return sizes

    @property
    def onnx_file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def plan_file(self) -> str:
        return f"{self.name}.plan"


EMBEDDINGS = TensorSpec("embeddings", "float32", ("batch", "slots", "dim"), dynamic=("batch",))

IMAGE_TOWER = TowerSpec(
    name="image_tower",
    inputs=(TensorSpec("pixel_values", "float32", ("batch", 3, "height", "width"), dynamic=("batch",)),),
    outputs=(EMBEDDINGS,),
)
TEXT_TOWER = TowerSpec(
    name="text_tower",
    inputs=(
        TensorSpec("input_ids", "int64", ("batch", "sequence"), dynamic=("batch", "sequence")),
        TensorSpec("attention_mask", "int64", ("batch", "sequence"), dynamic=("batch", "sequence")),
    ),
    outputs=(EMBEDDINGS,),
)
TOWERS = (IMAGE_TOWER, TEXT_TOWER)

# ---- optional "explain" graphs (tbps export --explain) ---------------------
# The same towers, also returning the shared decoder's cross-attention averaged
# over heads (paper Fig. 4). The default graphs above stay as they are.
# Image: (B, D, h, w) over the backbone's feature map; text: (B, D + P, L) over
# the tokens (first D rows: the shared tokens, last P rows: the fine text
# tokens), padding positions get 0. Each row sums to 1 over its positions.
IMAGE_ATTENTION = TensorSpec("attention", "float32", ("batch", "coarse", "feature_height", "feature_width"),
                             dynamic=("batch",))
TEXT_ATTENTION = TensorSpec("attention", "float32", ("batch", "decoder_tokens", "sequence"),
                            dynamic=("batch", "sequence"))
IMAGE_EXPLAIN_TOWER = TowerSpec(name="image_tower.explain", inputs=IMAGE_TOWER.inputs,
                                outputs=(EMBEDDINGS, IMAGE_ATTENTION))
TEXT_EXPLAIN_TOWER = TowerSpec(name="text_tower.explain", inputs=TEXT_TOWER.inputs,
                               outputs=(EMBEDDINGS, TEXT_ATTENTION))
EXPLAIN_TOWERS = (IMAGE_EXPLAIN_TOWER, TEXT_EXPLAIN_TOWER)

# Engines that run the towers: onnxruntime (any machine) or the bundle's TensorRT plans.
BACKENDS = ("onnxruntime", "tensorrt")


# ---- blocks of a list ----------------------------------------------------------
# ``tbps index --shard I/N`` embeds block I of the sorted image list, and N training processes each take
# block RANK of the batch: one cut, so that N jobs agree on it from nothing but the list's length.

def shard_bounds(total: int, index: int, count: int) -> tuple[int, int]:
    """``[start, stop)`` of block ``index`` of ``count`` over ``total`` items, as ``np.array_split`` cuts it."""
    base, extra = divmod(total, count)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


# ---- records read from files -------------------------------------------------
# A manifest and a run config are dataclasses filled from JSON a user may have edited: each field must hold
# its annotated type before anything uses it (the one type check of such records).

def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (JSON's ``true`` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def mistyped_fields(record: Any) -> list[str]:
    """``"name is VALUE, expected TYPE"`` for each field of the dataclass ``record`` whose value is not of its
    annotated type: an ``int`` is no bool, a ``float`` finite; lists, tuples and dicts item by item."""
    hints = typing.get_type_hints(type(record))
    return [f"{f.name} is {short(getattr(record, f.name))}, expected {f.type}" for f in dataclasses.fields(record)
            if not _matches(getattr(record, f.name), hints[f.name])]


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return isinstance(value, tuple) and all(_matches(v, args[0]) for v in value)
        return isinstance(value, tuple) and len(value) == len(args) and all(map(_matches, value, args))
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if hint is float:
        return is_int(value) or isinstance(value, float) and math.isfinite(value)
    if hint is int:
        return is_int(value)
    return isinstance(value, type(None) if hint is None else hint)
