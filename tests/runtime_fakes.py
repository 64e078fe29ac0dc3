"""A hand-made bundle for the runtime tests: tiny valid ONNX towers, a word-level tokenizer, a manifest;
stand-in ``tensorrt``/``cuda`` modules that run "engines" (ONNX bytes) in onnxruntime; and image files
that cannot be read (:func:`write_bad`).

The towers make retrieval predictable. The image tower maps an image's mean
normalised colour c (3,) to c @ W, split into K slots of d; the text tower sums
the rows of an embedding table that holds c_word @ W for each colour word. So
the query "red" scores K (a cosine of 1 in every slot) against a solid red
image, whatever the random W.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import types
from enum import IntEnum
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from tbps_runtime.atomic import sha256_file
from tbps_runtime.contract import EMBEDDINGS, IMAGE_TOWER, OPSET, TEXT_TOWER, TOKENIZER_FILE
from tbps_runtime.model.bundle import Manifest, load_manifest, write_manifest
from tbps_runtime.model.images import IMAGENET_MEAN, IMAGENET_STD

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255),
           "black": (0, 0, 0), "yellow": (255, 255, 0)}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
OTHER_WORDS = ["a", "person", "in", "wearing", "coat", "shirt"]
IMAGE_SIZE = (16, 8)
MAX_LENGTH = 12


def write_bad(tmp_path, kind):
    """An unreadable image file in ``tmp_path`` (beside a readable good.jpg): ``kind`` is corrupt, empty,
    truncated or text."""
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(good)
    path = tmp_path / f"{kind}.jpg"
    data = good.read_bytes()
    path.write_bytes({"corrupt": b"\xff\xd8\xff" + bytes(range(256)) * 4, "empty": b"",
                      "truncated": data[:len(data) // 2], "text": b"this is not an image\n"}[kind])
    return path


def normalised_colour(rgb) -> np.ndarray:
    return (np.asarray(rgb, np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def make_tokenizer() -> Tokenizer:
    vocab = {token: i for i, token in enumerate(SPECIALS + list(COLOURS) + OTHER_WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tokenizer


def _normalize_and_output(nodes, flat: str, slots: int, dim: int):
    nodes += [
        helper.make_node("Reshape", [flat, "slot_shape"], ["slots"]),
        helper.make_node("LpNormalization", ["slots"], [EMBEDDINGS.name], axis=-1, p=2),
    ]
    return numpy_helper.from_array(np.array([-1, slots, dim], np.int64), "slot_shape")


def image_tower(weights: np.ndarray, slots: int, dim: int) -> onnx.ModelProto:
    (pixels,) = IMAGE_TOWER.inputs
    nodes = [helper.make_node("ReduceMean", [pixels.name, "spatial"], ["colour"], keepdims=0),  # (B, 3)
             helper.make_node("MatMul", ["colour", "W"], ["flat"])]  # (B, K*d)
    shape = _normalize_and_output(nodes, "flat", slots, dim)
    graph = helper.make_graph(
        nodes, IMAGE_TOWER.name,
        [helper.make_tensor_value_info(pixels.name, TensorProto.FLOAT, ["batch", 3, *IMAGE_SIZE])],
        [helper.make_tensor_value_info(EMBEDDINGS.name, TensorProto.FLOAT, ["batch", slots, dim])],
        [numpy_helper.from_array(weights.astype(np.float32), "W"),
         numpy_helper.from_array(np.array([2, 3], np.int64), "spatial"), shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def text_tower(table: np.ndarray, slots: int, dim: int) -> onnx.ModelProto:
    ids, mask = TEXT_TOWER.inputs
    nodes = [helper.make_node("Gather", ["E", ids.name], ["words"]),  # (B, L, K*d)
             helper.make_node("Cast", [mask.name], ["mask_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask3"]),  # (B, L, 1)
             helper.make_node("Mul", ["words", "mask3"], ["kept"]),
             helper.make_node("ReduceSum", ["kept", "seq"], ["flat"], keepdims=0)]  # (B, K*d)
    shape = _normalize_and_output(nodes, "flat", slots, dim)
    graph = helper.make_graph(
        nodes, TEXT_TOWER.name,
        [helper.make_tensor_value_info(ids.name, TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info(mask.name, TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info(EMBEDDINGS.name, TensorProto.FLOAT, ["batch", slots, dim])],
        [numpy_helper.from_array(table.astype(np.float32), "E"),
         numpy_helper.from_array(np.array([2], np.int64), "last"),
         numpy_helper.from_array(np.array([1], np.int64), "seq"), shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def make_fake_bundle(directory: Path, seed: int = 0, slots: int = 3, dim: int = 4) -> Path:
    """Write a complete, checksummed bundle into ``directory`` (created) and return it."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(3, slots * dim))  # (3, K*d)
    tokenizer = make_tokenizer()
    table = np.zeros((tokenizer.get_vocab_size(), slots * dim))
    for word, rgb in COLOURS.items():
        table[tokenizer.token_to_id(word)] = normalised_colour(rgb) @ weights
    for word in OTHER_WORDS + ["[UNK]"]:  # small, so colour words dominate
        table[tokenizer.token_to_id(word)] = 1e-3 * rng.normal(size=slots * dim)
    onnx.save(image_tower(weights, slots, dim), directory / IMAGE_TOWER.onnx_file)
    onnx.save(text_tower(table, slots, dim), directory / TEXT_TOWER.onnx_file)
    (directory / TOKENIZER_FILE).write_text(tokenizer.to_str())
    names = [IMAGE_TOWER.onnx_file, TEXT_TOWER.onnx_file, TOKENIZER_FILE]
    files = {name: sha256_file(directory / name) for name in names}
    manifest = Manifest(
        num_slots=slots, num_coarse=1, num_fine=slots - 2, embed_dim=dim,
        slot_names=["global", "coarse_1"] + [f"fine_{i + 1}" for i in range(slots - 2)],
        image_size=list(IMAGE_SIZE), mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        max_text_length=MAX_LENGTH, tokenizer=TOKENIZER_FILE, towers={}, files=files,
        fingerprint=hashlib.sha256("".join(files[n] for n in names[:2]).encode()).hexdigest(), opset=OPSET)
    manifest.towers = {tower.name: manifest.tower_entry(tower) for tower in (IMAGE_TOWER, TEXT_TOWER)}
    write_manifest(directory, manifest)
    return directory


