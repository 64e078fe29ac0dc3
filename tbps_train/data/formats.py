"""The dataset layouts, declared once, and the one parser of their annotation entries.

Every layout in use is a row of :data:`LAYOUTS`: the annotation file's name, the
fields an entry holds, the splits and where the images are. The readers
(:mod:`tbps_train.data.readers`), the doctor (:mod:`tbps_train.data.doctor`)
and the converter (:mod:`tbps_train.data.convert`) all read this table, and
all parse an entry with :func:`parse_entry`: the reader raises on the first
:class:`EntryProblem`, the doctor and the converter collect them.

The JSON layouts (the field's ``reid_raw.json`` and its relatives) are lists of
``{split, id, <path field>, captions}`` objects beside an ``imgs/`` folder;
``csv`` is a team's own captions, read row by row by
:func:`tbps_train.data.readers.read_csv_dataset`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from tbps_runtime.atomic import parse_json
from tbps_runtime.errors import DataError, UnsafePathError
from tbps_runtime.paths import resolve_inside
from tbps_runtime.text import short, visible_text

__all__ = [
    "DATASETS", "IMAGE_DIR", "JSON_DATASETS", "LAYOUTS", "SPLITS", "Entry", "EntryProblem", "Layout",
    "has_visible_text", "is_utf8", "json_type", "kept_captions", "load_entry_list", "parse_entry", "quoted",
    "read_json",
]

SPLITS = ("train", "val", "test")
IMAGE_DIR = "imgs"
_FIELD_ORDER = ("split", "captions", "file_path", "processed_tokens", "id")  # reid_raw.json's, as IRRA writes it


@dataclass(frozen=True)
class Layout:
    """One annotation layout: where its files are and what an entry holds.

    ``split_from`` says where an entry's split comes from: ``"field"``, its
    ``split`` field (required); ``"optional"``, that field when present (the
    original CUHK-PEDES release: the converter adds Li et al.'s split by
    identity); ``"file"``, the per-split file it is in (a ``split`` field, when
    present, must agree). ``image_dir`` is the folder beside the annotation file
    that image paths are relative to (``""``: that folder itself).
    """

    title: str  # the layout's usual spelling, for messages
    annotation: str  # file name under the root; per-split layouts: a template with {split} (and {prefix})
    kind: str = "single"  # "single" JSON file, "per-split" JSON files, "aptm" (per-split caption rows), "csv"
    path_field: str = "file_path"
    id_field: str = "id"
    captions_field: str = "captions"
    splits: tuple[str, ...] = SPLITS
    split_from: str = "field"
    image_dir: str = IMAGE_DIR
    dataset: bool = False  # tbps reads it as --dataset NAME (train, eval, data check)
    fields: tuple[str, ...] = _FIELD_ORDER  # an entry (a row) as the layout writes it, in order
    caption_rows: bool = False  # an entry per caption (one string, maybe blank), grouped by image when read
    named_ids: bool = False  # identities may be names (mapped to integers when converted)
    other_names: tuple[str, ...] = ()  # other file names read as this layout
    subdir: str = ""  # the files' folder under the dataset root (RaSa: processed_data)
    every_split_file: bool = False  # its tools write a file for every split, empty ones included
    aptm_prefix: str = "data"  # the prefix of APTM files made from it (cuhk_train.json)
    sources: Mapping[str, str] = field(default_factory=dict)  # top folder of the images -> the dataset they are from

    @property
    def names(self) -> tuple[str, ...]:
        """The annotation file names read as this layout."""
        return (self.annotation, *self.other_names)

    @property
    def required_fields(self) -> tuple[str, ...]:
        """The fields every entry must have, in the order they are checked."""
        split = ("split",) if self.split_from == "field" else ()
        return (*split, self.id_field, self.path_field, self.captions_field)

    @property
    def per_split(self) -> bool:
        """Whether the layout keeps a file per split."""
        return "{split}" in self.annotation

    @property
    def file_pattern(self) -> re.Pattern[str]:
        """The annotation file names of a per-split layout; groups ``split`` (and ``prefix``)."""
        groups = {"{split}": f"(?P<split>{'|'.join(self.splits)})", "{prefix}": "(?P<prefix>.+)"}
        parts = re.split(r"(\{split\}|\{prefix\})", self.annotation)
        return re.compile("".join(groups.get(part, re.escape(part)) for part in parts))

    @property
    def image_base(self) -> str:
        """What image paths are relative to, as messages say it."""
        return self.image_dir or "the annotation file's folder"


_CUHK_SOURCES = {"CUHK01": "CUHK01", "CUHK03": "CUHK03", "Market": "Market-1501", "cam_a": "VIPeR",
                 "cam_b": "VIPeR", "VIPER": "VIPeR", "train_query": "CUHK-SYSU", "test_query": "CUHK-SYSU"}

# Each layout as the public code that reads it has it (the converter's module docstring says whose code).
LAYOUTS: dict[str, Layout] = {
    "cuhk-original": Layout("CUHK-PEDES (caption_all.json)", "caption_all.json", split_from="optional",
                            aptm_prefix="cuhk"),
    "cuhk-pedes": Layout("CUHK-PEDES", "reid_raw.json", dataset=True, aptm_prefix="cuhk", sources=_CUHK_SOURCES),
    "icfg-pedes": Layout("ICFG-PEDES", "ICFG-PEDES.json", splits=("train", "test"), dataset=True, aptm_prefix="icfg"),
    "rstpreid": Layout("RSTPReid", "data_captions.json", path_field="img_path", dataset=True, aptm_prefix="rstp",
                       fields=("id", "img_path", "captions", "split")),
    "rasa": Layout("RaSa", "{split}.json", kind="per-split", split_from="file", subdir="processed_data",
                   every_split_file=True),
    "tbps-clip": Layout("TBPS-CLIP", "{split}_reid.json", kind="per-split", split_from="file",
                        fields=("id", "file_path", "captions")),
    "aptm": Layout("APTM", "{prefix}_{split}.json", kind="aptm", path_field="image", id_field="image_id",
                   captions_field="caption", split_from="file", image_dir="", fields=("image", "caption", "image_id"),
                   caption_rows=True, named_ids=True),
    "csv": Layout("CSV", "annotations.csv", kind="csv", path_field="image", id_field="person_id",
                  captions_field="caption", image_dir="", dataset=True,
                  fields=("image", "person_id", "caption", "split", "camera"), caption_rows=True, named_ids=True,
                  other_names=("annotations.jsonl",)),
}
DATASETS: tuple[str, ...] = tuple(name for name, layout in LAYOUTS.items() if layout.dataset)
JSON_DATASETS: tuple[str, ...] = tuple(name for name in DATASETS if LAYOUTS[name].kind == "single")  # the benchmarks


# ---- what parsing gives ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One image of a person with its captions, whatever the layout.

    ``image`` is relative to the layout's image folder, as written (untrusted
    until checked); ``captions`` as written (:func:`kept_captions` gives the
    ones tbps uses). While reading, ``person_id`` may be a name (csv, aptm) and
    ``split`` None (a layout that takes it from elsewhere); once converted, an
    int and one of train/val/test.
    """

    split: str | None
    person_id: int | str
    image: str
    captions: tuple[str, ...]
    camera: str | None = None
    tokens: tuple[tuple[str, ...], ...] | None = None  # processed_tokens as read, if any
    where: str = field(default="", compare=False)  # for messages: "entry 12", "line 13"


