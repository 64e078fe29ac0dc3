"""The one record type every dataset reader returns, and the fingerprint of a split of them."""

from __future__ import annotations

import hashlib
import json
import os
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


def split_fingerprint(records: list[ImageRecord], base: str | Path) -> str:
    """Hex SHA-256 over the sorted (image path relative to ``base``, person id, caption) triples of ``records``.

    Relative paths, so a dataset moved to another folder keeps its fingerprint; sorted, so the order
    of the annotation file does not count. ``base`` is the folder the annotations' image paths are
    relative to (the dataset root, or the folder of a csv file).
    """
    base = os.path.abspath(base)
    rows = sorted((Path(os.path.relpath(os.path.abspath(r.image_path), base)).as_posix(), int(r.person_id), caption)
                  for r in records for caption in r.captions)
    digest = hashlib.sha256()
    for row in rows:  # one JSON array per line: no separator inside a caption can make two rows one
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()
