"""Converters between the dataset layouts in use: ``tbps data convert``.

The layouts (``--from``/``--to``), each as the public code that reads it has it:

- ``cuhk-original``: ``caption_all.json`` of the CUHK-PEDES release, a list of ``{id, file_path, captions,
  processed_tokens?}``; without a ``split`` field, Li et al.'s split by identity is added
  (:data:`CUHK_STANDARD_SPLIT`).
- ``cuhk-pedes``: ``reid_raw.json`` (the authors' README, IRRA's ``datasets/cuhkpedes.py``), a list of
  ``{split, id, file_path, captions, processed_tokens}``; ``icfg-pedes``: ``ICFG-PEDES.json``, the same
  with splits train and test only; ``rstpreid``: ``data_captions.json``, ``{split, id, img_path, captions}``.
- ``rasa``: ``processed_data/{train,val,test}.json`` as RaSa's ``data_process.py`` writes them: the raw
  entries split by file, RSTPReid's ``img_path`` renamed ``file_path``.
- ``tbps-clip``: ``{train,test}_reid.json`` (TBPS-CLIP's ``misc/caption_dataset.py``): ``{id, file_path,
  captions, captions_bt?}``.
- ``aptm``: ``PREFIX_{train,val,test}.json`` (APTM's ``dataset/re_dataset.py``, e.g. ``cuhk_train.json``):
  train one ``{image, caption, image_id}`` per caption, val/test one ``{image, caption: [..], image_id}``
  per image; ``image_id`` is the identity, ``image`` relative to the folder that holds ``imgs/``.
- ``csv``: ``annotations.csv``, ``image,person_id,caption,split,camera``, a row per caption, read by
  ``--dataset csv``'s own reader (:func:`tbps_train.data.readers.read_csv_dataset`).

Image paths are untrusted (an absolute path or ``..`` is refused, naming the entry); images are never
copied: ``ROOT/imgs`` becomes a relative symbolic link to the input's image folder (or ``--images``).
Captions are stripped, as every reader strips them, and empty ones dropped. Every entry of a JSON input is
checked before anything is written, up to 20 problems listed in one :class:`DataError`; the files are
written atomically, then read back (with :func:`tbps_train.data.readers.read_split` for the layouts it
reads) for the per-split summary.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from tbps_runtime.atomic import atomic_write, parse_json
from tbps_runtime.cli.support import TbpsCommand, json_option, quiet_option, setup_logging, user_errors_exit_2
from tbps_runtime.errors import DataError, InputFileNotFoundError, OutputError, UnsafePathError
from tbps_runtime.model.encoder import visible_text
from tbps_runtime.paths import printable, resolve_inside
from tbps_train.data import readers

__all__ = ["CUHK_STANDARD_SPLIT", "FORMATS", "Conversion", "Entry", "Source", "SplitCounts", "convert",
           "convert_command", "convert_dataset", "detect_format", "read_layout", "standard_cuhk_split"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_DIR = "imgs"
MAX_PROBLEMS = 20  # listed in one error; the rest are counted
# Li et al.'s CUHK-PEDES split is by identity: the authors' reid_raw.json gives "id": 11003 a "train" split
# (their README), IRRA numbers train identities 1..11003 without gaps, and IRRA-derived loaders document
# val 11004-12003 and test 12004-13003 (11,003 / 1,000 / 1,000 identities, as in the paper).
CUHK_STANDARD_SPLIT = (("train", 1, 11003), ("val", 11004, 12003), ("test", 12004, 13003))


@dataclass(frozen=True)
class _Format:
    title: str
    kind: str  # "single" (one JSON file), "per-split" (a JSON file per split), "aptm", "csv"
    annotation: str  # file name; {split} and {prefix} filled in per split
    path_field: str
    id_field: str = "id"
    captions_field: str = "captions"
    splits: tuple[str, ...] = SPLITS
    subdir: str = ""  # rasa's files live in ROOT/processed_data


_FORMATS: dict[str, _Format] = {
    "cuhk-original": _Format("CUHK-PEDES (caption_all.json)", "single", "caption_all.json", "file_path"),
    "cuhk-pedes": _Format("CUHK-PEDES", "single", "reid_raw.json", "file_path"),
    "icfg-pedes": _Format("ICFG-PEDES", "single", "ICFG-PEDES.json", "file_path", splits=("train", "test")),
    "rstpreid": _Format("RSTPReid", "single", "data_captions.json", "img_path"),
    "rasa": _Format("RaSa", "per-split", "{split}.json", "file_path", subdir="processed_data"),
    "tbps-clip": _Format("TBPS-CLIP", "per-split", "{split}_reid.json", "file_path"),
    "aptm": _Format("APTM", "aptm", "{prefix}_{split}.json", "image", "image_id", "caption"),
    "csv": _Format("CSV", "csv", "annotations.csv", "image", "person_id", "caption"),
}
FORMATS: tuple[str, ...] = tuple(_FORMATS)
_APTM_PREFIX = {"cuhk-original": "cuhk", "cuhk-pedes": "cuhk", "icfg-pedes": "icfg", "rstpreid": "rstp"}
_APTM_FILE = re.compile(r"(.+)_(train|val|test)\.json")
_INTEGER = re.compile(r"-?[0-9]+")
_CRLF = re.compile(r"\r+\n")  # CR LF, CR CR LF, ...: one LF
_CSV_COLUMNS = ("image", "person_id", "caption", "split", "camera")


@dataclass(frozen=True)
class Entry:
    """One image of a person with its captions, whatever the layout.

    ``image`` is relative to the images folder. Once converted, ``person_id`` is an int and ``split``
    one of train/val/test; while reading, ids may still be strings (csv, aptm) and the split None.
    """

    split: str | None
    person_id: int | str
    image: str
    captions: tuple[str, ...]
    camera: str | None = None
    tokens: tuple[tuple[str, ...], ...] | None = None  # processed_tokens as read, if any


@dataclass(frozen=True)
class SplitCounts:
    entries: int  # JSON objects or CSV rows written
    images: int
    identities: int
    captions: int


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert_dataset` wrote and what reading it back found."""

    from_format: str
    to_format: str
    input_path: Path
    root: Path
    annotation: Path  # the annotation file, or the folder of the per-split files
    written: tuple[Path, ...]
    splits: dict[str, SplitCounts]
    images_dir: Path | None  # ROOT/imgs when it exists
    images_found: int | None  # images of the written entries present under it (None: no images folder)
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_format, "to": self.to_format, "input": str(self.input_path),
                "root": str(self.root), "annotation": str(self.annotation), "written": [str(p) for p in self.written],
                "splits": {s: vars(c) for s, c in self.splits.items()},
                "images_dir": None if self.images_dir is None else str(self.images_dir),
                "images_found": self.images_found, "notes": list(self.notes)}


