"""The one record type every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageRecord:
    """One image of a person with the captions that describe it.

    ``person_id`` is the identity as written in the annotation file; training
    remaps identities to 0..c-1 itself, evaluation matches by this value.
    """

    image_path: Path
    person_id: int
    captions: tuple[str, ...]
