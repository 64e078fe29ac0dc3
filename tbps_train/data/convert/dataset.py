"""The conversion: a dataset read in one layout, its ids and splits resolved, written in another, read back."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tbps_runtime.errors import DataError
from tbps_train.data import readers
from tbps_train.data.convert.images import apply_link, count_found, plan_images
from tbps_train.data.convert.reading import Problems, Source, group_by_image, layout_named, read_layout
from tbps_train.data.convert.writing import Files, check_outputs, render, write
from tbps_train.data.formats import DATASETS, IMAGE_DIR, LAYOUTS, SPLITS, Entry

__all__ = ["CUHK_STANDARD_SPLIT", "Conversion", "SplitCounts", "convert", "convert_dataset", "standard_cuhk_split"]

logger = logging.getLogger(__name__)

# Li et al.'s CUHK-PEDES split is by identity: the authors' reid_raw.json gives "id": 11003 a "train" split
# (their README), IRRA numbers train identities 1..11003 without gaps, and IRRA-derived loaders document
# val 11004-12003 and test 12004-13003 (11,003 / 1,000 / 1,000 identities, as in the paper).
CUHK_STANDARD_SPLIT = (("train", 1, 11003), ("val", 11004, 12003), ("test", 12004, 13003))
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class SplitCounts:
    """One split of a converted dataset, as written and read back."""

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
        """The ``--json`` document."""
        return {"from": self.from_format, "to": self.to_format, "input": str(self.input_path),
                "root": str(self.root), "annotation": str(self.annotation), "written": [str(p) for p in self.written],
                "splits": {s: vars(c) for s, c in self.splits.items()},
                "images_dir": None if self.images_dir is None else str(self.images_dir),
                "images_found": self.images_found, "notes": list(self.notes)}


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
        from_format, to_format: names in :data:`~tbps_train.data.convert.FORMATS` (the table's layouts).
        input_path: the annotation file, or the folder holding it (per-split layouts: their folder).
        output_root: the dataset root to write (created if missing); nothing is written outside it.
        images: the images folder to link ``ROOT/imgs`` to; default: the input's, when found.
        overwrite: replace existing annotation files (and a symbolic link ``ROOT/imgs``; never a folder).

    Raises:
        DataError: the input has problems (up to 20 listed) or cannot go into ``to_format``.
        InputFileNotFoundError: no input, or not the files ``from_format`` expects.
        OutputError: an annotation file exists (without ``overwrite``), or ``ROOT/imgs`` is in the way.
    """
    source_layout, target = layout_named(from_format, "from_format"), layout_named(to_format, "to_format")
    root = Path(output_root).expanduser().absolute()
    source = read_layout(from_format, input_path)
    entries = _for_target(source, from_format, to_format)
    files = render(to_format, entries, source.prefix or source_layout.aptm_prefix)
    check_outputs(root, files, overwrite)
    link = plan_images(root, images, entries, source.image_candidates, overwrite)
    written = write(root, files)
    notes = list(source.notes) + apply_link(root, link)
    splits, records = _read_back(to_format, root, entries, files)
    found = count_found(root, records)
    annotation = written[0].parent if target.per_split else written[0]
    logger.debug("converted %s (%s) to %s (%s)", input_path, source_layout.title, annotation, target.title)
    return Conversion(from_format, to_format, Path(input_path), root, annotation, tuple(written), splits,
                      root / IMAGE_DIR if (root / IMAGE_DIR).is_dir() else None, found, tuple(notes))


def _for_target(source: Source, from_format: str, to_format: str) -> list[Entry]:
    """Entries with integer ids and a split each, checked against what ``to_format`` can hold."""
    target = LAYOUTS[to_format]
    entries, id_note = _resolve_ids(source.entries)
    if id_note:
        source.notes.append(id_note)
    cameras = sum(1 for e in entries if e.camera is not None)
    if cameras and "camera" not in target.fields:
        source.notes.append(f"the cameras of {cameras} images are not kept: {target.title} has no "
                            "camera field")
    entries = _resolve_splits(entries, from_format, source)
    if target.caption_rows and len({e.image for e in entries}) < len(entries):
        problems = Problems()  # these layouts repeat the image per caption: an image listed twice is merged
        entries = group_by_image([replace(e, where=f"entry {i}") for i, e in enumerate(entries)], problems)
        problems.raise_if_any(str(source.files[0]))
    allowed = target.splits
    outside = sorted({e.split for e in entries} - set(allowed), key=SPLITS.index)
    if outside:
        count = sum(1 for e in entries if e.split in outside)
        raise DataError(f"{target.title} has only the splits {', '.join(allowed)}, and {count} "
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
    """Entries without a split (the original CUHK-PEDES release) get Li et al.'s split by identity."""
    if all(e.split is not None for e in entries):
        return entries
    if LAYOUTS[from_format].split_from != "optional":  # only the original release may leave them out
        raise DataError(f"{source.files[0]} gives no split: give every entry a 'split' (train, val or test)")
    problems, resolved = Problems(), []
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


def _read_back(fmt_name: str, root: Path, entries: list[Entry], files: Files
               ) -> tuple[dict[str, SplitCounts], list[Path]]:
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
    if fmt_name in DATASETS:
        where = written if fmt_name == "csv" else root  # the csv reader takes the file itself
        return {s: [(r.image_path, r.person_id, r.captions)
                    for r in readers.read_split(fmt_name, where, s, check_images=False)] for s in splits}
    source = read_layout(fmt_name, written)
    image_dir = LAYOUTS[fmt_name].image_dir
    base = root / image_dir if image_dir else source.image_candidates[0]
    return {s: [(base / e.image, e.person_id, e.captions) for e in source.entries if e.split == s] for s in splits}