@dataclass
class Source:
    """A dataset as read by :func:`read_layout`: its entries in file order, the files read, and the
    folders its images may be in (best first)."""

    entries: list[Entry]
    files: list[Path]
    image_candidates: list[Path]
    prefix: str | None = None
    notes: list[str] = field(default_factory=list)


class _Problems:
    """Problems found in the input, raised together as one DataError: the same problem of many entries
    once (naming three of them), up to :data:`MAX_PROBLEMS` different ones, the rest counted."""

    def __init__(self) -> None:
        self.where: dict[str, list[str]] = {}  # problem -> the entries that have it, in order
        self.count = 0

    def add(self, where: str, problem: str) -> None:
        self.count += 1
        if problem in self.where or len(self.where) < MAX_PROBLEMS:
            self.where.setdefault(problem, []).append(where)

    def raise_if_any(self, what: str) -> None:
        if not self.count:
            return
        listed = [f"{', '.join(w[:3])}{f' and {len(w) - 3} more' if len(w) > 3 else ''}: {problem}"
                  for problem, w in self.where.items()]
        left = self.count - sum(len(w) for w in self.where.values())
        more = f"; and {left} more" if left else ""
        plural = "s" if self.count > 1 else ""
        raise DataError(f"{self.count} problem{plural} in {what}: {'; '.join(listed)}{more} "
                        f"-- fix the input and run again")


# ---- the public API -----------------------------------------------------------------------------------

def standard_cuhk_split(person_id: int) -> str | None:
    """The split of CUHK-PEDES identity ``person_id`` in Li et al.'s split, None outside 1..13003."""
    for split, first, last in CUHK_STANDARD_SPLIT:
        if first <= person_id <= last:
            return split
    return None


def convert(from_format: str, to_format: str, input_path: str | Path, output_root: str | Path, *,
            images: str | Path | None = None, overwrite: bool = False) -> Path:
    """Convert a dataset's annotations from one layout to another; returns the annotation file written
    (the folder of the per-split files for rasa, tbps-clip and aptm). See :func:`convert_dataset`."""
    return convert_dataset(from_format, to_format, input_path, output_root, images=images,
                           overwrite=overwrite).annotation


