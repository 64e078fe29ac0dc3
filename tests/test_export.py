"""The exporter: ONNX towers that reproduce PyTorch, a complete manifest, and every bad input.

Most tests read ``exported_bundle``, the session's one export of the tiny checkpoint
(tests/conftest.py; exported with the explain graphs, which leave the default graphs as
they are). Tests of other exports (the default options and output path, failure paths,
--force, the TensorRT stand-ins) swap the (slow) torch.onnx step for a copy of that
bundle's graphs, so they exercise validation, staging and the CLI in seconds; a test
that writes over a bundle writes over a copy of it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tbps_runtime.climessages import in_flags
import torch
from click.testing import CliRunner

import tbps_export.bundle_writer as bundle_writer
import tbps_export.tensorrt_build as trt_build
from tbps_export import ExportOptions, ParityError, TrtOptions, export_bundle, fingerprint, to_mixed_precision
from tbps_export.cli import export_command
from tbps_export.fuse import fused_op_counts
from tbps_export.tensorrt_build import profile_shapes, unavailable_reason
from tbps_export.towers import axis_sizes, build_tower
from tbps_export.validate import CAPTIONS, LONG_CAPTION, check_graph, cpu_session, onnx_runner
from tbps_runtime.atomic import sha256_file
from tbps_runtime.contract import (
    CAPTIONS_FILE, EXPLAIN_TOWERS, HELDOUT_CAPTIONS, IMAGE_TOWER, MANIFEST_FILE, OPSET, PARITY_ATOL, TEXT_TOWER,
    TOKENIZER_FILE, TOWERS,
)
from tbps_runtime.errors import BundleError, CheckpointError, ConfigError, ExportError, InputFileNotFoundError
from tbps_runtime.machine import cpu_model
from tbps_runtime.model.bundle import heldout_captions, load_manifest, verify_files
from tbps_runtime.model.tokenizer import load_tokenizer, tokenize
from tbps_train.checkpoint import VERSION, load_checkpoint, model_from_checkpoint
from cli_assertions import assert_user_error

(PIXELS,) = IMAGE_TOWER.inputs
IDS, MASK = TEXT_TOWER.inputs


# ---- fixtures ----------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return model_from_checkpoint(load_checkpoint(tiny_checkpoint))[0]


@pytest.fixture(scope="module")
def tokenizer(model, tiny_checkpoint):
    return load_tokenizer(load_checkpoint(tiny_checkpoint)["tokenizer_json"], model.config.max_text_length)


@pytest.fixture(scope="session")
def unfused_towers(tmp_path_factory, tiny_checkpoint):
    """``tiny_checkpoint``'s towers as torch.onnx.export writes them (before the fusions), once."""
    from tbps_export.onnx_export import export_tower

    directory = tmp_path_factory.mktemp("unfused")
    tiny = model_from_checkpoint(load_checkpoint(tiny_checkpoint))[0]
    return {spec.name: export_tower(spec, tiny, directory / spec.onnx_file) for spec in TOWERS}


@pytest.fixture
def fast_export(unfused_towers, monkeypatch):
    """Replace torch.onnx export by a copy of the once-exported graphs (same checkpoint, same weights)."""
    def copy_tower(spec, model, path):
        shutil.copy(unfused_towers[spec.name], path)
        return path

    monkeypatch.setattr(bundle_writer, "export_tower", copy_tower)


def session(bundle, spec):
    return ort.InferenceSession(str(bundle / spec.onnx_file), providers=["CPUExecutionProvider"])


def torch_embeddings(model, spec, inputs):
    with torch.inference_mode():
        return build_tower(spec, model)(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()


def assert_nothing_left(directory, name):
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith(f".{name}.")]
    assert not leftovers, leftovers


def invoke(args):
    return CliRunner().invoke(export_command, [str(a) for a in args] + ["--quiet"], catch_exceptions=False)


# ---- the bundle ----------------------------------------------------------------

def test_bundle_holds_the_contract_files(exported_bundle):
    names = {p.name for p in exported_bundle.iterdir()}  # exported with explain=True
    assert names == {MANIFEST_FILE, TOKENIZER_FILE, CAPTIONS_FILE, *(t.onnx_file for t in (*TOWERS, *EXPLAIN_TOWERS))}
    assert_nothing_left(exported_bundle.parent, exported_bundle.name)


