"""PatchCore: few-shot structural anomaly maps and calibrated scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detectors import NotFittedError
from detectors.backbones import get_backbone
from detectors.images import ImageInputError
from detectors.patchcore import PatchCore
from detectors.patchcore import torch_model as tm

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFECT_BOX = (100, 60, 124, 80)  # x0, y0, x1, y1 of the pasted defect

SIZE = 128  # small network input: the whole file runs in seconds


def textured(seed: int, h: int = 120, w: int = 160) -> np.ndarray:
    """A normal 'product': a periodic texture with random phase and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 5.0 + rng.uniform(0, 0.6)) * np.cos(yy / 7.0 + rng.uniform(0, 0.6))
    img = np.stack([base, 0.8 * base + 20, 255 - base], -1) + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def with_defect(seed: int) -> np.ndarray:
    """A normal image with a green contamination patch in DEFECT_BOX."""
    img = textured(seed)
    x0, y0, x1, y1 = DEFECT_BOX
    img[y0:y1, x0:x1] = (30, 200, 40)
    return img


@pytest.fixture(scope="module")
def references() -> list[np.ndarray]:
    return [textured(s) for s in range(3)]


@pytest.fixture(scope="module")
def fitted(references) -> PatchCore:
    # the test texture has one orientation (rotated, it is a different texture): no rotated references
    return PatchCore(image_size=SIZE, augment="none").fit(references)


# -- numerical core ----------------------------------------------------------------------

def test_nearest_distances_match_brute_force():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(300, 16, generator=g), torch.randn(200, 16, generator=g)
    expected = torch.cdist(q, bank).min(dim=1).values
    assert torch.allclose(tm.nearest_distances(q, bank, chunk_size=64), expected, atol=1e-4)
    with pytest.raises(ValueError, match="empty"):
        tm.nearest_distances(q, bank[:0])