def convert_dataset(from_format: str, to_format: str, input_path: str | Path, output_root: str | Path, *,
                    images: str | Path | None = None, overwrite: bool = False) -> Conversion:
    """Read ``input_path`` in ``from_format``, write ``to_format`` under ``output_root``, read it back.

    Args:
        from_format, to_format: names in :data:`FORMATS`.
        input_path: the annotation file, or the folder holding it (per-split layouts: their folder).
        output_root: the dataset root to write (created if missing); nothing is written outside it.
        images: the images folder to link ``ROOT/imgs`` to; default: the input's, when found.
        overwrite: replace existing annotation files (and a symbolic link ``ROOT/imgs``; never a folder).

    Raises:
        DataError: the input has problems (up to 20 listed) or cannot go into ``to_format``.
        InputFileNotFoundError: no input, or not the files ``from_format`` expects.
        OutputError: an annotation file exists (without ``overwrite``), or ``ROOT/imgs`` is in the way.
    """
    source_fmt, target_fmt = _format(from_format, "--from"), _format(to_format, "--to")
    root = Path(output_root).expanduser().absolute()
    source = read_layout(from_format, input_path)
    entries = _for_target(source, from_format, to_format)
    prefix = source.prefix or _APTM_PREFIX.get(from_format, "data")
    files = _render(to_format, entries, prefix)
    _check_outputs(root, files, overwrite)
    link = _plan_images(root, images, entries, source.image_candidates, overwrite)
    written = _write(root, files)
    notes = list(source.notes) + _apply_link(root, link)
    splits, records = _read_back(to_format, root, entries, files)
    found = _count_found(root, records)
    annotation = written[0] if target_fmt.kind == "single" or to_format == "csv" else written[0].parent
    logger.debug("converted %s (%s) to %s (%s)", input_path, source_fmt.title, annotation, target_fmt.title)
    return Conversion(from_format, to_format, Path(input_path), root, annotation, tuple(written), splits,
                      root / IMAGE_DIR if (root / IMAGE_DIR).is_dir() else None, found, tuple(notes))


def read_layout(fmt_name: str, input_path: str | Path) -> Source:
    """Read and check every entry of a dataset in layout ``fmt_name``; ids and splits not yet resolved."""
    fmt = _format(fmt_name, "--from")
    path = Path(input_path).expanduser()
    if not path.exists():
        raise InputFileNotFoundError(f"input {path} does not exist: pass the {fmt.title} annotation file "
                                     "or its folder")
    reader = {"single": _read_single, "per-split": _read_per_split, "aptm": _read_aptm, "csv": _read_csv}
    return reader[fmt.kind](fmt, path, fmt_name)


def detect_format(path: str | Path) -> str | None:
    """The layout a file or folder looks like (by its file names), or None."""
    path = Path(path)
    names = [path.name] if path.is_file() else sorted(p.name for p in path.glob("*")) if path.is_dir() else []
    if path.is_dir() and (path / "processed_data").is_dir():
        names += [f"processed_data/{p.name}" for p in (path / "processed_data").glob("*.json")]
    by_name = {f.annotation: n for n, f in _FORMATS.items() if f.kind == "single"}
    for name in names:
        if name in by_name:
            return by_name[name]
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if re.fullmatch(r"(train|val|test)_reid\.json", base):
            return "tbps-clip"
        if re.fullmatch(r"(train|val|test)\.json", base):
            return "rasa"
        if _APTM_FILE.fullmatch(base):
            return "aptm"
        if base.endswith((".csv", ".jsonl")):
            return "csv"
    return None


# ---- reading ------------------------------------------------------------------------------------------

def _format(name: str, option: str) -> _Format:
    if name not in _FORMATS:
        raise DataError(f"unknown layout {name!r} for {option}: choose one of {', '.join(FORMATS)}")
    return _FORMATS[name]


def _missing_input(path: Path, expected: str, fmt: _Format) -> InputFileNotFoundError:
    guess = detect_format(path)
    hint = f"; it looks like --from {guess}" if guess else ""
    found = ", ".join(sorted(p.name for p in path.glob("*"))[:5]) or "nothing"
    return InputFileNotFoundError(f"no {expected} in {path} (it holds {found}{hint}): pass the {fmt.title} "
                                  "annotation file or its folder")


def _load_json(path: Path) -> Any:
    try:
        return parse_json(path.read_bytes())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
    except ValueError as e:
        raise DataError(f"{path} is not readable JSON text ({e})") from e


def _load_list(path: Path) -> list[Any]:
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, expected a list of entries")
    return data


def _read_single(fmt: _Format, path: Path, name: str) -> Source:
    if path.is_dir():
        if not (path / fmt.annotation).is_file():
            raise _missing_input(path, fmt.annotation, fmt)
        path = path / fmt.annotation
    split_rule = "optional" if name == "cuhk-original" else "required"
    problems = _Problems()
    entries = _parse_all(_load_list(path), "", fmt, split_rule, None, problems)
    problems.raise_if_any(str(path))
    return Source(entries, [path], [path.parent / IMAGE_DIR])


