"""CLIP detectors on a tiny random-weight open_clip ViT (offline, CPU, fast)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from detectors import AnomalyResult, Detector, NotFittedError
from detectors.clip import (
    AdaCLIP, CLIPModelError, CLIPPartLabeler, CLIPWeightsUnavailable, InCTRL, TrainingSample, WinCLIP,
    anomaly_folder_samples, compose_prompts, load_clip, prompt_ensemble, random_clip_config, select_device,
    select_dtype,
)
from detectors.clip import loading
from detectors.clip.features import tap_blocks, window_indices, window_to_patch_mean
from detectors.clip.prompts import ANOMALOUS_STATES, NORMAL_STATES, TEMPLATES, class_name_from
from detectors.schema import Component, Part, Scene

IMAGE = 64  # 4 x 4 token grid with patch 16
CONFIG = random_clip_config(image_size=IMAGE, vision_width=48, vision_layers=4, text_width=32, text_layers=2)


@pytest.fixture(scope="module")
def clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_clip("tiny-test", model_config=CONFIG, random_init=True, device="cpu")


def texture(seed: int, size=(IMAGE, IMAGE)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((*size, 3)) * 255).astype(np.uint8)


def planted(image: np.ndarray, y: int, x: int, side: int = 16) -> np.ndarray:
    out = image.copy()
    out[y : y + side, x : x + side] = 255 - out[y : y + side, x : x + side]
    return out


# -- prompts -------------------------------------------------------------------------------
def test_prompt_ensemble_is_states_times_templates_with_the_class_name():
    normal, anomalous = prompt_ensemble("screw bag")
    assert len(normal) == len(NORMAL_STATES) * len(TEMPLATES) == 7 * 21
    assert len(anomalous) == len(ANOMALOUS_STATES) * len(TEMPLATES)
    assert "a photo of a flawless screw bag." in normal
    assert "a cropped photo of the damaged screw bag." in anomalous
    assert all("screw bag" in s for s in normal + anomalous)
    assert not set(normal) & set(anomalous)
    assert compose_prompts("nut", ["{} x"], ["<{}>"]) == ["<nut x>"]
    with pytest.raises(ValueError, match="class name is empty"):
        compose_prompts("  ")


def test_class_name_comes_from_the_rules_category():
    from prompts.rules import NormalityRules

    rules = NormalityRules.from_strings(["two screws"], category="screw_bag")
    assert class_name_from(None, rules) == "screw bag"
    assert class_name_from("juice-bottle") == "juice bottle"


# -- device, dtype and loading ---------------------------------------------------------------
def test_device_and_dtype_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loading, "_mps_available", lambda: False)
    assert select_device() == torch.device("cpu")
    assert select_dtype(torch.device("cpu")) == torch.float32
    with pytest.raises(CLIPModelError, match="CUDA is not available"):
        select_device("cuda")
    monkeypatch.setattr(loading, "_mps_available", lambda: True)
    assert select_device() == torch.device("mps")
    assert select_dtype(torch.device("mps")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert select_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert select_dtype(torch.device("cuda")) == torch.float16
    assert select_dtype(torch.device("cuda"), "fp32") == torch.float32
    with pytest.raises(CLIPModelError, match="precision must be"):
        select_dtype(torch.device("cpu"), "int8")


def test_pretrained_tag_is_attempted_and_fails_offline_with_a_clear_error(monkeypatch, tmp_path):
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempted = []
    real = loading.resolve_pretrained
    monkeypatch.setattr(loading, "resolve_pretrained", lambda *a, **k: attempted.append(a) or real(*a, **k))
    # offline means no connection is even tried, so nothing can hang on the network; counted
    # rather than timed, since a cold import of open_clip alone takes seconds on a busy machine
    connections = []
    real_lookup, real_connect = socket.getaddrinfo, socket.socket.connect
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: connections.append(host)
                        or real_lookup(host, *a, **k))
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: connections.append(address)
                        or real_connect(self, address))
    with pytest.raises(CLIPWeightsUnavailable) as info:
        load_clip("ViT-B-16-plus-240", "laion400m_e32", cache_dir=str(tmp_path), device="cpu")
    assert connections == []
    assert attempted == [("ViT-B-16-plus-240", "laion400m_e32", str(tmp_path))]
    message = str(info.value)
    assert "not available offline" in message
    assert "huggingface-cli download timm/vit_base_patch16_plus_clip_240.laion400m_e31" in message
    assert "vit_b_16_plus_240-laion400m_e32" in message  # the direct URL's file name
    assert "pretrained='/path/to/checkpoint.pt'" in message


def test_bad_weight_sources_give_clear_errors(tmp_path):
    with pytest.raises(CLIPWeightsUnavailable, match="does not exist"):
        load_clip("ViT-B-16", checkpoint=tmp_path / "missing.pt", device="cpu")
    with pytest.raises(CLIPModelError, match="no pretrained tag 'nope'.*known tags"):
        load_clip("ViT-B-16", "nope", device="cpu")
    with pytest.raises(CLIPModelError, match="exactly one of"):
        load_clip("ViT-B-16", device="cpu")
    with pytest.raises(CLIPModelError, match="unknown open_clip model"):
        load_clip("ViT-Q-99", random_init=True, device="cpu")


def test_openai_weights_get_the_quick_gelu_they_were_trained_with(monkeypatch):
    import open_clip

    import detectors.clip.loading as loading

    assert loading._needs_quick_gelu("ViT-L-14-336", "openai")  # AdaCLIP's default
    assert not loading._needs_quick_gelu("ViT-L-14-336-quickgelu", "openai")  # its config has it
    assert not loading._needs_quick_gelu("ViT-B-16-plus-240", "laion400m_e32")  # WinCLIP's: plain GELU
    assert not loading._needs_quick_gelu("ViT-L-14-336", None)
    seen = {}

    def capture(name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("captured")

    monkeypatch.setattr(loading, "resolve_pretrained", lambda *a, **k: "/weights/from/the/hub/cache.bin")
    monkeypatch.setattr(open_clip, "create_model", capture)
    with pytest.raises(RuntimeError, match="captured"):
        load_clip("ViT-L-14-336", "openai", device="cpu")
    assert seen["force_quick_gelu"] is True


def test_local_checkpoint_and_injected_model_load_the_same_weights(clip, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(clip.model.state_dict(), path)
    from_file = load_clip("tiny-test", model_config=CONFIG, checkpoint=path, device="cpu", seed=123)
    injected = load_clip("ViT-B-16", model=clip.model, tokenizer=clip.tokenizer, device="cpu")
    batch, _ = clip.to_tensor([texture(0)])
    with torch.no_grad():
        expected = clip.model.encode_image(batch)
        assert torch.allclose(from_file.model.encode_image(batch), expected, atol=1e-5)
        assert torch.allclose(injected.model.encode_image(batch), expected)
    assert from_file.name.endswith("tiny.pt")


def test_truncated_text_encoding_is_exact(clip):
    from detectors.clip.loading import encode_text_truncated

    tokens = clip.tokenize(["a photo of a flawless screw bag.", "nut"])
    with torch.no_grad():
        full, short = clip.model.encode_text(tokens), encode_text_truncated(clip.model, tokens)
    assert torch.allclose(full, short, atol=1e-5)


# -- feature plumbing -----------------------------------------------------------------------
def test_windows_and_harmonic_aggregation():
    windows = window_indices((4, 4), 2)
    assert windows.shape == (9, 4)
    assert windows[0].tolist() == [0, 1, 4, 5] and windows[-1].tolist() == [10, 11, 14, 15]
    values = torch.arange(1, 10, dtype=torch.float32)[None]  # one value per window
    harmonic = window_to_patch_mean(values, windows, 16, harmonic=True)
    arithmetic = window_to_patch_mean(values, windows, 16)
    # patch 5 is covered by windows 0, 1, 3, 4 (values 1, 2, 4, 5)
    assert harmonic[0, 5].item() == pytest.approx(4 / (1 + 1 / 2 + 1 / 4 + 1 / 5))
    assert arithmetic[0, 5].item() == pytest.approx(3.0)
    assert harmonic[0, 0].item() == pytest.approx(1.0)  # corner: only window 0
    with pytest.raises(ValueError, match="does not fit"):
        window_indices((2, 2), 3)


def test_tapping_handles_sequence_first_blocks():
    class Block(torch.nn.Module):
        def forward(self, x):
            return x * 2

    visual = torch.nn.Module()
    visual.transformer = torch.nn.Module()
    visual.transformer.batch_first = False
    visual.transformer.resblocks = torch.nn.ModuleList([Block(), Block()])
    seq_first = torch.randn(5, 3, 8)  # (L, N, D)
    with tap_blocks(visual, [1]) as captured:
        visual.transformer.resblocks[1](seq_first)
    assert captured[1].shape == (3, 5, 8)
    assert torch.equal(captured[1], (seq_first * 2).transpose(0, 1))


# -- WinCLIP --------------------------------------------------------------------------------
def test_winclip_zero_shot_maps_have_image_shape_range_and_are_deterministic(clip):
    detector = WinCLIP(clip, class_name="screw bag").fit([])
    assert isinstance(detector, Detector)
    image = texture(1, size=(48, 80))  # non-square, not the model's size
    first, second = detector.score(image), detector.score(image)
    assert isinstance(first, AnomalyResult) and first.detector == "winclip"
    assert first.anomaly_map.shape == (48, 80) and first.anomaly_map.dtype == np.float32
    assert 0.0 <= first.anomaly_map.min() and first.anomaly_map.max() <= 1.0
    assert 0.0 <= first.score <= 1.0
    assert np.array_equal(first.anomaly_map, second.anomaly_map) and first.score == second.score
    y, x = np.unravel_index(np.argmax(first.anomaly_map), first.anomaly_map.shape)
    assert first.peak_xy == (x, y)


def test_winclip_few_shot_identical_query_scores_lowest(clip):
    reference = texture(2)
    detector = WinCLIP(clip, class_name="pushpins").fit([reference, texture(3)])
    identical = detector.score(reference)
    others = [detector.score(planted(reference, 16, 16)), detector.score(texture(4))]
    assert all(identical.score < other.score for other in others)
    emb = detector._embed(clip.to_tensor([reference])[0])
    assert detector.few_shot_map(emb).max().item() < 1e-5


def test_planted_anomaly_peaks_where_it_was_planted(clip):
    reference = texture(5)
    query = planted(reference, y=32, x=16)  # token (row 2, col 1)
    for detector in (WinCLIP(clip, map_sigma=0.0), InCTRL(clip, map_sigma=0.0)):
        result = detector.fit([reference]).score(query)
        x, y = result.peak_xy
        assert 16 <= x < 32 and 32 <= y < 48, (detector.name, result.peak_xy)


def test_batched_scoring_matches_one_by_one(clip):
    detector = WinCLIP(clip, batch_size=2).fit([texture(6)])
    images = [texture(7), texture(8), planted(texture(6), 0, 0)]
    batched = detector.score_many(images)
    single = [detector.score(im) for im in images]
    assert len(batched) == 3
    for a, b in zip(batched, single):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)


# -- InCTRL ---------------------------------------------------------------------------------
def test_inctrl_needs_references_and_scores_identical_query_lowest(clip):
    detector = InCTRL(clip, class_name="breakfast box")
    with pytest.raises(NotFittedError, match="before fit"):
        detector.score(texture(9))
    with pytest.raises(NotFittedError, match="at least one normal reference"):
        detector.fit([])
    reference = texture(9)
    detector.fit([reference])
    identical, changed = detector.score(reference), detector.score(planted(reference, 0, 32))
    assert identical.anomaly_map.max() < 1e-5
    assert identical.score < changed.score
    assert 0.0 <= changed.score <= 1.0
    with pytest.raises(ValueError, match="block indices in 0..3"):
        InCTRL(clip, layers=[7])


def test_inctrl_adapter_trains_and_its_head_round_trips(clip, tmp_path):
    normal = [texture(s) for s in (10, 11, 12)]
    anomalous = [planted(texture(s), 16, 16, side=32) for s in (13, 14, 15)]
    detector = InCTRL(clip).fit(normal[:1])
    history = detector.train(normal + anomalous, [0, 0, 0, 1, 1, 1], normal, epochs=30, lr=5e-3)
    assert history[-1] < history[0]
    detector.save_head(tmp_path / "head.safetensors")
    fresh = InCTRL(clip).fit(normal[:1]).load_head(tmp_path / "head.safetensors")
    assert fresh.score(anomalous[0]).score == pytest.approx(detector.score(anomalous[0]).score, abs=1e-6)
    with pytest.raises(ValueError, match="as many labels as images"):
        detector.train(normal, [0], normal)


# -- AdaCLIP --------------------------------------------------------------------------------
def toy_samples(n: int = 6) -> list[TrainingSample]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        image = (rng.random((IMAGE, IMAGE, 3)) * 90).astype(np.uint8)
        mask = None
        if i % 2:
            y, x = (int(v) * 16 for v in rng.integers(0, 3, 2))
            image[y : y + 16, x : x + 16] = 250
            mask = np.zeros((IMAGE, IMAGE), bool)
            mask[y : y + 16, x : x + 16] = True
        samples.append(TrainingSample(image=image, mask=mask, class_name="toy"))
    return samples


def test_adaclip_training_reduces_loss_and_prompts_round_trip(clip, tmp_path):
    detector = AdaCLIP(clip, prompt_depth=2, prompt_length=3, class_name="toy")
    samples = toy_samples()
    before = detector.score(samples[1].image)
    assert before.anomaly_map.shape == (IMAGE, IMAGE) and 0 <= before.score <= 1
    history = detector.train(samples, epochs=4, batch_size=6, lr=2e-2)
    assert len(history) == 4 and min(history[1:]) < history[0]
    assert not any(p.requires_grad for p in clip.model.parameters())  # CLIP stayed frozen
    after = detector.score(samples[1].image)
    path = tmp_path / "prompts.safetensors"
    detector.save(path)
    from safetensors.torch import load_file

    saved = load_file(str(path))
    assert set(saved) == set(detector.prompts.state_dict())  # prompt parameters only
    assert sum(v.numel() for v in saved.values()) < sum(p.numel() for p in clip.model.parameters())
    loaded = AdaCLIP.load(path, clip=clip, class_name="toy")
    again = loaded.score(samples[1].image)
    assert again.score == pytest.approx(after.score, abs=1e-6)
    np.testing.assert_allclose(again.anomaly_map, after.anomaly_map, atol=1e-6)
    with pytest.raises(ValueError, match="trained with depth=2"):
        AdaCLIP(clip, prompt_depth=1, prompt_length=3).load_prompts(path)


def test_adaclip_reads_loco_and_mvtec_layouts(tmp_path):
    from PIL import Image

    cat = tmp_path / "screw_bag"
    for rel in ("train/good/000.png", "test/logical_anomalies/001.png", "test/structural_anomalies/002.png"):
        (cat / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(0, (32, 32))).save(cat / rel)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:8, 4:8] = 255
    (cat / "ground_truth/logical_anomalies/001").mkdir(parents=True)
    Image.fromarray(mask).save(cat / "ground_truth/logical_anomalies/001/000.png")  # LOCO
    (cat / "ground_truth/structural_anomalies").mkdir(parents=True)
    Image.fromarray(mask.T.copy()).save(cat / "ground_truth/structural_anomalies/002_mask.png")  # MVTec AD
    samples = anomaly_folder_samples(tmp_path)
    assert [s.is_anomalous for s in samples] == [0, 1, 1]
    assert samples[1].mask.sum() == 16 and samples[2].mask[4:8, 4:8].all()
    assert {s.class_name for s in samples} == {"screw bag"}
    (cat / "ground_truth/structural_anomalies/002_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="no ground-truth mask.*002"):
        anomaly_folder_samples(cat)


# -- part labelling -------------------------------------------------------------------------
def _scene(width: int, height: int) -> Scene:
    def comp(i, part, bbox):
        x0, y0, x1, y1 = bbox
        return Component(
            id=i, part=part, area=float((x1 - x0) * (y1 - y0)), area_frac=0.1, centroid=((x0 + x1) / 2, (y0 + y1) / 2),
            centroid_rel=(0.5, 0.5), bbox=bbox, orientation=0.0, major_axis=10, minor_axis=5,
            color_rgb=(200, 120, 0), color_name="orange", horizontal="left", vertical="top",
        )

    parts = [Part(id=p, description="d", color_name="orange", count=1, total_area=100.0) for p in ("p1", "p2", "p3")]
    comps = [comp(0, "p1", (0, 0, 20, 20)), comp(1, "p1", (40, 40, 60, 60)), comp(2, "p2", (40, 40, 60, 60))]
    seg = np.zeros((height, width), np.int32)
    seg[0:20, 0:20] = 1
    seg[40:60, 40:60] = 2
    return Scene(image_size=(width, height), product_bbox=(0, 0, width, height), parts=parts, components=comps,
                 segmentation=seg)


def test_part_labeler_names_every_part_with_components(clip):
    image = texture(20, size=(64, 80))
    scene = _scene(80, 64)
    labeler = CLIPPartLabeler(clip, use_masks=False)
    labels = ["an orange", "a washer", "a blue cable"]
    named = labeler.label(image, scene, labels)
    assert set(named) == {"p1", "p2"}  # p3 has no components
    for label, probability in named.values():
        assert label in labels and 1 / len(labels) <= probability <= 1.0
    scores = labeler.scores(image, scene, labels)
    # p1 is the area-weighted mean of its crops; the second crop is p2's crop
    crops = [labeler._crop(np.asarray(image), c, 1, None) for c in scene.components]
    batch, _ = clip.to_tensor(crops)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(clip.model.encode_image(batch).float(), dim=-1)
        probs = (clip.logit_scale * emb @ labeler.label_embeddings(labels).T).softmax(-1).numpy()
    np.testing.assert_allclose(scores["p1"], probs[:2].mean(0), atol=1e-5)
    np.testing.assert_allclose(scores["p2"], probs[2], atol=1e-5)
    # with masks, pixels of other parts inside a crop are greyed out (p2 covers p1's second box)
    masked = CLIPPartLabeler(clip, use_masks=True, margin=0.0)._crop(np.asarray(image), scene.components[1], 1,
                                                                      scene.segmentation)
    assert masked.shape == (20, 20, 3) and (masked == 127).all()
    with pytest.raises(ValueError, match="non-empty list"):
        labeler.label(image, scene, [])
    with pytest.raises(ValueError, match="parsed at 80x64"):
        labeler.label(texture(0), scene, labels)


def test_adaclip_trains_from_the_synthetic_generator_folder(clip, tmp_path):
    synth = pytest.importorskip("detectors.data.synth", reason="the synthetic generator is not available")
    synth.generate_dataset(tmp_path, categories=["screw_bag"], per_split=1, scale=0.1)
    detector = AdaCLIP(clip, prompt_depth=1, prompt_length=2)
    history = detector.train(tmp_path, epochs=1, batch_size=5, max_steps=1)
    assert len(history) == 1 and np.isfinite(history[0])


# -- the shared tool interface ---------------------------------------------------------------
def test_clip_detectors_are_langchain_tools(clip, tmp_path):
    tools_module = pytest.importorskip("detectors.tools", reason="detectors.tools is not available")
    from PIL import Image

    path = tmp_path / "query.png"
    Image.fromarray(planted(texture(30), 16, 16)).save(path)
    reference = texture(30)
    detectors = [WinCLIP(clip).fit([reference]), InCTRL(clip).fit([reference]),
                 AdaCLIP(clip, prompt_depth=1, prompt_length=2).fit([])]
    tools = tools_module.detector_tools(clip_detectors=detectors)
    assert [t.name for t in tools] == ["winclip_score", "inctrl_score", "adaclip_score"]
    for tool, detector in zip(tools, detectors):
        output = tool.invoke({"image_path": str(path)})
        assert output["detector"] == detector.name
        assert output["score"] == pytest.approx(detector.score(path).score, abs=1e-6)
        assert output["image_size"] == [IMAGE, IMAGE] or tuple(output["image_size"]) == (IMAGE, IMAGE)


def test_part_labeler_names_parts_for_the_scene_parser_hook(clip):
    from prompts.rules import load_rules

    labeler = CLIPPartLabeler.from_rules(load_rules(category="screw_bag"), clip)
    assert labeler.labels[:3] == ["screw", "nut", "washer"]
    same = texture(40, size=(24, 24))
    names = labeler.name_parts({"p1": [same], "p2": [same, same], "p3": []})
    assert set(names) == {"p1", "p2"} and names["p1"] == names["p2"] and names["p1"] in labeler.labels
    probs = labeler.crop_probabilities([same], labeler.labels)[0]
    assert names["p1"] == labeler.labels[int(np.argmax(probs))]
    with pytest.raises(ValueError, match="no candidate labels"):
        CLIPPartLabeler(clip).name_parts({"p1": [same]})



def test_part_labeler_with_masks_on_a_real_parse_larger_than_the_parser_size(clip):
    from detectors.data.synth import SynthGenerator
    from detectors.parsing import SceneParser

    gen = SynthGenerator("screw_bag", seed=2, scale=0.3)  # 480x330, parsed at 160 px
    parser = SceneParser(backbone=None, image_size=160).fit([gen.sample(i).image for i in range(2)])
    image = gen.sample(5).image
    scene = parser.parse(image)
    assert scene.segmentation.shape != image.shape[:2]
    named = CLIPPartLabeler(clip, use_masks=True).label(image, scene, ["a screw", "a nut", "a washer"])
    assert named and set(named) <= {p.id for p in scene.parts}