def solid_image(path: Path, colour: str, size=(20, 10), fmt: str | None = None) -> Path:
    """A (H, W) = ``size`` image of one colour, e.g. ``solid_image(p, "red")``."""
    Image.new("RGB", (size[1], size[0]), COLOURS[colour]).save(path, format=fmt)
    return path


# ---- stand-ins for tensorrt and cuda-python: the TensorRT code paths on a machine without either ----------


class _DataType(IntEnum):
    FLOAT = 0
    INT64 = 1


class _Mode(IntEnum):
    INPUT = 0
    OUTPUT = 1


class _Stream:
    """Like cuda-python's cudaStream_t: an object whose int() is the handle."""

    def __int__(self):
        return 12345


class _Memory:
    """Fake device memory: real host buffers, so memcpy is ctypes.memmove."""

    def __init__(self):
        self.blocks = {}

    def malloc(self, nbytes):
        buffer = ctypes.create_string_buffer(nbytes)
        self.blocks[ctypes.addressof(buffer)] = buffer
        return ctypes.addressof(buffer)


class _Context:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        if shape[0] > self.engine.max_batch:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        batch = next(iter(self.shapes.values()))[0]
        return (batch, *self.engine.session.get_outputs()[0].shape[1:])

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer

    def execute_async_v3(self, stream_handle):
        assert isinstance(stream_handle, int)
        feeds = {}
        for name, shape in self.shapes.items():
            dtype = np.float32 if self.engine.get_tensor_dtype(name) == _DataType.FLOAT else np.int64
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            feeds[name] = np.frombuffer(ctypes.string_at(self.addresses[name], nbytes), dtype).reshape(shape)
        (out,) = self.engine.session.run(None, feeds)
        out = np.ascontiguousarray(out, np.float32)
        ctypes.memmove(self.addresses["embeddings"], out.ctypes.data, out.nbytes)
        self.engine.runs.append({k: v.shape for k, v in feeds.items()})
        return True


