"""The layout detector as a :class:`~detectors.base.Detector`: images in, calibrated results out.

The numerics live in :mod:`detectors.layout.torch_model`; this module handles images, the
backbone, calibration, results and persistence, the same way :class:`~detectors.PatchCore` does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones import Backbone, FeatureMaps, backbone_config, get_backbone
from ..base import Detector, NotFittedError, logistic_calibration
from ..images import ImageInput
from ..persistence import calibrate, load_folder, reference_count, save_folder
from ..schema import AnomalyResult
from ..patchcore.torch_model import gaussian_blur
from . import torch_model as tm

_FORMAT = "logiscan.layout"
_FORMAT_VERSION = 2
#: the layer's stride when none is named: coarse enough to be one object part per cell and to
#: tolerate the small shifts and rotations between photographs, fine enough to see one pushpin
DEFAULT_STRIDE = 16


def default_layer(cfg: Any) -> str:
    """The backbone's deepest layer at stride ``DEFAULT_STRIDE`` (or the nearest stride)."""
    strides = cfg.layer_strides
    best = min(abs(s - DEFAULT_STRIDE) for s in strides.values())
    return [name for name, s in strides.items() if abs(s - DEFAULT_STRIDE) == best][-1]


class LayoutDetector(Detector):
    """Few-shot logical anomaly detection by position: each region against the same region
    of the references.

    A missing orange leaves an empty tray slot, a missing pushpin an empty compartment, a
    misplaced label a label where the references show the bottle's glass. Every such patch
    exists *somewhere* in the references, so a structural detector (PatchCore) accepts it;
    compared with the references' patches *at the same place* (within ``window`` grid cells,
    for the small shifts between photographs) it stands out.

    ``fit(references)`` on 1 to ``max_references`` normal images of one product, photographed
    the same way; ``score(image)`` returns an :class:`AnomalyResult` calibrated into [0, 1] as
    PatchCore's is: 0.5 lies ``calibration_sigmas`` leave-one-out standard deviations above the
    references' own scores. It is not made for products whose parts lie anywhere (a bag of
    screws): there, positions carry no meaning and the scene parse's counts do the work.

    With ``missing`` (the default) it also looks the other way, for what the references show at
    a place and the query lacks (a missing cable, a compartment without its separator): each query
    patch of such an image finds a match, since the background it shows is there in some
    reference too. Each direction is calibrated on its own; the score is the larger of the two,
    and the map the larger of the two calibrated maps.

    Parameters
    ----------
    backbone: registry name of the feature extractor.
    layer: backbone layer whose grid the comparison runs on (default: the deepest stride-16 layer).
    image_size: long side of the network input.
    window: how far (grid cells) a patch may have moved from the references' position.
    top_fraction: the raw image score is the mean of this share of the largest cell distances.
    sigma: Gaussian smoothing of the map, in network-input pixels.
    missing: also score what the references show and the query lacks (see above).
    missing_top_fraction: the share of the closest reference's cells that this score averages.
    """

    name = "layout"

    def __init__(self, backbone: str = "efficientnet-lite0", layer: str | None = None, image_size: int = 448,
                 window: int = 2, top_fraction: float = 0.01, sigma: float = 8.0,
                 calibration_sigmas: float = 2.0, max_references: int = 16, missing: bool = True,
                 missing_top_fraction: float = 0.03, device: str = "cpu", weights_path: str | None = None):
        cfg = backbone_config(backbone)
        self.backbone_name = backbone
        self.layer = layer or default_layer(cfg)
        if self.layer not in cfg.layer_strides:
            raise ValueError(f"LayoutDetector: unknown layer {self.layer!r} for backbone {backbone!r}; "
                             f"available layers: {list(cfg.layer_strides)}.")
        if image_size < cfg.size_multiple:
            raise ValueError(f"LayoutDetector: image_size must be at least {cfg.size_multiple}, got {image_size}.")
        if window < 0:
            raise ValueError(f"LayoutDetector: window must be >= 0 grid cells, got {window}.")
        for name, value in (("top_fraction", top_fraction), ("missing_top_fraction", missing_top_fraction)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"LayoutDetector: {name} must be in (0, 1], got {value}.")
        if max_references < 1:
            raise ValueError("LayoutDetector: max_references must be >= 1.")
        self.image_size = int(image_size)
        self.window = int(window)
        self.top_fraction = float(top_fraction)
        self.sigma = float(sigma)
        self.calibration_sigmas = float(calibration_sigmas)
        self.max_references = int(max_references)
        self.missing = bool(missing)
        self.missing_top_fraction = float(missing_top_fraction)
        self.device = device
        self.weights_path = weights_path
        self._backbone: Backbone | None = None
        # fitted state
        self.references: torch.Tensor | None = None  # (N, C, h, w) unit patch features
        self.loo_scores: torch.Tensor | None = None
        self.loo_missing: torch.Tensor | None = None  # the same, for what the query lacks

    # -- configuration -----------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {"backbone": self.backbone_name, "layer": self.layer, "image_size": self.image_size,
                "window": self.window, "top_fraction": self.top_fraction, "sigma": self.sigma,
                "calibration_sigmas": self.calibration_sigmas, "max_references": self.max_references,
                "missing": self.missing, "missing_top_fraction": self.missing_top_fraction}

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = get_backbone(self.backbone_name, device=self.device, weights_path=self.weights_path)
        return self._backbone

    def feature_request(self) -> dict[str, Any]:
        """The ``size`` and ``layers`` to pass to ``backbone.extract`` to share features."""
        return {"backbone": self.backbone_name, "size": self.image_size, "layers": [self.layer]}

    @property
    def is_fitted(self) -> bool:
        return self.references is not None

    @property
    def grid(self) -> tuple[int, int]:
        self._check_fitted()
        assert self.references is not None
        return tuple(self.references.shape[-2:])  # type: ignore[return-value]

    def _features(self, image: ImageInput | None, features: FeatureMaps | None) -> FeatureMaps:
        if features is None:
            if image is None:
                raise ValueError("LayoutDetector: pass an image, or features from backbone.extract().")
            return self.backbone.extract(image, size=self.image_size, layers=[self.layer])
        if not isinstance(features, FeatureMaps) or self.layer not in features:
            raise ValueError(f"LayoutDetector: features must be FeatureMaps holding layer {self.layer!r} "
                             f"(see feature_request()).")
        return features

    def _grid_features(self, fm: FeatureMaps, grid: tuple[int, int] | None) -> torch.Tensor:
        # the backbone runs on ``device``; the comparison and the fitted state stay on the CPU
        emb = tm.normalise(fm[self.layer].cpu())
        return tm.to_grid(emb, grid) if grid is not None else emb

    # -- fit -------------------------------------------------------------------------------
    def fit(self, references: Sequence[ImageInput],
            features: Sequence[FeatureMaps] | None = None) -> "LayoutDetector":
        """Keep the references' patch grids and calibrate on them (leave-one-out)."""
        n = reference_count("LayoutDetector", references, features, self.max_references)
        grids: list[torch.Tensor] = []
        for i in range(n):
            fm = self._features(references[i] if features is None else None,
                                None if features is None else features[i])
            # every reference on the first one's grid: references of another size still align
            grids.append(self._grid_features(fm, tuple(grids[0].shape[-2:]) if grids else None)[0])
        stack = torch.stack(grids)
        if n == 1:
            # one reference: compare it with itself, shifted (how much the surface varies locally);
            # both directions are then the same comparison, at their own top fraction
            self_distances = tm.positional_distances(stack[0], [stack[0]], max(1, self.window), skip_centre=True)
            loo = [tm.top_mean(self_distances, self.top_fraction)]
            loo_missing = [tm.top_mean(self_distances, self.missing_top_fraction)] if self.missing else []
        else:
            others = [[stack[j] for j in range(n) if j != i] for i in range(n)]
            loo = [tm.top_mean(tm.positional_distances(stack[i], others[i], self.window), self.top_fraction)
                   for i in range(n)]
            loo_missing = ([tm.missing_distances(stack[i], others[i], self.window, self.missing_top_fraction)[0]
                            for i in range(n)] if self.missing else [])
        if not all(np.isfinite(loo + loo_missing)):
            raise ValueError("LayoutDetector.fit: the references are too small to calibrate on; "
                             "use a larger image_size.")
        self.references = stack.contiguous()
        self.loo_scores = torch.tensor(loo, dtype=torch.float32)
        self.loo_missing = torch.tensor(loo_missing, dtype=torch.float32) if self.missing else None
        return self

    # -- scoring ---------------------------------------------------------------------------
    def calibration(self) -> dict[str, float]:
        self._check_fitted()
        assert self.loo_scores is not None
        return logistic_calibration(self.loo_scores.tolist(), self.calibration_sigmas)

    def calibration_missing(self) -> dict[str, float]:
        """The missing direction's calibration (see :meth:`calibration`)."""
        return logistic_calibration(self._loo_missing().tolist(), self.calibration_sigmas)

    def calibrate(self, raw: torch.Tensor | float) -> torch.Tensor:
        """Raw distances of the query's patches into [0, 1]."""
        self._check_fitted()
        assert self.loo_scores is not None
        return calibrate(raw, self.loo_scores, self.calibration_sigmas)

    def calibrate_missing(self, raw: torch.Tensor | float) -> torch.Tensor:
        """Raw distances of the references' patches that the query lacks into [0, 1]."""
        return calibrate(raw, self._loo_missing(), self.calibration_sigmas)

    def _loo_missing(self) -> torch.Tensor:
        self._check_fitted()
        if self.loo_missing is None:
            raise ValueError("LayoutDetector: fitted with missing=False; it has no missing direction.")
        return self.loo_missing

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("LayoutDetector is not fitted: call fit(references) first, "
                                 "or LayoutDetector.load(path).")

    def score(self, image: ImageInput | None = None, features: FeatureMaps | None = None) -> AnomalyResult:
        """Score one image (or its precomputed ``features``)."""
        self._check_fitted()
        assert self.references is not None
        t0 = time.perf_counter()
        fm = self._features(image, features)
        query = self._grid_features(fm, self.grid)[0]
        dists = tm.positional_distances(query, list(self.references), self.window)
        raw = tm.top_mean(dists, self.top_fraction)
        score, cell_scores, peak_from = self.calibrate(raw), self.calibrate(dists), dists
        if self.loo_missing is not None:
            raw_missing, lacking = tm.missing_distances(query, list(self.references), self.window,
                                                        self.missing_top_fraction)
            cell_scores = torch.maximum(cell_scores, self.calibrate_missing(lacking))
            # The direction further beyond its edge decides the score and gives the peak, on its
            # raw distances: compared in units of its calibration scale, since calibrated scores
            # (and maps) saturate at 1 and would tie, picking either direction or any cell.
            forward, backward = self.calibration(), self.calibration_missing()
            if ((raw_missing - backward["center"]) / backward["scale"]
                    > (raw - forward["center"]) / forward["scale"]):
                score, peak_from = self.calibrate_missing(raw_missing), lacking
        in_w, in_h = fm.input_size
        # smoothing after calibration: the two directions' raw distances are on different scales
        amap = F.interpolate(cell_scores[None, None], size=(in_h, in_w), mode="bilinear", align_corners=False)
        amap = gaussian_blur(amap, self.sigma)[0, 0]
        width, height = fm.image_size
        full = F.interpolate(amap[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        peak = int(torch.argmax(peak_from))
        gh, gw = peak_from.shape
        peak_xy = (min(width - 1, int((peak % gw + 0.5) * width / gw)),
                   min(height - 1, int((peak // gw + 0.5) * height / gh)))
        return AnomalyResult(detector=self.name, score=float(score), raw_score=raw, calibrated=True,
                             anomaly_map=full.numpy().astype(np.float32, copy=False), peak_xy=peak_xy,
                             seconds=time.perf_counter() - t0)

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write ``config.json`` and ``state.pt`` (tensors only) into the folder ``path``."""
        self._check_fitted()
        save_folder("LayoutDetector", path, fmt=_FORMAT, version=_FORMAT_VERSION,
                    config={"params": self.get_params(), "calibration": self.calibration(),
                            **({"calibration_missing": self.calibration_missing()}
                               if self.loo_missing is not None else {})},
                    state={"references": self.references, "loo_scores": self.loo_scores,
                           **({"loo_missing": self.loo_missing} if self.loo_missing is not None else {})})

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", weights_path: str | None = None) -> "LayoutDetector":
        """Load a detector written by :meth:`save` (no pickled objects are read)."""
        config, state = load_folder("LayoutDetector", path, fmt=_FORMAT, version=_FORMAT_VERSION)
        detector = cls(**config["params"], device=device, weights_path=weights_path)
        detector.references, detector.loo_scores = state["references"], state["loo_scores"]
        detector.loo_missing = state.get("loo_missing")
        if detector.missing and detector.loo_missing is None:
            raise ValueError(f"LayoutDetector.load: {path} was saved with missing=True but holds no "
                             "calibration for it; fit the detector again and save it.")
        return detector

    def __repr__(self) -> str:
        fitted = f"fitted on {len(self.references)}" if self.references is not None else "not fitted"
        return f"LayoutDetector({self.backbone_name}, {self.layer}, window={self.window}, {fitted})"
