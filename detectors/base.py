"""The one interface every image-level detector implements (scikit-learn style)."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Sequence

import numpy as np

from .images import ImageInput
from .schema import AnomalyResult


def logistic_calibration(loo_scores: Sequence[float], sigmas: float) -> dict[str, float]:
    """Where a detector's calibrated score is 0.5, from its references' leave-one-out raw scores.

    Returns ``center`` (``sigmas`` spreads above their mean) and ``scale`` of the logistic map
    ``sigmoid((raw - center) / scale)``. The spread has a floor: one to four references
    estimate it poorly, and a near-zero spread would make any deviation look enormous.
    """
    loo = np.asarray(list(loo_scores), dtype=float)
    mean = float(loo.mean())
    std = float(loo.std()) if loo.size > 1 else 0.0
    scale = max(std, 0.1 * abs(mean), 1e-6)
    return {"center": mean + sigmas * scale, "scale": scale, "loo_mean": mean, "loo_std": std}


class NotFittedError(RuntimeError):
    """``score`` was called before ``fit`` on a detector that needs references."""


class Detector(abc.ABC):
    """``fit(references)`` on normal images, then ``score(image)``.

    Zero-shot detectors accept ``fit([])`` and may be scored without fitting.
    """

    #: short registry name, e.g. ``"patchcore"``
    name: str = "detector"

    @abc.abstractmethod
    def fit(self, references: Sequence[ImageInput]) -> "Detector":
        """Learn normality from 0..N normal images; returns ``self``."""

    @abc.abstractmethod
    def score(self, image: ImageInput) -> AnomalyResult:
        """Score one image: image score plus an anomaly map at image resolution."""

    def score_many(self, images: Sequence[ImageInput]) -> list[AnomalyResult]:
        return [self.score(im) for im in images]

    def save(self, path: str | Path) -> None:  # pragma: no cover - overridden where supported
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    @classmethod
    def load(cls, path: str | Path) -> "Detector":  # pragma: no cover - overridden where supported
        raise NotImplementedError(f"{cls.__name__} cannot be loaded")