def test_bundle_carries_held_out_captions_of_the_val_split(exported_bundle, tiny_checkpoint):
    """The captions tbps calibrate --gallery scores against a store: the training data's val split's."""
    from tbps_train.data.readers import read_split

    dataset = load_checkpoint(tiny_checkpoint)["dataset"]
    val = [" ".join(c.split()) for r in read_split(dataset["name"], dataset["root"], "val") for c in r.captions]
    train = {" ".join(c.split()) for r in read_split(dataset["name"], dataset["root"], "train") for c in r.captions}
    captions = heldout_captions(exported_bundle, load_manifest(exported_bundle))
    assert captions and set(captions) <= set(val) and len(captions) == min(len(val), HELDOUT_CAPTIONS)
    assert not set(captions) & (train - set(val))  # none only the training split holds


def test_default_export_goes_beside_the_checkpoint_without_explain_graphs(tiny_checkpoint, tmp_path, fast_export):
    checkpoint = tmp_path / "m.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    path = export_bundle(checkpoint)
    assert path == checkpoint.with_suffix(".bundle")
    assert {p.name for p in path.iterdir()} == {MANIFEST_FILE, TOKENIZER_FILE, CAPTIONS_FILE,
                                                *(t.onnx_file for t in TOWERS)}
    manifest = load_manifest(path)
    assert set(manifest.files) == {TOKENIZER_FILE, CAPTIONS_FILE, *(t.onnx_file for t in TOWERS)}
    assert set(manifest.towers) == {t.name for t in TOWERS}
    verify_files(path, manifest)
    assert_nothing_left(tmp_path, path.name)


def test_manifest_is_complete(exported_bundle, model, tiny_checkpoint):
    manifest = load_manifest(exported_bundle)
    cfg = model.config
    assert (manifest.num_slots, manifest.num_coarse, manifest.num_fine, manifest.embed_dim) == (
        cfg.num_slots, cfg.num_coarse, cfg.num_fine, cfg.embed_dim)
    assert manifest.slot_names == ["global", "coarse_1", "coarse_2", "fine_1", "fine_2"]
    assert manifest.image_size == list(cfg.image_size)
    assert manifest.max_text_length == cfg.max_text_length and manifest.padding_side == "right"
    assert len(manifest.mean) == len(manifest.std) == 3 and manifest.opset == OPSET
    assert manifest.tokenizer == TOKENIZER_FILE
    for spec in TOWERS:
        entry = {k: v for k, v in manifest.towers[spec.name].items() if k != "fusions"}
        assert entry == manifest.tower_entry(spec)
        figures = manifest.parity[spec.name]
        assert figures["max_abs_diff"] <= PARITY_ATOL and figures["min_cosine"] > 0.9999
        assert len(figures["cases"]) >= 2
    assert manifest.parity["atol"] == PARITY_ATOL
    assert manifest.fingerprint == fingerprint(model.state_dict()) and len(manifest.fingerprint) == 64
    assert manifest.source["checkpoint"] == "m.pt" and manifest.source["model"]["embed_dim"] == cfg.embed_dim
    assert manifest.source["checkpoint_sha256"] == sha256_file(tiny_checkpoint)
    assert manifest.tensorrt == {}


def test_checksums_match_the_files(exported_bundle):
    manifest = load_manifest(exported_bundle)
    assert set(manifest.files) == {TOKENIZER_FILE, CAPTIONS_FILE, *(t.onnx_file for t in (*TOWERS, *EXPLAIN_TOWERS))}
    verify_files(exported_bundle, manifest)
    for name, digest in manifest.files.items():
        assert sha256_file(exported_bundle / name) == digest


def test_tokenizer_is_the_checkpoints(exported_bundle, tiny_checkpoint):
    assert (exported_bundle / TOKENIZER_FILE).read_text() == load_checkpoint(tiny_checkpoint)["tokenizer_json"]


