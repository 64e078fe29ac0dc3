"""The Triton model repository (tbps_export.triton) and the service's Dockerfile.

No Triton server runs here: each config.pbtxt is parsed with Triton's own ModelConfig protobuf (from
tritonclient) and checked against the graphs, and the copied ONNX models are run with onnxruntime on
inputs shaped as the configs declare them, against the bundle's own PersonSearch. The Dockerfile is
not built (no docker daemon in CI): its instructions are parsed and checked.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tbps_runtime.climessages import in_flags
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_assertions import assert_user_error
from runtime_fakes import IMAGE_SIZE, MAX_LENGTH, add_fake_plans
from tbps_export.cli import triton_command
from tbps_export.triton import (CONFIG_FILE, REPOSITORY_FILE, TritonModel, config_problems, contract_io,
                                render_config, validate_repository, write_triton_repository)
from tbps_runtime.atomic import sha256_file
from tbps_runtime.contract import IMAGE_TOWER, MANIFEST_FILE, TEXT_TOWER, TOKENIZER_FILE
from tbps_runtime.errors import BundleError, ConfigError, ExportError, OutputError
from tbps_runtime.model.bundle import load_manifest
from tbps_runtime.model.images import normalize
from tbps_runtime.model.tokenizer import load_tokenizer
from tbps_runtime.search import PersonSearch

ROOT = Path(__file__).resolve().parent.parent
ONNX_MODELS = ("tbps_image_tower", "tbps_text_tower")
PLAN_MODELS = ("tbps_image_tower_trt", "tbps_text_tower_trt")
FAKE_K, FAKE_D = 3, 4  # runtime_fakes.make_fake_bundle's defaults


@pytest.fixture(scope="module")
def pb2():
    return pytest.importorskip("tritonclient.grpc.model_config_pb2",
                               reason="Triton's model-config schema comes with tritonclient: "
                                      "pip install 'tritonclient[grpc]'")


def parse_config(pb2, path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(encoding="utf-8"), pb2.ModelConfig())


def io_of(config) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (t.data_type, list(t.dims)) for t in (*config.input, *config.output)}


@pytest.fixture(scope="module")
def exported_repo(exported_bundle, tmp_path_factory, pb2):
    return write_triton_repository(exported_bundle, tmp_path_factory.mktemp("triton") / "repo")


@pytest.fixture()
def bundle_copy(fake_bundle, tmp_path):
    """A writable copy of the hand-made bundle (fast: tiny towers)."""
    return Path(shutil.copytree(fake_bundle, tmp_path / "m.bundle"))


# ---- the repository ----------------------------------------------------------

def test_layout_and_record(exported_repo, exported_bundle):
    files = sorted(str(p.relative_to(exported_repo)) for p in exported_repo.rglob("*") if p.is_file())
    assert files == sorted([REPOSITORY_FILE, TOKENIZER_FILE,  # no plans, no explain graphs
                            "tbps_image_tower/1/model.onnx", "tbps_image_tower/config.pbtxt",
                            "tbps_text_tower/1/model.onnx", "tbps_text_tower/config.pbtxt"])
    for name, source in (("tbps_image_tower", "image_tower.onnx"), ("tbps_text_tower", "text_tower.onnx")):
        assert sha256_file(exported_repo / name / "1" / "model.onnx") == sha256_file(exported_bundle / source)
    assert (exported_repo / TOKENIZER_FILE).read_bytes() == (exported_bundle / TOKENIZER_FILE).read_bytes()
    manifest = load_manifest(exported_bundle)
    record = json.loads((exported_repo / REPOSITORY_FILE).read_text())
    assert record["format"] == "tbps-triton-repository" and record["version"] == 1
    assert record["bundle"]["fingerprint"] == manifest.fingerprint
    assert record["bundle"]["manifest_sha256"] == sha256_file(exported_bundle / MANIFEST_FILE)
    for field in ("num_slots", "num_coarse", "num_fine", "embed_dim", "image_size", "mean", "std",
                  "max_text_length", "padding_side"):
        assert record[field] == getattr(manifest, field), field
    assert record["tokenizer"] == TOKENIZER_FILE
    assert sorted(record["models"]) == list(ONNX_MODELS)


def test_configs_parse_and_match_the_graphs(exported_repo, exported_bundle, pb2):
    manifest = load_manifest(exported_bundle)
    (height, width), slots, dim = manifest.image_size, manifest.num_slots, manifest.embed_dim
    fp32, int64 = pb2.TYPE_FP32, pb2.TYPE_INT64
    expected = {"tbps_image_tower": {"pixel_values": (fp32, [3, height, width]), "embeddings": (fp32, [slots, dim])},
                "tbps_text_tower": {"input_ids": (int64, [-1]), "attention_mask": (int64, [-1]),
                                    "embeddings": (fp32, [slots, dim])}}
    for name in ONNX_MODELS:
        config = parse_config(pb2, exported_repo / name / CONFIG_FILE)
        assert (config.name, config.platform, config.max_batch_size) == (name, "onnxruntime_onnx", 32)
        assert io_of(config) == expected[name]
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert [(g.kind, g.count) for g in config.instance_group] == [(pb2.ModelInstanceGroup.KIND_CPU, 1)]
        # The graph as onnxruntime reads it (another reader than the one the writer validates with):
        # same names, types, and the config's dims are the graph's without its batch axis.
        session = ort.InferenceSession(str(exported_repo / name / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        graph = {t.name: (t.type, t.shape) for t in (*session.get_inputs(), *session.get_outputs())}
        assert set(graph) == set(expected[name])
        for tensor, (data_type, dims) in expected[name].items():
            onnx_type, shape = graph[tensor]
            assert onnx_type == {fp32: "tensor(float)", int64: "tensor(int64)"}[data_type]
            assert isinstance(shape[0], str)  # a dynamic batch axis
            assert [d if isinstance(d, int) else -1 for d in shape[1:]] == dims
    text = (exported_repo / "tbps_text_tower" / CONFIG_FILE).read_text()
    assert "onnxruntime contrib ops" in text and "Attention" in text  # the fused graph's note
    validate_repository(exported_repo)


def test_copied_models_give_the_bundles_embeddings(exported_repo, exported_bundle):
    """Inputs built as a Triton client would (tbps.json's recipe, shapes per config) into the copied
    ONNX models give PersonSearch's embeddings."""
    search = PersonSearch.from_bundle(exported_bundle, threads=1)
    record = json.loads((exported_repo / REPOSITORY_FILE).read_text())
    session = lambda name: ort.InferenceSession(str(exported_repo / name / "1" / "model.onnx"),
                                                providers=["CPUExecutionProvider"])
    captions = ["a man in a red shirt", "a woman wearing a long blue coat and black boots", "white bag"]
    tokenizer = load_tokenizer((exported_repo / TOKENIZER_FILE).read_text(), record["max_text_length"])
    encodings = tokenizer.encode_batch(captions)
    feeds = {"input_ids": np.array([e.ids for e in encodings], np.int64),
             "attention_mask": np.array([e.attention_mask for e in encodings], np.int64)}  # (3, L)
    (text,) = session("tbps_text_tower").run(None, feeds)
    reference = search.embed_texts(captions)
    assert text.shape == (3, record["num_slots"], record["embed_dim"])
    np.testing.assert_allclose(text, reference, atol=1e-6, rtol=0)
    # Padded to the max length (so that Triton can batch requests together): the same embeddings.
    length = record["max_text_length"]
    padded = {k: np.pad(v, ((0, 0), (0, length - v.shape[1]))) for k, v in feeds.items()}
    padded["input_ids"][feeds["attention_mask"].sum(1)[:, None] <= np.arange(length)] = tokenizer.padding["pad_id"]
    (text_padded,) = session("tbps_text_tower").run(None, padded)
    np.testing.assert_allclose(text_padded, reference, atol=1e-5, rtol=0)

    rng = np.random.default_rng(0)
    height, width = record["image_size"]
    crops = rng.integers(0, 256, size=(4, height, width, 3), dtype=np.uint8)
    pixels = normalize(crops, tuple(record["mean"]), tuple(record["std"]))  # (4, 3, H, W)
    (images,) = session("tbps_image_tower").run(None, {"pixel_values": pixels})
    np.testing.assert_allclose(images, search.embed_images(list(crops)), atol=1e-6, rtol=0)
    # Eq. 14 is one dot product of the flattened (K*d) vectors: the sum of per-slot cosines.
    scores = text.reshape(3, -1) @ images.reshape(4, -1).T
    np.testing.assert_allclose(scores, np.einsum("qkd,gkd->qg", text, images), atol=1e-5)


def test_tensorrt_plans_get_models_with_their_profile(bundle_copy, tmp_path, pb2, caplog):
    profile = {"pixel_values": {"min": [1, 3, *IMAGE_SIZE], "opt": [4, 3, *IMAGE_SIZE], "max": [16, 3, *IMAGE_SIZE]}}
    add_fake_plans(bundle_copy, profile=profile)
    with caplog.at_level(logging.WARNING, logger="tbps_export.triton"):
        repo = write_triton_repository(bundle_copy, tmp_path / "repo", max_batch_size=32)
    assert "exceeds the engine's profile (max batch 16)" in caplog.text
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(ONNX_MODELS + PLAN_MODELS)
    for name, tower in zip(PLAN_MODELS, (IMAGE_TOWER, TEXT_TOWER)):
        assert (repo / name / "1" / "model.plan").read_bytes() == (bundle_copy / tower.plan_file).read_bytes()
        config = parse_config(pb2, repo / name / CONFIG_FILE)
        assert (config.name, config.platform, config.max_batch_size) == (name, "tensorrt_plan", 16)
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
        assert [g.kind for g in config.instance_group] == [pb2.ModelInstanceGroup.KIND_GPU]
        text = (repo / name / CONFIG_FILE).read_text()
        assert "TensorRT 10.7.0.23 on NVIDIA H100 80GB HBM3 (compute capability 9.0)" in text
    assert parse_config(pb2, repo / "tbps_image_tower" / CONFIG_FILE).max_batch_size == 32  # ONNX: not clamped
    image = parse_config(pb2, repo / "tbps_image_tower_trt" / CONFIG_FILE)
    assert io_of(image) == {"pixel_values": (pb2.TYPE_FP32, [3, *IMAGE_SIZE]),
                            "embeddings": (pb2.TYPE_FP32, [FAKE_K, FAKE_D])}
    record = json.loads((repo / REPOSITORY_FILE).read_text())
    assert record["models"]["tbps_text_tower_trt"]["tensorrt"]["tensorrt_version"] == "10.7.0.23"
    validate_repository(repo)


def test_plans_without_a_recorded_profile_keep_the_batch(bundle_copy, tmp_path, pb2, caplog):
    add_fake_plans(bundle_copy)
    with caplog.at_level(logging.WARNING, logger="tbps_export.triton"):
        repo = write_triton_repository(bundle_copy, tmp_path / "repo", max_batch_size=8, onnx_device="gpu")
    assert "records no optimisation profile" in caplog.text
    assert parse_config(pb2, repo / "tbps_text_tower_trt" / CONFIG_FILE).max_batch_size == 8
    onnx_config = parse_config(pb2, repo / "tbps_text_tower" / CONFIG_FILE)
    assert [g.kind for g in onnx_config.instance_group] == [pb2.ModelInstanceGroup.KIND_GPU]
    assert list(onnx_config.dynamic_batching.preferred_batch_size) == [2, 4, 8]


# ---- validation catches what Triton would refuse ------------------------------

FAKE_RECORD = {"image_size": list(IMAGE_SIZE), "num_slots": FAKE_K, "embed_dim": FAKE_D}


def _config_text(tower=IMAGE_TOWER, platform="onnxruntime_onnx", kind="KIND_CPU", batch=8):
    model = TritonModel(tower, platform, tower.onnx_file, kind, batch, (2, batch))
    sizes = {"height": IMAGE_SIZE[0], "width": IMAGE_SIZE[1], "slots": FAKE_K, "dim": FAKE_D}
    return render_config(model, sizes, 100)


@pytest.mark.parametrize("edit, problem", [
    (("dims: [ 3, 16, 8 ]", "dims: [ -1, 3, 16, 8 ]"), "have 4 axes"),  # the batch axis given
    (("dims: [ 3, 16, 8 ]", "dims: [ 3, 8, 16 ]"), "do not match the model's [3, 16, 8]"),
    (('name: "pixel_values"', 'name: "images"'), "inputs ['images'], the model's are ['pixel_values']"),
    (("data_type: TYPE_FP32", "data_type: TYPE_FP16"), "data_type TYPE_FP16, the model's is float32"),
    (("max_batch_size: 8", "max_batch_size: 0"), "dynamic batching needs max_batch_size > 0"),
    (("preferred_batch_size: [ 2, 8 ]", "preferred_batch_size: [ 2, 64 ]"), "preferred_batch_size [64]"),
    (('name: "tbps_image_tower"', 'name: "other"'), "is not its folder's name"),
])
def test_config_problems_finds_each_mistake(pb2, edit, problem):
    from google.protobuf import text_format

    expected = contract_io("image_tower", FAKE_RECORD)
    good = text_format.Parse(_config_text(), pb2.ModelConfig())
    assert config_problems(pb2, good, "tbps_image_tower", expected) == []
    text = _config_text()
    assert edit[0] in text
    bad = text_format.Parse(text.replace(edit[0], edit[1], 1), pb2.ModelConfig())
    problems = config_problems(pb2, bad, "tbps_image_tower", expected)
    assert any(problem in p for p in problems), problems


def test_config_problems_on_engines(pb2):
    from google.protobuf import text_format

    expected = contract_io("image_tower", FAKE_RECORD)
    config = text_format.Parse(_config_text(platform="tensorrt_plan", kind="KIND_CPU", batch=32), pb2.ModelConfig())
    problems = config_problems(pb2, config, "tbps_image_tower", expected, profile_max_batch=16)
    assert any("exceeds the engine's profile (max batch 16)" in p for p in problems), problems
    assert any("a TensorRT engine runs on a GPU" in p for p in problems), problems


def test_validate_repository_reports_a_tampered_config(bundle_copy, tmp_path, pb2):
    repo = write_triton_repository(bundle_copy, tmp_path / "repo")
    config = repo / "tbps_text_tower" / CONFIG_FILE
    config.write_text(config.read_text().replace('name: "attention_mask"', 'name: "mask"'))
    with pytest.raises(ExportError, match="tbps_text_tower: inputs \\['input_ids', 'mask'\\]"):
        validate_repository(repo)
    config.write_text("max_batch_size: [")
    with pytest.raises(ExportError, match="does not parse as Triton's ModelConfig"):
        validate_repository(repo)


def test_without_tritonclient_the_repository_is_written_unvalidated(bundle_copy, tmp_path, monkeypatch, caplog):
    import tbps_export.triton as triton

    monkeypatch.setattr(triton, "_model_config_pb2", lambda: None)
    with caplog.at_level(logging.INFO, logger="tbps_export.triton"):
        repo = write_triton_repository(bundle_copy, tmp_path / "repo")
    assert "tritonclient is not installed" in caplog.text and "pip install 'tritonclient[grpc]'" in caplog.text
    assert (repo / "tbps_text_tower" / CONFIG_FILE).is_file()
    with pytest.raises(ConfigError, match="pip install 'tritonclient\\[grpc\\]'"):
        validate_repository(repo)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 4096), delay=st.integers(0, 10**7), height=st.integers(8, 4096),
       width=st.integers(8, 4096), slots=st.integers(1, 1024), dim=st.integers(1, 8192),
       tower=st.sampled_from([IMAGE_TOWER, TEXT_TOWER]))
