"""Readers for the on-disk formats of CUHK-PEDES, ICFG-PEDES and RSTPReid.

Every public codebase of the field (IRRA, SSAN, LGUR) uses the same layout: a
JSON list of image entries beside an ``imgs/`` folder, the image path in each
entry relative to ``imgs/``. The three formats differ only in the annotation
file's name, the name of the path field and the splits they hold: the table of
layouts (:data:`tbps_train.data.formats.LAYOUTS`) describes them, and one
function reads them all, entry by entry with
:func:`~tbps_train.data.formats.parse_entry`.

Every problem with the files raises :class:`DataError` (or
:class:`InputFileNotFoundError` when the root or the annotation file is
missing) with one message that names the file and the fix.

``--dataset csv`` reads a team's own captions: one row per (image, person id,
caption) in a CSV or JSON Lines file, images relative to that file's folder,
splits taken from a ``split`` column or made by identity and recorded beside
the file (:func:`read_csv_dataset`; :func:`locate_csv`,
:func:`read_csv_images` and :func:`recorded_csv_splits` are its steps, for
tools that check a file without training on it).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, NamedTuple

from tbps_runtime.atomic import parse_json, read_json, write_json_atomic
from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError, OutputError
from tbps_runtime.paths import resolve_inside
from tbps_runtime.text import short
from tbps_train.data.formats import (
    DATASETS, LAYOUTS, EntryProblem, Layout, has_visible_text, kept_captions, load_entry_list,
    parse_entry, quoted,
)
from tbps_train.data.records import ImageRecord

__all__ = [
    "CSV_ANNOTATION_NAMES", "CSV_DATASET", "CsvDataset", "CsvImage", "DATASETS", "SPLIT_FRACTIONS",
    "csv_splits_path", "dataset_splits", "has_split", "locate_csv", "make_csv_splits", "make_identity_splits",
    "read_csv_dataset", "read_csv_images", "read_split", "recorded_csv_splits",
]

logger = logging.getLogger(__name__)

CSV_DATASET = "csv"  # your own captions: a .csv or .jsonl file, see read_csv_dataset
_MAX_LISTED = 5  # missing images named in a message


def dataset_splits(dataset: str) -> tuple[str, ...]:
    """The splits ``dataset`` defines, e.g. ``("train", "test")`` for ICFG-PEDES."""
    return _layout(dataset).splits


def read_split(
    dataset: str, root: str | Path, split: str, check_images: bool = True
) -> list[ImageRecord]:
    """Read one split of a dataset stored at ``root``, in file order.

    ``dataset`` is one of :data:`DATASETS`; ``root`` holds the annotation file
    and ``imgs/``. Captions are stripped and empty ones (or invisible-only ones) dropped. Image paths
    are absolute; with ``check_images`` every one must exist.

    For ``"csv"``, ``root`` is the annotation file (``.csv``/``.jsonl``) or the
    folder holding ``annotations.csv``/``annotations.jsonl`` (:func:`read_csv_dataset`).
    """
    if dataset == CSV_DATASET:
        return _read_csv_split(root, split, check_images)
    layout = _layout(dataset)
    if split not in layout.splits:
        raise DataError(
            f"unknown split {split!r} for {dataset}: it has {quoted(layout.splits)}"
        )
    root = _check_root(root, layout)
    path = root / layout.annotation
    entries = load_entry_list(path)
    image_dir = root / layout.image_dir
    records = []
    for index, item in enumerate(entries):
        entry = parse_entry(item, f"entry {index}", layout)
        if isinstance(entry, EntryProblem):
            raise entry.error(f"{path}: {entry}")
        if entry.split == split:
            records.append(ImageRecord(image_dir / entry.image, entry.person_id, kept_captions(entry.captions)))
    if not records:
        found = sorted({e["split"] for e in entries})
        raise DataError(
            f"split {split!r} of {root} has no entries "
            f"({path.name} holds splits: {quoted(found) or 'none'})"
        )
    if check_images:
        _check_images(records, image_dir)
    return records


def _layout(dataset: str) -> Layout:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {quoted(DATASETS)}")
    return LAYOUTS[dataset]


def _check_root(root: str | Path, layout: Layout) -> Path:
    root = Path(root).expanduser().absolute()
    title = layout.title
    if not root.exists():
        raise InputFileNotFoundError(f"dataset root {root} does not exist: pass the {title} folder")
    if not root.is_dir():
        raise DataError(f"dataset root {root} is a file: pass the {title} folder that holds it")
    if not (root / layout.annotation).is_file():
        article = "an" if title[0] in "AEIOU" else "a"
        others = sorted(p.name for p in root.glob("*.json"))[:3]
        found = f"; it holds {', '.join(others)}" if others else ""
        raise InputFileNotFoundError(
            f"no {layout.annotation} under {root}: is this {article} {title} root? "
            f"({title} keeps its annotations in ROOT/{layout.annotation}, images in ROOT/{layout.image_dir}/{found})"
        )
    return root


def _check_images(records: list[ImageRecord], image_dir: Path,
                  fix: str = "unpack the dataset's images there") -> None:
    # os.path.isfile is False (never raises) for names the OS rejects.
    missing = [r.image_path for r in records if not os.path.isfile(r.image_path)]
    if not missing:
        return
    listed = ", ".join(str(p.relative_to(image_dir)) for p in missing[:_MAX_LISTED])
    more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    hint = "" if image_dir.is_dir() else f" ({image_dir} does not exist)"
    raise DataError(
        f"{len(missing)} of {len(records)} images are missing under {image_dir}{hint}: "
        f"{listed}{more}; {fix}"
    )


# ---------------------------------------------------------------- your own data: --dataset csv
_CSV = LAYOUTS[CSV_DATASET]
CSV_ANNOTATION_NAMES = _CSV.names  # looked for when the root is a folder
CSV_SPLITS = _CSV.splits
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train, val, test: identities when the file has no split column
MAX_CSV_ROWS = 10_000_000
SPLITS_FORMAT = "tbps-csv-splits"
_SPLITS_VERSION = 1
_COLUMNS = _CSV.fields  # image, person_id, caption, split, camera
_REQUIRED = (_CSV.path_field, _CSV.id_field, _CSV.captions_field)
_SUFFIXES = tuple(Path(name).suffix for name in CSV_ANNOTATION_NAMES)


@dataclass(frozen=True)
class CsvDataset:
    """A ``--dataset csv`` annotation file, read, grouped by image and split.

    ``splits`` maps each split that has images to its records, in the order
    the images first appear in the file. ``person_ids`` maps each identity as
    written (a name or a number) to ``ImageRecord.person_id``: the sorted
    unique strings numbered 0..n-1. ``split_source`` is ``"column"`` (the
    file's ``split`` column), ``"recorded"`` (``splits_file`` reused) or
    ``"made"`` (just made by identity and written to ``splits_file``).
    """

    path: Path
    splits: dict[str, list[ImageRecord]]
    person_ids: dict[str, int]
    split_source: str
    splits_file: Path | None


class _Row(NamedTuple):
    line: int  # where the row starts in the file, the header being line 1
    image: str  # as written, for messages
    image_path: Path
    person: str
    caption: str
    split: str | None
    camera: str | None


@dataclass
class CsvImage:
    """One image of a csv file with all its rows merged: where it first appears, the values its rows
    agree on (``split`` None: the file has no split column), its non-empty captions in file order."""

    line: int  # of its first row
    image: str  # as written, relative to the file's folder
    image_path: Path
    person: str
    split: str | None
    camera: str | None
    captions: list[str]


def csv_splits_path(annotations: str | Path) -> Path:
    """Where the splits made for ``annotations`` are recorded: ``<annotations>.splits.json`` beside it."""
    annotations = Path(annotations)
    return annotations.with_name(annotations.name + ".splits.json")


def has_split(dataset: str, root: str | Path, split: str) -> bool:
    """Whether ``split`` of the dataset at ``root`` has records: the benchmarks define their splits; a CSV
    with a split column may hold only some of train/val/test."""
    if dataset == CSV_DATASET:
        return bool(read_csv_dataset(root).splits.get(split))
    return split in dataset_splits(dataset)


def read_csv_dataset(root: str | Path) -> CsvDataset:
    """Read a team's own captions: one row per (image, person id, caption).

    ``root`` is a ``.csv`` file (header required, column names in any case:
    ``image``, ``person_id``, ``caption``, optional ``split`` and ``camera``;
    other columns ignored; UTF-8 with or without a BOM), a ``.jsonl`` file
    (one object per line with those keys), or a folder holding exactly one
    ``annotations.csv`` or ``annotations.jsonl``. Image paths are relative to
    the file's folder. Rows of one image become one record with all its
    non-empty captions in file order.

    With no ``split`` column (or one left empty), splits are made by identity
    (:func:`make_identity_splits`, seed 0) and recorded in
    :func:`csv_splits_path`; that file is reused while the annotation file's
    SHA-256 matches, and made again (same seed and fractions) when it changed.

    Raises:
        InputFileNotFoundError: ``root`` or the annotation file is missing.
        DataError: a malformed file, named with the line and column at fault.
    """
    path = locate_csv(root)
    images, digest = read_csv_images(path)
    person_ids = _person_ids(images)
    if images[0].split is not None:  # _group made sure every row has a split, or none has
        _warn_shared_identities(images, path)
        image_splits = [image.split for image in images]
        source, splits_file = "column", None
    else:
        by_person, source = _recorded_or_made_splits(path, digest, person_ids)
        image_splits = [by_person[image.person] for image in images]
        splits_file = csv_splits_path(path)
    splits: dict[str, list[ImageRecord]] = {}
    for image, split in zip(images, image_splits):
        record = ImageRecord(image.image_path, person_ids[image.person], tuple(image.captions), image.camera)
        splits.setdefault(split, []).append(record)
    ordered = {split: splits[split] for split in CSV_SPLITS if split in splits}
    return CsvDataset(path, ordered, person_ids, source, splits_file)


def _person_ids(images: list[CsvImage]) -> dict[str, int]:
    """Identity as written -> ImageRecord.person_id: the sorted unique strings numbered 0..n-1."""
    return {person: i for i, person in enumerate(sorted({image.person for image in images}))}


def make_identity_splits(identities: Iterable[str], seed: int = 0,
                         fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> dict[str, str]:
    """Assign each identity to ``"train"``, ``"val"`` or ``"test"``, so no identity is in two splits.

    Identities are ordered by SHA-256 of ``"{seed}:{identity}"`` (the same on
    every machine and Python version); the first ones go to train, then val,
    then test, in counts ``round(n * fraction)`` for val and test, at least
    one each (unless its fraction is 0) when there are 3 or more identities
    (fewer: all train), and always one left to train on.

    Raises:
        ConfigError: ``fractions`` are not three non-negative numbers summing to 1 with train > 0.
    """
    _check_fractions(fractions)
    names = sorted(set(identities), key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).digest())
    n = len(names)
    n_val = n_test = 0
    if n >= 3:
        n_val, n_test = (max(int(f > 0), int(n * f + 0.5)) for f in fractions[1:])
        while n_val + n_test > n - 1:  # keep one identity to train on
            n_val, n_test = (n_val - 1, n_test) if n_val > n_test else (n_val, n_test - 1)
    n_train = n - n_val - n_test
    return {name: "train" if i < n_train else "val" if i < n_train + n_val else "test"
            for i, name in enumerate(names)}


def make_csv_splits(root: str | Path, seed: int = 0,
                    fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> Path:
    """Make splits by identity for a file without a ``split`` column and record them, replacing any
    recorded before (e.g. to try another seed); returns :func:`csv_splits_path`.

    Raises:
        DataError: the file is malformed, or has a ``split`` column (its splits are used as written).
        OutputError: the splits file cannot be written.
    """
    _check_fractions(fractions)
    path = locate_csv(root)
    images, digest = read_csv_images(path)
    if images[0].split is not None:
        raise DataError(f"{path} has a split column (line {images[0].line}): its splits are used as written; "
                        "clear that column to have splits made by identity")
    person_ids = _person_ids(images)
    splits = make_identity_splits(person_ids, seed, fractions)
    return _write_splits(path, digest, seed, fractions, splits, person_ids, required=True)


def _read_csv_split(root: str | Path, split: str, check_images: bool) -> list[ImageRecord]:
    if split not in CSV_SPLITS:
        raise DataError(f"unknown split {split!r} for {CSV_DATASET}: it has {quoted(CSV_SPLITS)}")
    data = read_csv_dataset(root)
    records = data.splits.get(split)
    if not records:
        if data.split_source == "column":
            fix = f"give some rows the split {split!r}, or leave the split column empty to have splits made"
        else:
            fix = "splits are made by identity: val and test need at least 3 identities in the file"
        raise DataError(f"split {split!r} of {data.path} has no images ({data.path.name} holds splits: "
                        f"{quoted(data.splits) or 'none'}); {fix}")
    if check_images:
        _check_images(records, data.path.parent, f"check the image column of {data.path.name} "
                                                 "(paths are relative to its folder)")
    return records


def locate_csv(root: str | Path) -> Path:
    """The annotation file of a ``--dataset csv`` root: ``root`` itself (a ``.csv``/``.jsonl`` file), or the
    one ``annotations.csv`` or ``annotations.jsonl`` in the folder ``root``.

    Raises:
        InputFileNotFoundError: ``root`` does not exist, or the folder holds neither file.
        DataError: the folder holds both, or ``root`` is a file of another kind.
    """
    path = Path(root).expanduser().absolute()
    wanted = " or ".join(CSV_ANNOTATION_NAMES)
    if not path.exists():
        raise InputFileNotFoundError(f"dataset root {path} does not exist: pass your .csv or .jsonl annotations, "
                                     f"or the folder holding {wanted}")
    if path.is_dir():
        found = [path / name for name in CSV_ANNOTATION_NAMES if (path / name).is_file()]
        if len(found) > 1:
            raise DataError(f"{path} holds both {' and '.join(CSV_ANNOTATION_NAMES)}: keep one, or pass the "
                            "file to read")
        if not found:
            try:
                others = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _SUFFIXES)[:3]
            except OSError:  # a folder we may not list: the message just names fewer files
                others = []
            held = f"; it holds {', '.join(others)}: pass that file itself" if others else ""
            raise InputFileNotFoundError(f"no {wanted} under {path}{held} (a csv dataset has one row per image, "
                                         "person_id, caption)", code="csv_dataset_missing", wanted=wanted,
                                         path=str(path), held=held)
        return found[0]
    if path.suffix.lower() not in _SUFFIXES:
        raise DataError(f"{path} is not a .csv or .jsonl file: a csv dataset has one row per (image, person_id, "
                        "caption) in either", code="csv_dataset_suffix", path=str(path))
    return path


# ---- reading rows
class _Lines:
    """A file's lines as text, hashed as they are read; UTF-8 only, a leading BOM skipped."""

    def __init__(self, stream: BinaryIO, path: Path):
        self.stream, self.path = stream, path
        self.digest = hashlib.sha256()
        self.number = 0  # of the line last read

    def __iter__(self) -> Iterator[str]:
        for raw in self.stream:
            self.number += 1
            self.digest.update(raw)
            if self.number == 1:
                if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                    raise DataError(f"{self.path} is UTF-16 text: save it as UTF-8 (spreadsheets: 'CSV UTF-8')")
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{self.path}: line {self.number} is not UTF-8 (byte {raw[e.start]:#04x}, the "
                                f"line's byte {e.start + 1}): save the file as UTF-8") from e


def read_csv_images(path: Path) -> tuple[list[CsvImage], str]:
    """The images of the annotation file ``path`` in order of first appearance, and the file's SHA-256 (hex).

    Every row is checked; the first bad one raises :class:`DataError` naming its line and column.
    """
    try:
        with open(path, "rb") as stream:
            lines = _Lines(stream, path)
            rows = _jsonl_rows(lines, path) if path.suffix.lower() == ".jsonl" else _csv_rows(lines, path)
            images = _group(rows, path)  # reads to the end of the file, so the digest is the whole file's
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    return images, lines.digest.hexdigest()


def _csv_rows(lines: _Lines, path: Path) -> Iterator[_Row]:
    paths: dict[str, Path] = {}
    reader = csv.reader(lines, strict=True)  # strict: an unclosed quote is an error, not a swallowed file
    header: dict[str, int] | None = None
    width = count = 0
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"{path}: line {start} is not valid CSV ({e}); quote fields that hold commas, "
                            'quotes or line breaks, doubling quotes inside them ("a ""red"" coat")') from e
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header, width = _header(fields, path, start), len(fields)
            continue
        count = _count_row(count, path, start)
        if len(fields) > width:
            raise DataError(f"{path}: line {start} has {len(fields)} fields, the header has {width}: quote a caption "
                            'that holds a comma ("a man in a red jacket, black jeans")')
        values = {name: fields[i] for name, i in header.items() if i < len(fields)}
        for name in _REQUIRED:
            if name not in values:
                raise DataError(f"{path}: line {start} has no {name!r} value ({len(fields)} fields, the header "
                                f"has {width})")
        yield _row(values, path, start, paths)
    if header is None:
        raise DataError(f"{path} is empty: it needs a header line ({','.join(_COLUMNS)}) and one row per caption")


def _header(fields: list[str], path: Path, line: int) -> dict[str, int]:
    """Column name -> index for the columns tbps reads; names compared in lower case, stripped."""
    columns: dict[str, int] = {}
    for i, name in enumerate(fields):
        name = name.strip().lower()
        if name in _COLUMNS:
            if name in columns:
                raise DataError(f"{path}: the header (line {line}) has two {name!r} columns: keep one")
            columns[name] = i
    missing = [name for name in _REQUIRED if name not in columns]
    if missing:
        found = short(fields, 100)
        hint = ""
        if len(fields) == 1 and any(sep in fields[0] for sep in ";\t"):
            hint = "; the file looks separated by ';' or tabs: tbps reads comma-separated values"
        elif any(f.strip().lower().endswith((".jpg", ".jpeg", ".png")) for f in fields):
            hint = "; the first line looks like data: add a header line"
        raise DataError(f"{path}: the header (line {line}) has no {quoted(missing)} column (it has {found}); "
                        f"name the columns {', '.join(_COLUMNS[:3])}[, split, camera]{hint}")
    return columns


def _jsonl_rows(lines: _Lines, path: Path) -> Iterator[_Row]:
    paths: dict[str, Path] = {}
    count = 0
    for text in lines:
        line = lines.number
        if not text.strip():
            continue
        count = _count_row(count, path, line)
        try:
            entry = parse_json(text.rstrip("\r\n"))  # so a column number is on this line
        except ValueError as e:  # a syntax error, nesting too deep, an integer too long
            detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
            raise DataError(f"{path}: line {line} is not valid JSON ({detail}); JSON Lines holds one object "
                            "per line") from e
        if not isinstance(entry, dict):
            raise DataError(f"{path}: line {line} is a JSON {type(entry).__name__}, expected an object with "
                            f"{', '.join(_REQUIRED)}")
        values: dict[str, Any] = {}
        for key, value in entry.items():
            name = key.strip().lower()
            if name in _COLUMNS:
                if name in values:
                    raise DataError(f"{path}: line {line} has two {name!r} keys: keep one")
                values[name] = value
        for name in _REQUIRED:
            if name not in values:
                raise DataError(f"{path}: line {line} has no {name!r} key (it has {quoted(entry) or 'none'})")
        yield _row(values, path, line, paths)


def _count_row(count: int, path: Path, line: int) -> int:
    if count >= MAX_CSV_ROWS:
        raise DataError(f"{path}: more than {MAX_CSV_ROWS:,} rows (line {line}): split the data into "
                        "several files and train on one at a time")
    return count + 1


def _row(values: dict[str, Any], path: Path, line: int, paths: dict[str, Path]) -> _Row:
    """One row's values checked and normalised; a DataError names the line and column at fault.
    ``paths`` caches image names already checked (an image has a row per caption)."""
    where = f"{path}: line {line}"
    folder = path.parent
    image = values["image"]
    if not isinstance(image, str) or not image.strip():
        raise DataError(f"{where}: column 'image' is {short(image)}, expected an image path relative to {folder}")
    image = image.strip().replace("\\", "/")  # a file written on Windows
    image_path = paths.get(image)
    if image_path is None:
        image_path = paths[image] = resolve_inside(folder, image, f"{where}: column 'image'")  # no '/x', no '..'
    person = values["person_id"]
    if isinstance(person, int) and not isinstance(person, bool):
        person = str(person)
    if not isinstance(person, str) or not person.strip():
        raise DataError(f"{where}: column 'person_id' is {short(person)}, expected an integer or a name")
    caption = values["caption"]
    if not isinstance(caption, str):
        raise DataError(f"{where}: column 'caption' is {short(caption)}, expected text")
    caption = caption.replace("\r\n", "\n")  # a line break inside a spreadsheet's quoted cell
    split = _optional_text(values.get("split"), where, "split")
    if split is not None:
        split = split.lower()
        if split not in CSV_SPLITS:
            raise DataError(f"{where}: column 'split' is {short(values['split'])}, expected one of "
                            f"{quoted(CSV_SPLITS)} (or empty in every row, to have splits made)")
    camera = _optional_text(values.get("camera"), where, "camera", numbers=True)
    return _Row(line, image, image_path, person.strip(), caption, split, camera)


def _optional_text(value: Any, where: str, column: str, numbers: bool = False) -> str | None:
    """A stripped string, or None for a missing or empty value (JSON null included)."""
    if value is None:
        return None
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} is {short(value)}, expected text")
    return value.strip() or None


