"""``tbps calibrate``: the Eq. 14 score above which a hit is trusted, measured on a validation split.

Ranking always returns the k best gallery rows, even when the described person
is not in the gallery. A calibrated bundle records the score a stranger rarely
reaches, so that ``tbps rank --min-score auto`` returns nothing rather than the
least bad stranger.

Definition. On split S (default ``val``) of a dataset, every caption is embedded
with the bundle's text tower and every image with its image tower, through the
runtime (:class:`tbps_runtime.search.PersonSearch`: the threshold is the ONNX
model's own), and every (caption, image) pair is scored with Eq. 14 (float32, as
the runtime ranks). A pair is *matching* when caption and image show the same
identity, *non-matching* otherwise. The threshold at false-match rate f is the
smallest score t such that the fraction of non-matching pairs scoring ``>= t``
is ``<= f``: with n non-matching pairs and m the largest count with
``m / n <= f``, t is the float32 number just above the (m + 1)-th highest
non-matching score, so every pair tied with that score is below t (the rate is
never exceeded) and any lower float32 t would let m + 1 pairs through. The
record also holds the true-match rate at t (matching pairs ``>= t``), the found
rate (captions whose best matching image scores ``>= t``), the pair counts, f,
the dataset, the split and the numbers of captions and images; it is written
into the bundle's ``manifest.json`` as ``score_threshold`` (the towers, their
SHA-256 and the fingerprint are unchanged).

Memory: pairs are scored in blocks of captions (:data:`BLOCK_SCORES` scores at
a time). Across blocks only what the order statistic needs is kept: the m + 1
highest non-matching scores, or the n - m lowest when that side is smaller,
plus every matching score and each caption's best matching score. A 6000 x 3000
split at f = 0.01 keeps about 0.2M floats; beyond :data:`MAX_KEPT_SCORES` kept
scores calibration is refused rather than exhausting memory.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tbps_runtime.contract import MANIFEST_FILE
from tbps_runtime.errors import BundleError, ConfigError
from tbps_runtime.model.bundle import Manifest, load_manifest, threshold_problems, write_manifest
# The order statistic lives in the runtime (a store calibrates without torch); re-exported here.
from tbps_runtime.thresholds import DEFAULT_FALSE_MATCH_RATE, OrderStatistic as _OrderStatistic  # noqa: F401
from tbps_runtime.thresholds import (allowed_false_matches, check_false_match_rate,  # noqa: F401
                                     false_match_threshold, threshold_above)
from tbps_train.data.readers import dataset_splits, read_split

logger = logging.getLogger(__name__)

BLOCK_SCORES = 8 << 20  # (caption, image) scores per block: 32 MiB of float32
MAX_KEPT_SCORES = 32 << 20  # scores kept across blocks (one side of the order statistic + matching pairs)
EMBED_CHUNK = 256  # items per progress-bar step


# ---- the threshold ---------------------------------------------------------------------

class _Tally:
    """Scores of (caption, image) pairs arriving in blocks of captions: the non-matching side of the
    order statistic, every matching score, each caption's best matching score."""

    def __init__(self, caption_ids: np.ndarray, image_ids: np.ndarray, false_match_rate: float):
        self.caption_ids, self.image_ids = caption_ids, image_ids
        self.false_match_rate = check_false_match_rate(false_match_rate)
        self.matching_pairs, self.non_matching_pairs = pair_counts(caption_ids, image_ids)
        self.non_matching = _OrderStatistic(self.non_matching_pairs, self.false_match_rate)
        kept = self.non_matching.keep + self.matching_pairs + len(caption_ids)
        if kept > MAX_KEPT_SCORES:
            raise ConfigError(f"calibrating {len(caption_ids)} captions x {len(image_ids)} images at false-match "
                              f"rate {self.false_match_rate} keeps {kept} scores in memory, over {MAX_KEPT_SCORES}: "
                              "lower the false-match rate or calibrate on a smaller split")
        self.matching: list[np.ndarray] = []
        self.best: list[np.ndarray] = []

    def add(self, start: int, scores: np.ndarray) -> None:
        """Scores (b, N) float32 of captions ``start .. start + b - 1`` against every image."""
        same = self.caption_ids[start:start + len(scores), None] == self.image_ids[None, :]  # (b, N)
        self.non_matching.add(scores[~same])
        self.matching.append(scores[same])
        self.best.append(np.where(same, scores, -np.inf).max(axis=1, initial=-np.inf))  # (b,)

    def figures(self) -> dict[str, Any]:
        """The threshold and its rates, with the pair counts."""
        value = threshold_above(self.non_matching.value())
        matching, best = np.concatenate(self.matching), np.concatenate(self.best)
        return {"value": value, "false_match_rate": self.false_match_rate,
                "true_match_rate": float(np.mean(matching >= np.float32(value))) if matching.size else 0.0,
                "found_rate": float(np.mean(best >= np.float32(value))),
                "non_matching_pairs": self.non_matching_pairs, "matching_pairs": self.matching_pairs}