def test_rendered_configs_always_parse_and_validate(pb2, batch, delay, height, width, slots, dim, tower):
    from google.protobuf import text_format

    from tbps_export.triton import preferred_batch_sizes

    model = TritonModel(tower, "onnxruntime_onnx", tower.onnx_file, "KIND_CPU", batch, preferred_batch_sizes(batch),
                        ("a note\nmax_batch_size: 0 # a newline in a manifest's text stays inside the comment",))
    text = render_config(model, {"height": height, "width": width, "slots": slots, "dim": dim}, delay)
    config = text_format.Parse(text, pb2.ModelConfig())
    assert config.max_batch_size == batch and config.dynamic_batching.max_queue_delay_microseconds == delay
    record = {"image_size": [height, width], "num_slots": slots, "embed_dim": dim}
    assert config_problems(pb2, config, model.name, contract_io(tower.name, record)) == []


# ---- the output directory -------------------------------------------------------

def test_refuses_a_foreign_directory_even_with_force(bundle_copy, tmp_path, pb2):
    foreign = tmp_path / "models"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    (foreign / REPOSITORY_FILE).write_text('{"format": "something-else"}')
    for force in (False, True):
        with pytest.raises(OutputError, match="not a tbps Triton repository"):
            write_triton_repository(bundle_copy, foreign, force=force)
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt", REPOSITORY_FILE]
    assert (foreign / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_replaces_its_own_repository_only_with_force(bundle_copy, tmp_path, pb2):
    repo = write_triton_repository(bundle_copy, tmp_path / "repo", max_batch_size=4)
    (repo / "stale.txt").write_text("old")
    with pytest.raises(OutputError, match="already exists") as refused:
        write_triton_repository(bundle_copy, repo)
    assert refused.value.code == "triton_output_exists" and "--" not in str(refused.value)
    assert "already exists: choose another path or pass --force" in in_flags(refused.value)
    assert (repo / "stale.txt").exists()
    write_triton_repository(bundle_copy, repo, max_batch_size=16, force=True)
    assert not (repo / "stale.txt").exists()
    assert parse_config(pb2, repo / "tbps_image_tower" / CONFIG_FILE).max_batch_size == 16
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_triton_repository(bundle_copy, empty) / REPOSITORY_FILE).is_file()  # an empty one is fine
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_refuses_bad_outputs_options_and_bundles(bundle_copy, tmp_path, pb2):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a directory"):
        write_triton_repository(bundle_copy, tmp_path / "file")
    with pytest.raises(OutputError, match="inside the bundle"):
        write_triton_repository(bundle_copy, bundle_copy / "triton")
    for options in ({"max_batch_size": 0}, {"queue_delay_us": -1}, {"onnx_device": "tpu"}):
        with pytest.raises(ConfigError):
            write_triton_repository(bundle_copy, tmp_path / "repo", **options)
    with (bundle_copy / TEXT_TOWER.onnx_file).open("ab") as stream:
        stream.write(b"\0")
    with pytest.raises(BundleError, match="was modified"):
        write_triton_repository(bundle_copy, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


# ---- the commands ------------------------------------------------------------------

def run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def test_triton_command(bundle_copy, tmp_path, pb2):
    result = run(triton_command, ["--bundle", bundle_copy, "-o", tmp_path / "repo", "--max-batch", 4,
                                  "--queue-delay-us", 0, "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "repo")
    config = parse_config(pb2, tmp_path / "repo" / "tbps_image_tower" / CONFIG_FILE)
    assert (config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds) == (4, 0)


@pytest.mark.parametrize("args, fragment", [
    (["--bundle", "{tmp}/absent", "-o", "{tmp}/repo"], "bundle directory not found"),
    (["--bundle", "{bundle}", "-o", "{tmp}/repo", "--max-batch", "0"], "--max-batch"),
    (["--bundle", "{bundle}", "-o", "{tmp}/repo", "--onnx-device", "tpu"], "--onnx-device"),
    (["--bundle", "{bundle}", "-o", "{tmp}/foreign", "--force"], "not a tbps Triton repository"),
    (["--bundle", "{bundle}"], "Missing option '-o'"),
])
def test_triton_command_user_errors(bundle_copy, tmp_path, pb2, args, fragment):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.bin").write_bytes(b"1")
    result = run(triton_command, [a.format(tmp=tmp_path, bundle=bundle_copy) for a in args])
    assert_user_error(result, fragment)
    assert (tmp_path / "foreign" / "data.bin").exists()


def test_export_triton_option(exported_bundle, tmp_path, monkeypatch, pb2):
    """``tbps export --triton DIR``: the repository written from the new bundle; a DIR that is not ours
    refused before exporting. The (slow) torch.onnx export is swapped for a copy of the session's bundle."""
    import tbps_export.bundle_writer as bundle_writer
    from tbps_export.cli import export_command

    exports = []

    def fake_export(checkpoint, output, **kwargs):
        exports.append(output)
        return Path(shutil.copytree(exported_bundle, output))

    monkeypatch.setattr(bundle_writer, "export_bundle", fake_export)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    refused = run(export_command, ["--ckpt", tmp_path / "m.pt", "--triton", foreign, "--force", "-q"])
    assert_user_error(refused, "not a tbps Triton repository")
    assert exports == [] and (foreign / "notes.txt").read_text() == "keep"

    result = run(export_command, ["--ckpt", tmp_path / "m.pt", "-o", tmp_path / "m.bundle", "--triton",
                                  tmp_path / "triton", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(tmp_path / "m.bundle"), str(tmp_path / "triton")]
    record = json.loads((tmp_path / "triton" / REPOSITORY_FILE).read_text())
    assert record["bundle"]["fingerprint"] == load_manifest(exported_bundle).fingerprint


# ---- the Dockerfile ------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, continuation lines joined."""
    instructions, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends with a continuation line"
    return instructions


def test_dockerfile_parser():
    text = "# c\nFROM a\nRUN x \\\n    && y\n\n# d\nCMD [\"p\", \\\n  \"q\"]\n"
    assert dockerfile_instructions(text) == [("FROM", "a"), ("RUN", "x      && y"), ("CMD", '["p",    "q"]')]


def test_dockerfile():
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    by_name = {}
    for name, arguments in instructions:
        by_name.setdefault(name, []).append(arguments)
    assert by_name["FROM"][0].startswith("python:3.11-slim")
    users = by_name["USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")  # the last USER is the one that runs
    assert instructions.index(("USER", users[-1])) > max(i for i, (n, _) in enumerate(instructions) if n == "RUN")
    assert by_name["EXPOSE"] == ["8000"]
    (health,) = by_name["HEALTHCHECK"]
    assert "/healthz" in health and "urllib" in health and "curl" not in health
    installs = [step for arguments in by_name["RUN"] for step in arguments.split("&&") if "pip install" in step]
    assert installs and all("serve" in step and "footage" in step for step in installs)
    for step in installs:  # no torch, and no extra that brings it
        for word in shlex.split(step):
            assert "torch" not in word.lower() and not any(extra in word for extra in ("train", "export", "dev"))
    assert "libgl1" in " ".join(by_name["RUN"]) and "libglib2.0-0" in " ".join(by_name["RUN"])
    command = json.loads(by_name["ENTRYPOINT"][0]) + json.loads(by_name["CMD"][0])
    assert command[:2] == ["tbps", "serve"]
    assert command[command.index("--api-key-file") + 1] == "/run/secrets/tbps_api_key"
    assert command[command.index("--port") + 1] == "8000"
    assert command[command.index("--bundle") + 1] == "/srv/bundle"
    assert by_name["WORKDIR"][-1] == "/srv"
    assert json.loads(by_name["VOLUME"][0]) == ["/srv/bundle", "/srv/gallery"]


def docker_glob(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: ``*`` and ``?`` stay within a path component, ``**/`` spans any."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern[i] in "*?":
            regex, i = regex + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i:end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


def excluded(rules: list[str], path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last rule matching the path or one of
    its parent directories wins, a ``!`` rule re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for rule in rules:
        negated, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
        if any(docker_glob(pattern).fullmatch(c) for c in candidates):
            result = not negated
    return result


def test_docker_glob():
    assert docker_glob("*.pt").fullmatch("m.pt") and not docker_glob("*.pt").fullmatch("runs/m.pt")
    assert docker_glob("**/__pycache__").fullmatch("a/b/__pycache__") and docker_glob("**/x").fullmatch("x")
    assert not excluded(["*", "!src"], "src/a.py") and excluded(["*", "!src", "**/*.pyc"], "src/a.pyc")


def test_dockerignore_keeps_the_context_to_the_runtime_sources():
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in ("runs/bench/m.bundle/text_tower.onnx", "site/index.html", ".pytest_cache/v/x", ".hypothesis/db",
                 "tests/fixtures/cuhk-pedes/reid_raw.json", "build/lib/x.py", ".git/HEAD", "m.pt",
                 "tbps_runtime/__pycache__/search.cpython-311.pyc", "tbps_train/model.py", "docs/index.md"):
        assert excluded(rules, path), path
    for path in ("pyproject.toml", "README.md", "tbps_runtime/search.py", "tbps_runtime/serve/app.py"):
        assert not excluded(rules, path), path
