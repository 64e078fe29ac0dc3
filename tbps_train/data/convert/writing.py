"""Layouts out: the files of a layout, rendered from entries as its own tools write them, and written
atomically under the dataset root, never over what exists unless asked."""

from __future__ import annotations

import csv
import io
import json
import string
from pathlib import Path
from typing import Any

from tbps_runtime.atomic import atomic_write
from tbps_runtime.errors import OutputError
from tbps_train.data.formats import IMAGE_DIR, LAYOUTS, SPLITS, Entry, Layout

__all__ = ["Files", "check_outputs", "render", "write"]

Files = dict[str, tuple[bytes, dict[str, int]]]  # path relative to the root -> (content, entries per split)


def render(fmt_name: str, entries: list[Entry], prefix: str) -> Files:
    """The files to write, by path relative to the root: (content, entries written per split)."""
    layout = LAYOUTS[fmt_name]
    per_split = {s: [e for e in entries if e.split == s] for s in SPLITS}
    if layout.kind == "csv":
        counts = {s: sum(len(e.captions) for e in group) for s, group in per_split.items() if group}
        return {layout.annotation: (_csv_text(layout, entries).encode("utf-8"), counts)}
    if not layout.per_split:
        counts = {s: len(group) for s, group in per_split.items() if group}
        return {layout.annotation: (_json_bytes([_json_object(layout, e) for e in entries]), counts)}
    files = {}
    for split, group in per_split.items():
        if not group and not layout.every_split_file:
            continue
        items = [o for e in group for o in _aptm_objects(layout, e)] if layout.kind == "aptm" else \
            [_json_object(layout, e) for e in group]
        name = str(Path(layout.subdir) / layout.annotation.format(split=split, prefix=prefix))
        files[name] = (_json_bytes(items), {split: len(items)} if group else {})
    return files


def _fields(layout: Layout, entry: Entry, captions: Any) -> dict[str, Any]:
    """One object (or row) of ``layout`` holding ``captions``: its fields, in the layout's order."""
    # Layouts whose paths are relative to the annotation's folder name the images under imgs/.
    image = entry.image if layout.image_dir else f"{IMAGE_DIR}/{entry.image}"
    values = {"split": entry.split, "camera": entry.camera or "", layout.id_field: entry.person_id,
              layout.path_field: image, layout.captions_field: captions}
    if "processed_tokens" in layout.fields:
        values["processed_tokens"] = _processed_tokens(entry)
    return {name: values[name] for name in layout.fields}


def _json_object(layout: Layout, entry: Entry) -> dict[str, Any]:
    return _fields(layout, entry, list(entry.captions))


def _aptm_objects(layout: Layout, entry: Entry) -> list[dict[str, Any]]:
    """APTM's train files hold an object per caption, its val and test files one per image."""
    if entry.split == "train":
        return [_fields(layout, entry, caption) for caption in entry.captions]
    return [_fields(layout, entry, list(entry.captions))]


def _csv_text(layout: Layout, entries: list[Entry]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(layout.fields)
    for entry in entries:
        for caption in entry.captions:
            writer.writerow(_fields(layout, entry, caption).values())
    return buffer.getvalue()


def _processed_tokens(entry: Entry) -> list[list[str]]:
    """The input's processed_tokens, or the original release's: lower case, no punctuation, split on spaces."""
    if entry.tokens is not None and len(entry.tokens) == len(entry.captions):
        return [list(t) for t in entry.tokens]
    table = str.maketrans("", "", string.punctuation)
    return [c.lower().translate(table).split() for c in entry.captions]


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data) + "\n").encode("ascii")  # ASCII escapes: any text, lone surrogates included


def check_outputs(root: Path, files: Files, overwrite: bool) -> None:
    """Refuse, before anything is written, a root that is a file or annotation files in the way."""
    if root.exists() and not root.is_dir():
        raise OutputError(f"output_root {root} is a file: give the folder to write the dataset into",
                          code="parameter_invalid", names=("output_root",))
    existing = [root / name for name in files if (root / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} exists: pass overwrite=True to replace it, or choose another output_root",
                          code="convert_output_exists", path=str(existing[0]))
    for path in existing:
        if path.is_dir():
            raise OutputError(f"{path} is a folder, where the annotation file goes: move it away")


def write(root: Path, files: Files) -> list[Path]:
    """Write ``files`` under ``root``, each atomically; returns their paths."""
    written = []
    for name, (content, _) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda stream, data=content: stream.write(data))
        written.append(path)
    return written
