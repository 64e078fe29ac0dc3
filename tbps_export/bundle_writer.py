"""``export_bundle``: a training checkpoint to a validated, deployable bundle directory.

Everything is built in a temp directory beside the output and renamed into
place at the end, so a failed export leaves nothing at the output path. The
ONNX part is complete and validated before TensorRT is tried: when TensorRT or
a GPU is missing, or its build fails, the ONNX bundle is still put in place and
the error says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from tbps_export import explain as explain_graphs
from tbps_export import tensorrt_build as trt_build
from tbps_export.fuse import fuse_tower, load_time_fusions
from tbps_export.onnx_export import export_tower
from tbps_export.towers import axis_sizes
from tbps_export.validate import parity_cases, validate_towers
from tbps_runtime.atomic import has_format, sha256_file
from tbps_runtime.contract import (BUNDLE_FORMAT, CAPTIONS_FILE, HELDOUT_CAPTIONS, MANIFEST_FILE, OPSET, PARITY_ATOL,
                                   TOKENIZER_FILE, TOWERS)
from tbps_runtime.errors import BundleError, CheckpointError, ConfigError, ExportError
from tbps_runtime.machine import cpu_model
from tbps_runtime.model.bundle import Manifest, write_manifest
from tbps_runtime.model.images import IMAGENET_MEAN, IMAGENET_STD
from tbps_runtime.model.tokenizer import load_tokenizer
from tbps_runtime.outputs import check_writable, publish_permissions, replace_directory, staging_directory
from tbps_runtime.threads import choose_threads
from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
from tbps_train.config import ModelConfig
from tbps_train.model import TextBasedPersonSearch

logger = logging.getLogger(__name__)

# The identity classifiers are training-only: they are not part of the embedding model.
_TRAINING_ONLY = ("id_classifiers.",)


@dataclasses.dataclass
class ExportOptions:
    """Keyword options of :func:`export_bundle` beyond the common ones."""

    atol: float = PARITY_ATOL  # ONNX vs PyTorch tolerance on unit-norm embeddings
    trt_batch: tuple[int, int, int] = (1, 8, 32)
    trt_seq: tuple[int, int, int | None] = (1, 32, None)  # None: the model's max text length
    trt_workspace_gib: float = 4.0
    trt_timing_cache: str | Path | None = None
    trt_device: int = 0  # the CUDA device that builds and checks the engines (the one that will run them)
    explain: bool = False  # also write the attention-emitting graphs (tbps_export.explain)
    threads: int | None = None  # PyTorch's and onnxruntime's intra-op threads (None: tbps_runtime.threads' policy)

    @classmethod
    def from_kwargs(cls, values: dict[str, Any]) -> "ExportOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown export option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        options = cls(**{k: v for k, v in values.items() if v is not None})
        if not options.atol >= 0:
            raise ConfigError(f"atol must be >= 0, not {options.atol}")
        return options


def export_bundle(checkpoint: str | Path, output: str | Path | None = None, *, force: bool = False,
                  trt: bool = False, fp16: bool = False, progress: bool = False, **options: Any) -> Path:
    """Export ``checkpoint`` (an ``m.pt``) to a bundle directory and return its path.

    ``output`` defaults to the checkpoint path with suffix ``.bundle``; an
    existing bundle there is replaced only with ``force``. ``trt`` adds a
    TensorRT engine per tower (``fp16``: FP16 engines); ``options`` are the
    fields of :class:`ExportOptions` (``atol``, ``trt_batch``, ``trt_seq``,
    ``trt_workspace_gib``, ``trt_timing_cache``, ``trt_device``, ``explain``, ``threads``).
    """
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else checkpoint.with_suffix(".bundle")
    settings = ExportOptions.from_kwargs(options)
    if fp16 and not trt:
        raise ConfigError("fp16 selects the precision of TensorRT engines, and trt is off", code="fp16_without_trt")
    _refuse_existing(output, force)
    check_writable(output / MANIFEST_FILE, "the bundle")  # a directory we can create and write, before exporting
    payload = _load_checkpoint(checkpoint)
    model, _ = model_from_checkpoint(payload)
    trt_options = _trt_options(settings, fp16, model.config) if trt else None
    threads = choose_threads(settings.threads).threads
    start = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    with _torch_threads(threads), _progress(progress, total=len(TOWERS) + 1) as bar, \
            staging_directory(output) as staging, \
            tempfile.TemporaryDirectory(prefix=f".{output.name}.", suffix=".unfused", dir=output.parent) as unfused:
        parity, fusions = _export_onnx(staging, Path(unfused), model, payload, settings.atol, bar, threads)
        if settings.explain:
            parity.update(explain_graphs.export_explain_towers(staging, model, settings.atol, threads))
        trt_entries, trt_error = (({}, None) if trt_options is None
                                  else _try_tensorrt(staging, Path(unfused), model, trt_options))
        bar.update()
        write_heldout_captions(staging, payload)
        manifest = build_manifest(model, payload, checkpoint, parity, trt_entries, staging)
        for name, entry in fusions.items():
            manifest.towers[name]["fusions"] = entry
        if settings.explain:
            manifest.towers.update(explain_graphs.tower_entries(model, manifest.sizes()))
        write_manifest(staging, manifest)
        publish_permissions(staging)
        _place(staging, output, force)
    logger.info("bundle written to %s in %.1f s", output, time.perf_counter() - start)
    if trt_error is not None:
        raise ExportError(f"{trt_error}. The ONNX bundle at {output} is complete and valid without TensorRT "
                          "engines; build them on the GPU that will run them", code="tensorrt_build_failed",
                          error=str(trt_error), output=str(output))
    return output


# ---- stages ----------------------------------------------------------------

def _load_checkpoint(path: Path) -> dict:
    """load_checkpoint, with torch.load's multi-paragraph advice cut to one line."""
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        if "\n" not in str(e):
            raise
        cause = type(e.__cause__).__name__ if e.__cause__ is not None else "unreadable"
        raise CheckpointError(f"{path} is not a tbps checkpoint (torch.load cannot read it: {cause})") from e