def _read_per_split(fmt: _Format, path: Path, name: str) -> Source:
    folder = path.parent if path.is_file() else path
    if fmt.subdir and not _split_files(fmt, folder) and (folder / fmt.subdir).is_dir():
        folder = folder / fmt.subdir  # the dataset root of a RaSa layout
    files = _split_files(fmt, folder)
    if not files:
        raise _missing_input(folder, " or ".join(fmt.annotation.format(split=s) for s in SPLITS), fmt)
    problems, entries = _Problems(), []
    for split, file in files:
        entries += _parse_all(_load_list(file), f"{file.name}: ", fmt, "file", split, problems)
    problems.raise_if_any(f"the {fmt.title} files in {folder}")
    return Source(entries, [f for _, f in files], [folder / IMAGE_DIR, folder.parent / IMAGE_DIR])


def _split_files(fmt: _Format, folder: Path, prefix: str | None = None) -> list[tuple[str, Path]]:
    names = [(s, folder / fmt.annotation.format(split=s, prefix=prefix)) for s in SPLITS]
    return [(s, p) for s, p in names if p.is_file()]


def _read_aptm(fmt: _Format, path: Path, name: str) -> Source:
    folder, prefix = _aptm_prefix(path)
    files = _split_files(fmt, folder, prefix)
    problems, entries, wheres = _Problems(), [], []
    for split, file in files:
        for index, item in enumerate(_load_list(file)):
            where = f"{file.name}: entry {index}"
            entry = _parse_entry(item, where, fmt, "file", split, problems)
            if entry is not None:
                entries.append(entry)
                wheres.append(where)
    entries = _group_by_image(entries, wheres, problems)
    problems.raise_if_any(f"the APTM files {prefix}_*.json in {folder}")
    entries, base = _strip_image_dir(entries, folder)
    return Source(entries, [f for _, f in files], [base, base.parent], prefix=prefix)


def _aptm_prefix(path: Path) -> tuple[Path, str]:
    if path.is_file():
        match = _APTM_FILE.fullmatch(path.name)
        if match is None:
            raise DataError(f"{path} is not an APTM file name: expected PREFIX_train.json, PREFIX_val.json or "
                            "PREFIX_test.json (e.g. cuhk_train.json)")
        return path.parent, match.group(1)
    prefixes = sorted({m.group(1) for p in path.glob("*.json") if (m := _APTM_FILE.fullmatch(p.name))})
    if not prefixes:
        raise _missing_input(path, "PREFIX_train.json / PREFIX_test.json", _FORMATS["aptm"])
    if len(prefixes) > 1:
        raise DataError(f"{path} holds the APTM files of {len(prefixes)} datasets ({', '.join(prefixes)}): pass "
                        f"one of their files, e.g. --input {path / (prefixes[0] + '_train.json')}")
    return path, prefixes[0]


def _strip_image_dir(entries: list[Entry], folder: Path) -> tuple[list[Entry], Path]:
    """Paths relative to the annotation's folder: when all are under imgs/, make them relative to it."""
    prefix = IMAGE_DIR + "/"
    if entries and all(e.image.replace("\\", "/").startswith(prefix) for e in entries):
        return [replace(e, image=e.image.replace("\\", "/")[len(prefix):]) for e in entries], folder / IMAGE_DIR
    return entries, folder


def _parse_all(items: list[Any], label: str, fmt: _Format, split_rule: str, file_split: str | None,
               problems: _Problems) -> list[Entry]:
    """The entries of one file; ``label`` names the file in messages when there are several."""
    entries = [_parse_entry(item, f"{label}entry {i}", fmt, split_rule, file_split, problems)
               for i, item in enumerate(items)]
    return [e for e in entries if e is not None]


def _parse_entry(item: Any, where: str, fmt: _Format, split_rule: str, file_split: str | None,
                 problems: _Problems) -> Entry | None:
    """One entry, or None after adding its problems. ``split_rule``: "required" (a split field),
    "optional" (cuhk-original: the standard split when absent), "file" (the file's split)."""
    if not isinstance(item, dict):
        problems.add(where, f"a JSON {type(item).__name__}, expected an object")
        return None
    required = [fmt.id_field, fmt.path_field, fmt.captions_field] + (["split"] if split_rule == "required" else [])
    missing = [f for f in required if f not in item]
    if missing:
        problems.add(where, f"no {missing[0]!r} field (it has {', '.join(map(repr, item)) or 'none'})")
        return None
    before = problems.count
    split = _entry_split(item.get("split"), where, split_rule, file_split, problems)
    person_id = _entry_id(item[fmt.id_field], where, fmt, problems)
    image = _entry_image(item[fmt.path_field], where, fmt, problems)
    captions = _entry_captions(item[fmt.captions_field], where, fmt, problems)
    if problems.count > before:
        return None
    return Entry(split, person_id, image, captions, tokens=_tokens(item.get("processed_tokens")))


def _entry_split(value: Any, where: str, rule: str, file_split: str | None, problems: _Problems) -> str | None:
    if value is None and rule != "required":
        return file_split
    if value not in SPLITS:
        problems.add(where, f"'split' is {_short(value)}, expected one of {', '.join(SPLITS)}")
    elif rule == "file" and value != file_split:
        problems.add(where, f"'split' is {value!r} but the entry is in the {file_split} file")
    return value if isinstance(value, str) else None


