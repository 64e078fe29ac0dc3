"""The default synthetic person dataset, written in the CUHK-PEDES layout.

None of the benchmarks can be downloaded here, so the demo, the tests and the
benchmarks train on people drawn from parts (:mod:`~tbps_runtime.synth.people`).
Each image jitters pose, scale, lighting and background; each caption mentions
a random subset of the parts (:mod:`~tbps_runtime.synth.captions`), so some
captions honestly match several people.

``generate(OUT)`` writes ``OUT/reid_raw.json`` and ``OUT/imgs/SYNTH/*.png``;
``read_split("cuhk-pedes", OUT, split)`` (in ``tbps_train``) reads it back. Every
JSON entry also carries the identity's ``"attributes"`` (real readers ignore
unknown fields). The part-sensitive set (:mod:`~tbps_runtime.synth.parts`)
writes the same layout through :func:`prepare_dataset` and :func:`write_dataset`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tbps_runtime.errors import ConfigError
from tbps_runtime.synth import DEFAULT_IDS
from tbps_runtime.synth.captions import caption, tokens
from tbps_runtime.synth.output import OutputKind, prepare_output, write_output
from tbps_runtime.synth.people import Person, SynthConfig, render, sample_people, sample_person

__all__ = ["DATASET", "MARKER", "generate", "prepare_dataset", "split_sizes", "write_dataset"]
log = logging.getLogger(__name__)

# What generate() writes, and all that overwrite=True will delete: a directory holding anything else
# (or no marker) is refused.
MARKER = ".tbps-synth.json"
_OWN_FILES = (MARKER, "reid_raw.json", "synth.json", "twins.json")  # twins.json: the --parts set's
DATASET = OutputKind(
    marker=MARKER, format="tbps-synth",
    own_files=re.compile("|".join(map(re.escape, _OWN_FILES)) + r"|imgs/SYNTH/\d{5,}_\d{2,}\.png"),
    own_dirs=frozenset({"imgs", "imgs/SYNTH"}),
    noun="dataset", described="a dataset", writer="tbps synth",
)


def split_sizes(ids: int, fractions: tuple[float, float, float]) -> list[int]:
    """Identities per split (train, val, test): largest remainders, and one at least where a fraction is > 0."""
    raw = np.asarray(fractions, dtype=float) * ids
    sizes = np.floor(raw).astype(int)
    for i in np.argsort(sizes - raw, kind="stable")[: ids - sizes.sum()]:  # largest remainders
        sizes[i] += 1
    for i, f in enumerate(fractions):  # every split asked for gets an identity
        if f > 0 and sizes[i] == 0:
            sizes[int(np.argmax(sizes))] -= 1
            sizes[i] += 1
    return [int(n) for n in sizes]


def _check_args(ids, images_per_id, image_size, splits, seed) -> None:
    if not 0 <= seed < 2 ** 63:
        raise ConfigError(f"seed must be 0..2^63-1 (numpy's generators take no negative seed), got {seed}")
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1) > 1e-6:
        raise ConfigError(f"splits must be three fractions (train, val, test) >= 0 summing to 1, got {splits}")
    if ids < sum(f > 0 for f in splits):
        raise ConfigError(f"ids={ids} is too few: every split with a fraction > 0 needs an identity")
    if images_per_id < 1:
        raise ConfigError(f"images_per_id must be >= 1, got {images_per_id}")
    if len(image_size) != 2 or image_size[0] < 32 or image_size[1] < 12:
        raise ConfigError(f"image_size is (height, width) with height >= 32 and width >= 12, got {image_size}")


def prepare_dataset(out: str | Path, ids: int, images_per_id: int, image_size: tuple[int, int],
                    splits: tuple[float, float, float], seed: int, overwrite: bool) -> Path:
    """Check the arguments, the free space and ``out`` (refused unless empty or replaceable); absolute ``out``.

    Raises:
        ConfigError: an argument out of range.
        OutputError: ``out`` is not the dataset's to write, or its disk lacks room.
    """
    _check_args(ids, images_per_id, image_size, splits, seed)
    least = ids * images_per_id * image_size[0] * image_size[1] * 3 // 16  # PNG: ~1/8 of raw without noise, ~2/3 with
    return prepare_output(out, DATASET, overwrite, least, f"{ids} x {images_per_id} synthetic images")


def write_dataset(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` in a fresh sibling ``tmp`` of ``out`` holding an empty ``imgs/SYNTH/``, add the
    marker and move ``tmp`` into place (:func:`~tbps_runtime.synth.output.write_output`): all or nothing."""

    def write_in_folders(tmp: Path) -> None:
        (tmp / "imgs" / "SYNTH").mkdir(parents=True)
        write(tmp)

    write_output(out, DATASET, write_in_folders)


