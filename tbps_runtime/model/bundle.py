"""The bundle's ``manifest.json``: everything a client needs to run the towers.

Written by ``tbps_export``, read and verified by the runtime. A client in any
language can preprocess and run the towers from this file alone: image size,
mean/std, tokenizer and max length, tensor names, dtypes and shapes, K/D/P/d.
Before a backend loads a file, :func:`verify_files` checks it against the
SHA-256 the manifest records, and :func:`check_supported` refuses
preprocessing this runtime does not implement. ``score_threshold`` is the
calibrated Eq. 14 score above which a hit is trusted (``tbps calibrate``);
:func:`score_threshold` reads it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tbps_runtime.atomic import read_json, sha256_file, write_json_atomic
from tbps_runtime.contract import (BUNDLE_FORMAT, BUNDLE_VERSION, CAPTIONS_FILE, EXPLAIN_TOWERS, MANIFEST_FILE, TOWERS,
                                   TowerSpec, is_int, mistyped_fields)
from tbps_runtime.errors import BundleError, InputFileNotFoundError
from tbps_runtime.paths import resolve_inside
from tbps_runtime.text import short


@dataclass
class Manifest:
    """The parsed manifest. ``files`` maps each bundle file to its SHA-256;
    ``fingerprint`` identifies the trained weights (galleries record it)."""

    num_slots: int  # K
    num_coarse: int  # D (0 when ablated)
    num_fine: int  # P (0 when ablated)
    embed_dim: int  # d
    slot_names: list[str]
    image_size: list[int]  # [H, W]
    mean: list[float]
    std: list[float]
    max_text_length: int
    tokenizer: str
    towers: dict[str, dict[str, Any]]  # name -> {"file", "inputs": [...], "outputs": [...]}
    files: dict[str, str]
    fingerprint: str
    opset: int
    padding_side: str = "right"
    resample: str = "bilinear"
    channel_order: str = "RGB"
    precision: str = "float32"  # of the ONNX towers: float32 or int8
    parity: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    # {} until calibrated; else the fields of THRESHOLD_FIELDS (tbps_export.calibrate writes it)
    score_threshold: dict[str, Any] = field(default_factory=dict)
    format: str = BUNDLE_FORMAT
    version: int = BUNDLE_VERSION

    def sizes(self) -> dict[str, int]:
        """Values of the fixed symbolic axes in the contract's TensorSpecs."""
        return {"height": self.image_size[0], "width": self.image_size[1],
                "slots": self.num_slots, "dim": self.embed_dim}

    def tower_sizes(self, tower: TowerSpec) -> dict[str, Any]:
        """The fixed axes of ``tower``'s tensors: :meth:`sizes`, plus those no manifest field gives (an explain
        graph's token counts and feature map), read from its ``towers`` entry (:func:`check_towers` bounds them)."""
        sizes: dict[str, Any] = self.sizes()
        entry = self.towers.get(tower.name) if isinstance(self.towers, dict) else None
        for kind, specs in (("inputs", tower.inputs), ("outputs", tower.outputs)):
            records = entry.get(kind) if isinstance(entry, dict) else None
            for spec, record in zip(specs, records if isinstance(records, list) else []):
                shape = record.get("shape") if isinstance(record, dict) else None
                for axis, value in zip(spec.axes, shape if isinstance(shape, list) else []):
                    if isinstance(axis, str) and axis not in spec.dynamic:
                        sizes.setdefault(axis, value)
        return sizes

    def tower_entry(self, tower: TowerSpec) -> dict[str, Any]:
        """The manifest's record of a tower, as the contract declares it."""
        sizes = self.tower_sizes(tower)
        io = lambda specs: [{"name": s.name, "dtype": s.dtype, "shape": s.shape(sizes)} for s in specs]
        return {"file": tower.onnx_file, "inputs": io(tower.inputs), "outputs": io(tower.outputs)}


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (temp file + rename)."""
    path = Path(directory) / MANIFEST_FILE
    record = asdict(manifest)
    if not record["score_threshold"]:  # not calibrated: a runtime that predates the field reads it too
        del record["score_threshold"]
    write_json_atomic(path, record)
    return path


def load_manifest(directory: str | Path) -> Manifest:
    """Parse and check a bundle's manifest (not yet its files: see :func:`verify_files`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputFileNotFoundError(f"bundle directory not found: {directory}")
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{directory} is not a tbps bundle: it has no {MANIFEST_FILE} (made by tbps export)")
    try:
        data = read_json(path)
    except ValueError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not a tbps bundle manifest (no '{BUNDLE_FORMAT}' format tag)")
    version = data.get("version")
    if not is_int(version) or version < 1:
        raise BundleError(f"{path} has bundle version {version!r}, not one tbps writes (1..{BUNDLE_VERSION}): "
                          "re-export the bundle")
    if version > BUNDLE_VERSION:
        raise BundleError(f"{path} has bundle version {version}; this tbps reads up to {BUNDLE_VERSION}: upgrade tbps")
    try:
        manifest = Manifest(**data)
    except TypeError as e:
        raise BundleError(f"{path} does not have the fields of a version-{BUNDLE_VERSION} manifest: {e}") from e
    mistyped = mistyped_fields(manifest) + (["fingerprint is empty"] if manifest.fingerprint == "" else [])
    if mistyped:
        raise BundleError(f"{path} mistypes {'; '.join(mistyped)}: re-export the bundle")
    malformed = threshold_problems(manifest.score_threshold, manifest.num_slots)
    if malformed:
        raise BundleError(f"{path} has a malformed score_threshold: {'; '.join(malformed)}; set it to {{}} "
                          "(not calibrated), then calibrate the bundle again (tbps calibrate)")
    resolve_inside(directory, manifest.tokenizer, f"{path}: 'tokenizer'")
    for name in manifest.files:  # every name it lists stays inside, whether or not a command reads it
        resolve_inside(directory, name, f"{path}: a file name")
    missing = [t.name for t in TOWERS if t.name not in manifest.towers]
    if missing:
        raise BundleError(f"{path} lists no {', '.join(missing)}: re-export the bundle")
    return manifest


