"""Scene parsing on real MVTec LOCO photographs (``../shared/loco``).

Each category is fitted on the normal image(s) available: the case's one normal image plus two
copies shifted by a few pixels (so the composition score has leave-one-out statistics), or for
the juice bottle four of its training images. The assertions are on what the parse reports
(counts, lengths, positions, colours), never on part ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors import load_image
from detectors.parsing import SceneParser

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LOCO = SHARED / "loco"

pytestmark = pytest.mark.skipif(
    not (LOCO / "cases").is_dir(),
    reason=f"real MVTec LOCO images not found at {LOCO} (the shared data folder is absent)",
)


def _shifted(path: Path, dx: int, dy: int) -> np.ndarray:
    arr = np.asarray(load_image(path))
    return np.roll(np.roll(arr, dy, axis=0), dx, axis=1)


def _fit_case(category: str) -> tuple[SceneParser, Path, Path]:
    case = LOCO / "cases" / category
    normal = case / "normal.png"
    refs = [np.asarray(load_image(normal)), _shifted(normal, 6, -4), _shifted(normal, -5, 5)]
    return SceneParser(backbone=None).fit(refs), normal, case / "abnormal.png"


def _elong(c) -> float:
    return c.major_axis / max(c.minor_axis, 1e-6)


@pytest.fixture(scope="module")
def breakfast():
    return _fit_case("breakfast_box")


@pytest.fixture(scope="module")
def screws():
    return _fit_case("screw_bag")


@pytest.fixture(scope="module")
def splicing():
    return _fit_case("splicing_connectors")


@pytest.fixture(scope="module")
def juice():
    train = sorted((LOCO / "juice_bottle" / "train" / "good").glob("*.png"))
    return SceneParser(backbone=None).fit(train[:4]), train[4], LOCO / "cases" / "juice_bottle" / "abnormal.png"


def _fruit(scene):
    """Round, fruit-sized components (1.5-15% of the product each)."""
    return [c for c in scene.components if 0.015 < c.area_frac < 0.15 and _elong(c) < 1.6]


@pytest.mark.parametrize("category", [
    "breakfast_box", "screw_bag",
    pytest.param("splicing_connectors", marks=pytest.mark.xfail(strict=True, reason=(
        "known gap: the parse of the splicing connectors is unstable even under a 5-pixel shift of "
        "the same photograph (leave-one-out raw score 11.4 among the shifted copies), so the edge of "
        "normality lies at 13.8 and the cut cable (8.7) stays inside it"))),
    "juice_bottle",
])
def test_composition_score_separates_normal_and_abnormal_case(category):
    """The rules-free score: each case's abnormal image (swapped sides, two long screws, cut
    cable, overfilled bottle) lies beyond the threshold, its normal image inside it, and the
    report names a concrete deviating quantity."""
    parser, normal, abnormal = _fit_case(category)
    scene_n, scene_a = parser.parse(normal), parser.parse(abnormal)
    assert parser.composition_score(scene_n) < 0.5 < parser.composition_score(scene_a)
    top = parser.composition_report(scene_a, top=1)[0]
    assert top.part in parser.part_ids() and top.z > 3


@pytest.mark.xfail(strict=True, reason="known gap: touching fruits merge into one component in the "
                   "normal image, so three separate fruits are not found on the left")
def test_breakfast_box_three_fruit_left_and_swapped_in_abnormal(breakfast):
    parser, normal, abnormal = breakfast
    left = [c for c in _fruit(parser.parse(normal)) if c.centroid_rel[0] < 0.4]
    assert len(left) == 3, parser.describe_parts()
    assert all(c.horizontal == "left" for c in left)
    swapped = _fruit(parser.parse(abnormal))
    assert len([c for c in swapped if c.centroid_rel[0] > 0.5]) == 3
    assert not [c for c in swapped if c.centroid_rel[0] < 0.4]


@pytest.mark.xfail(strict=True, reason="known gap: the two oranges are parsed into different parts "
                   "(shading splits their colour clusters), and almonds/banana chips are not separated")
def test_breakfast_box_parts_oranges_nectarine_granola_nuts(breakfast):
    parser, normal, abnormal = breakfast
    scene = parser.parse(normal)
    left = [c for c in _fruit(scene) if c.centroid_rel[0] < 0.4]
    parts = sorted([c.part for c in left])
    # two oranges share a part; the nectarine is a different part (other colour)
    assert len(set(parts)) == 2 and max(parts.count(p) for p in parts) == 2
    right = [c for c in scene.components if c.centroid_rel[0] > 0.5]
    top_right = [c for c in right if c.centroid_rel[1] < 0.5 and c.area_frac > 0.08]
    assert top_right, "no large granola region top right"
    bottom_parts = {c.part for c in right if c.centroid_rel[1] > 0.55 and c.area_frac > 0.003}
    assert len(bottom_parts - {c.part for c in top_right}) >= 2, "almonds and banana chips not separated"
    assert parser.composition_score(parser.parse(abnormal)) > 0.5 > parser.composition_score(scene)


@pytest.mark.xfail(strict=True, reason="known gap: metal parts fragment into highlight/shadow colour "
                   "clusters, and bag folds form elongated components, so screws are not isolated")
def test_screw_bag_two_screws_two_nuts_two_washers(screws):
    parser, normal, abnormal = screws
    scene = parser.parse(normal)
    big = [c for c in scene.components if c.area_frac > 0.002]
    screw = [c for c in big if _elong(c) > 3]
    assert len(screw) == 2, parser.describe_parts()
    lengths = sorted(c.major_axis for c in screw)
    assert lengths[1] > 1.2 * lengths[0], f"screw lengths {lengths} are not clearly different"
    round_ = [c for c in big if _elong(c) < 1.5 and c.area_frac < 0.02]
    assert len(round_) == 4, parser.describe_parts()
    assert len({c.part for c in round_}) == 2 and all(
        sum(c.part == p for c in round_) == 2 for p in {c.part for c in round_})
    both_long = [c for c in parser.parse(abnormal).components if c.area_frac > 0.002 and _elong(c) > 3]
    assert len(both_long) == 2
    ab = sorted(c.major_axis for c in both_long)
    assert ab[0] > 0.85 * ab[1] and ab[0] > 1.1 * lengths[0]


@pytest.mark.xfail(strict=True, reason="known gap: each connector's clamps parse as separate components "
                   "(the transparent housing reads as background), so connectors are not single objects")
def test_splicing_connectors_two_connectors_one_cable(splicing):
    parser, normal, abnormal = splicing
    scene = parser.parse(normal)
    connectors = [c for c in scene.components if c.area_frac > 0.03 and _elong(c) < 5]
    assert len(connectors) == 2, parser.describe_parts()
    assert {c.horizontal for c in connectors} == {"left", "right"}
    cable = [c for c in scene.components if _elong(c) > 5 and c.bbox[2] - c.bbox[0] > 0.4 * (
        scene.product_bbox[2] - scene.product_bbox[0])]
    assert len(cable) == 1, parser.describe_parts()
    cable_part = scene.part(cable[0].part)
    assert cable_part.count == 1 and cable[0].color_name in ("red", "orange", "dark red")
    cut = parser.parse(abnormal)
    assert cut.part(cable_part.id).count != 1 or parser.composition_score(cut) > 0.5


@pytest.mark.xfail(strict=True, reason="known gap: the four references hold different juices, so the "
                   "liquid is not one stable part; the glass and liquid merge and the fill level is lost")
def test_juice_bottle_liquid_labels_icon(juice):
    parser, normal, abnormal = juice
    scene = parser.parse(normal)
    x0, y0, x1, y1 = scene.product_bbox
    liquid = max(scene.components, key=lambda c: c.area)
    assert liquid.area_frac > 0.2
    fill = (liquid.bbox[1] - y0) / (y1 - y0)  # 0 = top of the bottle
    assert 0.1 < fill < 0.4, f"fill level {fill:.2f}"
    labels = [c for c in scene.components if c is not liquid and 0.03 < c.area_frac < 0.2
              and c.horizontal == "center"]
    assert len(labels) == 2, parser.describe_parts()
    top, bottom = sorted(labels, key=lambda c: c.centroid[1])
    assert top.vertical == "middle" and bottom.vertical == "bottom"
    icon = [c for c in scene.components if c.area_frac < 0.03 and top.bbox[0] <= c.centroid[0] <= top.bbox[2]
            and top.bbox[1] <= c.centroid[1] <= top.bbox[3] and c.color_name != top.color_name]
    assert icon, "no fruit icon inside the top label"
    high = max(parser.parse(abnormal).components, key=lambda c: c.area)
    y0a, y1a = parser.parse(abnormal).product_bbox[1::2]
    assert (high.bbox[1] - y0a) / (y1a - y0a) < fill - 0.03