def _export_onnx(directory: Path, unfused: Path, model: TextBasedPersonSearch, payload: dict, atol: float,
                 bar: tqdm, threads: int | None = None) -> tuple[dict, dict]:
    """Export both towers into ``unfused``, write their fused graphs and the tokenizer into
    ``directory`` and validate the fused graphs against PyTorch; returns (parity, fusions)."""
    tokenizer_json = payload["tokenizer_json"]
    (directory / TOKENIZER_FILE).write_text(tokenizer_json)
    tokenizer = load_tokenizer(tokenizer_json, model.config.max_text_length)
    paths, fusions = {}, {}
    for spec in TOWERS:
        bar.set_postfix_str(spec.onnx_file)
        plain = export_tower(spec, model, unfused / spec.onnx_file)
        paths[spec.name] = directory / spec.onnx_file
        fusions[spec.name] = {"offline": fuse_tower(plain, paths[spec.name]),
                              "at_load": load_time_fusions(paths[spec.name]), "at_load_cpu": cpu_model()}
        bar.update()
    bar.set_postfix_str("parity")
    return validate_towers(paths, model, tokenizer, atol, threads), fusions


def _try_tensorrt(directory: Path, unfused: Path, model: TextBasedPersonSearch,
                  options: trt_build.TrtOptions) -> tuple[dict, str | None]:
    """Build and check an engine per tower; on any failure remove what was built and
    return why, so that the validated ONNX bundle is still put in place."""
    reason = trt_build.unavailable_reason(options.device)
    if reason is not None:
        return {}, f"cannot build TensorRT engines: {reason}"
    try:
        return _build_engines(directory, unfused, model, options), None
    except ExportError as e:
        failure = str(e)
    except Exception as e:  # a TensorRT/CUDA failure or a bug: keep its traceback in the log
        logger.warning("TensorRT engine build raised:", exc_info=True)
        failure = f"{type(e).__name__}: {e}"
    for spec in TOWERS:
        (directory / spec.plan_file).unlink(missing_ok=True)
    return {}, f"TensorRT engine build failed: {failure}"


def _build_engines(directory: Path, unfused: Path, model: TextBasedPersonSearch,
                   options: trt_build.TrtOptions) -> dict:
    """Engines from the unfused graphs: TensorRT does its own fusions and has no onnxruntime contrib ops."""
    cfg = model.config
    profiles = options.resolve(cfg.max_text_length)
    tokenizer = load_tokenizer((directory / TOKENIZER_FILE).read_text(), cfg.max_text_length)
    entries = {}
    with tempfile.TemporaryDirectory(prefix="tbps-trt-") as scratch:
        for spec in TOWERS:
            cases = parity_cases(spec, cfg.image_size, tokenizer, cfg.max_text_length)
            entries[spec.name] = trt_build.build_checked_engine(
                unfused / spec.onnx_file, spec, axis_sizes(model), options, profiles,
                directory / spec.plan_file, cases, Path(scratch))
    return entries


def _trt_options(settings: ExportOptions, fp16: bool, config: ModelConfig) -> trt_build.TrtOptions:
    timing_cache = Path(settings.trt_timing_cache) if settings.trt_timing_cache else None
    options = trt_build.TrtOptions(batch=tuple(settings.trt_batch), fp16=fp16,
                                   sequence=tuple(settings.trt_seq),
                                   workspace_gib=settings.trt_workspace_gib, timing_cache=timing_cache,
                                   device=settings.trt_device)
    options.resolve(config.max_text_length)  # bad profiles fail before any work
    return options


# ---- held-out captions -----------------------------------------------------