def pair_counts(caption_ids: np.ndarray, image_ids: np.ndarray) -> tuple[int, int]:
    """(matching, non-matching) pairs of (Q,) caption identities x (N,) image identities.

    Raises:
        ConfigError: no captions or images, fewer than 2 identities, or no non-matching pair.
    """
    caption_ids, image_ids = np.asarray(caption_ids), np.asarray(image_ids)
    if caption_ids.size == 0 or image_ids.size == 0:
        raise ConfigError(f"nothing to calibrate on: {caption_ids.size} captions, {image_ids.size} images")
    identities, caption_counts = np.unique(caption_ids, return_counts=True)
    image_counts = dict(zip(*np.unique(image_ids, return_counts=True)))
    distinct = len(set(identities.tolist()) | set(image_counts))
    if distinct < 2:
        raise ConfigError("calibration needs at least 2 identities (non-matching pairs are pairs of different "
                          f"identities); these captions and images have {distinct}")
    matching = int(sum(int(c) * int(image_counts.get(i, 0)) for i, c in zip(identities, caption_counts)))
    non_matching = caption_ids.size * image_ids.size - matching
    if non_matching == 0:
        raise ConfigError("no non-matching pairs: every caption shows the identity of every image")
    return matching, non_matching


def threshold_figures(scores: np.ndarray, caption_ids: Sequence[Any], image_ids: Sequence[Any],
                      false_match_rate: float = DEFAULT_FALSE_MATCH_RATE) -> dict[str, Any]:
    """The threshold and its rates from a whole (Q, N) score matrix (captions x images).

    Returns:
        ``{"value", "false_match_rate", "true_match_rate", "found_rate", "non_matching_pairs",
        "matching_pairs"}``.
    """
    scores = np.asarray(scores, np.float32)
    caption_ids, image_ids = np.asarray(caption_ids), np.asarray(image_ids)
    if scores.shape != (len(caption_ids), len(image_ids)):
        raise ValueError(f"scores {scores.shape} do not match {len(caption_ids)} captions x {len(image_ids)} images")
    tally = _Tally(caption_ids, image_ids, false_match_rate)
    tally.add(0, scores)
    return tally.figures()


