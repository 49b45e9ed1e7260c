"""The rules-free composition score: how far a scene's parts histogram lies from the references'.

Per part it compares the count, the total area (as a fraction of the product), the mean
position inside the product and the mean colour against the reference scenes, as robust
z-scores with a floor on the spread (four references cannot estimate a spread). The image's
raw score is a soft maximum of those z-scores, calibrated into [0, 1] from leave-one-out
scores of the references so that 0.5 means "at the edge of what the references allow" in
every category.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import BaseModel, Field

from ..schema import Scene
from .colors import rgb_to_lab

#: quantities compared per part, with the floor on their reference spread.
#: count: one object more or less than a constant count gives z = 1 / 0.3 ~ 3.3.
#: area_frac: relative floor (fraction of the reference mean) plus an absolute one.
#: centroid: fraction of the product's box. colour: CIE Lab units.
COUNT_STD_FLOOR = 0.3
AREA_REL_FLOOR = 0.2
AREA_ABS_FLOOR = 0.002
CENTROID_STD_FLOOR = 0.06
COLOR_STD_FLOOR = 6.0
#: softness of the soft maximum over z-scores (larger -> closer to a hard max)
SOFTMAX_SHARPNESS = 2.0
#: a raw score below this is never called anomalous, whatever the references say
MIN_THRESHOLD = 3.0


class Deviation(BaseModel):
    """How one quantity of one part compares with the references."""

    part: str
    quantity: str = Field(description="count, area_frac, centroid_x, centroid_y or color_L/a/b")
    observed: float
    ref_mean: float
    ref_std: float
    z: float = Field(description="|observed - ref_mean| / max(ref_std, floor)")

    def sentence(self, label: str | None = None) -> str:
        """The deviation as a quality engineer reads it, e.g. ``Part p6 (orange): horizontal
        position 0.75 of the product's width, references 0.18 ± 0 (z = 9.5).``; ``label``
        describes the part (default: its id)."""
        label = label or self.part
        what, unit = _QUANTITY_WORDS.get(self.quantity, (self.quantity, ""))
        return (f"Part {label}: {what} {self.observed:.3g}{unit}, references {self.ref_mean:.3g} ± "
                f"{self.ref_std:.2g} (z = {self.z:.1f}).")


#: quantity -> (words, unit) for :meth:`Deviation.sentence`
_QUANTITY_WORDS = {
    "count": ("count", ""),
    "area_frac": ("area", " of the product"),
    "centroid_x": ("horizontal position", " of the product's width"),
    "centroid_y": ("vertical position", " of the product's height"),
    "color_L": ("lightness L*", ""),
    "color_a": ("colour a* (green-red)", ""),
    "color_b": ("colour b* (blue-yellow)", ""),
}


def scene_quantities(scene: Scene) -> dict[str, dict[str, float]]:
    """Per part id: count, area fraction, mean relative centroid and mean Lab colour."""
    out: dict[str, dict[str, float]] = {}
    by_part: dict[str, list] = {p.id: [] for p in scene.parts}
    for comp in scene.components:
        by_part.setdefault(comp.part, []).append(comp)
    for part in scene.parts:
        comps = by_part.get(part.id, [])
        q: dict[str, float] = {
            "count": float(part.count),
            "area_frac": float(sum(c.area_frac for c in comps)),
        }
        if comps:
            w = np.array([max(c.area, 1e-6) for c in comps])
            cx = np.array([c.centroid_rel[0] for c in comps])
            cy = np.array([c.centroid_rel[1] for c in comps])
            lab = rgb_to_lab(np.array([c.color_rgb for c in comps], dtype=np.uint8)[None])[0]
            q["centroid_x"] = float(np.average(cx, weights=w))
            q["centroid_y"] = float(np.average(cy, weights=w))
            for i, ch in enumerate("Lab"):
                q[f"color_{ch}"] = float(np.average(lab[:, i], weights=w))
        out[part.id] = q
    return out


def _floor(quantity: str, mean: float) -> float:
    if quantity == "count":
        return COUNT_STD_FLOOR
    if quantity == "area_frac":
        return AREA_REL_FLOOR * abs(mean) + AREA_ABS_FLOOR
    if quantity.startswith("centroid"):
        return CENTROID_STD_FLOOR
    return COLOR_STD_FLOOR


class _RefModel(BaseModel):
    mean: dict[str, dict[str, float]]
    std: dict[str, dict[str, float]]


def _fit_stats(quantities: Sequence[dict[str, dict[str, float]]]) -> _RefModel:
    parts = sorted({p for q in quantities for p in q})
    mean: dict[str, dict[str, float]] = {}
    std: dict[str, dict[str, float]] = {}
    for p in parts:
        names = sorted({k for q in quantities for k in q.get(p, {})})
        mean[p], std[p] = {}, {}
        for k in names:
            # a part absent from a reference counts as zero objects and zero area
            vals = [q[p][k] for q in quantities if p in q and k in q[p]]
            if k in ("count", "area_frac"):
                vals = [q.get(p, {}).get(k, 0.0) for q in quantities]
            if not vals:
                continue
            arr = np.asarray(vals, dtype=float)
            mean[p][k] = float(np.median(arr)) if k == "count" else float(arr.mean())
            std[p][k] = float(arr.std())
    return _RefModel(mean=mean, std=std)


def _deviations(q: dict[str, dict[str, float]], model: _RefModel) -> list[Deviation]:
    devs: list[Deviation] = []
    for p, means in model.mean.items():
        obs = q.get(p, {"count": 0.0, "area_frac": 0.0})
        for k, m in means.items():
            if k not in obs:
                continue  # position/colour of a part that is absent: its count already says so
            s = max(model.std[p][k], _floor(k, m))
            devs.append(Deviation(part=p, quantity=k, observed=obs[k], ref_mean=m,
                                  ref_std=model.std[p][k], z=abs(obs[k] - m) / s))
    for p in q:
        if p not in model.mean:  # a part the references never showed
            devs.append(Deviation(part=p, quantity="count", observed=q[p]["count"], ref_mean=0.0,
                                  ref_std=0.0, z=q[p]["count"] / COUNT_STD_FLOOR))
    return devs


def _soft_max(z: np.ndarray) -> float:
    if z.size == 0:
        return 0.0
    # log-sum-exp from the largest term: exp(2 z) overflows for z above about 355 (a part the
    # references show at area 0 covering the product), and inf / (inf + t) is NaN
    top = float(z.max())
    if not np.isfinite(top):
        return top
    return top + float(np.log(np.exp(SOFTMAX_SHARPNESS * (z - top)).sum()) / SOFTMAX_SHARPNESS)


class CompositionScorer:
    """Fit on reference scenes, then score a scene's composition in [0, 1].

    ``score(scene)`` is calibrated: 0.5 is the threshold, derived from leave-one-out
    scores of the references. ``report(scene)`` lists deviations, largest first.
    """

    def __init__(self) -> None:
        self._model: _RefModel | None = None
        self.threshold: float = MIN_THRESHOLD
        self.loo_scores: list[float] = []

    def fit(self, reference_scenes: Sequence[Scene]) -> "CompositionScorer":
        if len(reference_scenes) == 0:
            raise ValueError("CompositionScorer.fit needs at least one reference scene.")
        quantities = [scene_quantities(s) for s in reference_scenes]
        self._model = _fit_stats(quantities)
        self.loo_scores = []
        if len(quantities) >= 3:
            for i in range(len(quantities)):
                # the left-out scene is scored as a new image is: against the others' statistics
                # alone. (Flooring their spread at the spread of all references, as an earlier
                # version did, let each scene shrink its own z-scores; new images then scored
                # above the edge that normal references set: 64 % of good synthetic images
                # crossed 0.5, against 13 % now.)
                others = _fit_stats(quantities[:i] + quantities[i + 1:])
                z = np.array([d.z for d in _deviations(quantities[i], others)])
                self.loo_scores.append(_soft_max(z))
        if self.loo_scores:
            loo = np.asarray(self.loo_scores)
            # leave-one-out over-estimates how odd a normal image looks (fewer samples), so the
            # largest of them is a safe edge of normality
            self.threshold = max(MIN_THRESHOLD, float(loo.max()), float(loo.mean() + 2 * loo.std()))
        else:
            self.threshold = MIN_THRESHOLD
        return self

    def _require(self) -> _RefModel:
        if self._model is None:
            raise RuntimeError("CompositionScorer is not fitted: call fit(reference_scenes) first.")
        return self._model

    def raw_score(self, scene: Scene) -> float:
        z = np.array([d.z for d in _deviations(scene_quantities(scene), self._require())])
        return _soft_max(z)

    def score(self, scene: Scene) -> float:
        """Calibrated composition anomaly score in [0, 1]; 0.5 is the decision threshold."""
        raw = self.raw_score(scene)
        return 1.0 if raw == float("inf") else float(raw / (raw + self.threshold))

    def report(self, scene: Scene, top: int | None = 5) -> list[Deviation]:
        devs = sorted(_deviations(scene_quantities(scene), self._require()), key=lambda d: -d.z)
        return devs if top is None else devs[:top]

    # persistence as plain data
    def to_dict(self) -> dict:
        m = self._require()
        return {"model": m.model_dump(), "threshold": self.threshold, "loo_scores": self.loo_scores}

    @classmethod
    def from_dict(cls, data: dict) -> "CompositionScorer":
        obj = cls()
        obj._model = _RefModel.model_validate(data["model"])
        obj.threshold = float(data["threshold"])
        obj.loo_scores = [float(x) for x in data.get("loo_scores", [])]
        return obj