def test_greedy_coreset_covers_every_cluster():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    points = torch.cat([c + torch.randn(100, 2, generator=g) for c in centers])
    keep = tm.greedy_coreset(points, 4, projection_dim=0)
    assert sorted(int(i) // 100 for i in keep) == [0, 1, 2, 3]
    assert torch.equal(keep, tm.greedy_coreset(points, 4, projection_dim=0))
    assert len(tm.greedy_coreset(points, 1000)) == len(points)


def test_embedding_uses_the_finest_grid_and_normalised_layers():
    maps = {"a": torch.randn(1, 8, 16, 20), "b": torch.randn(1, 4, 8, 10) * 100}
    emb = tm.embed_patches(maps, ["a", "b"], neighbourhood=3)
    assert emb.shape == (1, 12, 16, 20)
    # each layer contributes a unit vector per patch
    assert torch.allclose(emb[:, :8].norm(dim=1), torch.ones(1, 16, 20), atol=1e-5)
    assert torch.allclose(emb[:, 8:].norm(dim=1), torch.ones(1, 16, 20), atol=1e-5)


# -- detector ------------------------------------------------------------------------------

def test_defect_scores_high_and_the_map_peaks_on_it(fitted):
    result = fitted.score(with_defect(10))
    assert result.calibrated and result.detector == "patchcore"
    assert result.score > 0.9
    x0, y0, x1, y1 = DEFECT_BOX
    px, py = result.peak_xy
    assert x0 - 8 <= px < x1 + 8 and y0 - 8 <= py < y1 + 8
    amap = result.anomaly_map
    assert amap.shape == (120, 160) and amap.dtype == np.float32
    assert amap[y0:y1, x0:x1].mean() > 3 * np.median(amap)


def test_normal_images_and_references_score_low(fitted, references):
    for image in [textured(20), textured(21), references[0]]:
        result = fitted.score(image)
        assert result.score < 0.5, result
    normals = [fitted.score(textured(s)).raw_score for s in (30, 31, 32)]
    defects = [fitted.score(with_defect(s)).raw_score for s in (30, 31, 32)]
    assert max(normals) < min(defects)


def test_calibration_range_and_consistency(fitted):
    noise = np.random.default_rng(5).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for image in (noise, textured(40), with_defect(41)):
        result = fitted.score(image)
        assert 0.0 <= result.score <= 1.0
        assert np.all((result.anomaly_map >= 0) & (result.anomaly_map <= 1))
        # the calibrated map at full resolution peaks at about the image score
        assert result.anomaly_map.max() == pytest.approx(result.score, abs=0.05)
    cal = fitted.calibration()
    assert cal["scale"] > 0 and cal["center"] > cal["loo_mean"]
    assert float(fitted.calibrate(cal["center"])) == pytest.approx(0.5)
    assert len(fitted.loo_scores) == 3


def test_single_reference_is_enough(references):
    detector = PatchCore(image_size=SIZE).fit(references[:1])
    assert detector.score(textured(50)).score < 0.5
    assert detector.score(with_defect(50)).score > 0.5


def test_fitting_is_deterministic(references, fitted):
    again = PatchCore(image_size=SIZE, augment="none").fit(references)
    assert torch.equal(again.memory_bank, fitted.memory_bank)
    image = with_defect(60)
    assert again.score(image).score == fitted.score(image).score


def test_memory_bank_is_a_coreset(fitted):
    cfg = fitted.get_params()
    grid_cells = (SIZE // 8) * (SIZE * 120 // 160 // 32 * 32 // 8)  # 16 x 12 patches per image
    assert fitted.memory_bank.shape[0] == int(np.ceil(cfg["coreset_ratio"] * 3 * grid_cells))
    assert fitted.layers == ["block2", "block4", "block10"] and fitted.grid_layer == "block4"
    assert fitted.memory_bank.shape[1] == 24 + 40 + 112


def test_rotation_augmentation_covers_rotated_parts(references):
    # a reference texture rotated by 90 degrees is novel to a plain bank, normal to an augmented one
    rotated = np.ascontiguousarray(np.rot90(textured(95, h=160, w=160)))
    plain = PatchCore(image_size=SIZE, augment="none").fit([textured(s, h=160, w=160) for s in range(2)])
    augmented = PatchCore(image_size=SIZE).fit([textured(s, h=160, w=160) for s in range(2)])
    assert augmented.augment == "rot90"  # the default
    assert augmented.score(rotated).raw_score < plain.score(rotated).raw_score
    # leave-one-out excludes a reference's own rotated copies too
    assert set(augmented.bank_sources.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="augment must be one of"):
        PatchCore(augment="shear")
    with pytest.raises(ValueError, match="needs the reference images"):
        feats = [augmented.backbone.extract(textured(0), size=SIZE, layers=augmented.layers)]
        PatchCore(image_size=SIZE, augment="rot90").fit([], features=feats)


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path):
    fitted.save(tmp_path / "pc")
    config = json.loads((tmp_path / "pc" / "config.json").read_text())
    assert config["params"]["image_size"] == SIZE and config["n_references"] == 3
    loaded = PatchCore.load(tmp_path / "pc")
    image = with_defect(70)
    a, b = fitted.score(image), loaded.score(image)
    assert a.score == b.score and a.raw_score == b.raw_score
    assert np.array_equal(a.anomaly_map, b.anomaly_map)


def test_load_refuses_what_it_did_not_write(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved PatchCore"):
        PatchCore.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "other", "version": 1}))
    (tmp_path / "state.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="expected 'logiscan.patchcore'"):
        PatchCore.load(tmp_path)


def test_load_of_a_damaged_folder_is_a_clear_error(fitted, tmp_path):
    fitted.save(tmp_path / "pc")
    state = tmp_path / "pc" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # a copy cut short
    with pytest.raises(ValueError, match="state.pt cannot be read .*truncated"):
        PatchCore.load(tmp_path / "pc")
    (tmp_path / "pc" / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list"):
        PatchCore.load(tmp_path / "pc")


def test_shared_features_give_the_same_result(fitted):
    image = with_defect(80)
    request = fitted.feature_request()
    features = get_backbone(request["backbone"]).extract(image, size=request["size"], layers=request["layers"])
    assert fitted.score(features=features).score == fitted.score(image).score
    wrong = get_backbone("efficientnet-lite0").extract(image, size=SIZE * 2, layers=request["layers"])
    with pytest.raises(ValueError, match="do not match this detector"):
        fitted.score(features=wrong)
    with pytest.raises(TypeError, match="FeatureMaps"):
        fitted.score(features={"block4": torch.zeros(1)})


def test_not_fitted_error_says_what_to_do():
    with pytest.raises(NotFittedError, match=r"not fitted: call fit\(references\)"):
        PatchCore().score(textured(0))


def test_bad_arguments_and_inputs_are_refused(fitted, references):
    with pytest.raises(ValueError, match="at least 1 normal reference"):
        PatchCore().fit([])
    with pytest.raises(TypeError, match="list of reference images"):
        PatchCore().fit("a/single/path.png")
    with pytest.raises(ValueError, match="at most 2 are used"):
        PatchCore(max_references=2).fit(references)
    with pytest.raises(ValueError, match="unknown or no layers"):
        PatchCore(layers=["block77"])
    with pytest.raises(ValueError, match="grid_layer 'block10' must be one of"):
        PatchCore(layers=["block4"], grid_layer="block10")
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCore(coreset_ratio=0)
    with pytest.raises(ValueError, match="Unknown backbone"):
        PatchCore(backbone="nope")
    with pytest.raises(ImageInputError, match="does not exist"):
        fitted.score("/no/such/image.png")
    with pytest.raises(ImageInputError, match="does not exist"):
        PatchCore(image_size=SIZE).fit([references[0], "/no/such/reference.png"])


@pytest.mark.skipif(not (SHARED / "loco" / "juice_bottle").is_dir(),
                    reason="real MVTec LOCO images not found: ../shared/loco/juice_bottle is absent")
def test_real_juice_bottle_images():
    train = sorted((SHARED / "loco" / "juice_bottle" / "train" / "good").glob("*.png"))
    detector = PatchCore(image_size=SIZE).fit(train[:4])
    result = detector.score(train[5])
    # full-resolution map for an 800 x 1600 photograph
    assert result.anomaly_map.shape == (1600, 800)
    assert 0.0 <= result.score <= 1.0
    # a real bottle with a foreign green patch on its label scores higher than the normal one
    from detectors.images import to_array

    damaged = to_array(train[5]).copy()
    damaged[850:1050, 300:500] = (30, 200, 40)
    hit = detector.score(damaged)
    assert hit.score > 0.5 and hit.score > result.score
    px, py = hit.peak_xy
    assert 250 <= px <= 550 and 800 <= py <= 1100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_backbone_on_the_gpu_matches_the_cpu(references, tmp_path):
    """The backbone runs on the device; the bank, search and calibration stay on the CPU."""
    from detectors.layout import LayoutDetector

    for cls in (PatchCore, LayoutDetector):
        cpu = cls(image_size=SIZE).fit(references)
        gpu = cls(image_size=SIZE, device="cuda").fit(references)
        query = with_defect(7)
        a, b = cpu.score(query), gpu.score(query)
        assert abs(a.score - b.score) < 0.05 and a.anomaly_map.shape == b.anomaly_map.shape
        gpu.save(tmp_path / cls.__name__)
        assert abs(cls.load(tmp_path / cls.__name__, device="cuda").score(query).score - b.score) < 1e-5
