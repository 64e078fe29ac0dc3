"""How the doctor reads each dataset layout: an adapter per layout, all turning files into :class:`Entry` rows.

The JSON layouts are rows of the one table of layouts
(:data:`tbps_train.data.formats.LAYOUTS`), parsed by the readers' own
:func:`~tbps_train.data.formats.parse_entry`; the csv layout goes through the
csv reader's public steps, so the doctor refuses exactly what the readers refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError
from tbps_train.data import readers
from tbps_train.data.formats import (
    DATASETS, JSON_DATASETS, LAYOUTS, Entry, EntryProblem, Layout, json_type, parse_entry, read_json,
)

__all__ = ["ADAPTERS", "CsvAdapter", "DatasetAdapter", "JsonListAdapter", "adapter_for"]


class DatasetAdapter(Protocol):
    """How the doctor reads one dataset layout. ``load`` raises :class:`DataError` when the file as a
    whole cannot be read; entries that do not parse are returned as one message each."""

    title: str  # the dataset's usual spelling
    expected: str  # the file tbps reads, for messages
    sources: Mapping[str, str]  # top folder under the image folder -> the dataset its images come from

    def annotation_path(self, root: Path) -> Path | None: ...

    def image_dir(self, annotation: Path) -> Path: ...

    def load(self, annotation: Path) -> tuple[list[Entry], list[str]]: ...


class JsonListAdapter:
    """The field's JSON layout: a list of ``{split, id, <path field>, captions}`` beside ``imgs/``."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.title, self.expected, self.sources = layout.title, layout.annotation, layout.sources

    def annotation_path(self, root: Path) -> Path | None:
        if not root.is_dir():
            raise DataError(f"dataset root {root} is a file: pass the {self.title} folder that holds it")
        path = root / self.expected
        return path if path.is_file() else None

    def image_dir(self, annotation: Path) -> Path:
        return annotation.parent / self.layout.image_dir

    def load(self, annotation: Path) -> tuple[list[Entry], list[str]]:
        data = read_json(annotation, annotation.name)
        if not isinstance(data, list):
            raise DataError(f"{annotation.name} holds a JSON {json_type(data)}, expected a list of image "
                            "entries: restore it from the dataset archive")
        entries, bad = [], []
        for index, item in enumerate(data):
            # The image paths and the captions are checked later, each in its own section of the report.
            parsed = parse_entry(item, f"entry {index}", self.layout, content=False)
            if isinstance(parsed, EntryProblem):
                bad.append(parsed.sentence)
            else:
                entries.append(parsed)
        return entries, bad


@dataclass(frozen=True)
class CsvAdapter:
    """Your own data (``--dataset csv``): one row per (image, person_id, caption[, split, camera]), read by the
    reader itself, which stops at the first bad row (that row is the report's error). Without a split
    column, the splits are the recorded ones (``<file>.splits.json``) when they are of this very file, else
    the ones training would make (seed 0); the doctor never writes them."""

    title: str = "CSV/JSON Lines dataset"
    expected: str = f"{' or '.join(readers.CSV_ANNOTATION_NAMES)} (or the file itself as --root)"
    sources: Mapping[str, str] = field(default_factory=dict)

    def annotation_path(self, root: Path) -> Path | None:
        try:
            return readers.locate_csv(root)
        except InputFileNotFoundError:
            if not root.exists():
                raise
            return None

    def image_dir(self, annotation: Path) -> Path:
        return annotation.parent

    def load(self, annotation: Path) -> tuple[list[Entry], list[str]]:
        images, digest = readers.read_csv_images(annotation)
        splits = {image.person: image.split for image in images if image.split}
        if not splits:  # no split column: what training would use, without recording anything
            splits = (readers.recorded_csv_splits(annotation, digest)
                      or readers.make_identity_splits({image.person for image in images}))
        return [Entry(image.split or splits.get(image.person, "train"), image.person, image.image,
                      tuple(image.captions), where=f"line {image.line}") for image in images], []


ADAPTERS: dict[str, DatasetAdapter] = {
    **{name: JsonListAdapter(LAYOUTS[name]) for name in JSON_DATASETS},
    readers.CSV_DATASET: CsvAdapter(),
}


def adapter_for(dataset: str) -> DatasetAdapter:
    """The adapter of ``dataset``; raises :class:`DataError` for an unknown one, :class:`ConfigError` for a
    dataset tbps reads but the doctor cannot check yet."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if dataset not in ADAPTERS:
        raise ConfigError(f"tbps data check has no adapter for dataset {dataset!r} yet: "
                          f"it checks {', '.join(ADAPTERS)}")
    return ADAPTERS[dataset]