@dataclass(frozen=True)
class EntryProblem:
    """Why one entry cannot be used, said two ways: ``fact`` follows ``"entry 3: "`` in a list of the
    entries that have it; ``sentence`` says it of this entry alone; ``str()`` adds ``detail``."""

    where: str  # "entry 12", "train.json: entry 3"
    fact: str  # "'id' is '7', expected an integer identity (64-bit)"
    sentence: str  # "entry 12: 'id' is '7', expected an integer identity (64-bit)"
    detail: str = ""  # what an error about this entry alone adds: "(it has 'split', 'captions')"
    error: type[DataError] = DataError  # what a reader raises for it (UnsafePathError: a path leaving its folder)

    @classmethod
    def about(cls, where: str, fact: str, error: type[DataError] = DataError) -> EntryProblem:
        """A problem of one field: the sentence is ``"entry 3: <fact>"``."""
        return cls(where, fact, f"{where}: {fact}", error=error)

    def __str__(self) -> str:
        return f"{self.sentence} {self.detail}" if self.detail else self.sentence


# ---- the rules, in the order they are checked ------------------------------------------------------

def parse_entry(item: Any, where: str, layout: Layout, *, file_split: str | None = None,
                splits: Iterable[str] | None = None, content: bool = True) -> Entry | EntryProblem:
    """One entry of a JSON layout, or its first problem.

    Args:
        item: the entry as the JSON file holds it.
        where: how messages name it, e.g. ``"entry 12"``.
        layout: the layout it is in (its field names, where its split comes from).
        file_split: the split of the file it is in (``split_from="file"`` layouts).
        splits: the splits allowed; None: any string (the reader skips other splits, the doctor warns).
        content: also check what tbps uses: an image path that stays inside the image folder, and (an
            entry per image) a caption with something visible in it. The doctor reports those itself.
    """
    if not isinstance(item, dict):
        kind = json_type(item)
        fact = f"a JSON {kind}, expected an object"
        return EntryProblem(where, fact, f"{where} is {fact}")
    absent = [name for name in layout.required_fields if name not in item]
    if absent:
        names = quoted(absent)
        return EntryProblem(where, f"no {names} field", f"{where} has no {names} field",
                            f"(it has {quoted(item) or 'none'})")
    split = _split(item.get("split"), layout, file_split, None if splits is None else tuple(splits))
    person_id = _person_id(item[layout.id_field], layout)
    image = _image(item[layout.path_field], layout, content)
    captions = _captions(item[layout.captions_field], layout)
    for fact in (split, person_id, image, captions):
        if isinstance(fact, _Fact):
            return EntryProblem.about(where, fact.text, fact.error)
    if content and not layout.caption_rows and not kept_captions(captions):
        fact = "no non-empty caption: every image needs at least one"
        return EntryProblem(where, fact, f"{where} ({image}) has {fact}")
    return Entry(split, person_id, image, captions, tokens=_tokens(item.get("processed_tokens")), where=where)