def _entry_id(value: Any, where: str, fmt: _Format, problems: _Problems) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and -2 ** 63 <= value < 2 ** 63:
        return value
    names_ok = fmt.kind == "aptm"  # MALS names its ids; mapped to integers later
    if names_ok and isinstance(value, str) and value.strip() and _utf8(value):
        return value.strip()
    kind = "an integer (64-bit) or a name" if names_ok else "an integer identity (64-bit)"
    problems.add(where, f"{fmt.id_field!r} is {_short(value)}, expected {kind}")
    return 0


def _entry_image(value: Any, where: str, fmt: _Format, problems: _Problems) -> str:
    base = "the annotation file's folder" if fmt.kind == "aptm" else IMAGE_DIR
    try:
        resolve_inside(base, value, repr(fmt.path_field))  # untrusted: no absolute path, no '..'
    except UnsafePathError as e:
        problems.add(where, str(e))
        return ""
    if not _utf8(value):
        problems.add(where, f"{fmt.path_field!r} is {_short(value)}, which is not valid UTF-8 text")
    return value


def _entry_captions(value: Any, where: str, fmt: _Format, problems: _Problems) -> tuple[str, ...]:
    if isinstance(value, str) and fmt.kind == "aptm":  # one caption per entry in APTM's train file
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        problems.add(where, f"{fmt.captions_field!r} is {_short(value)}, expected a list of strings")
        return ()
    if not all(_utf8(c) for c in value):
        problems.add(where, "a caption is not valid UTF-8 text (a lone surrogate)")
    kept = tuple(_clean_caption(c) for c in value if visible_text(c).strip())  # as the readers see them
    if not kept and fmt.kind != "aptm":  # APTM: a blank caption row is dropped; its image is checked when grouped
        problems.add(where, "no non-empty caption: every image needs at least one")
    return kept


def _clean_caption(caption: str) -> str:
    """Stripped, line breaks as LF: --dataset csv reads a spreadsheet's CRLF as LF, so every layout gets it."""
    return _CRLF.sub("\n", caption.strip())


def _tokens(value: Any) -> tuple[tuple[str, ...], ...] | None:
    if isinstance(value, list) and all(isinstance(t, list) and all(isinstance(w, str) for w in t) for t in value):
        return tuple(tuple(t) for t in value)
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _group_by_image(entries: list[Entry], wheres: list[str], problems: _Problems) -> list[Entry]:
    """Entries of one caption each (APTM train, CSV rows) merged per image, in first-seen order."""
    merged: dict[str, Entry] = {}
    first: dict[str, str] = {}
    for entry, where in zip(entries, wheres):
        seen = merged.get(entry.image)
        if seen is None:
            merged[entry.image], first[entry.image] = entry, where
            continue
        for name, old, new in (("person id", seen.person_id, entry.person_id), ("split", seen.split, entry.split),
                               ("camera", seen.camera, entry.camera)):
            if old != new:
                problems.add(where, f"image {entry.image!r} has {name} {new!r} but {first[entry.image]} gave "
                                    f"it {old!r}")
        merged[entry.image] = replace(seen, captions=seen.captions + entry.captions)
    for image, entry in merged.items():
        if not entry.captions:
            problems.add(first[image], f"image {image!r} has no non-empty caption: every image needs at least one")
    return list(merged.values())


def _read_csv(fmt: _Format, path: Path, name: str) -> Source:
    """Through ``--dataset csv``'s reader: the same checks, and the same splits by identity when the file
    has none (made once and recorded beside it)."""
    data = readers.read_csv_dataset(path)
    names = {number: person for person, number in data.person_ids.items()}
    folder = data.path.parent
    entries = [Entry(split, names[r.person_id], r.image_path.relative_to(folder).as_posix(),
                     tuple(_clean_caption(c) for c in r.captions), r.camera)
               for split, records in data.splits.items() for r in records]
    entries, base = _strip_image_dir(entries, folder)
    how = {"made": "made by identity and recorded in", "recorded": "by identity, as recorded in"}
    notes = [] if data.split_source == "column" else [f"no split column: splits {how[data.split_source]} "
                                                      f"{data.splits_file}"]
    return Source(entries, [data.path], [base], notes=notes)


# ---- from the input's entries to the target's ---------------------------------------------------------