def test_graphs_are_single_files_with_the_contract_io(exported_bundle, tmp_path):
    for spec in TOWERS:
        alone = tmp_path / spec.onnx_file
        shutil.copy(exported_bundle / spec.onnx_file, alone)  # no neighbour files: weights must be inside
        graph = onnx.load(str(alone)).graph
        assert [i.name for i in graph.input] == [t.name for t in spec.inputs]
        assert [o.name for o in graph.output] == [t.name for t in spec.outputs]
        batch = graph.output[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.dim_value


def test_graph_check_lists_every_contract_difference(exported_bundle, model, tmp_path):
    graph = onnx.load(str(exported_bundle / TEXT_TOWER.onnx_file))
    graph.graph.input[1].type.tensor_type.shape.dim[1].dim_value = 7  # sequence baked in
    graph.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    bad = tmp_path / TEXT_TOWER.onnx_file
    onnx.save(graph, str(bad))
    failures = check_graph(bad, TEXT_TOWER, axis_sizes(model))
    assert any("attention_mask axis 'sequence' is fixed at 7" in f for f in failures), failures
    assert any("embeddings is double, the contract says float32" in f for f in failures), failures
    assert check_graph(exported_bundle / TEXT_TOWER.onnx_file, TEXT_TOWER, axis_sizes(model)) == []


def test_fingerprint_covers_embedding_weights_only(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = fingerprint(state)
    classifier = next(k for k in state if k.startswith("id_classifiers."))
    state[classifier] += 1
    assert fingerprint(state) == base
    state["shared_tokens"] += 1e-3
    assert fingerprint(state) != base


# ---- parity, on shapes other than the export sample ----------------------------

@pytest.mark.parametrize("batch", [1, 3, 5])
def test_image_tower_matches_pytorch(exported_bundle, model, batch):
    height, width = model.config.image_size
    inputs = {PIXELS.name: np.random.default_rng(batch).standard_normal((batch, 3, height, width), np.float32)}
    got = session(exported_bundle, IMAGE_TOWER).run(None, inputs)[0]
    assert got.shape == (batch, model.config.num_slots, model.config.embed_dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, torch_embeddings(model, IMAGE_TOWER, inputs), atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)


def caption_batches(tokenizer, max_length):
    ids, _ = tokenize(tokenizer, [CAPTIONS[0]])
    yield "one token", ids[:, :1], np.ones((1, 1), np.int64)
    yield "two captions", *tokenize(tokenizer, list(CAPTIONS[:2]))
    yield "three, padded", *tokenize(tokenizer, ["a man", CAPTIONS[2], "woman in red"])
    long_ids, long_mask = tokenize(tokenizer, [LONG_CAPTION] * 2)
    assert long_ids.shape[1] == max_length
    yield "max length", long_ids, long_mask
    yield "five with a max-length one", *tokenize(tokenizer, [*CAPTIONS[:4], LONG_CAPTION])


def test_text_tower_matches_pytorch(exported_bundle, model, tokenizer):
    text = session(exported_bundle, TEXT_TOWER)
    for label, ids, mask in caption_batches(tokenizer, model.config.max_text_length):
        inputs = {IDS.name: ids, MASK.name: mask}
        got = text.run(None, inputs)[0]
        assert got.shape == (len(ids), model.config.num_slots, model.config.embed_dim), label
        np.testing.assert_allclose(got, torch_embeddings(model, TEXT_TOWER, inputs), atol=PARITY_ATOL, rtol=0,
                                   err_msg=label)
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5, err_msg=label)


def test_padding_does_not_change_a_captions_embedding(exported_bundle, tokenizer):
    text = session(exported_bundle, TEXT_TOWER)
    alone = text.run(None, dict(zip((IDS.name, MASK.name), tokenize(tokenizer, [CAPTIONS[1]]))))[0]
    padded = text.run(None, dict(zip((IDS.name, MASK.name), tokenize(tokenizer, [CAPTIONS[1], LONG_CAPTION]))))[0]
    np.testing.assert_allclose(padded[0], alone[0], atol=PARITY_ATOL)


# ---- ablation ----------------------------------------------------------------

@pytest.mark.slow
def test_ablated_checkpoint_exports_with_its_k(synth_root, tmp_path):
    from tbps_train.config import apply_overrides, load_preset
    from tbps_train.train import train

    config = apply_overrides(apply_overrides(load_preset("tiny"), "model", use_fine=False), "train", epochs=1)
    checkpoint = tmp_path / "nofine.pt"
    train(config, "cuhk-pedes", synth_root, checkpoint, progress=False)
    manifest = load_manifest(export_bundle(checkpoint, tmp_path / "nofine"))
    assert (manifest.num_slots, manifest.num_coarse, manifest.num_fine) == (1 + config.model.num_coarse,
                                                                             config.model.num_coarse, 0)
    assert manifest.slot_names == ["global", "coarse_1", "coarse_2"]
    height, width = config.model.image_size
    pixels = np.zeros((3, 3, height, width), np.float32)
    got = session(tmp_path / "nofine", IMAGE_TOWER).run(None, {PIXELS.name: pixels})[0]
    assert got.shape == (3, manifest.num_slots, manifest.embed_dim)


# ---- failures: nothing half-written, one clear message --------------------------

def test_not_a_checkpoint(tmp_path):
    garbage = tmp_path / "m.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a tbps checkpoint"):
        export_bundle(garbage)
    assert_user_error(invoke(["--ckpt", garbage]), "not a tbps checkpoint")
    assert not garbage.with_suffix(".bundle").exists()
    assert_nothing_left(tmp_path, "m.bundle")
    with pytest.raises(InputFileNotFoundError):
        export_bundle(tmp_path / "missing.pt")
    assert_user_error(invoke(["--ckpt", tmp_path / "missing.pt"]), "not found")