def calibrate_embeddings(captions: np.ndarray, caption_ids: Sequence[Any], images: np.ndarray,
                         image_ids: Sequence[Any], false_match_rate: float = DEFAULT_FALSE_MATCH_RATE,
                         block_captions: int | None = None) -> dict[str, Any]:
    """:func:`threshold_figures` of embeddings, scored with Eq. 14 in blocks of captions.

    Args:
        captions: (Q, K, d) text embeddings; caption_ids: (Q,) their identities.
        images: (N, K, d) per-slot normalised image embeddings; image_ids: (N,) their identities.
        block_captions: captions per block (default: :data:`BLOCK_SCORES` // N).
    """
    from tbps_runtime.ranking import similarity

    caption_ids, image_ids = np.asarray(caption_ids), np.asarray(image_ids)
    if len(captions) != len(caption_ids) or len(images) != len(image_ids):
        raise ValueError(f"{len(captions)} caption and {len(images)} image embeddings for {len(caption_ids)} "
                         f"and {len(image_ids)} identities")
    tally = _Tally(caption_ids, image_ids, false_match_rate)
    block = block_captions or max(1, BLOCK_SCORES // len(images))
    for start in range(0, len(captions), block):
        tally.add(start, similarity(captions[start:start + block], images))  # (b, N) float32
    return tally.figures()


# ---- a bundle --------------------------------------------------------------------------

def calibrate_bundle(bundle: str | Path, dataset: str, root: str | Path, *, split: str = "val",
                     false_match_rate: float = DEFAULT_FALSE_MATCH_RATE, threads: int | None = None,
                     progress: bool = False) -> dict[str, Any]:
    """Calibrate ``bundle``'s score threshold on a split of a dataset (the module's definition) and
    record it in the bundle's ``manifest.json`` as ``score_threshold`` (only that file is rewritten,
    atomically; the fingerprint and the files' SHA-256 stay as they were).

    Args:
        bundle: a bundle directory (float32 or int8: each is calibrated with its own towers).
        dataset: one of ``cuhk-pedes``, ``icfg-pedes``, ``rstpreid``; root: its directory.
        split: the split scored (a held-out one: ``val``).
        false_match_rate: f in (0, 1), the fraction of non-matching pairs allowed at or above the threshold.
        threads: onnxruntime and BLAS threads (default: the cores other processes leave idle).

    Returns:
        The record written: ``value``, ``false_match_rate``, ``true_match_rate``, ``found_rate``,
        ``dataset``, ``split``, ``captions``, ``images``, ``non_matching_pairs``, ``matching_pairs``.
    """
    from tbps_runtime.outputs import check_writable
    from tbps_runtime.search import PersonSearch
    from tbps_runtime.threads import BLAS

    false_match_rate = check_false_match_rate(false_match_rate)
    bundle = Path(bundle)
    records = read_calibration_split(dataset, root, split)
    check_writable(bundle / MANIFEST_FILE, "the bundle's manifest")  # before the embedding, not after
    search = PersonSearch.from_bundle(bundle, threads=threads)
    captions = [c for r in records for c in r.captions]
    caption_ids = np.array([r.person_id for r in records for _ in r.captions])
    logger.info("calibrating %s on %s %s: %d captions x %d images", bundle, dataset, split, len(captions),
                len(records))
    text = _embed(search.embed_texts, captions, "captions", progress)  # (Q, K, d)
    pixels = _embed(search.embed_images, [r.image_path for r in records], "images", progress)  # (N, K, d)
    with BLAS.limit(search.threads):
        figures = calibrate_embeddings(text, caption_ids, pixels, [r.person_id for r in records], false_match_rate)
    record = {"value": figures["value"], "false_match_rate": false_match_rate,
              "true_match_rate": figures["true_match_rate"], "found_rate": figures["found_rate"],
              "dataset": dataset, "split": split, "captions": len(captions), "images": len(records),
              "non_matching_pairs": figures["non_matching_pairs"], "matching_pairs": figures["matching_pairs"]}
    _write_record(bundle, search.manifest, record)
    return record


def read_calibration_split(dataset: str, root: str | Path, split: str) -> list:
    """The records of the split to calibrate on, refusing a split the dataset does not have (naming those it
    has) or one with fewer than 2 identities; the readers' errors for a missing or malformed dataset."""
    splits = dataset_splits(dataset)  # an unknown dataset: the readers' error
    if split not in splits:
        raise ConfigError(f"{dataset} has no {split!r} split to calibrate on: it has "
                          f"{', '.join(repr(s) for s in splits)}")
    if split == "train":
        logger.warning("calibrating on the training split: the model has seen these pairs, so strangers "
                       "will pass the threshold more often than the false-match rate says")
    records = read_split(dataset, root, split)
    if len({r.person_id for r in records}) < 2:
        raise ConfigError(f"the {split} split of {root} holds 1 identity: calibration needs at least 2 "
                          "(non-matching pairs are pairs of different identities)")
    return records


def _embed(embed: Callable[[list], np.ndarray], items: list, what: str, progress: bool) -> np.ndarray:
    """``embed`` in chunks, with a progress bar: (len(items), K, d)."""
    from tqdm import tqdm

    parts = []
    with tqdm(total=len(items), desc=f"calibrate: {what}", unit=what[:-1], disable=not progress) as bar:
        for start in range(0, len(items), EMBED_CHUNK):
            parts.append(embed(items[start:start + EMBED_CHUNK]))
            bar.update(len(parts[-1]))
    return np.concatenate(parts)


def _write_record(bundle: Path, used: Manifest, record: dict[str, Any]) -> None:
    """Put ``record`` in the manifest, unless the towers changed since they were loaded."""
    problems = threshold_problems(record, used.num_slots)
    assert not problems, problems  # the calibration made it: a failure here is a bug
    current = load_manifest(bundle)
    if (current.fingerprint, current.files) != (used.fingerprint, used.files):
        raise BundleError(f"{bundle} was replaced while it was being calibrated: calibrate it again")
    write_manifest(bundle, dataclasses.replace(current, score_threshold=record))


def describe(record: dict[str, Any]) -> list[str]:
    """The record as text lines, for ``tbps calibrate`` and the export command."""
    return [f"score threshold {record['value']:.6f} (Eq. 14, K-slot sum) at false-match rate "
            f"{record['false_match_rate']:g}",
            f"true-match rate {record['true_match_rate']:.4f}, found rate {record['found_rate']:.4f}",
            f"measured on {record['dataset']} {record['split']}: {record['captions']} captions x "
            f"{record['images']} images ({record['matching_pairs']} matching, "
            f"{record['non_matching_pairs']} non-matching pairs)"]