def _for_target(source: Source, from_format: str, to_format: str) -> list[Entry]:
    """Entries with integer ids and a split each, checked against what ``to_format`` can hold."""
    entries, id_note = _resolve_ids(source.entries)
    if id_note:
        source.notes.append(id_note)
    cameras = sum(1 for e in entries if e.camera is not None)
    if cameras and to_format != "csv":
        source.notes.append(f"the cameras of {cameras} images are not kept: {_FORMATS[to_format].title} has no "
                            "camera field")
    entries = _resolve_splits(entries, from_format, source)
    if _FORMATS[to_format].kind in ("aptm", "csv") and len({e.image for e in entries}) < len(entries):
        problems = _Problems()  # these layouts repeat the image per caption: an image listed twice is merged
        entries = _group_by_image(entries, [f"entry {i}" for i in range(len(entries))], problems)
        problems.raise_if_any(str(source.files[0]))
    allowed = _FORMATS[to_format].splits
    outside = sorted({e.split for e in entries} - set(allowed), key=SPLITS.index)
    if outside:
        count = sum(1 for e in entries if e.split in outside)
        raise DataError(f"{_FORMATS[to_format].title} has only the splits {', '.join(allowed)}, and {count} "
                        f"entries of the input are in {', '.join(outside)}: convert to cuhk-pedes or rstpreid, which "
                        "keep them, or move them to another split in the input")
    if not entries:
        raise DataError(f"{source.files[0]} holds no entries: nothing to convert")
    return entries


def _resolve_ids(entries: list[Entry]) -> tuple[list[Entry], str | None]:
    """Integer ids as they are; names (CSV, APTM) become integers: numerals as such, or else the sorted
    distinct names numbered 0..n-1 (as ``--dataset csv`` does)."""
    if all(isinstance(e.person_id, int) for e in entries):
        return entries, None
    keys = sorted({str(e.person_id) for e in entries})
    numbers = {k: int(k) for k in keys if _INTEGER.fullmatch(k) and -2 ** 63 <= int(k) < 2 ** 63}
    if len(numbers) == len(keys) and len(set(numbers.values())) == len(keys):
        return [replace(e, person_id=numbers[str(e.person_id)]) for e in entries], None
    mapping = {k: i for i, k in enumerate(keys)}
    shown = ", ".join(f"{k!r} -> {i}" for k, i in list(mapping.items())[:3]) + (", ..." if len(keys) > 3 else "")
    note = f"person ids are names: numbered 0..{len(keys) - 1} in sorted order ({shown})"
    return [replace(e, person_id=mapping[str(e.person_id)]) for e in entries], note


def _resolve_splits(entries: list[Entry], from_format: str, source: Source) -> list[Entry]:
    if all(e.split is not None for e in entries):
        return entries
    if from_format != "cuhk-original":
        raise DataError(f"{source.files[0]} gives no split: give every entry a 'split' (train, val or test)")
    problems, resolved = _Problems(), []
    for index, entry in enumerate(entries):
        split = entry.split or standard_cuhk_split(int(entry.person_id))
        if split is None:
            problems.add(f"entry {index}", f"id {entry.person_id} is outside 1..13003, so Li et al.'s split "
                                           "cannot place it: give it a 'split' field")
        resolved.append(replace(entry, split=split))
    problems.raise_if_any(str(source.files[0]))
    ranges = ", ".join(f"{s} {a}-{b}" for s, a, b in CUHK_STANDARD_SPLIT)
    source.notes.append(f"splits added by identity (Li et al.'s split): {ranges}")
    return resolved


# ---- writing ------------------------------------------------------------------------------------------

def _processed_tokens(entry: Entry) -> list[list[str]]:
    """The input's processed_tokens, or the original release's: lower case, no punctuation, split on spaces."""
    if entry.tokens is not None and len(entry.tokens) == len(entry.captions):
        return [list(t) for t in entry.tokens]
    table = str.maketrans("", "", string.punctuation)
    return [c.lower().translate(table).split() for c in entry.captions]


def _json_object(fmt_name: str, entry: Entry) -> dict[str, Any]:
    if fmt_name == "rstpreid":
        return {"id": entry.person_id, "img_path": entry.image, "captions": list(entry.captions),
                "split": entry.split}
    if fmt_name == "tbps-clip":
        return {"id": entry.person_id, "file_path": entry.image, "captions": list(entry.captions)}
    return {"split": entry.split, "captions": list(entry.captions), "file_path": entry.image,
            "processed_tokens": _processed_tokens(entry), "id": entry.person_id}


def _aptm_objects(entry: Entry) -> list[dict[str, Any]]:
    image = f"{IMAGE_DIR}/{entry.image}"  # APTM's image_root is the dataset folder that holds imgs/
    if entry.split == "train":
        return [{"image": image, "caption": c, "image_id": entry.person_id} for c in entry.captions]
    return [{"image": image, "caption": list(entry.captions), "image_id": entry.person_id}]


