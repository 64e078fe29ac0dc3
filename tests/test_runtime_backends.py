"""Backends and bundle loading: onnxruntime options and provider fallback, TensorRT through fakes
(and for real where a GPU and TensorRT exist), checksums, thread safety."""

import importlib.util
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from runtime_fakes import COLOURS, add_fake_plans, make_fake_bundle, solid_image

from tbps_runtime.atomic import sha256_file
from tbps_runtime.climessages import in_flags
from tbps_runtime.contract import IMAGE_TOWER, MANIFEST_FILE, TEXT_TOWER
from tbps_runtime.errors import BundleError, ConfigError, InputFileNotFoundError
from tbps_runtime.model.backends import CPU_PROVIDER, OnnxRuntimeBackend
from tbps_runtime.model.bundle import load_manifest, write_manifest
from tbps_runtime.model.tensorrt import TensorRTBackend, check_engine_compatible, compute_capability
from tbps_runtime.search import PersonSearch


@pytest.fixture()
def own_bundle(tmp_path):
    return make_fake_bundle(tmp_path / "bundle")


def image_feeds(batch=3, seed=0):
    (spec,) = IMAGE_TOWER.inputs
    return {spec.name: np.random.default_rng(seed).normal(size=(batch, 3, 16, 8)).astype(np.float32)}


# --- onnxruntime -----------------------------------------------------------------------------------


def test_onnxruntime_options_and_output(fake_bundle):
    backend = OnnxRuntimeBackend(fake_bundle, load_manifest(fake_bundle), threads=2)
    assert backend.options.intra_op_num_threads == 2
    assert backend.options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    out = backend.run(IMAGE_TOWER, image_feeds())
    assert out.shape == (3, 3, 4) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1, atol=1e-6)
    assert backend.session(IMAGE_TOWER) is backend.session(IMAGE_TOWER)  # created once
    with pytest.raises(ValueError, match="takes inputs"):
        backend.run(TEXT_TOWER, image_feeds())


def test_spin_waiting_can_be_turned_off_for_processes_with_other_busy_threads(fake_bundle):
    """tbps ingest decodes video on a thread beside the towers: its sessions never spin-wait."""
    entry = "session.intra_op.allow_spinning"
    quiet = OnnxRuntimeBackend(fake_bundle, load_manifest(fake_bundle), threads=2, spinning=False)
    assert quiet.options.get_session_config_entry(entry) == "0"
    pinned = OnnxRuntimeBackend(fake_bundle, load_manifest(fake_bundle), threads=2)  # --threads: onnxruntime's default
    with pytest.raises(RuntimeError, match="does not have configuration"):  # onnxruntime's default: spin
        pinned.options.get_session_config_entry(entry)


def test_a_person_search_does_not_spin_wait_unless_asked(fake_bundle):
    """PersonSearch ranks with numpy right after the text tower: spinning threads would take its cores
    (docs/benchmarks/query_latency.md). None hands the choice back to the thread policy."""
    from tbps_runtime.search import PersonSearch

    entry = "session.intra_op.allow_spinning"
    assert PersonSearch.from_bundle(fake_bundle, threads=2).backend.options.get_session_config_entry(entry) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # pinned threads, policy: spin
        PersonSearch.from_bundle(fake_bundle, threads=2, spinning=None).backend.options.get_session_config_entry(entry)


def test_unavailable_provider_is_refused(fake_bundle):
    with pytest.raises(ConfigError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        OnnxRuntimeBackend(fake_bundle, load_manifest(fake_bundle), providers=["CUDAExecutionProvider", CPU_PROVIDER])


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_silent_cpu_fallback_is_refused(fake_bundle, monkeypatch):
    # onnxruntime-gpu without a working CUDA lists the CUDA provider, then runs the session on the CPU.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", CPU_PROVIDER])
    backend = OnnxRuntimeBackend(fake_bundle, load_manifest(fake_bundle), providers=["CUDAExecutionProvider", CPU_PROVIDER])
    with pytest.raises(ConfigError, match="fell back to CPUExecutionProvider"):
        backend.run(IMAGE_TOWER, image_feeds())


def test_unloadable_or_foreign_onnx_is_refused(own_bundle):
    manifest = load_manifest(own_bundle)
    shutil.copy(own_bundle / TEXT_TOWER.onnx_file, own_bundle / IMAGE_TOWER.onnx_file)  # wrong inputs
    with pytest.raises(BundleError, match="takes inputs.*re-export"):
        OnnxRuntimeBackend(own_bundle, manifest).run(IMAGE_TOWER, image_feeds())
    (own_bundle / IMAGE_TOWER.onnx_file).write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="cannot load"):
        OnnxRuntimeBackend(own_bundle, manifest).run(IMAGE_TOWER, image_feeds())