class _Engine:
    max_batch = 2  # the optimisation profile's largest batch

    def __init__(self, onnx_bytes):
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.io = [i.name for i in self.session.get_inputs()] + ["embeddings"]
        self.runs = []

    num_io_tensors = property(lambda self: len(self.io))

    def get_tensor_name(self, index):
        return self.io[index]

    def get_tensor_mode(self, name):
        return _Mode.OUTPUT if name == "embeddings" else _Mode.INPUT

    def get_tensor_dtype(self, name):
        return _DataType.INT64 if name in ("input_ids", "attention_mask") else _DataType.FLOAT

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 1), (2, 1), (self.max_batch, 64)]

    def create_execution_context(self):
        return _Context(self)


def fake_gpu_modules(version="10.7.0.23", gpu="NVIDIA H100 80GB HBM3", capability=(9, 0)):
    """Stand-in ``tensorrt`` and ``cuda.bindings.runtime`` modules (by ``sys.modules`` name) and a record of
    what the code under test did with them: ``engines`` deserialized, CUDA ``devices`` selected."""
    memory = _Memory()
    record = types.SimpleNamespace(engines=[], devices=[])
    engines = record.engines
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = _Mode
    trt.nptype = lambda dtype: {_DataType.FLOAT: np.float32, _DataType.INT64: np.int64}[dtype]
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            if data == b"incompatible":
                return None
            engines.append(_Engine(data))
            return engines[-1]

    trt.Runtime = Runtime
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorNoDevice": 100})
    rt.cudaMemcpyKind = IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})
    ok = rt.cudaError_t.cudaSuccess
    props = types.SimpleNamespace(name=gpu.encode() + b"\0\0", major=capability[0], minor=capability[1])

    def set_device(device):
        record.devices.append(device)
        return (ok,)

    rt.cudaSetDevice = set_device
    rt.cudaGetDeviceProperties = lambda device: (ok, props)
    rt.cudaGetErrorName = lambda err: (ok, b"cudaErrorNoDevice")
    rt.cudaStreamCreate = lambda: (ok, _Stream())
    rt.cudaStreamSynchronize = rt.cudaStreamDestroy = rt.cudaFree = lambda *args: (ok,)
    rt.cudaMalloc = lambda nbytes: (ok, memory.malloc(nbytes))

    def memcpy(dst, src, nbytes, kind, stream):
        assert isinstance(stream, _Stream)
        ctypes.memmove(dst, src, nbytes)
        return (ok,)

    rt.cudaMemcpyAsync = memcpy
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime, cuda.bindings = rt, bindings
    return {"tensorrt": trt, "cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt}, record


def add_fake_plans(bundle, **facts):
    """Plans that the fake TensorRT 'deserializes' (they are the ONNX bytes), recorded as the exporter does."""
    manifest = load_manifest(bundle)
    for tower in (IMAGE_TOWER, TEXT_TOWER):
        shutil.copy(bundle / tower.onnx_file, bundle / tower.plan_file)
        manifest.files[tower.plan_file] = sha256_file(bundle / tower.plan_file)
        manifest.tensorrt[tower.name] = {"file": tower.plan_file, "precision": "fp32", "tensorrt_version": "10.7.0.23",
                                         "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", **facts}
    write_manifest(bundle, manifest)
    return bundle