@dataclass(frozen=True)
class _Fact:
    """What is wrong with one field's value."""

    text: str
    error: type[DataError] = DataError


def _split(value: Any, layout: Layout, file_split: str | None, splits: tuple[str, ...] | None) -> str | None | _Fact:
    if value is None and layout.split_from != "field":
        return file_split
    if splits is not None and value not in splits:
        return _Fact(f"'split' is {short(value)}, expected one of {', '.join(splits)}")
    if not isinstance(value, str):
        return _Fact(f"'split' is {short(value)}, expected a string such as 'train'")
    if layout.split_from == "file" and value != file_split:
        return _Fact(f"'split' is {value!r} but the entry is in the {file_split} file")
    return value


def _person_id(value: Any, layout: Layout) -> int | str | _Fact:
    if isinstance(value, int) and not isinstance(value, bool) and -2 ** 63 <= value < 2 ** 63:
        return value
    if layout.named_ids and isinstance(value, str) and value.strip() and is_utf8(value):
        return value.strip()  # MALS names its ids; the converter numbers them
    kind = "an integer (64-bit) or a name" if layout.named_ids else "an integer identity (64-bit)"
    return _Fact(f"{layout.id_field!r} is {short(value)}, expected {kind}")


def _image(value: Any, layout: Layout, content: bool) -> str | _Fact:
    if not isinstance(value, str) or not value.strip():
        expected = f"an image path relative to {layout.image_base}/"
        return _Fact(f"{layout.path_field!r} is {short(value)}, expected {expected}")
    if content:
        try:
            resolve_inside(layout.image_base, value, repr(layout.path_field))  # untrusted: no '/x', no '..'
        except UnsafePathError as e:
            return _Fact(str(e), UnsafePathError)
    return value


def _captions(value: Any, layout: Layout) -> tuple[str, ...] | _Fact:
    if isinstance(value, str) and layout.caption_rows:  # APTM's train files: one caption per entry
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        return _Fact(f"{layout.captions_field!r} is {short(value)}, expected a list of strings")
    return tuple(value)


def _tokens(value: Any) -> tuple[tuple[str, ...], ...] | None:
    if isinstance(value, list) and all(isinstance(t, list) and all(isinstance(w, str) for w in t) for t in value):
        return tuple(tuple(t) for t in value)
    return None


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a JSON "\ud800" escape
        return False
    return True


# ---- captions -------------------------------------------------------------------------------------

def has_visible_text(caption: str) -> bool:
    """Whether a caption holds something a tokenizer reads (invisible-only text is empty as a query)."""
    # A letter or digit is visible: the exact test (per character, slow) only for the rest.
    return any(c.isalnum() for c in caption) or bool(visible_text(caption).strip())


def kept_captions(captions: Iterable[str]) -> tuple[str, ...]:
    """The captions tbps uses, stripped, in order: the empty and invisible-only ones dropped."""
    return tuple(c.strip() for c in captions if has_visible_text(c))


# ---- annotation files -----------------------------------------------------------------------------

def read_json(path: Path, name: str | None = None) -> Any:
    """The JSON document in ``path``; a :class:`DataError` names it as ``name`` (default: the path)."""
    name = str(path) if name is None else name
    try:
        return parse_json(path.read_bytes())
    except json.JSONDecodeError as e:
        raise DataError(f"{name} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; "
                        "restore it from the dataset archive") from e
    except ValueError as e:  # not UTF-8, nested too deeply, an integer too long
        raise DataError(f"{name} is not readable JSON text ({e}); restore it from the dataset archive") from e
    except OSError as e:
        raise DataError(f"cannot read {name}: {e.strerror or e}") from e


def load_entry_list(path: Path) -> list[Any]:
    """The annotation file's top-level list; its entries are parsed one by one later."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, expected a list of image entries")
    return data


# ---- words for messages ---------------------------------------------------------------------------

def json_type(value: Any) -> str:
    """What a parsed JSON value is, in words: ``"object"``, ``"list"``, ``"string"``, ..."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def quoted(names: Iterable[Any]) -> str:
    """``'a', 'b'``."""
    return ", ".join(repr(n) for n in names)
