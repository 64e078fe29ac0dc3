"""A hand-made bundle for the runtime tests: tiny valid ONNX towers, a word-level tokenizer, a manifest.

The towers make retrieval predictable. The image tower maps an image's mean
normalised colour c (3,) to c @ W, split into K slots of d; the text tower sums
the rows of an embedding table that holds c_word @ W for each colour word. So
the query "red" scores K (a cosine of 1 in every slot) against a solid red
image, whatever the random W.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from tbps_runtime.bundle import Manifest, sha256_file, write_manifest
from tbps_runtime.contract import EMBEDDINGS, IMAGE_TOWER, OPSET, TEXT_TOWER, TOKENIZER_FILE
from tbps_runtime.images import IMAGENET_MEAN, IMAGENET_STD

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255),
           "black": (0, 0, 0), "yellow": (255, 255, 0)}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
OTHER_WORDS = ["a", "person", "in", "wearing", "coat", "shirt"]
IMAGE_SIZE = (16, 8)
MAX_LENGTH = 12


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