def _group(rows: Iterable[_Row], path: Path) -> list[CsvImage]:
    """Rows of one image merged into one :class:`CsvImage`; conflicts and caption-less images raise."""
    images: dict[Path, CsvImage] = {}
    with_split = without_split = None  # the first row of each kind
    dropped = 0
    for row in rows:
        if row.split is None:
            without_split = without_split or row
        else:
            with_split = with_split or row
        if with_split and without_split:
            raise DataError(f"{path}: line {with_split.line} has a split ({with_split.split!r}) and line "
                            f"{without_split.line} has none: give every row a split, or none to have them made")
        image = images.get(row.image_path)
        if image is None:
            image = images[row.image_path] = CsvImage(row.line, row.image, row.image_path, row.person, row.split,
                                                    row.camera, [])
        else:
            _merge(image, row, path)
        caption = row.caption.strip()
        if caption and (caption.isprintable() or has_visible_text(caption)):  # invisible-only is empty
            image.captions.append(caption)
        else:
            dropped += 1
    if not images:
        raise DataError(f"{path} has no rows: add one row per (image, person_id, caption)")
    for image in images.values():
        if not image.captions:
            raise DataError(f"{path}: line {image.line}: image {image.image!r} has no non-empty caption: "
                            "every image needs at least one")
    if dropped:
        logger.warning("%s: dropped %d empty caption%s (their images have others)", path, dropped,
                       "" if dropped == 1 else "s")
    return list(images.values())