# The record of a calibrated score threshold (tbps_export.calibrate): field -> what it holds.
THRESHOLD_FIELDS = {"value": "score", "false_match_rate": "open_rate", "true_match_rate": "rate",
                    "found_rate": "rate", "dataset": "name", "split": "name", "captions": "positive",
                    "images": "positive", "non_matching_pairs": "count", "matching_pairs": "count"}
_EXPECTED = {"score": "a finite number within [-K, K]", "open_rate": "a number in (0, 1)",
             "rate": "a number in [0, 1]", "positive": "a positive integer", "count": "a non-negative integer",
             "name": "a non-empty string"}
# Eq. 14 of unit slots is within [-K, K]; float32 rounding and the threshold's one step above a score
# may pass K by a few ulps.
_SCORE_SLACK = 1e-3


def score_threshold(manifest: Manifest) -> float | None:
    """The calibrated Eq. 14 threshold (a hit is trusted when its score is ``>=`` it), or None when the
    bundle was never calibrated. The value is a float32 number: compare float32 scores with it."""
    value = manifest.score_threshold.get("value")
    return None if value is None else float(value)


def threshold_problems(record: Any, num_slots: Any) -> list[str]:
    """What is wrong with a ``score_threshold`` record: ``[]`` for ``{}`` (not calibrated) or a valid one.

    Valid: exactly the keys of :data:`THRESHOLD_FIELDS`; ``value`` finite within [-K, K]
    (``num_slots`` = K); the rates in [0, 1] (``false_match_rate`` in (0, 1)); integer counts, captions and
    images at least 1, ``matching_pairs + non_matching_pairs == captions * images``; non-empty names.
    """
    if not isinstance(record, dict):
        return [f"score_threshold is {short(record)}, expected an object"]
    if not record:
        return []
    problems = [f"score_threshold.{key} is {'missing' if key not in record else 'not a field of it'}"
                for key in sorted(set(THRESHOLD_FIELDS) ^ set(record))]
    for key, kind in THRESHOLD_FIELDS.items():
        if key in record and not _threshold_field_ok(kind, record[key], num_slots):
            problems.append(f"score_threshold.{key} is {short(record[key])}, expected {_EXPECTED[kind]}"
                            + (f" (K = {num_slots})" if kind == "score" else ""))
    pairs = record.get("matching_pairs", 0), record.get("non_matching_pairs", 0)
    if not problems and record["captions"] * record["images"] != sum(pairs):
        problems.append(f"score_threshold's pairs ({pairs[0]} matching + {pairs[1]} non-matching) are not its "
                        f"{record['captions']} captions x {record['images']} images")
    return problems


def _threshold_field_ok(kind: str, value: Any, num_slots: Any) -> bool:
    if kind == "name":
        return isinstance(value, str) and value.strip() != ""
    if kind in ("positive", "count"):
        return is_int(value) and value >= (1 if kind == "positive" else 0)
    if not _is_number(value):
        return False
    if kind == "score":
        return is_int(num_slots) and abs(value) <= num_slots + _SCORE_SLACK
    return 0 < value < 1 if kind == "open_rate" else 0 <= value <= 1


def verify_files(directory: str | Path, manifest: Manifest, names: list[str] | None = None) -> None:
    """Check that each listed file (default: all) exists and matches its recorded SHA-256."""
    directory = Path(directory)
    for name in names if names is not None else sorted(manifest.files):
        if name not in manifest.files:
            raise BundleError(f"{directory / MANIFEST_FILE} records no checksum for {name}")
        path = resolve_inside(directory, name, f"{directory / MANIFEST_FILE}: a file name")
        if not path.is_file():
            raise BundleError(f"bundle file missing: {path}; re-export the bundle")
        if sha256_file(path) != manifest.files[name]:
            raise BundleError(f"bundle file {path} was modified: its SHA-256 differs from the manifest's; "
                              "re-export the bundle")


