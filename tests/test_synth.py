"""The synthetic LOCO-like generator: API, determinism, rule-faithful ground truth, and realism bound."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from detectors.data.synth import (
    CATEGORIES,
    LOGICAL_TYPES,
    STRUCTURAL_TYPES,
    SynthError,
    SynthGenerator,
    full_size,
    generate_dataset,
)

TINY = 0.12  # fast enough to render every anomaly type of every category in a few seconds


@pytest.mark.parametrize("category", CATEGORIES)
def test_good_sample_contract(category):
    gen = SynthGenerator(category, seed=1, scale=TINY)
    s = gen.sample(0)
    w, h = gen.size
    assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (h, w) and s.mask.dtype == bool and not s.mask.any()
    assert s.part_map.shape == (h, w) and s.part_map.dtype == np.uint8
    assert s.part_map.max() <= len(s.part_names)
    assert s.label == "good" and s.anomaly_type is None and s.reason.endswith(".")
    # every named part except possibly a hidden one is visible in the part map
    present = {s.part_names[i - 1] for i in np.unique(s.part_map) if i}
    assert present >= {n for n, c in s.part_counts.items() if c > 0 and n in s.part_names}


def test_full_sizes_match_loco():
    assert full_size("breakfast_box") == (1600, 1280)
    assert full_size("juice_bottle") == (800, 1600)
    assert full_size("pushpins") == (1700, 1000)
    assert full_size("screw_bag") == (1600, 1100)
    assert full_size("splicing_connectors") == (1700, 850)
    assert SynthGenerator("juice_bottle", scale=0.5).size == (400, 800)


def test_good_samples_follow_the_rule_packs():
    for i in range(3):
        bb = SynthGenerator("breakfast_box", seed=2, scale=TINY).sample(i).part_counts
        assert (bb["orange"], bb["nectarine"], bb["granola"]) == (2, 1, 1) and bb["almond"] > 5
        sb = SynthGenerator("screw_bag", seed=2, scale=TINY).sample(i)
        assert (sb.part_counts["screw"], sb.part_counts["nut"], sb.part_counts["washer"]) == (2, 2, 2)
        long_, short = sb.facts["screw_lengths"]
        assert long_ > 1.25 * short
        pp = SynthGenerator("pushpins", seed=2, scale=TINY).sample(i).part_counts
        assert pp["pushpin"] == 15 and pp["wall"] == 22
        sc = SynthGenerator("splicing_connectors", seed=2, scale=TINY).sample(i)
        assert sc.part_counts["connector"] == 2 and sc.part_counts["cable"] == 1
        assert sc.facts["clamps_left"] == sc.facts["clamps_right"] in (2, 3, 5)
        assert sc.facts["cable_color"] == {2: "yellow", 3: "blue", 5: "red"}[sc.facts["clamps_left"]]
        assert sc.facts["cable_row_left"] == sc.facts["cable_row_right"]
        jb = SynthGenerator("juice_bottle", seed=2, scale=TINY).sample(i)
        assert jb.facts["juice_color"] == {"orange": "orange", "cherry": "red", "banana": "white-yellow"}[jb.facts["fruit"]]


def test_deterministic_and_order_independent():
    a = SynthGenerator("screw_bag", seed=5, scale=TINY)
    b = SynthGenerator("screw_bag", seed=5, scale=TINY)
    first = a.sample(3, "logical", "missing_nut")
    b.sample(0)
    b.sample(7, "structural")
    second = b.sample(3, "logical", "missing_nut")
    assert np.array_equal(first.image, second.image)
    assert np.array_equal(first.mask, second.mask) and np.array_equal(first.part_map, second.part_map)
    assert first.reason == second.reason and first.part_counts == second.part_counts
    assert not np.array_equal(a.sample(4).image, a.sample(5).image)
    assert not np.array_equal(a.sample(4).image, SynthGenerator("screw_bag", seed=6, scale=TINY).sample(4).image)


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_anomaly_type_has_mask_reason_and_label(category):
    gen = SynthGenerator(category, seed=3, scale=TINY)
    good_counts = gen.sample(0).part_counts
    for kind, types in (("logical", LOGICAL_TYPES[category]), ("structural", STRUCTURAL_TYPES)):
        for t in types:
            s = gen.sample(1, kind, t)
            assert s.label == kind and s.anomaly_type == t
            assert s.mask.any(), f"{category}/{t} has an empty mask"
            assert s.mask.mean() < 0.8, f"{category}/{t} mask covers nearly the whole image"
            assert s.reason.endswith(".") and len(s.reason.split()) >= 5 and s.reason.count(". ") == 0
            if t.startswith("missing_") and category in ("screw_bag", "pushpins"):
                part = {"separator": "wall"}.get(t.removeprefix("missing_"), t.removeprefix("missing_"))
                assert s.part_counts[part] == good_counts[part] - 1
            if t.startswith("extra_") and category in ("screw_bag", "pushpins"):
                part = t.removeprefix("extra_")
                assert s.part_counts[part] == good_counts[part] + 1


def test_default_anomaly_type_cycles_through_types():
    gen = SynthGenerator("pushpins", seed=0, scale=TINY)
    seen = [gen.sample(i, "logical").anomaly_type for i in range(len(LOGICAL_TYPES["pushpins"]))]
    assert seen == list(LOGICAL_TYPES["pushpins"])


def _components(sample, part: str) -> int:
    idx = sample.part_names.index(part) + 1
    _, n = ndimage.label(sample.part_map == idx)
    return n


def test_a_parser_can_solve_the_logical_anomalies():
    """Counting parts in the part map, measuring lengths and reading colours reveals the anomaly."""
    gen = SynthGenerator("pushpins", seed=4, scale=0.25)
    assert _components(gen.sample(0), "pushpin") == 15
    assert _components(gen.sample(0, "logical", "missing_pushpin"), "pushpin") == 14

    gen = SynthGenerator("splicing_connectors", seed=4, scale=0.25)
    assert _components(gen.sample(0), "cable") == 1
    assert _components(gen.sample(0, "logical", "cable_cut"), "cable") == 2
    assert _components(gen.sample(0, "logical", "missing_cable"), "cable") == 0
    for i in range(3):  # the cable's colour is readable from its pixels
        s = gen.sample(i, "logical", "cable_color_mismatch")
        cable = s.image[s.part_map == s.part_names.index("cable") + 1].astype(float).mean(axis=0)
        expected = {"yellow": (226, 196, 36), "blue": (36, 86, 192), "red": (200, 34, 34)}[s.facts["cable_color"]]
        others = [c for n, c in {"yellow": (226, 196, 36), "blue": (36, 86, 192), "red": (200, 34, 34)}.items()
                  if n != s.facts["cable_color"]]
        hue = cable / cable.sum()
        dist = lambda c: np.abs(hue - np.asarray(c) / sum(c)).sum()
        assert dist(expected) < min(dist(c) for c in others)

    gen = SynthGenerator("juice_bottle", seed=4, scale=0.25)
    juice = lambda s: (s.part_map == s.part_names.index("juice") + 1).sum()
    normal = [juice(gen.sample(i)) for i in range(3)]
    assert juice(gen.sample(0, "logical", "underfilled")) < 0.85 * min(normal)
    assert juice(gen.sample(0, "logical", "overfilled")) > 1.03 * max(normal)


def _naive_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thumb = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    hist = np.concatenate([np.histogram(image[..., c], bins=16, range=(0, 256))[0] for c in range(3)]).astype(np.float32)
    return thumb.ravel(), hist / hist.sum() * 3.0


def test_naive_baseline_cannot_solve_logical_anomalies():
    """Nearest neighbour on a 32x32 thumbnail plus a colour histogram, fitted on train/good.

    Normal variation (pose, placement, colour, lighting) must be as large as what a logical
    anomaly changes globally, so this baseline stays well below a useful detector.
    """
    from sklearn.metrics import roc_auc_score

    n, aurocs = 8, {}
    for category in CATEGORIES:
        gen = SynthGenerator(category, seed=11, scale=0.2)
        train = [_naive_features(gen.sample(i).image) for i in range(n)]
        thumbs = np.stack([t for t, _ in train])
        hists = np.stack([h for _, h in train])

        def score(f):
            d_thumb = np.linalg.norm(thumbs - f[0], axis=1) / np.sqrt(thumbs.shape[1])
            d_hist = np.abs(hists - f[1]).sum(axis=1)
            return float(np.min(d_thumb + 0.5 * d_hist))

        good = [score(_naive_features(gen.sample(1000 + i).image)) for i in range(n)]
        bad = [score(_naive_features(gen.sample(i, "logical").image)) for i in range(n)]
        aurocs[category] = roc_auc_score([0] * n + [1] * n, good + bad)
    mean = float(np.mean(list(aurocs.values())))
    assert mean < 0.75, f"naive baseline logical AUROC {mean:.3f} >= 0.75: {aurocs}"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: SynthGenerator("cereal_box"), "Unknown category 'cereal_box'. Known categories: breakfast_box"),
        (lambda: SynthGenerator("pushpins", scale=5), "scale must be between 0.05 and 2.0, got 5"),
        (lambda: SynthGenerator("pushpins", seed=-1), "seed must be a non-negative integer, got -1"),
        (lambda: SynthGenerator("pushpins").sample(0, "weird"), "Unknown kind 'weird'"),
        (lambda: SynthGenerator("pushpins").sample(-2), "index must be a non-negative integer, got -2"),
        (lambda: SynthGenerator("pushpins").sample(0, "logical", "cut_cable"),
         "Unknown logical anomaly type 'cut_cable' for pushpins. Known: missing_pushpin"),
        (lambda: SynthGenerator("pushpins").sample(0, "good", "missing_pushpin"),
         "A good sample has no anomaly type, got 'missing_pushpin'"),
    ],
)
def test_bad_arguments_are_explained(call, message):
    with pytest.raises(SynthError) as err:
        call()
    assert message in str(err.value)


def test_generate_dataset_writes_loco_layout(tmp_path):
    summary = generate_dataset(tmp_path / "out", seed=2, categories="pushpins,juice_bottle", per_split=2, scale=0.1)
    assert summary["images"] == 20 and set(summary["categories"]) == {"pushpins", "juice_bottle"}
    root = tmp_path / "out" / "pushpins"
    for folder in ("train/good", "validation/good", "test/good", "test/logical_anomalies", "test/structural_anomalies"):
        assert sorted(p.name for p in (root / folder).iterdir()) == ["000.png", "001.png"]
    assert (root / "ground_truth/logical_anomalies/001/000.png").is_file()
    mask = np.asarray(Image.open(root / "ground_truth/structural_anomalies/000/000.png"))
    image = np.asarray(Image.open(root / "test/structural_anomalies/000.png"))
    assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 255} and mask.any()
    labels = [json.loads(line) for line in (root / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 6 and {r["label"] for r in labels} == {"good", "logical", "structural"}
    meta = [json.loads(line) for line in (root / "meta.jsonl").read_text().splitlines()]
    assert len(meta) == 10 and all("part_counts" in r for r in meta)
    assert "Each of the 15 compartments" in (root / "rules.yaml").read_text()
    # deterministic: a second run writes byte-identical images
    generate_dataset(tmp_path / "again", seed=2, categories=["pushpins"], per_split=2, scale=0.1)
    assert (root / "test/logical_anomalies/001.png").read_bytes() == (
        tmp_path / "again/pushpins/test/logical_anomalies/001.png").read_bytes()


def test_generate_dataset_bad_input(tmp_path):
    with pytest.raises(SynthError, match="per_split must be a positive integer, got 0"):
        generate_dataset(tmp_path, per_split=0)
    with pytest.raises(SynthError, match="Unknown category 'bottles'"):
        generate_dataset(tmp_path, categories="bottles")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SynthError, match="exists and is not a directory"):
        generate_dataset(tmp_path / "file", per_split=1)


def test_module_command_line(tmp_path, capsys):
    from detectors.data.synth import main

    assert main([str(tmp_path / "cli"), "--seed", "1", "--categories", "screw_bag", "--per-split", "1", "--scale", "0.08"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 5 and (tmp_path / "cli/screw_bag/test/logical_anomalies/000.png").is_file()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "cli2"), "--categories", "screws"])
    assert "Unknown category 'screws'" in capsys.readouterr().err


def test_rendering_speed_regression_guard():
    """Budget: 0.3 s per image at half LOCO resolution. CPU time (not wall time, which other
    processes inflate), with a 2x margin so that a busy machine does not fail the test."""
    import time

    cpu = []
    for category in CATEGORIES:
        gen = SynthGenerator(category, seed=0, scale=0.5)
        gen.sample(99)  # warm-up
        start = time.process_time()
        gen.sample(0, "logical")
        cpu.append(time.process_time() - start)
    assert float(np.mean(cpu)) < 0.6, f"CPU seconds per image at scale 0.5: {dict(zip(CATEGORIES, cpu))}"
