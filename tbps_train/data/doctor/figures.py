"""The figures a split is expected to have: the paper's, or ones the caller gives."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PUBLISHED", "PUBLISHED_NOTES", "PUBLISHED_SOURCE", "WHOLE_DATASET", "Figures"]

WHOLE_DATASET = "all"  # key of PUBLISHED figures given for the dataset as a whole, not per split


@dataclass(frozen=True)
class Figures:
    """Images, identities and captions of a split; None where the source does not give the figure."""

    images: int | None = None
    identities: int | None = None
    captions: int | None = None


PUBLISHED_SOURCE = "Park et al., Sec. 4.1"
PUBLISHED: dict[str, dict[str, Figures]] = {
    "cuhk-pedes": {"train": Figures(34054, 11003, 68126), "val": Figures(3078, 1000, 6158),
                   "test": Figures(3074, 1000, 6156)},
    # The paper gives image-text pairs per split (each pair is one caption) and identities for the whole set.
    "icfg-pedes": {"train": Figures(captions=34674), "test": Figures(captions=19848),
                   WHOLE_DATASET: Figures(identities=4102)},
    "rstpreid": {"train": Figures(18505, 3701, 37010), "val": Figures(1000, 200, 2000),
                 "test": Figures(1000, 200, 2000)},
}
PUBLISHED_NOTES = {
    "icfg-pedes": "the paper gives image-text pairs per split (compared with captions) and 4,102 identities in "
                  "all; images and identities per split are not published, so they are not compared",
}
