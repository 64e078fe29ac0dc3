"""Readers for the on-disk formats of CUHK-PEDES, ICFG-PEDES and RSTPReid.

Every public codebase of the field (IRRA, SSAN, LGUR) uses the same layout: a
JSON list of image entries beside an ``imgs/`` folder, the image path in each
entry relative to ``imgs/``. The three formats differ only in the annotation
file's name, the name of the path field and the splits they hold, so one
declarative table describes them and one function reads them all.

Every problem with the files raises :class:`DataError` (or
:class:`InputFileNotFoundError` when the root or the annotation file is
missing) with one message that names the file and the fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbps_runtime.atomic import parse_json
from tbps_runtime.errors import DataError, InputFileNotFoundError
from tbps_runtime.model.encoder import visible_text
from tbps_runtime.paths import resolve_inside
from tbps_train.data.records import ImageRecord

__all__ = ["DATASETS", "dataset_splits", "read_split"]


@dataclass(frozen=True)
class _Format:
    title: str  # the dataset's usual spelling, for messages
    annotation: str  # file name under the root
    path_field: str  # entry field holding the image path, relative to imgs/
    splits: tuple[str, ...]


_FORMATS: dict[str, _Format] = {
    "cuhk-pedes": _Format("CUHK-PEDES", "reid_raw.json", "file_path", ("train", "val", "test")),
    "icfg-pedes": _Format("ICFG-PEDES", "ICFG-PEDES.json", "file_path", ("train", "test")),
    "rstpreid": _Format("RSTPReid", "data_captions.json", "img_path", ("train", "val", "test")),
}
DATASETS: tuple[str, ...] = tuple(_FORMATS)
IMAGE_DIR = "imgs"
_MAX_LISTED = 5  # missing images named in a message


def dataset_splits(dataset: str) -> tuple[str, ...]:
    """The splits ``dataset`` defines, e.g. ``("train", "test")`` for ICFG-PEDES."""
    return _format(dataset).splits


def read_split(
    dataset: str, root: str | Path, split: str, check_images: bool = True
) -> list[ImageRecord]:
    """Read one split of a dataset stored at ``root``, in file order.

    ``dataset`` is one of :data:`DATASETS`; ``root`` holds the annotation file
    and ``imgs/``. Captions are stripped and empty ones (or invisible-only ones) dropped. Image paths
    are absolute; with ``check_images`` every one must exist.
    """
    fmt = _format(dataset)
    if split not in fmt.splits:
        raise DataError(
            f"unknown split {split!r} for {dataset}: it has {_quoted(fmt.splits)}"
        )
    root = _check_root(root, fmt)
    path = root / fmt.annotation
    entries = _load_entries(path)
    records = []
    for index, entry in enumerate(entries):
        entry_split, record = _parse_entry(entry, index, path, fmt, root / IMAGE_DIR)
        if entry_split == split:
            records.append(record)
    if not records:
        found = sorted({e["split"] for e in entries})
        raise DataError(
            f"split {split!r} of {root} has no entries "
            f"({path.name} holds splits: {_quoted(found) or 'none'})"
        )
    if check_images:
        _check_images(records, root)
    return records


def _format(dataset: str) -> _Format:
    if dataset not in _FORMATS:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {_quoted(DATASETS)}")
    return _FORMATS[dataset]


def _quoted(names) -> str:
    return ", ".join(repr(n) for n in names)


def _check_root(root: str | Path, fmt: _Format) -> Path:
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise InputFileNotFoundError(f"dataset root {root} does not exist: pass the {fmt.title} folder")
    if not root.is_dir():
        raise DataError(f"dataset root {root} is a file: pass the {fmt.title} folder that holds it")
    if not (root / fmt.annotation).is_file():
        article = "an" if fmt.title[0] in "AEIOU" else "a"
        others = sorted(p.name for p in root.glob("*.json"))[:3]
        found = f"; it holds {', '.join(others)}" if others else ""
        raise InputFileNotFoundError(
            f"no {fmt.annotation} under {root}: is this {article} {fmt.title} root? "
            f"({fmt.title} keeps its annotations in ROOT/{fmt.annotation}, images in ROOT/{IMAGE_DIR}/{found})"
        )
    return root


def _load_entries(path: Path) -> list[dict[str, Any]]:
    """The annotation file's top-level list; entries are checked one by one later."""
    try:
        data = parse_json(path.read_bytes())
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; "
            f"restore the file from the dataset archive"
        ) from e
    except ValueError as e:  # not UTF-8, nested too deeply, an integer too long
        raise DataError(f"{path} is not readable JSON text ({e}); restore it from the dataset archive") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if not isinstance(data, list):
        raise DataError(
            f"{path} holds a JSON {type(data).__name__}, expected a list of image entries"
        )
    return data


def _parse_entry(
    entry: Any, index: int, path: Path, fmt: _Format, image_dir: Path
) -> tuple[str, ImageRecord]:
    """``(split, record)`` for one entry; raises :class:`DataError` naming the index and field."""
    where = f"{path}: entry {index}"
    if not isinstance(entry, dict):
        raise DataError(f"{where} is a JSON {type(entry).__name__}, expected an object")
    for field in ("split", "id", fmt.path_field, "captions"):
        if field not in entry:
            raise DataError(f"{where} has no {field!r} field (it has {_quoted(entry) or 'none'})")
    split, person_id, rel, captions = (entry[f] for f in ("split", "id", fmt.path_field, "captions"))
    if not isinstance(split, str):
        raise DataError(f"{where}: 'split' is {split!r}, expected a string such as 'train'")
    if not isinstance(person_id, int) or isinstance(person_id, bool) or not -2 ** 63 <= person_id < 2 ** 63:
        raise DataError(f"{where}: 'id' is {_short(person_id)}, expected an integer identity (64-bit)")
    _check_image_path(rel, where, fmt.path_field)
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise DataError(f"{where}: 'captions' is {_short(captions)}, expected a list of strings")
    kept = tuple(c.strip() for c in captions if visible_text(c).strip())  # as a query: invisible-only is empty
    if not kept:
        raise DataError(f"{where} ({rel}) has no non-empty caption: every image needs at least one")
    return split, ImageRecord(image_dir / rel, person_id, kept)


def _check_image_path(rel: Any, where: str, field: str) -> None:
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"{where}: {field!r} is {_short(rel)}, expected an image path relative to {IMAGE_DIR}/")
    resolve_inside(IMAGE_DIR, rel, f"{where}: {field!r}")  # no absolute path, no '..'


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_images(records: list[ImageRecord], root: Path) -> None:
    # os.path.isfile is False (never raises) for names the OS rejects.
    missing = [r.image_path for r in records if not os.path.isfile(r.image_path)]
    if not missing:
        return
    image_dir = root / IMAGE_DIR
    listed = ", ".join(str(p.relative_to(image_dir)) for p in missing[:_MAX_LISTED])
    more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    hint = "" if image_dir.is_dir() else f" ({image_dir} does not exist)"
    raise DataError(
        f"{len(missing)} of {len(records)} images are missing under {image_dir}{hint}: "
        f"{listed}{more}; unpack the dataset's images there"
    )