# --- loading a bundle ------------------------------------------------------------------------------


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / IMAGE_TOWER.onnx_file).write_bytes((b / IMAGE_TOWER.onnx_file).read_bytes() + b"\0"),
     "was modified"),
    (lambda b: (b / TEXT_TOWER.onnx_file).unlink(), "bundle file missing"),
    (lambda b: (b / "tokenizer.json").write_text("{}"), "was modified"),
    (lambda b: (b / MANIFEST_FILE).unlink(), "not a tbps bundle"),
    (lambda b: (b / MANIFEST_FILE).write_text("{"), "not valid JSON"),
])
def test_damaged_bundles_are_refused(own_bundle, damage, message):
    damage(own_bundle)
    with pytest.raises(BundleError, match=message):
        PersonSearch.from_bundle(own_bundle)


def test_missing_bundle_and_unknown_backend(tmp_path, fake_bundle):
    with pytest.raises(InputFileNotFoundError):
        PersonSearch.from_bundle(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unknown backend"):
        PersonSearch.from_bundle(fake_bundle, backend="pytorch")
    with pytest.raises(ConfigError, match="threads"):
        PersonSearch.from_bundle(fake_bundle, threads=0)


def test_preprocessing_the_runtime_does_not_implement_is_refused(own_bundle):
    manifest = load_manifest(own_bundle)
    manifest.resample = "bicubic"
    write_manifest(own_bundle, manifest)
    with pytest.raises(BundleError, match="resample='bicubic'"):
        PersonSearch.from_bundle(own_bundle)


def test_embedding_from_several_threads_matches_serial(fake_bundle, tmp_path):
    search = PersonSearch.from_bundle(fake_bundle, threads=1)
    images = [solid_image(tmp_path / f"{c}.png", c) for c in COLOURS]
    texts = [f"a person in {c}" for c in COLOURS] * 3
    serial_images, serial_texts = search.embed_images(images), search.embed_texts(texts)
    fresh = PersonSearch.from_bundle(fake_bundle, threads=1)  # sessions created lazily, concurrently
    with ThreadPoolExecutor(8) as pool:
        image_runs = [pool.submit(fresh.embed_images, images) for _ in range(8)]
        text_runs = [pool.submit(fresh.embed_texts, texts) for _ in range(8)]
        for run in image_runs:
            np.testing.assert_array_equal(run.result(), serial_images)
        for run in text_runs:
            np.testing.assert_array_equal(run.result(), serial_texts)


def test_the_encoders_primitives_make_what_the_api_makes(fake_bundle, tmp_path):
    from tbps_runtime import Encoder

    encoder = Encoder.from_bundle(fake_bundle, threads=1)
    search = PersonSearch(encoder)
    images = [solid_image(tmp_path / f"{c}.png", c) for c in ("red", "blue")]
    positions, pixels, failures = encoder.read_batch([images[0], tmp_path / "gone.png", images[1]])
    assert positions == [0, 2] and pixels.shape == (2, 16, 8, 3) and list(failures) == [1]
    np.testing.assert_array_equal(encoder.embed_pixels(pixels), search.embed_images(images))
    assert encoder.empty().shape == (0, *encoder.slot_shape) == (0, 3, 4)
    input_ids, mask = encoder.tokenize(["red coat", "a person in blue"])
    assert input_ids.shape == mask.shape == (2, 6)
    assert encoder.tokens(input_ids[0, :int(mask[0].sum())]) == ["[CLS]", "red", "coat", "[SEP]"]


# --- TensorRT: the backend's calls against fake tensorrt and cuda-python modules -----------------------


def test_tensorrt_backend_runs_the_name_based_api_and_matches_onnxruntime(own_bundle, fake_gpu, tmp_path):
    engines = fake_gpu().engines
    add_fake_plans(own_bundle)
    trt_search = PersonSearch.from_bundle(own_bundle, backend="tensorrt")
    assert isinstance(trt_search.backend, TensorRTBackend)
    ort_search = PersonSearch.from_bundle(own_bundle)
    images = [solid_image(tmp_path / f"{c}.png", c) for c in COLOURS]  # 6 images: 3 runs of the max batch 2
    texts = ["red", "a person in a blue coat", "yellow 🙂 shirt", "green"] * 2
    np.testing.assert_allclose(trt_search.embed_images(images), ort_search.embed_images(images), atol=1e-6)
    np.testing.assert_allclose(trt_search.embed_texts(texts), ort_search.embed_texts(texts), atol=1e-6)
    image_engine, text_engine = engines
    assert [r["pixel_values"][0] for r in image_engine.runs] == [2, 2, 2]
    assert [r["input_ids"][0] for r in text_engine.runs] == [2, 2, 2, 2]
    trt_search.backend.close()


@pytest.mark.parametrize("machine, message", [
    ({"version": "10.8.0.43"}, "TensorRT 10.7.0.23, this machine has 10.8.0.43"),
    ({"gpu": "NVIDIA A10", "capability": (8, 6)}, "compute capability 9.0, this GPU has 8.6"),
    ({"gpu": "NVIDIA H200"}, "GPU 'NVIDIA H100 80GB HBM3', this one is 'NVIDIA H200'"),
])
def test_tensorrt_refuses_engines_built_elsewhere(own_bundle, fake_gpu, machine, message):
    fake_gpu(**machine)
    add_fake_plans(own_bundle)
    with pytest.raises(BundleError) as error:
        PersonSearch.from_bundle(own_bundle, backend="tensorrt")
    assert message in str(error.value) and "build the engines again on this machine" in str(error.value)
    assert error.value.code == "tensorrt_engine_unusable" and "--" not in str(error.value)
    assert message in in_flags(error.value) and "tbps export --ckpt m.pt --trt" in in_flags(error.value)


def test_tensorrt_without_plans_or_without_tensorrt(own_bundle, fake_gpu):
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(ConfigError, match=r"needs TensorRT and cuda-python \(pip install 'tbps\[trt\]'\)"):
            PersonSearch.from_bundle(add_fake_plans(own_bundle), backend="tensorrt")
    fake_gpu()
    manifest = load_manifest(own_bundle)
    manifest.tensorrt = {}
    write_manifest(own_bundle, manifest)
    with pytest.raises(BundleError, match="no TensorRT engine for image_tower.*onnxruntime backend") as error:
        PersonSearch.from_bundle(own_bundle, backend="tensorrt")
    assert error.value.code == "tensorrt_engine_missing" and "--trt" in in_flags(error.value)


def test_tensorrt_undeserializable_plan_and_checksums(own_bundle, fake_gpu):
    fake_gpu()
    add_fake_plans(own_bundle)
    (own_bundle / IMAGE_TOWER.plan_file).write_bytes(b"incompatible")
    with pytest.raises(BundleError, match="image_tower.plan was modified"):
        PersonSearch.from_bundle(own_bundle, backend="tensorrt")
    manifest = load_manifest(own_bundle)
    manifest.files[IMAGE_TOWER.plan_file] = sha256_file(own_bundle / IMAGE_TOWER.plan_file)
    write_manifest(own_bundle, manifest)
    search = PersonSearch.from_bundle(own_bundle, backend="tensorrt")
    with pytest.raises(BundleError, match="could not deserialize"):
        search.embed_images([np.zeros((16, 8, 3), np.uint8)])


def test_engine_compatibility_rules():
    entry = {"tensorrt_version": "10.7.0.23", "gpu": "NVIDIA A10", "compute_capability": [8, 6]}
    check_engine_compatible(entry, "x.plan", "10.7.0.23", "NVIDIA A10 ", (8, 6))
    with pytest.raises(BundleError, match="compute capability unknown"):
        check_engine_compatible({**entry, "compute_capability": None}, "x.plan", "10.7.0.23", "NVIDIA A10", (8, 6))
    assert compute_capability("8.6") == compute_capability([8, 6]) == compute_capability("sm_86") == (8, 6)
    assert compute_capability(120) == (12, 0) and compute_capability("12.0") == (12, 0)


# --- TensorRT for real: only where a GPU and TensorRT exist ---------------------------------------------


def _real_gpu_reason():
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'tbps[trt]' on a machine with an NVIDIA GPU)"
    if importlib.util.find_spec("cuda") is None:
        return "cuda-python is not installed"
    try:
        from tbps_runtime.model.tensorrt import CudaRuntime, import_tensorrt

        CudaRuntime(import_tensorrt()[1]).device(0)
    except Exception as e:  # no driver, no device
        return f"no usable CUDA GPU: {e}"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_real_gpu_reason() is not None, reason=str(_real_gpu_reason()))
def test_real_tensorrt_engines_match_onnxruntime(tiny_checkpoint, synth_root, tmp_path):
    from tbps_export import export_bundle
    from tbps_train.data.readers import read_split

    bundle = export_bundle(tiny_checkpoint, tmp_path / "trt.bundle", trt=True)
    records = read_split("cuhk-pedes", synth_root, "test")[:7]
    trt_search = PersonSearch.from_bundle(bundle, backend="tensorrt")
    ort_search = PersonSearch.from_bundle(bundle)
    images = [r.image_path for r in records]
    texts = [r.captions[0] for r in records]
    atol = 1e-2 if load_manifest(bundle).tensorrt[IMAGE_TOWER.name]["precision"] == "fp16" else 1e-3
    np.testing.assert_allclose(trt_search.embed_images(images), ort_search.embed_images(images), atol=atol)
    np.testing.assert_allclose(trt_search.embed_texts(texts), ort_search.embed_texts(texts), atol=atol)
