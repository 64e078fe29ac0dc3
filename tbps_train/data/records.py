"""The one record type every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageRecord:
    """One image of a person with the captions that describe it.

    ``person_id`` is the identity as written in the annotation file (for
    ``--dataset csv``, whose identities may be names, its number among the
    file's sorted identities); training remaps identities to 0..c-1 itself,
    evaluation matches by this value. ``camera`` is the camera the crop came
    from when the annotations say (the csv ``camera`` column), else None.
    """

    image_path: Path
    person_id: int
    captions: tuple[str, ...]
    camera: str | None = None