def _csv_text(entries: list[Entry]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(_CSV_COLUMNS)
    for entry in entries:
        for caption in entry.captions:
            writer.writerow([f"{IMAGE_DIR}/{entry.image}", entry.person_id, caption, entry.split, entry.camera or ""])
    return buffer.getvalue()


def _render(fmt_name: str, entries: list[Entry], prefix: str) -> dict[str, tuple[bytes, dict[str, int]]]:
    """The files to write, by path relative to the root: (content, entries written per split)."""
    fmt = _FORMATS[fmt_name]
    per_split = {s: [e for e in entries if e.split == s] for s in SPLITS}
    if fmt.kind == "csv":
        counts = {s: sum(len(e.captions) for e in group) for s, group in per_split.items() if group}
        return {fmt.annotation: (_csv_text(entries).encode("utf-8"), counts)}
    if fmt.kind == "single":
        counts = {s: len(group) for s, group in per_split.items() if group}
        return {fmt.annotation: (_json_bytes([_json_object(fmt_name, e) for e in entries]), counts)}
    files = {}
    for split, group in per_split.items():
        if not group and fmt_name != "rasa":  # RaSa's data_process.py writes all three files
            continue
        items = [o for e in group for o in _aptm_objects(e)] if fmt.kind == "aptm" else \
            [_json_object(fmt_name, e) for e in group]
        name = str(Path(fmt.subdir) / fmt.annotation.format(split=split, prefix=prefix))
        files[name] = (_json_bytes(items), {split: len(items)} if group else {})
    return files


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data) + "\n").encode("ascii")  # ASCII escapes: any text, lone surrogates included


