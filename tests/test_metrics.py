"""Image-level audit metrics: AUROC (logical, structural, mean), F1-max, accuracy, per-type AUROC."""

import math

import pytest

from agent.metrics import ScoredImage, auroc, category_metrics, compute_metrics, f1_max


def im(label, score, flagged=None, anomaly_type=None, category="c"):
    return ScoredImage(label=label, score=score, is_anomalous=score >= 0.5 if flagged is None else flagged,
                       anomaly_type=anomaly_type, category=category)


def test_auroc_matches_the_pairwise_definition():
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.3]
    # pairs (anomalous > good): 0.8 beats all 3; 0.3 beats 0.1 only -> 4 of 6
    assert auroc(labels, scores) == pytest.approx(4 / 6)


def test_auroc_is_none_with_one_class():
    assert auroc([0, 0], [0.1, 0.2]) is None
    assert auroc([], []) is None


def test_f1_max_finds_the_best_threshold():
    f1, threshold = f1_max([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9])
    assert f1 == pytest.approx(1.0)
    assert 0.2 < threshold <= 0.7


def test_category_metrics_split_logical_and_structural():
    images = [
        im("good", 0.1), im("good", 0.2), im("good", 0.6),
        im("logical", 0.9, anomaly_type="missing"), im("logical", 0.15, anomaly_type="extra"),
        im("structural", 0.7, anomaly_type="scratch"),
    ]
    m = category_metrics("c", images)
    assert (m.n_good, m.n_logical, m.n_structural) == (3, 2, 1)
    assert m.auroc_logical == pytest.approx(auroc([0, 0, 0, 1, 1], [0.1, 0.2, 0.6, 0.9, 0.15]))
    assert m.auroc_structural == pytest.approx(1.0)
    assert m.auroc_mean == pytest.approx((m.auroc_logical + m.auroc_structural) / 2)
    assert m.auroc_per_type == {"extra": pytest.approx(1 / 3), "missing": 1.0, "scratch": 1.0}
    # decisions: good 0.6 flagged (wrong), logical 0.15 not flagged (wrong); 4 of 6 right
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.notes == []


def test_degenerate_category_gives_null_with_a_note():
    m = category_metrics("c", [im("good", 0.1), im("good", 0.3)])
    assert m.auroc_logical is None and m.auroc_structural is None and m.auroc_mean is None
    assert m.f1_max is None
    assert any("no logical anomalies" in n for n in m.notes)
    assert any("F1-max is undefined" in n for n in m.notes)
    assert m.accuracy == 1.0

    only_bad = category_metrics("c", [im("logical", 0.9)])
    assert only_bad.auroc_logical is None
    assert any("no good test images" in n for n in only_bad.notes)

    empty = category_metrics("c", [])
    assert empty.notes == ["no scored images"]


def test_compute_metrics_averages_over_categories_where_defined():
    images = [
        im("good", 0.1, category="a"), im("logical", 0.9, category="a"),
        im("good", 0.6, category="b"), im("logical", 0.4, category="b"),
        im("good", 0.2, category="z"),
    ]
    m = compute_metrics(images, errors_per_category={"b": 2}, timing={"images_per_second": 3.0})
    assert set(m.categories) == {"a", "b", "z"}
    assert m.categories["a"].auroc_logical == 1.0 and m.categories["b"].auroc_logical == 0.0
    assert m.mean["auroc_logical"] == pytest.approx(0.5)  # z has no anomalies and is left out
    assert m.categories["b"].n_errors == 2 and m.n_errors == 2
    assert m.n_images == 5
    assert m.timing["images_per_second"] == 3.0
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.mean.values() if v is not None)
