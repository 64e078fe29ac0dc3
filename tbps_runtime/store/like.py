"""Find similar: a store row's image embedding as the query ("where else did this person go").

A row's stored embedding is (K, d), every slot L2-normalised, as the image tower emits it. Used as a query,
it is ranked by the same Eq. 14 as a caption (the sum over the K slots of the cosine between the query's
slot and the row's), so image -> image scores lie in [-K, K] like text -> image ones, and the row itself
scores K (it is its own best match: it ranks first unless a filter leaves it out).

Text and image combined: each slot of the query is the normalised sum of the caption's slot and the
row's slot (the direction half-way between them), and the combined query is ranked by Eq. 14 like any
other. Per slot, ``cos(g, (t + v) / |t + v|) = (cos(g, t) + cos(g, v)) / |t + v|``: the sum of the two
Eq. 14 terms, each slot weighted by ``1 / |t + v|`` (between 1/2 and 1 for slots that agree). The query
stays one (1, K, d) array, so filters, ``per_track`` and the exact top k are the store's own.
"""

from __future__ import annotations

import numpy as np

from tbps_runtime.errors import ConfigError
from tbps_runtime.ranking import normalize_slots
from tbps_runtime.store.base import Store


def like_query(store: Store, row: int, text: np.ndarray | None = None) -> np.ndarray:
    """The query for "rows like ``row``": (1, K, d) float32, every slot L2-normalised.

    Args:
        store: the store that holds ``row``.
        row: the row whose image embedding is the query.
        text: optionally a caption's (K, d) or (1, K, d) embedding to combine with it (see the module).

    Raises:
        ConfigError: no such row; a text embedding of another shape.
    """
    if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or not 0 <= int(row) < 2**63 \
            or not store.records([int(row)]):
        raise ConfigError(f"no row {row} in {store.location}")
    image = store.embeddings([int(row)])  # (1, K, d), normalised when stored
    if text is None:
        return normalize_slots(image)
    text = np.asarray(text, dtype=np.float32)
    if text.shape not in (image.shape, image.shape[1:]):
        raise ConfigError(f"the text embedding is {text.shape}, the store's rows are (K, d) = {image.shape[1:]}")
    return normalize_slots(normalize_slots(text.reshape(image.shape)) + image)  # (1, K, d)


__all__ = ["like_query"]
