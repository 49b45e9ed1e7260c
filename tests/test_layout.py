"""LayoutDetector: each region against the same region of the references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detectors import LayoutDetector, NotFittedError, PatchCore
from detectors.layout import torch_model as tm

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SIZE = 160  # small network input: the whole file runs in seconds
SLOTS = ((40, 40, (220, 120, 30)), (40, 120, (220, 120, 30)), (130, 80, (120, 60, 20)))  # x, y, colour


def tray(seed: int, skip: int | None = None, move: tuple[int, int] | None = None) -> np.ndarray:
    """A 'product' with a fixed arrangement: a light tray with three round parts in slots,
    a few pixels of jitter and sensor noise. ``skip`` leaves a slot empty; ``move`` puts the
    last part elsewhere."""
    rng = np.random.default_rng(seed)
    h, w = 160, 200
    img = np.full((h, w, 3), (200, 200, 190), np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    dx, dy = rng.integers(-3, 4, 2)
    for i, (x, y, colour) in enumerate(SLOTS):
        if i == skip:
            continue
        if move is not None and i == len(SLOTS) - 1:
            x, y = move
        img[(xx - x - dx) ** 2 + (yy - y - dy) ** 2 <= 22 ** 2] = colour
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def references() -> list[np.ndarray]:
    return [tray(s) for s in range(4)]


@pytest.fixture(scope="module")
def fitted(references) -> LayoutDetector:
    return LayoutDetector(image_size=SIZE, window=1).fit(references)


# -- numerical core ----------------------------------------------------------------------

def test_positional_distances_match_brute_force():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(8, 5, 6, generator=g), dim=0)
    refs = [torch.nn.functional.normalize(torch.randn(8, 5, 6, generator=g), dim=0) for _ in range(2)]
    got = tm.positional_distances(q, refs, window=1)
    for y in range(5):
        for x in range(6):
            best = min(float(((q[:, y, x] - r[:, yy, xx]) ** 2).sum())
                       for r in refs for yy in range(max(0, y - 1), min(5, y + 2))
                       for xx in range(max(0, x - 1), min(6, x + 2)))
            assert got[y, x] == pytest.approx(best, abs=1e-5)


def test_a_shift_within_the_window_is_no_difference():
    g = torch.Generator().manual_seed(1)
    ref = torch.nn.functional.normalize(torch.randn(4, 8, 8, generator=g), dim=0)
    shifted = torch.roll(ref, shifts=1, dims=2)
    assert tm.positional_distances(shifted, [ref], window=1)[:, 1:].max() < 1e-6
    assert tm.positional_distances(shifted, [ref], window=0)[:, 1:].max() > 0.1
    assert tm.top_mean(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), 0.5) == pytest.approx(2.5)


def test_what_the_query_lacks_is_seen_only_when_looking_from_the_references():
    """A part that lies at another place in each reference (a cable's route) and is missing
    from the query: every query cell shows background that some reference shows there too."""
    background, part = torch.zeros(4), torch.zeros(4)
    background[0], part[1] = 1.0, 1.0

    def grid(*part_at: tuple[int, int]) -> torch.Tensor:
        g = background[:, None, None].repeat(1, 8, 8)
        for y, x in part_at:
            g[:, y, x] = part
        return g

    references = [grid((1, 1)), grid((6, 6))]
    lacking = grid()
    assert tm.positional_distances(lacking, references, window=1).max() == 0.0
    raw, where = tm.missing_distances(lacking, references, window=1, fraction=0.05)
    assert raw > 0.5 and where.shape == (8, 8) and where.max() == pytest.approx(2.0)
    # a query that shows the part on one of the references' routes lacks nothing
    for route in ((1, 1), (6, 6)):
        assert tm.missing_distances(grid(route), references, window=1, fraction=0.05)[0] == 0.0


# -- detector ----------------------------------------------------------------------------

def test_a_missing_part_is_seen_where_it_is_missing(fitted):
    normal = fitted.score(tray(10))
    missing = fitted.score(tray(11, skip=0))
    assert normal.score < 0.5 < missing.score
    x, y = missing.peak_xy
    assert abs(x - SLOTS[0][0]) <= 30 and abs(y - SLOTS[0][1]) <= 30
    assert missing.anomaly_map.shape == (160, 200)
    assert 0.0 <= float(missing.anomaly_map.min()) and float(missing.anomaly_map.max()) <= 1.0


def test_a_moved_part_is_a_layout_anomaly_that_patchcore_accepts(references, fitted):
    """The reason this detector exists: every patch of a moved part exists somewhere in the
    references, so a position-free memory bank sees nothing wrong."""
    moved = tray(12, move=(150, 130))
    assert fitted.score(moved).score > 0.5
    patchcore = PatchCore(image_size=SIZE).fit(references)
    assert fitted.score(moved).score > patchcore.score(moved).score


def board(seed: int, cable: bool = True) -> np.ndarray:
    """Two connectors and a thin cable between them, on one of two routes."""
    rng = np.random.default_rng(seed)
    img = np.full((160, 200, 3), (200, 200, 190), np.float64)
    dy = rng.integers(-3, 4)
    for x in (30, 170):
        img[60 + dy:100 + dy, x - 12:x + 12] = (60, 90, 160)
    if cable:
        y = (50, 110)[seed % 2] + dy
        img[y - 2:y + 2, 42:158] = (40, 40, 40)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_a_missing_cable_is_seen_by_the_missing_direction():
    references = [board(s) for s in range(4)]
    both = LayoutDetector(image_size=SIZE, window=1).fit(references)
    query_only = LayoutDetector(image_size=SIZE, window=1, missing=False).fit(references)
    assert both.missing and both.get_params()["missing_top_fraction"] == pytest.approx(0.03)
    assert max(both.score(board(s)).score for s in range(20, 26)) < 0.5
    for s in range(30, 33):
        lacking = board(s, cable=False)
        assert both.score(lacking).score > 0.9
        assert both.score(lacking).score >= query_only.score(lacking).score
    # the peak lies on the cable's span between the connectors
    assert 42 <= both.score(board(30, cable=False)).peak_xy[0] <= 158


def test_normal_images_score_below_the_threshold(fitted):
    assert max(fitted.score(tray(s)).score for s in range(20, 26)) < 0.5


def test_single_reference_is_enough(references):
    det = LayoutDetector(image_size=SIZE, window=1).fit(references[:1])
    assert det.score(tray(13, skip=2)).score > det.score(tray(14)).score


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path):
    fitted.save(tmp_path / "layout")
    again = LayoutDetector.load(tmp_path / "layout")
    img = tray(15, skip=1)
    assert again.score(img).score == pytest.approx(fitted.score(img).score, abs=1e-6)
    assert again.get_params() == fitted.get_params()
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError, match="not a saved LayoutDetector"):
        LayoutDetector.load(tmp_path / "other")
    # a state without the missing direction's calibration is refused, not scored half-way
    state = torch.load(tmp_path / "layout" / "state.pt", weights_only=True)
    del state["loo_missing"]
    torch.save(state, tmp_path / "layout" / "state.pt")
    with pytest.raises(ValueError, match="fit the detector again"):
        LayoutDetector.load(tmp_path / "layout")


def test_shared_features_give_the_same_result(fitted):
    img = tray(16, skip=0)
    req = fitted.feature_request()
    features = fitted.backbone.extract(img, size=req["size"], layers=req["layers"])
    assert fitted.score(features=features).score == pytest.approx(fitted.score(img).score, abs=1e-6)


def test_bad_arguments_and_inputs_are_refused(references):
    with pytest.raises(NotFittedError, match="call fit"):
        LayoutDetector(image_size=SIZE).score(references[0])
    with pytest.raises(ValueError, match="unknown layer"):
        LayoutDetector(layer="block99")
    with pytest.raises(ValueError, match="window"):
        LayoutDetector(window=-1)
    with pytest.raises(ValueError, match="missing_top_fraction"):
        LayoutDetector(missing_top_fraction=0)
    with pytest.raises(ValueError, match="at least 1 normal reference"):
        LayoutDetector(image_size=SIZE).fit([])
    with pytest.raises(TypeError, match="list of reference images"):
        LayoutDetector(image_size=SIZE).fit(references[0])


@pytest.mark.skipif(not (SHARED / "loco" / "juice_bottle").is_dir(),
                    reason="real MVTec LOCO images not found: ../shared/loco/juice_bottle is absent")
def test_real_juice_bottle_logical_anomalies_score_higher_than_normal_bottles():
    root = SHARED / "loco" / "juice_bottle"
    train = sorted((root / "train" / "good").glob("*.png"))
    bad = sorted((root / "test" / "logical_anomalies").glob("*.png"))
    det = LayoutDetector(image_size=320).fit(train[:4])
    good = [det.score(p).score for p in train[4:10]]
    anomalous = [det.score(p).score for p in bad[:6]]
    # ranks: most anomalies above most normal bottles (AUROC of this small slice)
    pairs = [a > g for a in anomalous for g in good]
    assert sum(pairs) / len(pairs) >= 0.75
