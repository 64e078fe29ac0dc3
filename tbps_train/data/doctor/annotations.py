"""The checks of the annotations: the file's entries, the splits against the published figures, the
identities and the captions."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

from tbps_runtime.errors import DataError
from tbps_runtime.paths import printable
from tbps_runtime.text import clip, short
from tbps_train.data.doctor.adapters import DatasetAdapter
from tbps_train.data.doctor.figures import PUBLISHED, PUBLISHED_SOURCE, WHOLE_DATASET, Figures
from tbps_train.data.doctor.report import MAX_EXAMPLES, Report, plural, relative, shown, them
from tbps_train.data.doctor.tokens import TokenCounter
from tbps_train.data.formats import Entry, has_visible_text, kept_captions
from tbps_train.data.readers import dataset_splits

__all__ = ["caption_checks", "identity_checks", "load_entries", "split_check"]


def load_entries(report: Report, adapter: DatasetAdapter, annotation: Path, root: Path) -> list[Entry] | None:
    """The entries that parse, or None (with an error in the report) when none can be used."""
    report.annotation["file"] = relative(annotation, root)
    try:
        entries, bad = adapter.load(annotation)
    except DataError as e:
        report.add("error", "annotation-unreadable", "annotation", str(e), 1)
        return None
    report.annotation["entries"] = len(entries) + len(bad)
    if bad:
        report.add("error", "bad-entry", "annotation",
                   f"{plural(len(bad), 'entry')} of {annotation.name} cannot be read: tbps refuses the file "
                   "until each is fixed or removed", len(bad), bad)
    if not entries:
        report.add("error", "no-entries", "annotation", f"{annotation.name} holds no image entry that parses: "
                   f"is it the {adapter.title} annotation file?", 1)
        return None
    return entries


def split_check(report: Report, entries: list[Entry], dataset: str,
                published: Mapping[str, Figures] | None) -> list[Entry]:
    """Per-split counts against the published figures; returns the entries of the dataset's splits."""
    splits = dataset_splits(dataset)
    unknown = Counter(e.split for e in entries if e.split not in splits)
    if unknown:
        count = sum(unknown.values())
        names = [f"{printable(short(s))} ({n:,})" for s, n in unknown.most_common()]
        report.add("warning", "unknown-split", "splits",
                   f"{plural(count, 'entry', 'names')} a split {dataset} does not have "
                   f"(it has {', '.join(splits)}): tbps ignores {them(count)}", count, names)
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
    captions = sum(1 for e in entries for c in e.captions if has_visible_text(c))
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


# ---- identities and captions ----------------------------------------------------------------------

def identity_checks(report: Report, entries: list[Entry]) -> None:
    """Identities in more than one split."""
    splits_of: dict[int | str, set[str]] = defaultdict(set)
    for entry in entries:
        splits_of[entry.person_id].add(entry.split)
    shared = [(pid, s) for pid, s in splits_of.items() if len(s) > 1]
    report.identities = {"total": len(splits_of), "shared": len(shared)}
    if shared:
        examples = [f"id {printable(str(pid))}: {', '.join(sorted(s))}" for pid, s in shared]
        report.add("warning", "shared-identity", "identities", f"{plural(len(shared), 'identity', 'appears')} in more "
                   "than one split: scores on a split that shares people with train overstate accuracy; keep each "
                   "identity in one split", len(shared), examples)


def caption_checks(report: Report, entries: list[Entry], counter: TokenCounter | None,
                   skip_reason: str | None) -> None:
    """Images without a caption, empty captions, one caption for several people, captions past the limit."""
    empty, uncaptioned, kept = [], [], []
    for entry in entries:
        texts = kept_captions(entry.captions)
        if not texts:  # reported once, as an image without a caption
            uncaptioned.append(f"{entry.where} ({shown(entry.image)})")
        else:
            empty += [f"{entry.where} ({shown(entry.image)}), caption {i}" for i, c in enumerate(entry.captions)
                      if not has_visible_text(c)]
        kept += [(entry, text) for text in texts]
    report.captions = {"total": len(kept)}
    if uncaptioned:
        report.add("error", "no-caption", "captions", f"{plural(len(uncaptioned), 'image', 'has')} no non-empty "
                   "caption: tbps refuses the file until each image has one (caption it, or remove the entry)",
                   len(uncaptioned), uncaptioned)
    if empty:
        report.add("warning", "empty-caption", "captions", f"{plural(len(empty), 'caption', 'is')} empty or "
                   f"whitespace only: tbps drops {them(len(empty))}", len(empty), empty)
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
    examples = [f'"{printable(clip(first[key]))}": ids {_id_list(ids)}' for key, ids in repeated]
    report.add("warning", "repeated-caption", "captions", f"{plural(len(repeated), 'caption text', 'describes')} more "
               "than one identity: the model cannot tell those people apart by it (RSTPReid is known for this; "
               "elsewhere it is a copying error)", len(repeated), examples)


def _id_list(ids: set[int | str]) -> str:
    ordered = sorted(ids, key=lambda i: (isinstance(i, str), i))
    text = ", ".join(printable(str(i)) for i in ordered[:MAX_EXAMPLES])
    return text + (f" and {len(ordered) - MAX_EXAMPLES:,} more" if len(ordered) > MAX_EXAMPLES else "")


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
        examples = [f'{entry.where}: {n:,} {counter.unit}: "{printable(clip(text))}"' for n, entry, text in over]
        report.add("warning", "long-caption", "captions", f"{plural(len(over), 'caption', 'is')} longer than "
                   f"{counter.limit:,} {counter.unit} ({counter.description}): the model reads only the first "
                   f"{counter.limit:,}; the longest has {longest:,}", len(over), examples)
