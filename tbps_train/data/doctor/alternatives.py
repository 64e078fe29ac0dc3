"""A missing annotation file: what the root holds instead, and the command that fixes it."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tbps_runtime.errors import DataError
from tbps_runtime.paths import printable
from tbps_train.data.doctor.adapters import DatasetAdapter
from tbps_train.data.doctor.report import Report, plural, relative
from tbps_train.data.formats import JSON_DATASETS, LAYOUTS, Layout, read_json

__all__ = ["Alternative", "no_annotation"]

# The layouts tbps reads from one JSON file, and the per-split layouts the converter turns into one.
_DATASET_FILES: dict[str, Layout] = {name: LAYOUTS[name] for name in JSON_DATASETS}
_SPLIT_FILES: dict[str, Layout] = {name: layout for name, layout in LAYOUTS.items() if layout.per_split}
_ORIGINAL = "cuhk-original"  # the original CUHK-PEDES release


@dataclass(frozen=True)
class Alternative:
    """A known annotation layout found where the expected file is not, and the command that fixes it."""

    path: str  # relative to the root
    kind: str
    command: str


def no_annotation(report: Report, adapter: DatasetAdapter, root: Path) -> None:
    """The error for a root without the annotation file, naming what it holds instead."""
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
    for other, layout in _DATASET_FILES.items():
        if other != dataset and (root / layout.annotation).is_file():
            found.append(Alternative(layout.annotation, f"the {layout.title} annotation file",
                                     _command("check", "--dataset", other, "--root", root)))
    return found + _misspelt(dataset, root) + _nested_roots(root)


def _misspelt(dataset: str, root: Path) -> list[Alternative]:
    """ICFG-PEDES's file as IRRA's README spells it, ``ICFG_PEDES.json``."""
    expected = LAYOUTS[dataset].annotation
    misspelt = expected.replace("-", "_")
    if dataset != "icfg-pedes" or not (root / misspelt).is_file():
        return []
    return [Alternative(misspelt, "the ICFG-PEDES file under another spelling (IRRA's README)",
                        f"mv {shlex.quote(str(root / misspelt))} {shlex.quote(str(root / expected))}")]


def _command(*words: Any) -> str:
    return "tbps data " + " ".join(shlex.quote(printable(str(w))) for w in words)


def _original_release(dataset: str, root: Path) -> list[Alternative]:
    """The original CUHK-PEDES release's ``caption_all.json`` (``split`` missing in some copies)."""
    path = root / LAYOUTS[_ORIGINAL].annotation
    if not path.is_file():
        return []
    try:
        data = read_json(path, path.name)
    except DataError:
        data = None
    if isinstance(data, list):
        with_split = sum(isinstance(e, dict) and "split" in e for e in data)
        state = "with splits" if data and with_split == len(data) else "without splits: the converter adds Li et al.'s"
        kind = f"the original CUHK-PEDES release ({plural(len(data), 'entry')}, {state})"
    else:
        kind = "named like the original CUHK-PEDES release, but not a JSON list"
    target = dataset if dataset == "cuhk-pedes" else "cuhk-pedes"
    return [Alternative(path.name, kind, _command("convert", "--from", _ORIGINAL, "--to", target,
                                                  "--input", path, "--root", root))]


def _per_split_files(dataset: str, root: Path) -> list[Alternative]:
    """Per-split lists in the root or RaSa's ``processed_data/``: one alternative per layout found."""
    found, taken = [], set()
    subdirs = sorted({layout.subdir for layout in _SPLIT_FILES.values() if layout.subdir})
    for folder in (root, *(root / subdir for subdir in subdirs)):
        names = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
        for name, layout in _SPLIT_FILES.items():
            pattern = layout.file_pattern
            files = [folder / n for n in names if pattern.fullmatch(n) and n not in taken]
            if not files:
                continue
            taken.update(f.name for f in files)
            prefixes = {pattern.fullmatch(f.name)["prefix"] for f in files} if "prefix" in pattern.groupindex else set()
            source = files[0] if len(prefixes) > 1 else folder  # the converter takes one APTM prefix at a time
            listed = ", ".join(relative(f, root) for f in files[:4]) + (", ..." if len(files) > 4 else "")
            found.append(Alternative(listed, f"{layout.title}'s per-split files{_fields(files[0])}",
                                     _command("convert", "--from", name, "--to", dataset, "--input", source,
                                              "--root", root)))
    return found


def _fields(path: Path) -> str:
    """The fields of a per-split file's first entry, e.g. `` (fields image, image_id, caption)``."""
    try:
        data = read_json(path, path.name)
    except DataError:
        return " (not readable JSON)"
    first = data[0] if isinstance(data, list) and data else None
    return f" (fields {', '.join(map(str, list(first)[:6]))})" if isinstance(first, dict) else ""


def _nested_roots(root: Path) -> list[Alternative]:
    """IRRA-style data folders: ``DATA/CUHK-PEDES/reid_raw.json`` when ``--root DATA`` was given."""
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for name, layout in _DATASET_FILES.items():
            if (sub / layout.annotation).is_file():
                found.append(Alternative(f"{sub.name}/{layout.annotation}",
                                         f"a {layout.title} root one level down (IRRA's data folder layout)",
                                         _command("check", "--dataset", name, "--root", sub)))
    return found
