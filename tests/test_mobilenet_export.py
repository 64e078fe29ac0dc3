"""MobileNetV2, the edge backbone: trained from its packaged ImageNet weights, exported with parity, int8."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tbps_export import export_bundle
from tbps_export.quantize import INT8_MIN_COSINE, quantize_bundle
from tbps_runtime.atomic import sha256_file
from tbps_runtime.contract import PARITY_ATOL
from tbps_runtime.search import PersonSearch
from tbps_train.backbones import packaged_mobilenet_v2_weights
from tbps_train.checkpoint import load_checkpoint
from tbps_train.config import apply_overrides, load_preset
from tbps_train.data.readers import read_split


@pytest.fixture(scope="module")
def mobilenet_checkpoint(tmp_path_factory, synth_root):
    from tbps_train.train import train

    config = apply_overrides(load_preset("tiny"), "model", image_backbone="mobilenet_v2", image_size=(64, 32))
    config = apply_overrides(config, "train", epochs=1, image_weights="packaged", image_backbone_lr_scale=0.1)
    path = tmp_path_factory.mktemp("mnv2") / "m.pt"
    train(config, "cuhk-pedes", synth_root, path, progress=False, threads=1)  # pinned: rerun below
    return path


def test_checkpoint_records_where_its_image_weights_came_from(mobilenet_checkpoint):
    payload = load_checkpoint(mobilenet_checkpoint)
    source = payload["image_weights"]
    assert source["source"] == "packaged"
    assert source["sha256"] == sha256_file(packaged_mobilenet_v2_weights())
    assert payload["config"]["train"]["image_weights"] == "packaged"


def test_random_init_is_recorded_too(tiny_checkpoint):
    payload = load_checkpoint(tiny_checkpoint)  # the tiny preset: no image_weights, a random init
    assert payload["config"]["train"]["image_weights"] is None
    assert payload["image_weights"] == {"source": None}


def test_mobilenet_bundle_keeps_parity_and_quantizes(mobilenet_checkpoint, synth_root, tmp_path):
    bundle = export_bundle(mobilenet_checkpoint, tmp_path / "m.bundle")  # raises ParityError past the tolerance
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["parity"]["image_tower"]["max_abs_diff"] <= PARITY_ATOL
    crops = [r.image_path for r in read_split("cuhk-pedes", synth_root, "train")][:16]
    int8 = quantize_bundle(bundle, calibration=crops)
    int8_manifest = json.loads((int8 / "manifest.json").read_text())
    assert int8_manifest["parity"]["int8"]["image_tower"]["min_cosine"] >= INT8_MIN_COSINE
    reference, quantized = PersonSearch.from_bundle(bundle), PersonSearch.from_bundle(int8)
    a, b = reference.embed_images(crops[:4]), quantized.embed_images(crops[:4])
    assert a.shape == b.shape == (4, manifest["num_slots"], manifest["embed_dim"])
    cosines = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cosines.min() > 0.8


def test_two_runs_give_identical_weights(mobilenet_checkpoint, tmp_path, synth_root):
    """Training is deterministic on one machine and thread count: the demo backbone's path
    (pretrained, NHWC) included."""
    from tbps_train.train import train

    payload = load_checkpoint(mobilenet_checkpoint)
    from tbps_train.config import RunConfig

    again = tmp_path / "again.pt"
    train(RunConfig.from_dict(payload["config"]), "cuhk-pedes", synth_root, again, progress=False, threads=1)
    second = load_checkpoint(again)["state_dict"]
    assert payload["machine"]["cpu"]  # the figures' machine is recorded with them
    for key, value in payload["state_dict"].items():
        assert torch.equal(second[key], value), key
