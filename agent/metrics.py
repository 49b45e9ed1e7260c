"""Image-level metrics for logical audits, as MVTec LOCO AD reports them.

MVTec LOCO scores each category twice: good vs logical anomalies and good vs
structural anomalies (each an image AUROC), and reports their mean. We add
F1-max over all thresholds, accuracy at the threshold the agent actually used,
and an AUROC per anomaly type (good vs that type) where types are labelled.

Degenerate cases (only one class present, no scored images) never raise: the
metric is ``None`` and ``notes`` says why.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional, Sequence

import numpy as np
from pydantic import BaseModel, Field


class ScoredImage(BaseModel):
    """The minimum a metric needs about one image."""

    label: str = Field(description="'good', 'logical' or 'structural'")
    score: float
    is_anomalous: bool
    anomaly_type: Optional[str] = None
    category: str = "product"


class CategoryMetrics(BaseModel):
    category: str
    n_images: int
    n_good: int
    n_logical: int
    n_structural: int
    n_errors: int = 0
    auroc_logical: Optional[float] = None
    auroc_structural: Optional[float] = None
    auroc_mean: Optional[float] = Field(default=None, description="mean of the logical and structural AUROC that exist")
    auroc_all: Optional[float] = Field(default=None, description="good vs every anomaly")
    f1_max: Optional[float] = None
    f1_max_threshold: Optional[float] = None
    accuracy: Optional[float] = Field(default=None, description="accuracy of the agent's own decisions")
    precision: Optional[float] = None
    recall: Optional[float] = None
    auroc_per_type: dict[str, Optional[float]] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


class AuditMetrics(BaseModel):
    categories: dict[str, CategoryMetrics]
    mean: dict[str, Optional[float]] = Field(
        default_factory=dict, description="each metric averaged over categories (as MVTec LOCO does)"
    )
    timing: dict[str, float] = Field(default_factory=dict)
    n_images: int = 0
    n_errors: int = 0


def auroc(labels: Sequence[int], scores: Sequence[float]) -> Optional[float]:
    """ROC AUC, or ``None`` when only one class is present."""
    y = np.asarray(labels, dtype=int)
    if y.size == 0 or y.min() == y.max():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, np.asarray(scores, dtype=float)))


def f1_max(labels: Sequence[int], scores: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """The best F1 over all thresholds and the threshold that reaches it."""
    y = np.asarray(labels, dtype=int)
    if y.size == 0 or y.sum() == 0:
        return None, None
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, np.asarray(scores, dtype=float))
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    # the last precision/recall pair has no threshold (recall 0 by construction)
    best = int(np.argmax(f1[:-1])) if thresholds.size else 0
    return float(f1[best]), (float(thresholds[best]) if thresholds.size else None)


def _binary(images: Sequence[ScoredImage], positive: set[str]) -> tuple[list[int], list[float]]:
    keep = [im for im in images if im.label == "good" or im.label in positive]
    return [int(im.label != "good") for im in keep], [im.score for im in keep]


def category_metrics(category: str, images: Sequence[ScoredImage], n_errors: int = 0) -> CategoryMetrics:
    counts = defaultdict(int)
    for im in images:
        counts[im.label] += 1
    out = CategoryMetrics(
        category=category,
        n_images=len(images),
        n_good=counts["good"],
        n_logical=counts["logical"],
        n_structural=counts["structural"],
        n_errors=n_errors,
    )
    if not images:
        out.notes.append("no scored images")
        return out
    if not counts["good"]:
        out.notes.append("no good test images: AUROCs are undefined")

    out.auroc_logical = auroc(*_binary(images, {"logical"}))
    if out.auroc_logical is None and counts["good"]:
        out.notes.append("no logical anomalies: logical AUROC is undefined")
    out.auroc_structural = auroc(*_binary(images, {"structural"}))
    if out.auroc_structural is None and counts["good"]:
        out.notes.append("no structural anomalies: structural AUROC is undefined")
    present = [a for a in (out.auroc_logical, out.auroc_structural) if a is not None]
    out.auroc_mean = float(np.mean(present)) if present else None
    out.auroc_all = auroc(*_binary(images, {"logical", "structural"}))

    y = [int(im.label != "good") for im in images]
    scores = [im.score for im in images]
    out.f1_max, out.f1_max_threshold = f1_max(y, scores)
    if out.f1_max is None:
        out.notes.append("no anomalous images: F1-max is undefined")

    predicted = np.array([im.is_anomalous for im in images], dtype=bool)
    truth = np.array(y, dtype=bool)
    out.accuracy = float((predicted == truth).mean())
    tp = int((predicted & truth).sum())
    out.precision = float(tp / predicted.sum()) if predicted.sum() else None
    out.recall = float(tp / truth.sum()) if truth.sum() else None

    types = sorted({im.anomaly_type for im in images if im.label != "good" and im.anomaly_type})
    good = [im for im in images if im.label == "good"]
    for anomaly_type in types:
        subset = good + [im for im in images if im.anomaly_type == anomaly_type and im.label != "good"]
        out.auroc_per_type[anomaly_type] = auroc([int(im.label != "good") for im in subset], [im.score for im in subset])
    if types and not good:
        out.notes.append("per-type AUROCs need good images")
    return out


_AVERAGED = ("auroc_logical", "auroc_structural", "auroc_mean", "auroc_all", "f1_max", "accuracy")


def compute_metrics(
    images: Iterable[ScoredImage], *, errors_per_category: dict[str, int] | None = None,
    timing: dict[str, float] | None = None,
) -> AuditMetrics:
    """Metrics per category, and their mean over the categories where each is defined."""
    by_category: dict[str, list[ScoredImage]] = defaultdict(list)
    for im in images:
        by_category[im.category].append(im)
    errors_per_category = errors_per_category or {}
    names = sorted(set(by_category) | set(errors_per_category))
    categories = {c: category_metrics(c, by_category.get(c, []), errors_per_category.get(c, 0)) for c in names}
    mean: dict[str, Optional[float]] = {}
    for key in _AVERAGED:
        values = [getattr(m, key) for m in categories.values() if getattr(m, key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    return AuditMetrics(
        categories=categories,
        mean=mean,
        timing=dict(timing or {}),
        n_images=sum(m.n_images for m in categories.values()),
        n_errors=sum(errors_per_category.values()),
    )
