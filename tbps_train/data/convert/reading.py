"""Layouts in: every entry of a dataset in any layout of the table, read and checked by the readers' rules.

JSON entries go through :func:`~tbps_train.data.formats.parse_entry`, the
readers' own parser, with the problems of all entries collected
(:class:`Problems`); the csv layout goes through ``--dataset csv``'s reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tbps_runtime.errors import DataError, InputFileNotFoundError
from tbps_runtime.text import short
from tbps_train.data import readers
from tbps_train.data.formats import (
    IMAGE_DIR, LAYOUTS, SPLITS, Entry, EntryProblem, Layout, is_utf8, kept_captions, load_entry_list, parse_entry,
)

__all__ = ["FORMATS", "MAX_PROBLEMS", "Problems", "Source", "detect_format", "group_by_image", "layout_named",
           "read_layout"]

FORMATS: tuple[str, ...] = tuple(LAYOUTS)
MAX_PROBLEMS = 20  # listed in one error; the rest are counted
_CRLF = re.compile(r"\r+\n")  # CR LF, CR CR LF, ...: one LF
_CSV_SUFFIXES = tuple(Path(name).suffix for name in LAYOUTS["csv"].names)


@dataclass
class Source:
    """A dataset as read by :func:`read_layout`: its entries in file order, the files read, and the
    folders its images may be in (best first)."""

    entries: list[Entry]
    files: list[Path]
    image_candidates: list[Path]
    prefix: str | None = None
    notes: list[str] = field(default_factory=list)


class Problems:
    """Problems found in the input, raised together as one DataError: the same problem of many entries
    once (naming three of them), up to :data:`MAX_PROBLEMS` different ones, the rest counted."""

    def __init__(self) -> None:
        self.where: dict[str, list[str]] = {}  # problem -> the entries that have it, in order
        self.count = 0

    def add(self, where: str, problem: str) -> None:
        """One problem of the entry ``where``."""
        self.count += 1
        if problem in self.where or len(self.where) < MAX_PROBLEMS:
            self.where.setdefault(problem, []).append(where)

    def add_entry(self, problem: EntryProblem) -> None:
        """An entry that does not parse."""
        self.add(problem.where, f"{problem.fact} {problem.detail}".rstrip())

    def raise_if_any(self, what: str) -> None:
        """Raise the problems of ``what`` (the input, for the message), if any."""
        if not self.count:
            return
        listed = [f"{', '.join(w[:3])}{f' and {len(w) - 3} more' if len(w) > 3 else ''}: {problem}"
                  for problem, w in self.where.items()]
        left = self.count - sum(len(w) for w in self.where.values())
        more = f"; and {left} more" if left else ""
        plural = "s" if self.count > 1 else ""
        raise DataError(f"{self.count} problem{plural} in {what}: {'; '.join(listed)}{more} "
                        f"-- fix the input and run again")


def layout_named(name: str, parameter: str) -> Layout:
    """The layout ``name`` given as ``parameter`` (``from_format``/``to_format``, for the message)."""
    if name not in LAYOUTS:
        raise DataError(f"unknown layout {name!r} for {parameter}: choose one of {', '.join(FORMATS)}",
                        code="parameter_invalid", names=(parameter,))
    return LAYOUTS[name]


def read_layout(fmt_name: str, input_path: str | Path) -> Source:
    """Read and check every entry of a dataset in layout ``fmt_name``; ids and splits not yet resolved."""
    layout = layout_named(fmt_name, "from_format")
    path = Path(input_path).expanduser()
    if not path.exists():
        raise InputFileNotFoundError(f"input {path} does not exist: pass the {layout.title} annotation file "
                                     "or its folder")
    reader = {"single": _read_single, "per-split": _read_per_split, "aptm": _read_aptm, "csv": _read_csv}
    return reader[layout.kind](layout, path)


def detect_format(path: str | Path) -> str | None:
    """The layout a file or folder looks like (by its file names), or None."""
    path = Path(path)
    names = [path.name] if path.is_file() else sorted(p.name for p in path.glob("*")) if path.is_dir() else []
    subdirs = {layout.subdir for layout in LAYOUTS.values() if layout.subdir}
    for subdir in sorted(subdirs):
        if path.is_dir() and (path / subdir).is_dir():
            names += [f"{subdir}/{p.name}" for p in (path / subdir).glob("*.json")]
    by_name = {layout.annotation: name for name, layout in LAYOUTS.items() if layout.kind == "single"}
    for name in names:
        if name in by_name:
            return by_name[name]
    per_split = {name: layout.file_pattern for name, layout in LAYOUTS.items() if layout.per_split}
    for name in names:
        base = name.rsplit("/", 1)[-1]
        found = next((layout for layout, pattern in per_split.items() if pattern.fullmatch(base)), None)
        if found:
            return found
        if base.endswith(_CSV_SUFFIXES):
            return "csv"
    return None


def _missing_input(path: Path, expected: str, layout: Layout) -> InputFileNotFoundError:
    guess = detect_format(path)
    hint = f"; it looks like --from {guess}" if guess else ""
    found = ", ".join(sorted(p.name for p in path.glob("*"))[:5]) or "nothing"
    return InputFileNotFoundError(f"no {expected} in {path} (it holds {found}{hint}): pass the {layout.title} "
                                  "annotation file or its folder")


def _read_single(layout: Layout, path: Path) -> Source:
    if path.is_dir():
        if not (path / layout.annotation).is_file():
            raise _missing_input(path, layout.annotation, layout)
        path = path / layout.annotation
    problems = Problems()
    entries = _parse_all(load_entry_list(path), "", layout, None, problems)
    problems.raise_if_any(str(path))
    return Source(entries, [path], [path.parent / IMAGE_DIR])


def _read_per_split(layout: Layout, path: Path) -> Source:
    folder = path.parent if path.is_file() else path
    if layout.subdir and not _split_files(layout, folder) and (folder / layout.subdir).is_dir():
        folder = folder / layout.subdir  # the dataset root of a RaSa layout
    files = _split_files(layout, folder)
    if not files:
        raise _missing_input(folder, " or ".join(layout.annotation.format(split=s) for s in SPLITS), layout)
    problems, entries = Problems(), []
    for split, file in files:
        entries += _parse_all(load_entry_list(file), f"{file.name}: ", layout, split, problems)
    problems.raise_if_any(f"the {layout.title} files in {folder}")
    return Source(entries, [f for _, f in files], [folder / IMAGE_DIR, folder.parent / IMAGE_DIR])


def _split_files(layout: Layout, folder: Path, prefix: str | None = None) -> list[tuple[str, Path]]:
    names = [(s, folder / layout.annotation.format(split=s, prefix=prefix)) for s in SPLITS]
    return [(s, p) for s, p in names if p.is_file()]


def _read_aptm(layout: Layout, path: Path) -> Source:
    folder, prefix = _aptm_prefix(layout, path)
    files = _split_files(layout, folder, prefix)
    problems, entries = Problems(), []
    for split, file in files:
        entries += _parse_all(load_entry_list(file), f"{file.name}: ", layout, split, problems)
    entries = group_by_image(entries, problems)
    problems.raise_if_any(f"the APTM files {prefix}_*.json in {folder}")
    entries, base = _strip_image_dir(entries, folder)
    return Source(entries, [f for _, f in files], [base, base.parent], prefix=prefix)


def _aptm_prefix(layout: Layout, path: Path) -> tuple[Path, str]:
    pattern = layout.file_pattern
    if path.is_file():
        match = pattern.fullmatch(path.name)
        if match is None:
            raise DataError(f"{path} is not an APTM file name: expected PREFIX_train.json, PREFIX_val.json or "
                            "PREFIX_test.json (e.g. cuhk_train.json)")
        return path.parent, match["prefix"]
    prefixes = sorted({m["prefix"] for p in path.glob("*.json") if (m := pattern.fullmatch(p.name))})
    if not prefixes:
        raise _missing_input(path, "PREFIX_train.json / PREFIX_test.json", layout)
    if len(prefixes) > 1:
        example = path / (prefixes[0] + "_train.json")
        raise DataError(f"{path} holds the APTM files of {len(prefixes)} datasets ({', '.join(prefixes)}): give "
                        f"one of their files as the input, e.g. {example}", code="convert_input_ambiguous",
                        path=str(path), count=len(prefixes), prefixes=", ".join(prefixes), example=str(example))
    return path, prefixes[0]


def _strip_image_dir(entries: list[Entry], folder: Path) -> tuple[list[Entry], Path]:
    """Paths relative to the annotation's folder: when all are under imgs/, make them relative to it."""
    prefix = IMAGE_DIR + "/"
    if entries and all(e.image.replace("\\", "/").startswith(prefix) for e in entries):
        return [replace(e, image=e.image.replace("\\", "/")[len(prefix):]) for e in entries], folder / IMAGE_DIR
    return entries, folder