def _merge(image: CsvImage, row: _Row, path: Path) -> None:
    """Check that another row of ``image`` agrees with its first one (camera: fills a missing one)."""
    for column, first, again in (("person_id", image.person, row.person), ("split", image.split, row.split)):
        if first != again:
            raise DataError(f"{path}: lines {image.line} and {row.line} give image {image.image!r} two "
                            f"{column} values ({first!r} and {again!r}): an image shows one person in one split")
    if row.camera is not None and image.camera is not None and row.camera != image.camera:
        raise DataError(f"{path}: lines {image.line} and {row.line} give image {image.image!r} two cameras "
                        f"({image.camera!r} and {row.camera!r})")
    image.camera = image.camera or row.camera


def _warn_shared_identities(images: list[CsvImage], path: Path) -> None:
    splits_of: dict[str, set[str]] = {}
    for image in images:
        splits_of.setdefault(image.person, set()).add(image.split)
    shared = sorted(person for person, splits in splits_of.items() if len(splits) > 1)
    if shared:
        logger.warning("%s: %d identit%s in more than one split (e.g. %r): evaluation then meets people the "
                       "model trained on", path, len(shared), "y is" if len(shared) == 1 else "ies are", shared[0])


# ---- splits made by identity, recorded beside the file
def _check_fractions(fractions: Any) -> None:
    ok = (isinstance(fractions, (tuple, list)) and len(fractions) == 3
          and all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f <= 1 for f in fractions)
          and abs(sum(fractions) - 1) < 1e-6 and fractions[0] > 0)
    if not ok:
        raise ConfigError(f"split fractions {fractions!r} must be three numbers train, val, test in [0, 1] "
                          "summing to 1, train > 0 (default 0.8, 0.1, 0.1)")