def _check_outputs(root: Path, files: dict[str, Any], overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise OutputError(f"--root {root} is a file: pass the folder to write the dataset into")
    existing = [root / name for name in files if (root / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} exists: pass --overwrite to replace it, or choose another --root")
    for path in existing:
        if path.is_dir():
            raise OutputError(f"{path} is a folder, where the annotation file goes: move it away")


def _write(root: Path, files: dict[str, tuple[bytes, dict[str, int]]]) -> list[Path]:
    written = []
    for name, (content, _) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda stream, data=content: stream.write(data))
        written.append(path)
    return written


# ---- images: a relative link, never a copy -------------------------------------------------------------

@dataclass(frozen=True)
class _Link:
    target: Path | None  # the folder ROOT/imgs should point to; None: leave ROOT/imgs as it is
    note: str | None = None


def _plan_images(root: Path, images: str | Path | None, entries: list[Entry], candidates: list[Path],
                 overwrite: bool) -> _Link:
    """What to do about ROOT/imgs, decided before anything is written."""
    link = root / IMAGE_DIR
    if images is None:
        if os.path.lexists(link):  # the root's own images (or link) stay as they are
            return _Link(None)
        target = next((c for c in candidates if (c / entries[0].image).is_file()), None)
        if target is None:
            where = " or ".join(str(c) for c in candidates[:2])
            return _Link(None, f"images not linked: {entries[0].image!r} is not under {where}; pass --images DIR, "
                               f"or link them yourself: ln -s DIR {link}")
        return _Link(target)
    target = Path(images).expanduser().absolute()
    if not target.is_dir():
        raise InputFileNotFoundError(f"--images {images} is not a folder: pass the folder that holds the "
                                     "images (the paths in the annotations are relative to it)")
    if os.path.lexists(link):
        if link.exists() and os.path.samefile(link, target):
            return _Link(None)
        if not link.is_symlink():
            raise OutputError(f"{link} is a folder: images are linked, never copied or replaced; move it away, or "
                              "leave out --images to keep it")
        if not overwrite:
            raise OutputError(f"{link} links to {os.readlink(link)}, not {target}: pass --overwrite to relink it")
    return _Link(target)


def _apply_link(root: Path, plan: _Link) -> list[str]:
    if plan.target is None:
        return [plan.note] if plan.note else []
    link = root / IMAGE_DIR
    relative = os.path.relpath(os.path.realpath(plan.target), os.path.realpath(root))
    temp = root / f".{IMAGE_DIR}.link.tmp"
    try:
        temp.unlink(missing_ok=True)
        os.symlink(relative, temp, target_is_directory=True)
        os.replace(temp, link)  # atomic, and replaces an older link
    except OSError as e:
        temp.unlink(missing_ok=True)
        return [f"could not link {link} ({e.strerror}): run  ln -s {relative} {link}"]
    return [f"linked {link} -> {relative}"]


# ---- reading the result back --------------------------------------------------------------------------

def _read_back(fmt_name: str, root: Path, entries: list[Entry],
               files: dict[str, tuple[bytes, dict[str, int]]]) -> tuple[dict[str, SplitCounts], list[Path]]:
    """Per-split counts of the written files as read back, and the image paths they name."""
    written_counts: dict[str, int] = {}
    for _, counts in files.values():
        written_counts.update(counts)
    splits, images = {}, []
    by_split = _records(fmt_name, root, [s for s in SPLITS if s in written_counts], Path(root / next(iter(files))))
    for split, records in by_split.items():
        ids = {person_id for _, person_id, _ in records}
        splits[split] = SplitCounts(written_counts[split], len(records), len(ids),
                                    sum(len(c) for _, _, c in records))
        images += [path for path, _, _ in records]
    expected = {s: sum(1 for e in entries if e.split == s) for s in written_counts}
    if {s: c.images for s, c in splits.items()} != expected:  # the reader disagrees with the writer
        raise DataError(f"the {fmt_name} files written under {root} read back as {splits}, expected images per "
                        f"split {expected}: please report this")
    return splits, images


def _records(fmt_name: str, root: Path, splits: list[str], written: Path
             ) -> dict[str, list[tuple[Path, Any, tuple[str, ...]]]]:
    """(image path, person id, captions) per split: by tbps's readers when they read ``fmt_name``."""
    if fmt_name in readers.DATASETS:
        where = written if fmt_name == "csv" else root  # the csv reader takes the file itself
        return {s: [(r.image_path, r.person_id, r.captions)
                    for r in readers.read_split(fmt_name, where, s, check_images=False)] for s in splits}
    source = read_layout(fmt_name, written)
    base = root / IMAGE_DIR if _FORMATS[fmt_name].kind not in ("aptm", "csv") else source.image_candidates[0]
    return {s: [(base / e.image, e.person_id, e.captions) for e in source.entries if e.split == s] for s in splits}


def _count_found(root: Path, images: list[Path]) -> int | None:
    if not (root / IMAGE_DIR).is_dir():
        return None
    return sum(1 for p in images if os.path.isfile(p))  # False, never an error, for a name the OS refuses


# ---- the command --------------------------------------------------------------------------------------

def _doctor_hint(conversion: Conversion) -> str | None:
    """The dataset doctor's verdict on what was written (a layout tbps reads), and the command for its report."""
    if conversion.to_format not in readers.DATASETS:
        return None
    from tbps_train.data.doctor import check_dataset

    command = f"tbps data check --dataset {conversion.to_format} --root {conversion.root}"
    if conversion.images_found is None:
        return f"images not linked yet: then check it: {command}"
    report = check_dataset(conversion.to_format, conversion.root, images_sample=100, token_counter=None,
                           token_skip_reason="not measured right after converting")
    return f"data check: {report.verdict} (the full report: {command})"


def _summary_lines(conversion: Conversion) -> list[str]:
    """The text report of a conversion: what was written, the per-split table, images, notes."""
    lines = [f"wrote {conversion.annotation} ({_FORMATS[conversion.to_format].title}) from {conversion.input_path} "
             f"({conversion.from_format})",
             f"{'split':<6} {'entries':>9} {'images':>9} {'identities':>11} {'captions':>9}"]
    for split, c in conversion.splits.items():
        lines.append(f"{split:<6} {c.entries:>9,} {c.images:>9,} {c.identities:>11,} {c.captions:>9,}")
    lines += conversion.notes
    total = sum(c.images for c in conversion.splits.values())
    if conversion.images_found is not None:
        missing = total - conversion.images_found
        state = "all found" if not missing else f"{missing:,} of {total:,} missing"
        lines.append(f"images: {conversion.images_dir} ({state})")
    hint = _doctor_hint(conversion)
    return [printable(line) for line in lines + ([hint] if hint else [])]


@click.command("convert", cls=TbpsCommand)
@click.option("--from", "from_format", required=True, type=click.Choice(FORMATS), help="Layout of the input.")
@click.option("--to", "to_format", required=True, type=click.Choice(FORMATS), help="Layout to write.")
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="The input's annotation file, or its folder (per-split layouts: the folder of their files).")
@click.option("--root", required=True, type=click.Path(file_okay=False),
              help="Dataset root to write: the annotation file(s) and imgs/ (a link, never a copy).")
@click.option("--images", type=click.Path(file_okay=False),
              help="Images folder to link ROOT/imgs to (default: the input's, when found).")
@click.option("--overwrite", is_flag=True, help="Replace existing annotation files (and an imgs link).")
@json_option()
@quiet_option()
@user_errors_exit_2
def convert_command(from_format: str, to_format: str, input_path: str, root: str, images: str | None,
                    overwrite: bool, as_json: bool, quiet: bool) -> None:
    """Convert dataset annotations between layouts (caption_all.json, reid_raw.json, ICFG-PEDES, RSTPReid,
    RaSa, TBPS-CLIP, APTM, CSV); the result is read back and summarised per split."""
    quiet = setup_logging(quiet)
    conversion = convert_dataset(from_format, to_format, input_path, root, images=images, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(conversion.to_json(), indent=2))
    elif not quiet:
        click.echo("\n".join(_summary_lines(conversion)))