def _parse_all(items: list[Any], label: str, layout: Layout, file_split: str | None,
               problems: Problems) -> list[Entry]:
    """The entries of one file that parse; ``label`` names the file in messages when there are several."""
    entries = [_checked(item, f"{label}entry {i}", layout, file_split, problems) for i, item in enumerate(items)]
    return [e for e in entries if e is not None]


def _checked(item: Any, where: str, layout: Layout, file_split: str | None, problems: Problems) -> Entry | None:
    """One entry by the readers' rules, in a split the output can hold, its text writable as UTF-8; its
    captions as the readers keep them. None after adding its problem."""
    parsed = parse_entry(item, where, layout, file_split=file_split, splits=SPLITS)
    if isinstance(parsed, Entry):
        fact = _not_utf8(parsed, layout)
        if fact is None:
            return replace(parsed, captions=tuple(_line_breaks(c) for c in kept_captions(parsed.captions)))
        parsed = EntryProblem.about(where, fact)
    problems.add_entry(parsed)
    return None


def _line_breaks(caption: str) -> str:
    """Line breaks as LF: --dataset csv reads a spreadsheet's CRLF as LF, so every layout gets it."""
    return _CRLF.sub("\n", caption)


def _not_utf8(entry: Entry, layout: Layout) -> str | None:
    if not is_utf8(entry.image):
        return f"{layout.path_field!r} is {short(entry.image)}, which is not valid UTF-8 text"
    if not all(is_utf8(c) for c in entry.captions):
        return "a caption is not valid UTF-8 text (a lone surrogate)"
    return None