def generate(
    out: str | Path,
    ids: int = DEFAULT_IDS,
    images_per_id: int = 4,
    seed: int = 0,
    image_size: tuple[int, int] = (192, 64),
    splits: tuple[float, float, float] = (0.6, 0.15, 0.25),
    *,
    config: SynthConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic dataset in the CUHK-PEDES layout to ``out`` and return ``out``.

    ``ids`` identities with ``images_per_id`` PNG images of (height, width) =
    ``image_size`` and two captions each; identities are split into
    train/val/test by the ``splits`` fractions. The same arguments give
    byte-identical files. ``out`` is written atomically; an existing non-empty
    ``out`` is refused unless ``overwrite``, and even then unless it is a
    dataset written here (its ``.tbps-synth.json`` marker and only the files
    written here): nothing else is ever deleted.

    Raises:
        ConfigError: an argument out of range, or a palette too small for ``ids`` distinct people.
        OutputError: ``out`` is a file, not empty, not a dataset written here, or its disk lacks room.
    """
    cfg = config or SynthConfig()
    out = prepare_dataset(out, ids, images_per_id, image_size, splits, seed, overwrite)
    people = sample_people(np.random.default_rng([seed, 0]), ids, cfg)
    split_names = [n for n, size in zip(("train", "val", "test"), split_sizes(ids, splits)) for _ in range(size)]
    entries = []

    def write(tmp: Path) -> None:
        bar = tqdm(total=ids * images_per_id, desc="synth images", unit="img", disable=not progress)
        with bar:
            for pid, (person, split) in enumerate(zip(people, split_names), start=1):
                for k in range(images_per_id):
                    entries.append(_write_image(tmp, pid, k, person, split, seed, image_size, cfg))
                    bar.update()
        (tmp / "reid_raw.json").write_text(json.dumps(entries, indent=1) + "\n")
        settings = dict(ids=ids, images_per_id=images_per_id, seed=seed, image_size=list(image_size),
                        splits=list(splits), config=dataclasses.asdict(cfg))
        (tmp / "synth.json").write_text(json.dumps(settings, indent=2) + "\n")

    write_dataset(out, write)
    counts = {s: split_names.count(s) for s in ("train", "val", "test")}
    log.info("wrote %d synthetic images of %d identities (train/val/test %d/%d/%d ids) to %s",
             len(entries), ids, counts["train"], counts["val"], counts["test"], out)
    return out


def _write_image(tmp: Path, pid: int, k: int, person: Person, split: str, seed: int,
                 image_size: tuple[int, int], cfg: SynthConfig) -> dict:
    """Render, save and describe image ``k`` of identity ``pid``; its own seed keeps runs reproducible."""
    rng = np.random.default_rng([seed, 1, pid, k])
    rel = f"SYNTH/{pid:05d}_{k:02d}.png"
    render(person, rng, image_size, cfg, sample_person(rng, cfg)).save(tmp / "imgs" / rel)
    captions = [caption(rng, person, cfg) for _ in range(2)]
    return {"split": split, "captions": captions, "file_path": rel,
            "processed_tokens": [tokens(c) for c in captions], "id": pid,
            "attributes": dataclasses.asdict(person)}
