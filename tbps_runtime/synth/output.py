"""Where a generator's output goes: one directory, written whole or not at all, replacing only its own.

Both generators (the datasets and the footage) write a fresh sibling directory,
add their marker last and rename it into place. An existing non-empty output
is refused unless the caller asks to overwrite, and even then unless it holds
the generator's marker and nothing but files the generator writes: nothing
else is ever deleted. :class:`OutputKind` says what each generator owns and
how its refusals read; the rules themselves are written once, here.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbps_runtime.atomic import has_format, write_json_atomic
from tbps_runtime.errors import OutputError
from tbps_runtime.outputs import ensure_space, replace_directory

__all__ = ["OutputKind", "prepare_output", "write_output"]


@dataclass(frozen=True)
class OutputKind:
    """What one generator writes into its output directory (all it may replace), and its refusals' words."""

    marker: str  # a JSON file written last: its "format" says the directory is this generator's
    format: str
    own_files: re.Pattern[str]  # every file it writes, as a path relative to the output ("imgs/SYNTH/1_0.png")
    own_dirs: frozenset[str]  # every folder it writes, likewise
    noun: str  # "dataset": "pass a directory path for the dataset"
    described: str  # "a dataset": "... is not a dataset written by tbps synth"
    writer: str  # "tbps synth"
    version: int = 1


def prepare_output(out: str | Path, kind: OutputKind, overwrite: bool, need: int, what: str) -> Path:
    """Check that ``out`` may be written and that ``need`` bytes fit on its disk; create its parent.

    Returns ``out`` made absolute.

    Raises:
        OutputError: ``out`` is a file, or not empty (without ``overwrite``), or not ``kind``'s to
            replace; or the disk lacks room for ``what``.
    """
    out = Path(out).expanduser().absolute()
    # Before any drawing (or any directory): a size no disk can hold would otherwise run for hours.
    ensure_space(next(p for p in (out, *out.parents) if p.is_dir()), need, what)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file: pass a directory path for the {kind.noun}")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"{out} exists and is not empty: pick a new directory or pass overwrite=True",
                              code="output_not_empty", path=str(out))
        _check_replaceable(out, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def write_output(out: Path, kind: OutputKind, write: Callable[[Path], Mapping[str, Any] | None]) -> None:
    """Run ``write(tmp)`` in a fresh sibling ``tmp`` of ``out``, write the marker, move ``tmp`` into place.

    The marker holds ``{"format", "version"}`` and whatever ``write`` returns. ``out`` is replaced only
    once the new directory is complete, and only if it still is ``kind``'s (it may have changed while
    ``write`` ran); ``tmp`` is removed on any failure, so ``out`` is all or nothing.

    Raises:
        OutputError: ``out`` is no longer ``kind``'s to replace.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would keep the output from its other readers
        document = write(tmp) or {}
        write_json_atomic(tmp / kind.marker, {"format": kind.format, "version": kind.version, **document})
        if out.is_dir() and any(out.iterdir()):
            _check_replaceable(out, kind)
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replaceable(out: Path, kind: OutputKind) -> None:
    """Refuse to replace ``out`` unless it holds ``kind``'s marker and only what ``kind`` writes."""
    if not has_format(out / kind.marker, kind.format):
        raise OutputError(f"{out} is not {kind.described} written by {kind.writer} (no {kind.marker} in it): "
                          "not replacing it; pick another directory, or remove it yourself")
    foreign = _foreign_entry(out, kind)
    if foreign is not None:
        raise OutputError(f"{out} holds {foreign}, which {kind.writer} did not write: not replacing it; "
                          "move it out, or pick another directory")


def _foreign_entry(out: Path, kind: OutputKind) -> str | None:
    """The first entry under ``out`` that ``kind`` does not write (links count as foreign), or None."""
    for directory, dirs, files in os.walk(out):
        subdirectories = set(dirs)
        for name in sorted(dirs) + sorted(files):
            path = Path(directory) / name
            relative = path.relative_to(out).as_posix()
            if name in subdirectories:
                own = relative in kind.own_dirs
            else:
                own = path.is_file() and kind.own_files.fullmatch(relative) is not None
            if path.is_symlink() or not own:
                return relative + ("/" if name in subdirectories else "")
    return None