def group_by_image(entries: list[Entry], problems: Problems) -> list[Entry]:
    """Entries of one caption each (APTM train, CSV rows) merged per image, in first-seen order; a
    disagreement between two of them is a problem of the later one (named by its ``where``)."""
    merged: dict[str, Entry] = {}
    for entry in entries:
        seen = merged.get(entry.image)
        if seen is None:
            merged[entry.image] = entry
            continue
        for name, old, new in (("person id", seen.person_id, entry.person_id), ("split", seen.split, entry.split),
                               ("camera", seen.camera, entry.camera)):
            if old != new:
                problems.add(entry.where, f"image {entry.image!r} has {name} {new!r} but {seen.where} gave it "
                                          f"{old!r}")
        merged[entry.image] = replace(seen, captions=seen.captions + entry.captions)
    for image, entry in merged.items():
        if not entry.captions:
            problems.add(entry.where, f"image {image!r} has no non-empty caption: every image needs at least one")
    return list(merged.values())


def _read_csv(layout: Layout, path: Path) -> Source:
    """Through ``--dataset csv``'s reader: the same checks, and the same splits by identity when the file
    has none (made once and recorded beside it)."""
    data = readers.read_csv_dataset(path)
    names = {number: person for person, number in data.person_ids.items()}
    folder = data.path.parent
    entries = [Entry(split, names[r.person_id], r.image_path.relative_to(folder).as_posix(),
                     tuple(_line_breaks(c.strip()) for c in r.captions), r.camera)
               for split, records in data.splits.items() for r in records]
    entries, base = _strip_image_dir(entries, folder)
    how = {"made": "made by identity and recorded in", "recorded": "by identity, as recorded in"}
    notes = [] if data.split_source == "column" else [f"no split column: splits {how[data.split_source]} "
                                                      f"{data.splits_file}"]
    return Source(entries, [data.path], [base], notes=notes)