def test_newer_checkpoint_version(tiny_checkpoint, tmp_path):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["version"] = VERSION + 1
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    with pytest.raises(CheckpointError, match="upgrade tbps"):
        export_bundle(newer)
    assert_user_error(invoke(["--ckpt", newer]), f"version {VERSION + 1}")
    assert not newer.with_suffix(".bundle").exists()


def test_existing_output_is_refused_without_force(exported_bundle, tiny_checkpoint, tmp_path, fast_export):
    bundle = shutil.copytree(exported_bundle, tmp_path / "m.bundle")  # a copy: the session's is shared
    before = sha256_file(bundle / MANIFEST_FILE)
    with pytest.raises(BundleError, match="already exists") as refused:
        export_bundle(tiny_checkpoint, bundle)
    assert refused.value.code == "bundle_output_exists" and "--" not in str(refused.value)
    assert "pass --force" in in_flags(refused.value)
    assert_user_error(invoke(["--ckpt", tiny_checkpoint, "-o", bundle]), "already exists", "--force")
    assert sha256_file(bundle / MANIFEST_FILE) == before
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    assert_user_error(invoke(["--ckpt", tiny_checkpoint, "-o", stranger, "--force"]), "not a tbps bundle")
    assert (stranger / "keep.txt").read_text() == "mine"
    (stranger / MANIFEST_FILE).write_text('{"name": "a web app"}')  # somebody else's manifest.json
    assert_user_error(invoke(["--ckpt", tiny_checkpoint, "-o", stranger, "--force"]), "not a tbps bundle")
    assert (stranger / "keep.txt").read_text() == "mine"


