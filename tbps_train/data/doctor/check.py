"""``check_dataset``: every check of a dataset root, in one report."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from tbps_runtime.errors import InputFileNotFoundError
from tbps_train.data.doctor.adapters import CsvAdapter, adapter_for
from tbps_train.data.doctor.alternatives import no_annotation
from tbps_train.data.doctor.annotations import caption_checks, identity_checks, load_entries, split_check
from tbps_train.data.doctor.figures import Figures
from tbps_train.data.doctor.images import image_checks
from tbps_train.data.doctor.report import Report
from tbps_train.data.doctor.tokens import TokenCounter

__all__ = ["DEFAULT_IMAGES_SAMPLE", "check_dataset"]

DEFAULT_IMAGES_SAMPLE = 500


def check_dataset(dataset: str, root: str | Path, *, images_sample: int = DEFAULT_IMAGES_SAMPLE, seed: int = 0,
                  token_counter: TokenCounter | None = None, token_skip_reason: str | None = None,
                  published: Mapping[str, Figures] | None = None) -> Report:
    """Scan a dataset root and report every problem.

    Args:
        dataset: one of :data:`~tbps_train.data.formats.DATASETS` with an adapter in
            :data:`~tbps_train.data.doctor.adapters.ADAPTERS`.
        root: the dataset root (annotation file + image folder).
        images_sample: images decoded (Pillow ``verify`` + ``load``), drawn with ``seed``; 0 = all.
            Every image's existence and size is checked regardless.
        token_counter: measures captions against the model's limit; None skips that check
            (``token_skip_reason`` says why, in the report).
        published: split -> expected figures (default: the paper's,
            :data:`~tbps_train.data.doctor.figures.PUBLISHED`).

    Raises:
        InputFileNotFoundError: ``root`` does not exist.
        ConfigError: no adapter for ``dataset`` (in DATASETS, but not in ADAPTERS).
        DataError: ``dataset`` is unknown, or ``root`` is a file for a layout that needs a folder.
    """
    adapter = adapter_for(dataset)
    root = Path(root).expanduser().absolute()
    if not root.exists():
        what = ("your .csv/.jsonl annotation file or its folder" if isinstance(adapter, CsvAdapter)
                else f"the {adapter.title} folder")
        raise InputFileNotFoundError(f"dataset root {root} does not exist: pass {what}")
    annotation = adapter.annotation_path(root)
    report = Report(dataset, adapter.title, root, {"file": None, "entries": None, "alternatives": []})
    if annotation is None:
        no_annotation(report, adapter, root)
        return report
    entries = load_entries(report, adapter, annotation, root)
    if entries is None:
        return report
    entries = split_check(report, entries, dataset, published)
    if entries:
        image_checks(report, entries, adapter, adapter.image_dir(annotation), images_sample, seed)
        identity_checks(report, entries)
        caption_checks(report, entries, token_counter, token_skip_reason)
    return report