def write_heldout_captions(directory: Path, payload: dict) -> int:
    """Write up to :data:`HELDOUT_CAPTIONS` captions of the training data's val split (test when it has
    none), evenly spaced, as :data:`CAPTIONS_FILE`: the captions ``tbps calibrate --gallery`` scores
    against a store. Skipped (0, logged) when the checkpoint's dataset cannot be read here."""
    from tbps_train.data.readers import dataset_splits, read_split

    dataset = payload.get("dataset")
    if not isinstance(dataset, dict) or not dataset.get("name") or not dataset.get("root"):
        logger.info("no held-out captions in the bundle: the checkpoint records no dataset")
        return 0
    try:
        splits = dataset_splits(dataset["name"])
        split = "val" if "val" in splits else "test"
        records = read_split(dataset["name"], dataset["root"], split, check_images=False)
    except (OSError, ValueError) as e:  # the dataset is not on this machine (any reader error is a ValueError)
        logger.info("no held-out captions in the bundle: %s %s cannot be read here (%s)", dataset["name"],
                    dataset["root"], e)
        return 0
    captions = [" ".join(c.split()) for r in records for c in r.captions if c.strip()]
    if not captions:
        return 0
    step = max(1, len(captions) // HELDOUT_CAPTIONS)
    chosen = captions[::step][:HELDOUT_CAPTIONS]
    (directory / CAPTIONS_FILE).write_text("\n".join(chosen) + "\n", encoding="utf-8")
    logger.info("held-out captions: %d of the %s split of %s", len(chosen), split, dataset["name"])
    return len(chosen)


# ---- the manifest ----------------------------------------------------------

def build_manifest(model: TextBasedPersonSearch, payload: dict, checkpoint: Path, parity: dict,
                   tensorrt: dict, directory: Path) -> Manifest:
    """The manifest of the files now in ``directory``."""
    cfg = model.config
    manifest = Manifest(
        num_slots=cfg.num_slots, num_coarse=cfg.num_coarse if cfg.use_coarse else 0,
        num_fine=cfg.num_fine if cfg.use_fine else 0, embed_dim=cfg.embed_dim, slot_names=slot_names(cfg),
        image_size=list(cfg.image_size), mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        max_text_length=cfg.max_text_length, tokenizer=TOKENIZER_FILE, towers={},
        files={p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.name != MANIFEST_FILE},
        fingerprint=fingerprint(model.state_dict()), opset=OPSET, padding_side="right",
        parity=parity, tensorrt=tensorrt, source=_source(payload, checkpoint),
    )
    manifest.towers = {spec.name: manifest.tower_entry(spec) for spec in TOWERS}
    for name, entry in tensorrt.items():
        manifest.towers[name]["plan"] = entry["file"]
    return manifest


def slot_names(config: ModelConfig) -> list[str]:
    """``global``, then ``coarse_1..D`` and ``fine_1..P`` for the enabled groups."""
    names = ["global"]
    if config.use_coarse:
        names += [f"coarse_{i + 1}" for i in range(config.num_coarse)]
    if config.use_fine:
        names += [f"fine_{i + 1}" for i in range(config.num_fine)]
    return names


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the embedding weights (every tensor but the training-only
    identity classifiers), sorted by name, hashing name, dtype, shape and bytes.
    Bundles of the same weights share it, whatever the backend or precision."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        if name.startswith(_TRAINING_ONLY):
            continue
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _source(payload: dict, checkpoint: Path) -> dict[str, Any]:
    source = {"checkpoint": checkpoint.name, "checkpoint_sha256": sha256_file(checkpoint),
              "metrics": payload.get("metrics", {}), "model": payload["config"]["model"],
              "num_identities": payload["num_identities"], "torch": torch.__version__}
    if isinstance(payload.get("dataset"), dict) and "name" in payload["dataset"]:
        source["dataset"] = payload["dataset"]["name"]
    return json.loads(json.dumps(source, default=float))


# ---- the output directory --------------------------------------------------

@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``threads`` within the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[tqdm]:
    """A stage bar; log lines are routed through it so they do not break it."""
    with tqdm(total=total, desc="export", unit="step", disable=not enabled) as bar:
        if not enabled:
            yield bar
            return
        with logging_redirect_tqdm():
            yield bar


def _refuse_existing(output: Path, force: bool) -> None:
    if not output.exists() and not output.is_symlink():
        return
    if not force:
        raise BundleError(f"output {output} already exists and force is off", code="bundle_output_exists",
                          output=str(output))
    if not output.is_dir() or not (_is_bundle(output) or not any(output.iterdir())):
        raise BundleError(f"output {output} exists and is not a tbps bundle: not replacing it, even with force",
                          code="bundle_output_foreign", output=str(output))


def _is_bundle(directory: Path) -> bool:
    """A directory whose manifest.json carries the bundle format tag (a foreign manifest.json does not)."""
    return has_format(directory / MANIFEST_FILE, BUNDLE_FORMAT)


def _place(staging: Path, output: Path, force: bool) -> None:
    """Rename the finished bundle into place; an old bundle (``--force``) is moved aside first."""
    _refuse_existing(output, force)  # again: something may have appeared there during the export
    replace_directory(staging, output)