def _recorded_or_made_splits(path: Path, digest: str, person_ids: dict[str, int]) -> tuple[dict[str, str], str]:
    """identity -> split, from the recorded file when it is of this very file, else made and recorded."""
    splits_file = csv_splits_path(path)
    seed, fractions = 0, SPLIT_FRACTIONS
    if splits_file.is_file():
        recorded = _load_splits(splits_file)
        if recorded["sha256"] == digest:
            splits = recorded["splits"]
            if set(splits) != set(person_ids):
                odd = sorted(set(splits) ^ set(person_ids))[0]
                raise DataError(f"{splits_file} and {path.name} disagree on identity {odd!r}: delete "
                                f"{splits_file.name} to have splits made again")
            return splits, "recorded"
        seed, fractions = recorded["seed"], tuple(recorded["fractions"][s] for s in CSV_SPLITS)
        logger.warning("%s changed since its splits were made: making them again (seed %d) in %s",
                       path, seed, splits_file)
    splits = make_identity_splits(person_ids, seed, fractions)
    _write_splits(path, digest, seed, fractions, splits, person_ids)
    return splits, "made"


def recorded_csv_splits(path: Path, digest: str) -> dict[str, str] | None:
    """Identity -> split as recorded beside the annotation file ``path`` (:func:`csv_splits_path`), when that
    record is well formed and of this very file (``digest``: its SHA-256, from :func:`read_csv_images`);
    else None. Reads only: nothing is made or written."""
    splits_file = csv_splits_path(path)
    if not splits_file.is_file():
        return None
    try:
        recorded = _load_splits(splits_file)
    except DataError:
        return None
    return recorded["splits"] if recorded["sha256"] == digest else None


