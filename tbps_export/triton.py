"""A Triton Inference Server model repository from a bundle: the two towers, served next to DeepStream.

``write_triton_repository(bundle, output)`` writes::

    DIR/tbps_image_tower/config.pbtxt, 1/model.onnx     (onnxruntime_onnx)
    DIR/tbps_text_tower/config.pbtxt, 1/model.onnx
    DIR/tbps_image_tower_trt/..., 1/model.plan          (tensorrt_plan; only when the bundle has engines)
    DIR/tbps_text_tower_trt/...
    DIR/tbps.json, DIR/tokenizer.json                   (what clients need: Triton sees only tensors)

Each ``config.pbtxt`` declares the contract's tensors (``tbps_runtime.contract``) without the batch
axis, with dynamic batching and one instance. Triton reads only the model directories, so ``tbps.json``
and ``tokenizer.json`` at the root are for clients: they tokenize and normalise themselves.

No Triton server runs here, so the repository is checked the closest way we can: every config is
parsed with Triton's own ``ModelConfig`` protobuf (from ``tritonclient``, when installed), then
checked against the rules Triton enforces that the schema does not (dims without the batch axis,
names and data types of the ONNX graph's inputs and outputs, max_batch_size > 0 with dynamic
batching, a TensorRT engine's batch profile). No PyTorch is involved.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbps_runtime.atomic import atomic_write_text, has_format, read_json, sha256_file, write_json_atomic
from tbps_runtime.contract import MANIFEST_FILE, TOKENIZER_FILE, TOWERS, TensorSpec, TowerSpec, is_int
from tbps_runtime.errors import BundleError, ConfigError, ExportError, OutputError
from tbps_runtime.model.bundle import Manifest, check_supported, load_manifest, verify_files
from tbps_runtime.outputs import publish_permissions, replace_directory, staging_directory
from tbps_runtime.paths import resolve_inside

logger = logging.getLogger(__name__)

REPOSITORY_FORMAT, REPOSITORY_VERSION = "tbps-triton-repository", 1
REPOSITORY_FILE = "tbps.json"
CONFIG_FILE = "config.pbtxt"
MODEL_VERSION = "1"
ONNX_PLATFORM, PLAN_PLATFORM = "onnxruntime_onnx", "tensorrt_plan"
MODEL_FILES = {ONNX_PLATFORM: "model.onnx", PLAN_PLATFORM: "model.plan"}  # Triton's default file names
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# numpy dtype name (the contract's) -> Triton data type
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
TRITONCLIENT_HINT = "pip install 'tritonclient[grpc]'"


def model_name(tower: TowerSpec, platform: str) -> str:
    """The Triton model name of a tower: ``tbps_image_tower``, ``tbps_text_tower_trt``..."""
    return f"tbps_{tower.name}" + ("_trt" if platform == PLAN_PLATFORM else "")


@dataclass(frozen=True)
class TritonModel:
    """One model of the repository: a tower on one platform, and how Triton should batch it."""

    tower: TowerSpec
    platform: str  # ONNX_PLATFORM or PLAN_PLATFORM
    source: str  # the bundle file copied to 1/model.onnx or 1/model.plan
    instance_kind: str  # KIND_CPU or KIND_GPU
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    notes: tuple[str, ...] = ()  # comment lines at the top of config.pbtxt
    tensorrt: dict[str, Any] | None = None  # the manifest's record of the engine

    @property
    def name(self) -> str:
        return model_name(self.tower, self.platform)

    @property
    def file(self) -> str:
        return f"{MODEL_VERSION}/{MODEL_FILES[self.platform]}"


def triton_dims(spec: TensorSpec, sizes: dict[str, int]) -> list[int]:
    """A tensor's Triton ``dims``: its contract axes without the leading batch axis, fixed axes
    resolved from ``sizes`` (the manifest's), dynamic ones -1. E.g. pixel_values -> [3, H, W],
    input_ids -> [-1], embeddings -> [K, d]."""
    assert spec.axes[0] == "batch" and "batch" in spec.dynamic, spec  # Triton batches on axis 0
    return [-1 if axis in spec.dynamic else int(axis if isinstance(axis, int) else sizes[axis])
            for axis in spec.axes[1:]]


def preferred_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """The batches the dynamic batcher aims for: max, max/2, max/4 (32 -> 8, 16, 32)."""
    return tuple(sorted({max(1, max_batch_size // 4), max(1, max_batch_size // 2), max_batch_size}))


# ---- config.pbtxt ----------------------------------------------------------

def render_config(model: TritonModel, sizes: dict[str, int], queue_delay_us: int, origin: str = "") -> str:
    """The ``config.pbtxt`` text of ``model`` (protobuf text format of Triton's ModelConfig); ``origin``
    (the bundle it comes from) and the model's notes become comment lines at the top."""
    notes = ([f"{model.tower.name} of {origin}; clients: see ../{REPOSITORY_FILE}."] if origin else []) + list(model.notes)
    lines = [f"# {' '.join(note.split())}" for note in notes]  # one line each: a manifest's GPU name is text
    lines += [f'name: "{model.name}"', f'platform: "{model.platform}"', f"max_batch_size: {model.max_batch_size}"]
    for field, specs in (("input", model.tower.inputs), ("output", model.tower.outputs)):
        lines += [f"{field} [", ",\n".join(_tensor_block(spec, sizes) for spec in specs), "]"]
    lines += ["dynamic_batching {",
              f"  preferred_batch_size: [ {', '.join(map(str, model.preferred_batch_sizes))} ]",
              f"  max_queue_delay_microseconds: {queue_delay_us}", "}",
              "instance_group [", "  {", f"    kind: {model.instance_kind}", "    count: 1", "  }", "]"]
    return "\n".join(lines) + "\n"


def _tensor_block(spec: TensorSpec, sizes: dict[str, int]) -> str:
    dims = ", ".join(map(str, triton_dims(spec, sizes)))
    return (f'  {{\n    name: "{spec.name}"\n    data_type: {TRITON_TYPES[spec.dtype]}\n'
            f"    dims: [ {dims} ]\n  }}")


# ---- the models of a bundle ------------------------------------------------

def plan_facts(entry: dict[str, Any]) -> tuple[int | None, int | None]:
    """(opt, max) batch of an engine's optimisation profile, from its manifest entry (None: not recorded).
    The profile is ``{input: {"min": shape, "opt": shape, "max": shape}}``; the batch is axis 0."""
    profile = entry.get("profile")
    if not isinstance(profile, dict) or not profile:
        return None, None
    try:
        opts = [int(levels["opt"][0]) for levels in profile.values()]
        highs = [int(levels["max"][0]) for levels in profile.values()]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise BundleError(f"the manifest's TensorRT profile {profile!r} is malformed ({e}): re-export the bundle") from e
    return max(opts), min(highs)


def plan_models(manifest: Manifest, max_batch_size: int) -> list[TritonModel]:
    """A tensorrt_plan model per engine the manifest records; max_batch_size clamped to each profile's max."""
    models = []
    for tower in TOWERS:
        entry = manifest.tensorrt.get(tower.name) or manifest.tensorrt.get(tower.plan_file)
        if not isinstance(entry, dict) or not entry:
            continue
        opt, high = plan_facts(entry)
        batch = max_batch_size
        if high is None:
            logger.warning("the manifest records no optimisation profile for %s: max_batch_size %d is not checked "
                           "against the engine's", tower.name, batch)
        elif batch > high:
            logger.warning("%s: max_batch_size %d exceeds the engine's profile (max batch %d): using %d",
                           model_name(tower, PLAN_PLATFORM), batch, high, high)
            batch = high
        preferred = tuple(sorted({b for b in (opt, batch) if b is not None and 1 <= b <= batch}))
        built = (f"built with TensorRT {entry.get('tensorrt_version', 'unknown')} on {entry.get('gpu', 'unknown')} "
                 f"(compute capability {entry.get('compute_capability', 'unknown')}), "
                 f"precision {entry.get('precision', 'unknown')}")
        notes = (f"TensorRT engine {entry.get('file', tower.plan_file)} {built}.",
                 "It loads only in a Triton whose TensorRT is that version, on that GPU model; else rebuild it there "
                 "(tbps export --trt) and write this repository again.",
                 f"Optimisation profile: {_profile_text(entry)}.")
        models.append(TritonModel(tower, PLAN_PLATFORM, str(entry.get("file", tower.plan_file)), INSTANCE_KINDS["gpu"],
                                  batch, preferred, notes, entry))
    return models


def _profile_text(entry: dict[str, Any]) -> str:
    profile = entry.get("profile")
    if not isinstance(profile, dict) or not profile:
        return "not recorded in the manifest"
    return "; ".join(f"{name} min {levels.get('min')} opt {levels.get('opt')} max {levels.get('max')}"
                     for name, levels in profile.items() if isinstance(levels, dict))


def repository_models(manifest: Manifest, max_batch_size: int, onnx_device: str) -> list[TritonModel]:
    """The ONNX towers (on ``onnx_device``) and, when the bundle has them, its TensorRT engines."""
    models = [TritonModel(tower, ONNX_PLATFORM, tower.onnx_file, INSTANCE_KINDS[onnx_device], max_batch_size,
                          preferred_batch_sizes(max_batch_size), _onnx_notes(manifest, tower))
              for tower in TOWERS]
    return models + plan_models(manifest, max_batch_size)


def _onnx_notes(manifest: Manifest, tower: TowerSpec) -> tuple[str, ...]:
    fusions = (manifest.towers.get(tower.name) or {}).get("fusions")
    offline = fusions.get("offline") if isinstance(fusions, dict) else None  # recorded by tbps export
    fused = sorted(map(str, offline)) if isinstance(offline, dict) else []
    notes = []
    if fused:
        notes.append(f"The graph holds onnxruntime contrib ops ({', '.join(fused)}): Triton's onnxruntime "
                     "backend runs them.")
    if any(len(spec.dynamic) > 1 for spec in tower.inputs):
        notes.append("Triton batches only requests of the same sequence length: pad every caption to "
                     f"{manifest.max_text_length} tokens (right padding, attention_mask 0 on the padding).")
    return tuple(notes)


# ---- writing ---------------------------------------------------------------

def write_triton_repository(bundle: str | Path, output: str | Path, *, max_batch_size: int = 32,
                            queue_delay_us: int = 500, onnx_device: str = "cpu", force: bool = False) -> Path:
    """Write a Triton model repository of ``bundle``'s towers to ``output`` and return its path.

    Models take ``pixel_values`` (B, 3, H, W) float32 or ``input_ids``/``attention_mask`` (B, L) int64 and
    return ``embeddings`` (B, K, d) float32, each slot L2-normalised, B <= ``max_batch_size``.

    Args:
        bundle: a bundle made by ``tbps export``; its files are checked against their SHA-256 first.
        output: the repository directory; an existing non-empty one is replaced only with ``force``,
            and only if it is a tbps Triton repository (its ``tbps.json`` says so).
        max_batch_size: the largest batch Triton forms; TensorRT models use at most their profile's max batch.
        queue_delay_us: how long the dynamic batcher waits for more requests.
        onnx_device: ``"cpu"`` or ``"gpu"``: where Triton runs the ONNX models (engines always run on the GPU).

    Raises:
        ConfigError: a bad option. BundleError: a bundle that is incomplete or modified.
        OutputError: ``output`` is not ours to replace. ExportError: a config fails validation.
    """
    _check_options(max_batch_size, queue_delay_us, onnx_device)
    bundle, output = Path(bundle), Path(output)
    manifest = load_manifest(bundle)
    check_supported(bundle, manifest)
    check_output(output, force, bundle)
    models = repository_models(manifest, max_batch_size, onnx_device)
    sources = sorted({m.source for m in models} | {manifest.tokenizer})
    verify_files(bundle, manifest, sources)
    output.parent.mkdir(parents=True, exist_ok=True)
    with staging_directory(output) as staging:
        _write_models(staging, bundle, manifest, models, queue_delay_us)
        write_json_atomic(staging / REPOSITORY_FILE, repository_record(bundle, manifest, models))
        if _model_config_pb2() is None:
            logger.info("tritonclient is not installed: the configs were not parsed with Triton's schema (%s)",
                        TRITONCLIENT_HINT)
        else:
            validate_repository(staging)
        publish_permissions(staging)
        _place(staging, output, force, bundle)
    logger.info("Triton model repository written to %s: %s", output, ", ".join(m.name for m in models))
    return output


def _check_options(max_batch_size: Any, queue_delay_us: Any, onnx_device: Any) -> None:
    if not is_int(max_batch_size) or max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be an integer >= 1 (Triton's dynamic batching), not {max_batch_size!r}")
    if not is_int(queue_delay_us) or queue_delay_us < 0:
        raise ConfigError(f"queue_delay_us must be an integer >= 0, not {queue_delay_us!r}")
    if onnx_device not in INSTANCE_KINDS:
        raise ConfigError(f"onnx_device must be one of {', '.join(INSTANCE_KINDS)}, not {onnx_device!r}")


def _write_models(directory: Path, bundle: Path, manifest: Manifest, models: list[TritonModel],
                  queue_delay_us: int) -> None:
    sizes = manifest.sizes()
    for model in models:
        (directory / model.name / MODEL_VERSION).mkdir(parents=True)
        copy_verified(bundle, manifest, model.source, directory / model.name / model.file)
        origin = f"bundle {bundle.resolve().name} (fingerprint {manifest.fingerprint[:12]})"
        atomic_write_text(directory / model.name / CONFIG_FILE, render_config(model, sizes, queue_delay_us, origin))
    copy_verified(bundle, manifest, manifest.tokenizer, directory / TOKENIZER_FILE)


def copy_verified(bundle: Path, manifest: Manifest, name: str, destination: Path) -> None:
    """Copy bundle file ``name`` to ``destination``, hashing what is copied: a file changed since
    :func:`verify_files` fails here instead of reaching the repository."""
    source = resolve_inside(bundle, name, f"{bundle / MANIFEST_FILE}: a file name")
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(destination, "wb") as writer:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            writer.write(block)
    if digest.hexdigest() != manifest.files.get(name):
        raise BundleError(f"bundle file {source} changed while it was copied: its SHA-256 differs from the "
                          "manifest's; re-export the bundle")


def repository_record(bundle: Path, manifest: Manifest, models: list[TritonModel]) -> dict[str, Any]:
    """``tbps.json``: what the repository was made from and what a client needs to call it."""
    sizes = manifest.sizes()
    io = lambda specs: [{"name": s.name, "data_type": TRITON_TYPES[s.dtype], "dims": triton_dims(s, sizes)}
                        for s in specs]
    record = {
        "format": REPOSITORY_FORMAT, "version": REPOSITORY_VERSION,
        "bundle": {"name": bundle.resolve().name, "fingerprint": manifest.fingerprint,
                   "manifest_sha256": sha256_file(bundle / MANIFEST_FILE), "precision": manifest.precision,
                   "opset": manifest.opset},
        "num_slots": manifest.num_slots, "num_coarse": manifest.num_coarse, "num_fine": manifest.num_fine,
        "embed_dim": manifest.embed_dim, "slot_names": manifest.slot_names,
        "image_size": manifest.image_size, "mean": manifest.mean, "std": manifest.std,
        "resample": manifest.resample, "channel_order": manifest.channel_order,
        "tokenizer": TOKENIZER_FILE, "max_text_length": manifest.max_text_length,
        "padding_side": manifest.padding_side,
        "models": {m.name: {"tower": m.tower.name, "platform": m.platform, "file": m.file,
                            "instance_kind": m.instance_kind, "max_batch_size": m.max_batch_size,
                            "inputs": io(m.tower.inputs), "outputs": io(m.tower.outputs),
                            **({"tensorrt": m.tensorrt} if m.tensorrt else {})} for m in models},
    }
    if manifest.score_threshold:
        record["score_threshold"] = manifest.score_threshold
    return record


# ---- the output directory --------------------------------------------------

def check_output(output: str | Path, force: bool, bundle: str | Path | None = None) -> None:
    """Refuse an output that is not ours to write: a non-empty directory without ``force``, anything that
    is not a tbps Triton repository even with it, the bundle itself or a directory inside it.

    Raises:
        OutputError: naming the path and what to do.
    """
    output = Path(output)
    if bundle is not None:
        inside, root = output.resolve(), Path(bundle).resolve()
        if inside == root or root in inside.parents:
            raise OutputError(f"the output {output} is inside the bundle {bundle}: write the Triton repository "
                              "elsewhere", code="triton_output_in_bundle", output=str(output), bundle=str(bundle))
    if not output.exists() and not output.is_symlink():
        return
    if not output.is_dir() or output.is_symlink():
        raise OutputError(f"{output} exists and is not a directory: choose another path for the Triton repository")
    if not any(output.iterdir()):
        return
    if not is_repository(output):
        raise OutputError(f"{output} is not empty and is not a tbps Triton repository (no {REPOSITORY_FILE} with "
                          f"format {REPOSITORY_FORMAT!r}): not replacing it, even with force; choose another path",
                          code="triton_output_foreign", output=str(output), file=REPOSITORY_FILE,
                          format=REPOSITORY_FORMAT)
    if not force:
        raise OutputError(f"Triton repository {output} already exists and force is off",
                          code="triton_output_exists", output=str(output))


def is_repository(directory: Path) -> bool:
    """A directory whose ``tbps.json`` carries the repository format tag (a foreign tbps.json does not)."""
    return has_format(directory / REPOSITORY_FILE, REPOSITORY_FORMAT)


def _place(staging: Path, output: Path, force: bool, bundle: Path) -> None:
    """Rename the finished repository into place; an old one (``force``) is moved aside first, then removed."""
    check_output(output, force, bundle)  # again: something may have appeared there meanwhile
    replace_directory(staging, output)


# ---- validation --------------------------------------------------------------

def _model_config_pb2() -> Any:
    """tritonclient's ``model_config_pb2`` (Triton's ModelConfig schema), or None when not installed."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    return model_config_pb2


def validate_repository(directory: str | Path) -> None:
    """Parse every model's ``config.pbtxt`` with Triton's ModelConfig protobuf and check what Triton
    enforces beyond the schema (see :func:`config_problems`).

    Raises:
        ConfigError: tritonclient is not installed.
        ExportError: listing every problem of every model.
    """
    directory = Path(directory)
    pb2 = _model_config_pb2()
    if pb2 is None:
        raise ConfigError(f"validating a Triton repository needs Triton's model-config schema: {TRITONCLIENT_HINT}")
    if not is_repository(directory):
        raise ExportError(f"{directory} is not a tbps Triton repository (no {REPOSITORY_FILE} with format "
                          f"{REPOSITORY_FORMAT!r})")
    record = read_json(directory / REPOSITORY_FILE)
    problems = []
    for name, entry in sorted((record.get("models") or {}).items()):
        folder = resolve_inside(directory, name, f"{directory / REPOSITORY_FILE}: a model name")
        entry = entry if isinstance(entry, dict) else {}
        problems += [f"{name}: {p}" for p in _model_problems(pb2, folder, entry, record)]
    if problems:
        raise ExportError(f"Triton repository {directory} fails validation: {'; '.join(problems)}")


def _model_problems(pb2: Any, folder: Path, entry: dict[str, Any], record: dict[str, Any]) -> list[str]:
    from google.protobuf import text_format

    path = folder / CONFIG_FILE
    if not path.is_file():
        return [f"no {CONFIG_FILE}"]
    config = pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except text_format.ParseError as e:
        return [f"{CONFIG_FILE} does not parse as Triton's ModelConfig: {e}"]
    platform = config.platform
    model_file = folder / MODEL_VERSION / MODEL_FILES.get(platform, "model")
    if not model_file.is_file():
        return [f"platform {platform!r} needs {model_file.relative_to(folder)}, which is missing"]
    if platform == ONNX_PLATFORM:
        expected = onnx_io(model_file)
    else:  # an engine cannot be read without TensorRT: check against the contract it was built from
        try:
            expected = contract_io(entry.get("tower"), record)
        except (KeyError, IndexError, TypeError) as e:
            return [f"{REPOSITORY_FILE} lacks the sizes of its towers ({e!r})"]
    profile_max = plan_facts(entry.get("tensorrt") or {})[1] if platform == PLAN_PLATFORM else None
    return config_problems(pb2, config, folder.name, expected, profile_max)


def onnx_io(path: Path) -> dict[str, tuple[str, str, list[int]]]:
    """An ONNX graph's inputs and outputs: name -> (``input``/``output``, numpy dtype name, dims with -1
    for a dynamic axis, the batch axis included)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}  # IR < 4 lists weights among the inputs
    io = {}
    for role, values in (("input", graph.input), ("output", graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            io[value.name] = (role, helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, dims)
    return io


def contract_io(tower_name: Any, record: dict[str, Any]) -> dict[str, tuple[str, str, list[int]]]:
    """The contract's inputs and outputs of a tower with the sizes ``tbps.json`` records, as :func:`onnx_io`."""
    tower = next((t for t in TOWERS if t.name == tower_name), None)
    if tower is None:
        return {}
    sizes = {"height": record["image_size"][0], "width": record["image_size"][1], "slots": record["num_slots"],
             "dim": record["embed_dim"]}
    return {spec.name: (role, spec.dtype, [-1, *triton_dims(spec, sizes)])
            for role, specs in (("input", tower.inputs), ("output", tower.outputs)) for spec in specs}


def config_problems(pb2: Any, config: Any, folder_name: str, expected: dict[str, tuple[str, str, list[int]]],
                    profile_max_batch: int | None = None) -> list[str]:
    """What Triton would refuse in a parsed ModelConfig that its schema allows, for a model whose
    inputs and outputs are ``expected`` (:func:`onnx_io`): the name of its folder; max_batch_size > 0
    with dynamic batching (and within a TensorRT profile); preferred batch sizes within it; the same
    input and output names as the model; their data types; ``dims`` without the batch axis, matching
    the model's fixed dims (a dynamic one may be anything); instance kinds (an engine needs a GPU)."""
    problems = []
    if config.name != folder_name:
        problems.append(f"name {config.name!r} is not its folder's name {folder_name!r}")
    if config.platform not in MODEL_FILES:
        problems.append(f"platform {config.platform!r} is not one of {', '.join(MODEL_FILES)}")
    batch = config.max_batch_size
    if config.HasField("dynamic_batching") and batch <= 0:
        problems.append(f"dynamic batching needs max_batch_size > 0, not {batch}")
    if profile_max_batch is not None and batch > profile_max_batch:
        problems.append(f"max_batch_size {batch} exceeds the engine's profile (max batch {profile_max_batch})")
    bad = [b for b in config.dynamic_batching.preferred_batch_size if not 1 <= b <= max(batch, 0)]
    if bad:
        problems.append(f"preferred_batch_size {bad} outside 1..max_batch_size {batch}")
    for role, tensors in (("input", config.input), ("output", config.output)):
        want = {name: spec for name, spec in expected.items() if spec[0] == role}
        have = {t.name: t for t in tensors}
        if set(have) != set(want):
            problems.append(f"{role}s {sorted(have)}, the model's are {sorted(want)}")
        for name in sorted(set(have) & set(want)):
            problems += [f"{role} {name!r}: {p}" for p in _tensor_problems(pb2, have[name], want[name][1:], batch)]
    for group in config.instance_group:
        kind = pb2.ModelInstanceGroup.Kind.Name(group.kind)
        if config.platform == PLAN_PLATFORM and kind != "KIND_GPU":
            problems.append(f"instance_group kind {kind}: a TensorRT engine runs on a GPU (KIND_GPU)")
        if group.count < 1:
            problems.append(f"instance_group count {group.count} < 1")
    return problems


def _tensor_problems(pb2: Any, tensor: Any, expected: tuple[str, list[int]], max_batch_size: int) -> list[str]:
    dtype, model_dims = expected
    problems = []
    data_type = pb2.DataType.Name(tensor.data_type)
    if data_type != TRITON_TYPES.get(dtype):
        problems.append(f"data_type {data_type}, the model's is {dtype} ({TRITON_TYPES.get(dtype, 'unsupported')})")
    dims = list(tensor.dims)
    if max_batch_size > 0:
        if not model_dims or model_dims[0] != -1:
            problems.append(f"the model's axis 0 is {model_dims[:1]}, not a dynamic batch: Triton cannot batch it")
        model_dims = model_dims[1:]  # Triton adds the batch axis itself
    if len(dims) != len(model_dims):
        problems.append(f"dims {dims} have {len(dims)} axes, the model's {model_dims} (without the batch axis) "
                        f"{len(model_dims)}")
    elif any(d == 0 or d < -1 or (m != -1 and d != m) for d, m in zip(dims, model_dims)):
        problems.append(f"dims {dims} do not match the model's {model_dims}")
    return problems