def heldout_captions(directory: str | Path, manifest: Manifest) -> list[str] | None:
    """The bundle's held-out captions (:data:`~tbps_runtime.contract.CAPTIONS_FILE`, checked against its
    SHA-256), or None for a bundle exported without them."""
    if CAPTIONS_FILE not in manifest.files:
        return None
    verify_files(directory, manifest, [CAPTIONS_FILE])
    path = Path(directory) / CAPTIONS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise BundleError(f"{path} is not UTF-8 text ({e}): re-export the bundle") from None
    return [line.strip() for line in lines if line.strip()] or None


def check_supported(directory: str | Path, manifest: Manifest) -> None:
    """Preprocessing this runtime implements; anything else would silently give wrong embeddings."""
    supported = {"padding_side": "right", "resample": "bilinear", "channel_order": "RGB"}
    for name, value in supported.items():
        if getattr(manifest, name) != value:
            raise BundleError(f"{directory} asks for {name}={getattr(manifest, name)!r}; this runtime "
                              f"implements {value!r} only: upgrade tbps")
    check_sizes(directory, manifest)
    check_towers(directory, manifest)


# Sane bounds of the manifest's sizes: beyond them a crafted manifest would exhaust memory, not embed.
SIZE_LIMITS = {"image_size": (8, 4096), "num_slots": (1, 1024), "embed_dim": (1, 8192),
               "max_text_length": (2, 4096), "num_coarse": (0, 1024), "num_fine": (0, 1024)}


def check_sizes(directory: str | Path, manifest: Manifest) -> None:
    """Every size within :data:`SIZE_LIMITS`; mean/std three finite numbers each, std positive.

    Raises:
        BundleError: naming every field that is out of bounds or malformed.
    """
    problems = []
    for name, (low, high) in SIZE_LIMITS.items():
        value = getattr(manifest, name)
        values, count = (value, 2) if name == "image_size" else ([value], 1)
        if not (isinstance(values, list) and len(values) == count and all(is_int(v) and low <= v <= high
                                                                             for v in values)):
            expected = "[height, width], each" if name == "image_size" else "an integer"
            problems.append(f"{name} is {value!r}, expected {expected} in {low}..{high}")
    for name in ("mean", "std"):
        value = getattr(manifest, name)
        if not (isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value)):
            problems.append(f"{name} is {value!r}, expected three finite numbers (R, G, B)")
        elif name == "std" and not all(v > 0 for v in value):
            problems.append(f"std is {value!r}: dividing by a std of 0 or less gives NaN or flipped pixels")
    if not problems and 1 + manifest.num_coarse + manifest.num_fine != manifest.num_slots:
        problems.append(f"num_slots is {manifest.num_slots}, but 1 global + {manifest.num_coarse} coarse + "
                        f"{manifest.num_fine} fine slots make {1 + manifest.num_coarse + manifest.num_fine}")
    if not problems and (not isinstance(manifest.slot_names, list) or len(manifest.slot_names) != manifest.num_slots):
        problems.append(f"slot_names does not name the {manifest.num_slots} slots")
    if problems:
        raise BundleError(f"{Path(directory) / MANIFEST_FILE} is malformed: {'; '.join(problems)}; "
                          "re-export the bundle")


# Sizes only an explain graph's entry gives (its decoder's tokens, the backbone's feature map), bounded alike.
AXIS_LIMITS = {"coarse": (1, 1024), "decoder_tokens": (1, 2048), "feature_height": (1, 4096),
               "feature_width": (1, 4096)}


def check_towers(directory: str | Path, manifest: Manifest) -> None:
    """Each graph's ``towers`` entry (the towers, and the explain graphs when listed) as the contract declares
    it with the manifest's sizes: names, dtypes, ranks, fixed dims. The graphs themselves are checked against
    the same declaration when they are loaded (:func:`tbps_runtime.model.backends.check_graph`).

    Raises:
        BundleError: naming every entry that differs.
    """
    problems = []
    for tower in (*TOWERS, *EXPLAIN_TOWERS):
        if tower.name not in manifest.towers:
            continue
        sizes = manifest.tower_sizes(tower)
        axes = {a for spec in (*tower.inputs, *tower.outputs) for a in spec.axes}
        bad = [f"{axis} {sizes.get(axis)!r}" for axis, (low, high) in AXIS_LIMITS.items()
               if axis in axes and not (is_int(sizes.get(axis)) and low <= sizes[axis] <= high)]
        if bad:
            problems.append(f"towers[{tower.name!r}] gives {', '.join(bad)}, expected "
                            + ", ".join(f"{a} in {lo}..{hi}" for a, (lo, hi) in AXIS_LIMITS.items() if a in axes))
            continue
        entry, expected = manifest.towers[tower.name], manifest.tower_entry(tower)
        recorded = {k: entry.get(k) for k in expected} if isinstance(entry, dict) else entry
        if recorded != expected:
            problems.append(f"towers[{tower.name!r}] is {short(recorded, 300)}, the export contract makes it "
                            f"{short(expected, 300)}")
    if problems:
        raise BundleError(f"{Path(directory) / MANIFEST_FILE} does not match its manifest's sizes and the export "
                          f"contract: {'; '.join(problems)}; re-export the bundle")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