def test_force_replaces_a_bundle(exported_bundle, tiny_checkpoint, tmp_path, fast_export):
    output = tmp_path / "b"
    shutil.copytree(exported_bundle, output)
    (output / "stale.plan").write_bytes(b"old")
    result = invoke(["--ckpt", tiny_checkpoint, "-o", output, "--force"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(output)
    assert not (output / "stale.plan").exists()
    verify_files(output, load_manifest(output))
    assert_nothing_left(tmp_path, "b")


def test_failed_parity_fails_the_export(tiny_checkpoint, tmp_path, fast_export):
    output = tmp_path / "strict"
    with pytest.raises(ParityError) as caught:
        export_bundle(tiny_checkpoint, output, atol=0.0)
    message = str(caught.value)
    assert "image_tower" in message and "text_tower" in message and "max abs difference" in message
    assert not output.exists()
    assert_nothing_left(tmp_path, "strict")
    assert_user_error(invoke(["--ckpt", tiny_checkpoint, "-o", output, "--atol", 0]), "max abs difference")
    assert not output.exists()


def test_parity_sessions_run_with_the_thread_count(exported_bundle):
    """tbps export --threads N reaches the onnxruntime sessions that check the graphs."""
    session = cpu_session(exported_bundle / IMAGE_TOWER.onnx_file, threads=1)
    assert session.get_session_options().intra_op_num_threads == 1


def test_perturbed_graph_fails_parity(exported_bundle, tiny_checkpoint, tmp_path, monkeypatch):
    def perturbed(spec, model, path):  # one weight of the exported image graph nudged by 1e-2
        graph = onnx.load(str(exported_bundle / spec.onnx_file))
        if spec == IMAGE_TOWER:
            weight = max(graph.graph.initializer, key=lambda t: onnx.numpy_helper.to_array(t).size)
            array = onnx.numpy_helper.to_array(weight) + np.float32(1e-2)
            weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
        onnx.save(graph, str(path))
        return path

    monkeypatch.setattr(bundle_writer, "export_tower", perturbed)
    with pytest.raises(ParityError, match=r"image_tower, random images, batch 1: max abs difference") as caught:
        export_bundle(tiny_checkpoint, tmp_path / "p")
    assert "text_tower" not in str(caught.value)
    assert not (tmp_path / "p").exists()


def test_trt_without_tensorrt_leaves_a_valid_onnx_bundle(tiny_checkpoint, tmp_path, fast_export):
    if unavailable_reason() is None:
        pytest.skip("TensorRT and a CUDA GPU are present: tests/test_tensorrt.py covers --trt")
    output = tmp_path / "t"
    assert_user_error(invoke(["--ckpt", tiny_checkpoint, "-o", output, "--trt"]), "TensorRT", str(output))
    manifest = load_manifest(output)
    verify_files(output, manifest)
    assert manifest.tensorrt == {} and not list(output.glob("*.plan"))
    with pytest.raises(ExportError, match="TensorRT"):
        export_bundle(tiny_checkpoint, output, force=True, trt=True, fp16=True)
    verify_files(output, load_manifest(output))


def test_bad_options_fail_before_any_work(tiny_checkpoint, tmp_path):
    output = tmp_path / "o"
    assert_user_error(invoke(["--ckpt", tiny_checkpoint, "-o", output, "--fp16"]), "--trt")
    assert_user_error(invoke(["--ckpt", tiny_checkpoint, "-o", output, "--trt", "--trt-seq", "1,8,999"]),
                      "max text length")
    assert_user_error(invoke(["--ckpt", tiny_checkpoint, "-o", output, "--trt", "--trt-batch", "8,4,32"]),
                      "min <= opt <= max")
    with pytest.raises(ConfigError, match="unknown export option"):
        export_bundle(tiny_checkpoint, output, batch=4)
    assert not output.exists()


# ---- TensorRT preparation that runs without TensorRT ----------------------------

def test_trt_profiles_come_from_the_contract(model):
    options = TrtOptions(batch=(1, 4, 16))
    profiles = options.resolve(model.config.max_text_length)
    assert profiles["sequence"] == (1, 32, model.config.max_text_length)
    height, width = model.config.image_size
    sizes = {"height": height, "width": width}
    assert profile_shapes(IMAGE_TOWER, sizes, profiles) == {
        PIXELS.name: [[1, 3, height, width], [4, 3, height, width], [16, 3, height, width]]}
    text = profile_shapes(TEXT_TOWER, sizes, profiles)
    assert text[IDS.name] == text[MASK.name] == [[1, 1], [4, 32], [16, model.config.max_text_length]]
    assert TrtOptions(sequence=(4, 64, None)).resolve(16)["sequence"] == (4, 16, 16)
    assert ExportOptions.from_kwargs({"trt_seq": None}).trt_seq == (1, 32, None)


def test_fp16_graph_keeps_float32_io_and_stays_close(exported_bundle, model, tokenizer, tmp_path):
    height, width = model.config.image_size
    pixels = np.random.default_rng(0).standard_normal((3, 3, height, width), np.float32)
    feeds = {IMAGE_TOWER.name: {PIXELS.name: pixels},
             TEXT_TOWER.name: dict(zip((IDS.name, MASK.name), tokenize(tokenizer, [*CAPTIONS, LONG_CAPTION])))}
    for spec in TOWERS:
        converted = to_mixed_precision(exported_bundle / spec.onnx_file, tmp_path / f"{spec.name}.fp16.onnx")
        graph = onnx.load(str(converted)).graph
        io_types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
        assert io_types == {t.name: onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
                            for t in [*spec.inputs, *spec.outputs]}
        initializer_types = {t.data_type for t in graph.initializer}
        assert onnx.TensorProto.FLOAT16 in initializer_types  # the weights really are FP16
        kept = {n.op_type for n in graph.node if n.op_type in ("Softmax", "LayerNormalization")}
        for node in graph.node:  # softmax/normalisation read float32 (a Cast to FLOAT feeds them)
            if node.op_type in kept:
                assert _produced_dtype(graph, node.input[0]) != onnx.TensorProto.FLOAT16, node.name
        reference = session(exported_bundle, spec).run(None, feeds[spec.name])[0]
        got = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"]).run(None, feeds[spec.name])[0]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, reference, atol=5e-3, rtol=0)
        assert (got * reference).sum(-1).min() > 0.999
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT's build replaced by a "plan" naming the graph it was built from, and
    its runner by onnxruntime on that graph: the orchestration around the real
    builder (FP16 conversion, profiles, parity, manifest, files) runs for real.
    Returns the operator domains of each graph an engine was built from."""
    built: dict[str, set[str]] = {}

    def build_engine(source, spec, shapes, options, plan_path):
        built[spec.name] = {node.domain for node in onnx.load(str(source)).graph.node}
        plan_path.write_bytes(str(source).encode())
        return {"file": plan_path.name, "precision": options.precision, "tensorrt_version": "fake",
                "gpu": "none", "compute_capability": "0.0",
                "profile": {name: dict(zip(("min", "opt", "max"), levels)) for name, levels in shapes.items()}}

    monkeypatch.setattr(trt_build, "unavailable_reason", lambda device=0: None)
    monkeypatch.setattr(trt_build, "build_engine", build_engine)
    monkeypatch.setattr(trt_build, "EngineRunner", lambda plan, device=0: onnx_runner(plan.decode()))
    return built


def test_engines_are_checked_and_recorded(tiny_checkpoint, tmp_path, fast_export, fake_tensorrt):
    output = export_bundle(tiny_checkpoint, tmp_path / "e", trt=True, fp16=True, trt_batch=(1, 2, 4),
                           trt_seq=(1, 8, None))
    manifest = load_manifest(output)
    verify_files(output, manifest)
    for spec in TOWERS:
        entry = manifest.tensorrt[spec.name]
        assert entry["precision"] == "fp16" and spec.plan_file in manifest.files
        assert manifest.towers[spec.name]["plan"] == spec.plan_file
        assert 0 < entry["parity"]["max_abs_diff"] <= 2e-2 and entry["parity"]["min_cosine"] > 0.999
        assert all(int(c["input"].split("batch ")[-1]) <= 4 for c in entry["parity"]["cases"]
                   if "batch " in c["input"])  # only the inputs inside the (1, 2, 4) profile
    assert manifest.tensorrt[TEXT_TOWER.name]["profile"][MASK.name]["max"] == [4, manifest.max_text_length]
    # Engines come from the unfused graphs: TensorRT has no onnxruntime contrib ops (the bundle's text graph has).
    assert set(fake_tensorrt) == {spec.name for spec in TOWERS}
    assert all("com.microsoft" not in domains for domains in fake_tensorrt.values())
    assert "com.microsoft" in {n.domain for n in onnx.load(str(output / TEXT_TOWER.onnx_file)).graph.node}


def test_an_engine_out_of_tolerance_leaves_the_onnx_bundle(tiny_checkpoint, tmp_path, fast_export,
                                                          fake_tensorrt, monkeypatch):
    def drifting(plan, device=0):
        run = onnx_runner(plan.decode())
        return lambda inputs: run(inputs) + np.float32(0.1)

    monkeypatch.setattr(trt_build, "EngineRunner", drifting)
    output = tmp_path / "drift"
    with pytest.raises(ExportError, match="the fp32 engine does not reproduce onnxruntime"):
        export_bundle(tiny_checkpoint, output, trt=True)
    manifest = load_manifest(output)
    verify_files(output, manifest)
    assert manifest.tensorrt == {} and not list(output.glob("*.plan"))


def _produced_dtype(graph, name):
    for node in graph.node:
        if name in node.output and node.op_type == "Cast":
            return next(a.i for a in node.attribute if a.name == "to")
    return None


def test_manifest_json_is_plain(exported_bundle):
    data = json.loads((exported_bundle / MANIFEST_FILE).read_text())
    assert data["format"] == "tbps-bundle" and isinstance(data["parity"]["image_tower"]["cases"], list)


def test_the_text_tower_is_fused_and_the_manifest_says_how(exported_bundle, model):
    """One Attention per BERT layer, two SkipLayerNormalizations and one BiasGelu per layer, the
    decoder's cross-attention as MultiHeadAttention; the parity figures above are the fused graph's."""
    manifest = load_manifest(exported_bundle)
    layers = model.text_backbone.config.num_hidden_layers
    text = manifest.towers[TEXT_TOWER.name]["fusions"]
    assert text["offline"] == {"Attention": layers, "MultiHeadAttention": 1,
                               "SkipLayerNormalization": 2 * layers, "BiasGelu": layers}
    for spec in TOWERS:
        fusions = manifest.towers[spec.name]["fusions"]
        assert fused_op_counts(exported_bundle / spec.onnx_file) == fusions["offline"]
        assert fusions["at_load_cpu"] == cpu_model()
    # onnxruntime folds the image tower's activations into its convolutions when it loads the graph.
    image = manifest.towers[IMAGE_TOWER.name]["fusions"]["at_load"]
    assert image.get("Conv", 0) < 0 and image.get("Relu", image.get("Clip", 0)) < 0
