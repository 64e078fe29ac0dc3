"""The attention behind a query's results (paper Fig. 4), from the bundle's explain graphs.

``tbps export --explain`` adds ``image_tower.explain.onnx`` and
``text_tower.explain.onnx``: the same towers, also returning the shared
decoder's cross-attention. :func:`explain` runs them for one query and its
result crops and returns an :class:`Explanation`; drawing it is
:mod:`tbps_runtime.report.draw`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tbps_runtime.contract import IMAGE_ATTENTION, IMAGE_EXPLAIN_TOWER, TEXT_EXPLAIN_TOWER, TowerSpec
from tbps_runtime.errors import BundleError
from tbps_runtime.model.encoder import Encoder, ImageInput


@dataclass
class Explanation:
    """The attention behind one query's results.

    tokens: the query's T tokens (as the tokenizer split it, special tokens included).
    token_weights: (D + P, T): each decoder token's attention over the query's
        tokens (first D rows: the shared tokens, last P: the fine text tokens); rows sum to 1.
    maps: (N, D, h, w): each shared token's attention over each image's feature map; sums to 1 over (h, w).
    """

    tokens: list[str]
    token_weights: np.ndarray
    maps: np.ndarray

    @property
    def heatmaps(self) -> np.ndarray:
        """(N, h, w): A_avg, the attention averaged over the D shared tokens (Eq. 5, Fig. 4a)."""
        return self.maps.mean(axis=1)


def _run(encoder: Encoder, spec: TowerSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The explain graph's attention output for ``feeds``, checked as a tower call is
    (:meth:`Encoder.run_graph`); a BundleError saying how to export one when the bundle has none."""
    _require(encoder, spec)
    _, attention = encoder.run_graph(spec, feeds)
    return attention


def _require(encoder: Encoder, spec: TowerSpec) -> None:
    if spec.name not in encoder.manifest.towers or spec.onnx_file not in encoder.manifest.files:
        raise BundleError(f"{encoder.directory} has no {spec.onnx_file}: export the checkpoint again with the "
                          "explain graphs", code="explain_graphs_missing", directory=str(encoder.directory),
                          file=spec.onnx_file)


def text_attention(encoder: Encoder, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Captions -> (input_ids, attention_mask) (B, L) and decoder attention (B, D + P, L); padding gets 0."""
    input_ids, attention_mask = encoder.tokenize(texts)
    ids_spec, mask_spec = TEXT_EXPLAIN_TOWER.inputs
    attention = _run(encoder, TEXT_EXPLAIN_TOWER, {ids_spec.name: input_ids, mask_spec.name: attention_mask})
    return input_ids, attention_mask, attention


def image_attention(encoder: Encoder, images: Sequence[ImageInput]) -> np.ndarray:
    """Crops (paths or (H, W, 3) uint8 arrays) -> decoder attention (N, D, h, w)."""
    (spec,) = IMAGE_EXPLAIN_TOWER.inputs
    pixels = np.stack([encoder.load_image(image) for image in images])  # (N, H, W, 3)
    return _run(encoder, IMAGE_EXPLAIN_TOWER, {spec.name: encoder.pixel_values(pixels)})


def explain(encoder: Encoder, query: str, images: Sequence[ImageInput]) -> Explanation:
    """The text attention of ``query`` and the image attention of each of ``images``."""
    input_ids, mask, attention = text_attention(encoder, [query])  # (1, L), (1, L), (1, D + P, L)
    length = int(mask[0].sum())
    tokens = encoder.tokens(input_ids[0, :length])
    if len(images):
        maps = image_attention(encoder, images)
    else:  # (0, D, h, w), the shape the manifest records (checked when the bundle was loaded)
        _require(encoder, IMAGE_EXPLAIN_TOWER)
        sizes = encoder.manifest.tower_sizes(IMAGE_EXPLAIN_TOWER)
        maps = np.zeros((0, *(sizes[axis] for axis in IMAGE_ATTENTION.axes[1:])), np.float32)
    return Explanation(tokens, attention[0, :, :length], maps)