def _load_splits(splits_file: Path) -> dict[str, Any]:
    """A splits file checked field by field (it may have been edited by hand)."""
    fix = "delete it to have splits made again"
    try:
        doc = read_json(splits_file)
    except (ValueError, OSError) as e:
        raise DataError(f"{splits_file} is not readable JSON ({e}); {fix}") from e
    if not isinstance(doc, dict) or doc.get("format") != SPLITS_FORMAT or doc.get("version") != _SPLITS_VERSION:
        raise DataError(f"{splits_file} is not a version-{_SPLITS_VERSION} {SPLITS_FORMAT} file; {fix}")
    fractions = doc.get("fractions")
    checks = {
        "sha256": isinstance(doc.get("sha256"), str),
        "seed": isinstance(doc.get("seed"), int) and not isinstance(doc.get("seed"), bool),
        "fractions": isinstance(fractions, dict) and set(fractions) == set(CSV_SPLITS),
        "splits": isinstance(doc.get("splits"), dict) and all(
            isinstance(k, str) and v in CSV_SPLITS for k, v in doc["splits"].items()),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if not bad:
        try:
            _check_fractions(tuple(fractions[s] for s in CSV_SPLITS))
        except ConfigError:
            bad = ["fractions"]
    if bad:
        raise DataError(f"{splits_file}: {quoted(bad)} malformed (splits map identities to "
                        f"{quoted(CSV_SPLITS)}); {fix}")
    return doc


def _write_splits(path: Path, digest: str, seed: int, fractions: tuple[float, ...], splits: dict[str, str],
                  person_ids: dict[str, int], required: bool = False) -> Path:
    splits_file = csv_splits_path(path)
    counts = {split: sum(1 for s in splits.values() if s == split) for split in CSV_SPLITS}
    document = {
        "format": SPLITS_FORMAT, "version": _SPLITS_VERSION, "annotations": path.name, "sha256": digest,
        "seed": seed, "fractions": dict(zip(CSV_SPLITS, fractions)), "identities": counts,
        "person_ids": person_ids, "splits": {person: splits[person] for person in sorted(splits)},
    }
    try:
        write_json_atomic(splits_file, document)
    except OSError as e:
        if required:
            raise OutputError(f"cannot write {splits_file}: {e}") from e
        # a read-only dataset: the splits are deterministic, so every read still agrees
        logger.warning("cannot record the splits in %s (%s): they are made again, identically, on every read",
                       splits_file, e)
    else:
        logger.info("identity splits of %s recorded in %s (train/val/test identities: %d/%d/%d)", path.name,
                    splits_file, counts["train"], counts["val"], counts["test"])
    return splits_file
