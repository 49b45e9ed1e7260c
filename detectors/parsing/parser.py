"""Few-shot scene parsing: part classes learned from a few normal images, without labels.

How it works (one algorithm for every category; all parameters come from the references):

1. Every image is parsed on a downscaled copy (long side ``image_size``); geometry is
   mapped back to full-resolution pixel coordinates.
2. Per-pixel features are CIE Lab colour (lightness down-weighted, so shading matters less
   than hue) plus, when a backbone is available, a few PCA components of its stride-8
   features, upsampled. K-means on pixels of the references gives colour/texture clusters;
   clusters whose centres are close are merged. Each image's pixels take the nearest centre
   after the centres have followed that image's colours for a few k-means rounds, anchored
   halfway to their fitted values (a darker or bluer photograph keeps its parts).
3. Clusters that cover the image border in the references are background (regions of a
   background colour enclosed by the product get a cluster of their own: dark almonds in a
   tray; so do background-coloured areas lighter than the image's border background, such as
   dark glass or a dark bag, whose blurred rims stay background or join their neighbour); the
   rest is the product, whose bounding box is the frame for relative positions.
4. THINGS: pixels whose colour differs from the local surface (the median colour of a window
   wider than the objects, ``SURFACE_WINDOW``) by more than a threshold learned on the
   references (Otsu) are things: a shiny screw, a pushpin or a clamp is one object whatever its
   highlights and shadows. Things are objects; colours that also form a large region (the bag,
   the tray) keep only that region, so their fragments between the things are not parts.
   Foreground colours that cover at least ``object_share`` of the product are regions; the
   pieces of the other colours are joined into objects (one object may span highlight and shadow colours).
   Touching objects are split by a watershed on the distance transform (h-maxima markers; rings
   and large regions are never split), and thin leftovers of an opening are kept as thin
   objects (cables).
5. Components are described by shape (area, elongation, solidity, holes, and colour for
   objects) and clustered across the references, so that objects of one colour but different
   shape (screws, washers) can become different parts. A group of objects splits further in two
   when both halves appear in (nearly) every reference with counts at least as steady as the
   whole group's (nuts and washers of one metal). Groups seen in too few references are
   noise and ignored; at most ``max_parts`` parts are kept. Two colours whose large regions
   stand in for each other (each in some references, never both with a real share in one, about
   the same share of the product at about the same place: a tray white in three photographs and
   bluish in the fourth, a juice red in some and orange in another) are one part
   (``_join_colour_variants``); a colour too rare to be a part of its own may join one so.
   A piece of no part that lies where a part lies in the references, with that part's shape,
   stands in for it while the image holds fewer of it than usual (``_stand_ins``: a juice or a
   cable of a colour that no reference shows as that part keeps its part, and its colour).
6. A piece much smaller than its part's components in the references, lying next to a larger
   piece of the same part, is a fragment of that piece (a fruit's shaded side, a glint on a
   nut): it is painted with the part but not counted (``FRAGMENT_SHARE``). Two neighbouring
   pieces, each too small for one of its part's objects and together about one, are one object
   cut in two (``HALF_SHARE``).
7. Each group is a part with a stable id ``p1..pN`` (by decreasing area in the references),
   described in words for a language model, with the references' count/area statistics. The
   composition score compares a scene with the references.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from sklearn.cluster import AgglomerativeClustering, KMeans

from ..base import NotFittedError
from ..images import ImageInput, load_image
from ..schema import Component, Part, Scene, Stats, position_words
from .colors import color_name, rgb_to_lab
from .composition import CompositionScorer, Deviation

#: 2: the composition scorer's leave-one-out calibration changed; older fits are refitted
#: 3: fragments next to a larger piece of their part are not counted (typical areas saved)
#: 4: colour centres adapt to each image (the references' statistics come from that parse)
#: 5: object groups split into sub-classes with steady counts (``_split_subclasses``); an object
#:    cut in two halves counts once (``HALF_SHARE``)
#: 6: the places of the large colour regions (session 26, reverted)
#: 7: colour variants of one region (a tray white in some references, bluish in others) are one part
#: 8: a colour seen in a single reference may join its part as a variant (a juice of another colour)
#: 9: background-coloured areas lighter than the background at the border are product
#: 10: a piece of an unknown colour where a part lies in the references, with its shape, is that
#:     part (``_stand_ins``; the places are saved)
FORMAT_VERSION = 10
#: lightness is noisier than hue under shading and specular highlights
LIGHTNESS_WEIGHT = 0.4
#: blur (downscaled pixels) before clustering: shading and texture speckle stay inside a part
PIXEL_BLUR = 1.0
#: cluster centres closer than this (weighted Lab units) are one part class
MERGE_DISTANCE = 15.0
#: k-means rounds that adapt the fitted colour centres to one image, how far each centre stays
#: anchored at its fitted value, and the fewest pixels that move a centre. On the synthetic set
#: (seeds 20240611, 7, 3, 11) 2 rounds raised the composition AUROC from 0.559 to 0.590, with the
#: count accuracy unchanged (0.338 to 0.337); 1 round read 0.574, 4 rounds 0.596 (slower). The
#: agent's fused score traded: logical 0.768 both, structural 0.787 to 0.773 (bench_fusion.py).
ADAPT_ROUNDS = 2
ADAPT_ANCHOR = 0.5
ADAPT_MIN_PIXELS = 50
#: background-coloured pixels this much lighter (Lab L) than the background at the image border
#: (its 99th percentile) lie on the product
LIT_MARGIN = 10.0
#: ... and within this many pixels of another colour they are its blurred edge
LIT_RIM = 3.0
#: a cluster is background if it covers at least this share of the image border
BORDER_SHARE_BACKGROUND = 0.12
#: shape-feature scales: differences of about this size are "one unit" apart
SHAPE_SCALES = np.array([0.45, 0.35, 0.12, 0.12])
#: shape groups farther apart than this (in scaled units) are different parts
SHAPE_SPLIT_DISTANCE = 3.0
#: smallest component kept, as a fraction of the downscaled image's pixels
MIN_COMPONENT_FRACTION = 0.00015
PIXEL_SAMPLE = 60_000
#: objects' colour scale (Lab units per "one unit" of difference)
OBJECT_COLOR_SCALE = np.array([14.0, 10.0, 10.0])
#: radius (downscaled pixels) of the opening that separates touching objects
OPEN_RADIUS = 2
#: regions larger than this share of the image are never split at their necks
REGION_SPLIT_MAX = 0.05
#: a split is kept only if every piece has at least this share of the component
MIN_PIECE = 0.15
#: a saddle this deep (downscaled pixels of the distance transform) separates two objects
SPLIT_DEPTH = 2.0
#: ... and at least this share of the component's largest inscribed radius
SPLIT_RELATIVE_DEPTH = 0.4
#: the pseudo colour cluster of objects
OBJECTS = -1
#: components smaller than this fraction of a colour's typical largest component are fragments
MIN_AREA_OF_LARGEST = 0.12
#: a shape split is kept only if each group appears in this share of the references
SPLIT_PRESENCE = 0.75
#: colour clusters with less than this share of the foreground are noise
MIN_PART_SHARE = 0.003
#: the local surface around a pixel is the median of a window this share of the long side wide:
#: wider than the objects lying on a carrier, narrower than the carrier
SURFACE_WINDOW = 0.2
#: the surface model is computed on blocks of this many downscaled pixels (cheap median)
SURFACE_BLOCK = 4
#: a thing threshold below this (Lab units) would turn sensor noise and print into objects
MIN_THING_CONTRAST = 12.0
#: a piece under this share of its part's median component area in the references, next to a
#: larger piece of the same part (bounding boxes within FRAGMENT_GAP pixels), is a fragment of it
FRAGMENT_SHARE = 0.5
FRAGMENT_GAP = 6
#: two neighbouring pieces of a part, each under HALF_SHARE of its median component area in the
#: references and together at most HALF_UNION of it, are one object cut in two (a pushpin split
#: across its highlight). Four synthetic seeds: count accuracy 0.355 to 0.370, pushpins right on
#: 40 of 40 good images (34 before); 0.65 / 1.3 read 0.362.
HALF_SHARE = 0.75
HALF_UNION = 1.4
#: colour variants of one region part: each covers at least VARIANT_MIN_AREA of the product, the
#: smaller at least VARIANT_AREA_RATIO of the larger's area, their centres within VARIANT_PLACE
VARIANT_MIN_AREA = 0.05
VARIANT_AREA_RATIO = 0.67
VARIANT_PLACE = 0.1
#: ... and in no reference does the smaller of the two hold more than this share of the larger
VARIANT_OVERLAP = 0.1
#: a piece of no part stands in for a part (a juice or a cable of a colour the references do not
#: show as that part) when a reference component of the part lay within STAND_IN_PLACE of its
#: centre (relative to the product's box) with a shape within SHAPE_SPLIT_DISTANCE, and the
#: image holds fewer components of that part than the references' median count (rounded up)
STAND_IN_PLACE = 0.1


class _ShapeGroup:
    """One part: a shape group inside a colour cluster, as plain data."""

    def __init__(self, cluster: int, center: np.ndarray, noise: bool, part_id: str = "", min_area: float = 0.0):
        self.cluster = cluster
        self.min_area = float(min_area)
        self.center = np.asarray(center, dtype=float)
        self.noise = noise
        self.part_id = part_id
        self.provisional = False  # a rare region measured by the first parse only (see fit)

    def to_dict(self) -> dict:
        return {"cluster": self.cluster, "center": self.center.tolist(), "noise": bool(self.noise),
                "part_id": self.part_id, "min_area": self.min_area}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "_ShapeGroup":
        return cls(int(d["cluster"]), np.asarray(d["center"], float), bool(d["noise"]), str(d["part_id"]),
                   float(d["min_area"]))


def _shape_features(area: float, major: float, minor: float, solidity: float, hole_frac: float) -> np.ndarray:
    return np.array([np.log(max(area, 1.0)), np.log((major + 1.0) / (minor + 1.0)), solidity, hole_frac])


def _joins(piece_area: float, host_area: float, typical_area: float) -> bool:
    """Whether a piece belongs to a neighbouring piece of its part: it is a fragment (much smaller
    than the part's objects), or the two are one object cut in two (each too small for one,
    together about one)."""
    if piece_area < FRAGMENT_SHARE * typical_area:
        return True
    return host_area < HALF_SHARE * typical_area and piece_area + host_area <= HALF_UNION * typical_area


#: the fewest references whose counts can say that a split is steady (one image's halves always are)
MIN_SUBCLASS_REFERENCES = 3


def _count_spread(members: np.ndarray, refs_of: np.ndarray, n_refs: int) -> float:
    """How far a group's count per reference strays from its median count (summed over references)."""
    counts = np.bincount(refs_of[members], minlength=n_refs)
    return float(np.abs(counts - np.median(counts)).sum())


def _split_subclasses(X: np.ndarray, refs_of: np.ndarray, assign: np.ndarray, n_refs: int,
                      seed: int = 0) -> np.ndarray:
    """Split each shape group of objects in two (k-means) where the two halves are sub-classes
    of the product: both appear in (nearly) every reference, and their counts per reference are
    at least as steady as the whole group's. Nuts and washers of one metal, closer in shape and
    colour than the clustering distance, then become two parts of 2 each instead of one part whose
    count wanders between 3 and 4 (synthetic screw bag, seeds 20240611 and 11: count accuracy
    0.37 to 0.63 and 0.40 to 0.60). Fifteen identical pushpins split at random give halves whose
    counts wander, so they stay one part. Steadiness needs several references: with fewer than
    ``MIN_SUBCLASS_REFERENCES`` (one normal image, or zero-shot) nothing is split."""
    out = assign.copy()
    if n_refs < MIN_SUBCLASS_REFERENCES:
        return out
    next_label = int(out.max()) + 1
    needed = max(1, SPLIT_PRESENCE * n_refs)
    for g in np.unique(assign):
        members = np.flatnonzero(assign == g)
        if len(members) < 2 * needed:
            continue
        halves = KMeans(n_clusters=2, n_init=4, random_state=seed).fit_predict(X[members])
        parts = [members[halves == k] for k in (0, 1)]
        if min(len(set(refs_of[p])) for p in parts) < needed:
            continue
        whole = _count_spread(members, refs_of, n_refs)
        if sum(_count_spread(p, refs_of, n_refs) for p in parts) <= whole:
            out[parts[1]] = next_label
            next_label += 1
    return out


def _lightness(features: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The blurred Lab L of each pixel, back from its down-weighted pixel feature."""
    return features[:, 0].reshape(shape) / LIGHTNESS_WEIGHT


def _border(image: np.ndarray) -> np.ndarray:
    """The pixels on an image's four edges, in one flat array."""
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def _off_border(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` whose connected component does not reach the image border."""
    components, _ = ndi.label(mask)
    return mask & ~np.isin(components, _border(components))


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx ** 2 + yy ** 2 <= radius ** 2 + radius


def _scaled(feature: np.ndarray) -> np.ndarray:
    if len(feature) == len(SHAPE_SCALES):
        return feature / SHAPE_SCALES
    return feature / np.concatenate([SHAPE_SCALES, OBJECT_COLOR_SCALE])


class SceneParser:
    """Learn a product's parts from a few normal images, then parse queries into a :class:`Scene`.

    >>> parser = SceneParser().fit(reference_images)
    >>> scene = parser.parse(query)
    >>> print(parser.describe_parts())
    >>> parser.composition_score(scene), parser.composition_report(scene)
    """

    # backbone=None (colour only) is the default: on the synthetic benchmark, adding the
    # backbone's features made per-part counts less stable across images (count accuracy 0.36
    # vs 0.39) for a small composition gain (AUROC 0.69 vs 0.67), and counts are what the
    # LogiCode checks read.
    def __init__(self, backbone: Optional[str] = None, max_parts: int = 10,
                 image_size: int = 320, labeler: Any = None,
                 part_hints: Optional[Mapping[str, str]] = None, backbone_weight: float = 8.0,
                 object_share: float = 0.0, seed: int = 0):
        if max_parts < 1:
            raise ValueError(f"max_parts must be at least 1, got {max_parts}.")
        if image_size < 64:
            raise ValueError(f"image_size must be at least 64 pixels, got {image_size}.")
        self.backbone_name = backbone
        self.max_parts = int(max_parts)
        self.image_size = int(image_size)
        self.labeler = labeler
        self.part_hints = dict(part_hints or {})
        self.backbone_weight = float(backbone_weight)
        # foreground colours covering less than this share of the product are merged into
        # multi-colour objects (step 4); 0 keeps every colour a region of its own, which scored
        # best on the synthetic benchmark so far
        if not 0.0 <= object_share < 1.0:
            raise ValueError(f"object_share must be in [0, 1), got {object_share}.")
        self.object_share = float(object_share)
        self.seed = int(seed)
        self._backbone = None
        self._fitted = False
        self._typical_area: dict[str, float] = {}  # part id -> median component area in the references
        self._places: list = []  # (part id, place, scaled shape) of the references' components
        self._usual_count: dict[str, int] = {}  # part id -> the references' median count, rounded up
        self.reference_scenes: list[Scene] = []
        self.part_names: dict[str, str] = {}

    # ------------------------------------------------------------------ features
    def _get_backbone(self):
        if self.backbone_name is None:
            return None
        if self._backbone is None:
            try:
                from ..backbones import get_backbone
                self._backbone = get_backbone(self.backbone_name)
            except Exception as exc:  # no weights/loader: colour features still parse well
                warnings.warn(f"SceneParser: backbone {self.backbone_name!r} unavailable ({exc}); "
                              "parsing on colour features only.", stacklevel=3)
                self.backbone_name = None
                return None
        return self._backbone

    def _small(self, image: ImageInput) -> tuple[np.ndarray, tuple[int, int]]:
        img = load_image(image)
        w, h = img.size
        s = self.image_size / max(w, h)
        sw, sh = max(8, round(w * s)), max(8, round(h * s))
        small = np.asarray(img.resize((sw, sh), Image.Resampling.BILINEAR if s < 1 else Image.Resampling.NEAREST))
        return small, (w, h)

    def _compatible(self, features: Any, backbone: Any) -> bool:
        """Whether shared backbone features match those the parser was fitted with: the same
        backbone, network input size (long side ``image_size``) and the references' layer."""
        size, image = getattr(features, "input_size", None), getattr(features, "image_size", None)
        if size is None or image is None or getattr(features, "backbone", None) != getattr(backbone, "name", None):
            return False
        if tuple(size) != tuple(backbone.input_size_for(tuple(image), self.image_size)):
            return False
        return getattr(self, "_deep_layer", None) is None or self._deep_layer in features

    def _deep_features(self, image: ImageInput, shape: tuple[int, int], features: Any) -> Optional[np.ndarray]:
        own = self._get_backbone()
        if own is None:
            return None
        if features is not None and not self._compatible(features, own):
            # features shared by another detector at another input size or without our layer
            # would not match the PCA fitted on the references: compute our own
            features = None
        if features is None:
            features = own.extract(image, size=self.image_size)
        strides = getattr(features, "strides", {})
        if getattr(self, "_deep_layer", None) is None:
            # the stride-8 layer: fine enough for small parts, deep enough for texture
            self._deep_layer = min(features, key=lambda k: abs(strides.get(k, 8) - 8) + 0.01 * strides.get(k, 8))
        fmap = features[self._deep_layer]
        arr = fmap.detach().cpu().numpy() if hasattr(fmap, "detach") else np.asarray(fmap)
        arr = arr[0] if arr.ndim == 4 else arr  # (C, h, w)
        h, w = shape
        up = ndi.zoom(arr.astype(np.float32), (1, h / arr.shape[1], w / arr.shape[2]), order=1)
        return up.reshape(arr.shape[0], -1).T  # (h*w, C)

    def _pixel_features(self, small: np.ndarray, deep: Optional[np.ndarray]) -> np.ndarray:
        blurred = ndi.gaussian_filter(small.astype(np.float32), sigma=(PIXEL_BLUR, PIXEL_BLUR, 0))
        lab = rgb_to_lab(np.clip(blurred, 0, 255).astype(np.uint8)).reshape(-1, 3)
        lab[:, 0] *= LIGHTNESS_WEIGHT
        if deep is None or self._pca is None:
            return lab
        proj = (deep - self._pca_mean) @ self._pca.T
        return np.concatenate([lab, proj * self._pca_scale], axis=1)

    # ------------------------------------------------------------------ fit
    def fit(self, references: Sequence[ImageInput]) -> "SceneParser":
        refs = list(references)
        if not refs:
            raise ValueError("SceneParser.fit needs at least one normal reference image.")
        rng = np.random.default_rng(self.seed)
        smalls, sizes, deeps = [], [], []
        self._deep_layer = None
        for r in refs:
            small, size = self._small(r)
            smalls.append(small)
            sizes.append(size)
            deeps.append(self._deep_features(r, small.shape[:2], None))
        self._pca = None
        if all(d is not None for d in deeps):
            stack = np.concatenate(deeps)
            sample = stack[rng.choice(len(stack), min(len(stack), 20_000), replace=False)]
            self._pca_mean = sample.mean(0)
            _, sv, vt = np.linalg.svd(sample - self._pca_mean, full_matrices=False)
            self._pca = vt[:6]
            # scale deep components so their total spread is backbone_weight Lab units
            spread = float(np.sqrt((sv[:6] ** 2).sum() / len(sample)))
            self._pca_scale = self.backbone_weight / max(spread, 1e-6)
        feats = [self._pixel_features(s, d) for s, d in zip(smalls, deeps)]
        allf = np.concatenate(feats)
        sample = allf[rng.choice(len(allf), min(len(allf), PIXEL_SAMPLE), replace=False)]
        k = min(self.max_parts + 4, len(sample))
        km = KMeans(n_clusters=k, n_init=2, random_state=self.seed).fit(sample)
        centers = self._merge_centers(km.cluster_centers_, np.bincount(km.labels_, minlength=k))
        self._centers = centers
        labels = [self._label_map(f, s.shape[:2]) for f, s in zip(feats, smalls)]
        self._background = self._find_background(labels)
        labels = [self._background_on_product(lab, _lightness(f, lab.shape)) for lab, f in zip(labels, feats)]
        contrasts = [self._contrast(small, lab) for small, lab in zip(smalls, labels)]
        self._thing_threshold = self._fit_thing_threshold(contrasts)
        labels = [self._mark_things(lab, con) for lab, con in zip(labels, contrasts)]
        self._min_px = max(4, int(MIN_COMPONENT_FRACTION * smalls[0].shape[0] * smalls[0].shape[1]))
        self._carriers = self._find_carriers(labels)
        # regions of the carrier colours, and objects of everything else, across the references
        per_cluster: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, (lab, small) in enumerate(zip(labels, smalls)):
            for c in sorted(self._carriers):
                for props in self._regions(lab == c):
                    per_cluster.setdefault(c, []).append((i, props["shape"]))
            for props in self._objects(lab, rgb_to_lab(small)):
                per_cluster.setdefault(OBJECTS, []).append((i, props["shape"]))
        self._groups = self._fit_shape_groups(per_cluster, len(refs))
        self._part_info = {}
        self._fitted = True
        self._grid = None
        self._part_order()
        if len(refs) >= 2:
            self._enlist_rare_regions()
        # a first parse, every piece counted, gives each part's typical component area
        self._typical_area = {}
        self._places, self._usual_count = [], {}
        first = [self._parse_small(s, size, lab) for s, size, lab in zip(smalls, sizes, labels)]
        if self._join_colour_variants(first):
            first = [self._parse_small(s, size, lab) for s, size, lab in zip(smalls, sizes, labels)]
        self._typical_area = self._typical_areas(first)
        places: list = []
        scenes = [self._parse_small(s, size, lab, places) for s, size, lab in zip(smalls, sizes, labels)]
        self._fit_statistics(scenes)
        self._learn_places(places, scenes)
        if self._places:  # a reference may hold a stand-in too (the one orange juice of four)
            scenes = [self._parse_small(s, size, lab) for s, size, lab in zip(smalls, sizes, labels)]
            self._fit_statistics(scenes)
        self._grid = self._detect_grid(scenes)
        if self._grid is not None:
            scenes = [self._parse_small(s, size, lab) for s, size, lab in zip(smalls, sizes, labels)]
            self._fit_statistics(scenes)
        self.reference_scenes = scenes
        self.composition = CompositionScorer().fit(scenes)
        self._apply_hints()
        if self.labeler is not None:
            self._label_with(refs, smalls, labels)
        return self

    def _merge_centers(self, centers: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Merge k-means centres closer than MERGE_DISTANCE; complete linkage, so that a
        gradient of shades (a shaded bottle) cannot chain distinct colours together."""
        if len(centers) < 2:
            return centers
        merged_labels = AgglomerativeClustering(n_clusters=None, distance_threshold=MERGE_DISTANCE,
                                                linkage="complete").fit_predict(centers)
        merged = []
        for g in np.unique(merged_labels):
            idx = np.flatnonzero(merged_labels == g)
            w = weights[idx].astype(float) + 1e-9
            merged.append((centers[idx] * w[:, None]).sum(0) / w.sum())
        return np.asarray(merged)

    def _label_map(self, feats: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Nearest-centre labels, then a 5x5 majority vote: pixels on the blurred border between
        two colours get an in-between colour, and would otherwise form thin rings of a spurious part."""
        raw = self._assign(feats).reshape(shape)
        k = len(self._centers)
        votes = np.empty((k,) + shape, np.float32)
        for c in range(k):
            votes[c] = ndi.uniform_filter((raw == c).astype(np.float32), size=5, mode="nearest")
        return votes.argmax(0).astype(np.int32)

    def _assign(self, feats: np.ndarray) -> np.ndarray:
        """Nearest-centre labels after the centres follow this image's colours: a few k-means
        rounds from the fitted centres, each centre pulled only part of the way (ADAPT_ANCHOR)
        towards its pixels' mean. A photograph that is a little darker or bluer than the
        references then keeps its parts' identities, instead of moving pixels on the border of
        two colours to the other part."""
        def nearest(c: np.ndarray) -> np.ndarray:
            # squared distances via the expansion, cheap for ~100k pixels x ~12 centres
            d = (feats ** 2).sum(1)[:, None] - 2 * feats @ c.T + (c ** 2).sum(1)[None]
            return d.argmin(1).astype(np.int32)

        centers = self._centers.copy()
        for _ in range(ADAPT_ROUNDS):
            labels = nearest(centers)
            for j in range(len(centers)):
                mine = labels == j
                if mine.sum() >= ADAPT_MIN_PIXELS:
                    centers[j] = ADAPT_ANCHOR * self._centers[j] + (1 - ADAPT_ANCHOR) * feats[mine].mean(0)
        return nearest(centers)

    def _find_carriers(self, labels: Sequence[np.ndarray]) -> set[int]:
        """Foreground colours that cover a large share of the product (the tray, the bag, the
        liquid) are regions; smaller colours are pieces of objects lying on them."""
        k2 = 2 * len(self._centers)  # things (label k2) are never carriers
        counts = sum(np.bincount(lab.ravel(), minlength=k2 + 1) for lab in labels).astype(float)
        fg = [c for c in range(k2) if c not in self._background]
        total = counts[fg].sum() or 1.0
        return {c for c in fg if counts[c] / total >= self.object_share}

    def _objects(self, labels: np.ndarray, lab_img: np.ndarray) -> list[dict]:
        """Connected pieces of the non-carrier foreground: one object may span several colours
        (a metal screw's highlights and shadows, a fruit's shading)."""
        k = len(self._centers)
        skip = list(self._background) + list(self._carriers)
        mask = ~np.isin(labels, skip)
        # an opening cuts the thin bridges (rims, shadows) that join neighbouring objects; what
        # it removes is kept as thin objects of its own (cables, wires), not thrown away
        disk = _disk(OPEN_RADIUS)
        cores = ndi.binary_opening(mask, structure=disk)
        thin = mask & ~ndi.binary_dilation(cores, structure=np.ones((3, 3)))
        out = []
        for props in self._split_touching(cores) + self._components(thin, close=False):
            m = props["mask"]
            mean_lab = lab_img[props["slice"]][m].mean(0)
            props["shape"] = np.concatenate([props["shape"], mean_lab])
            out.append(props)
        return out

    def _regions(self, mask: np.ndarray) -> list[dict]:
        """Components of a carrier colour, split where they are joined by narrow necks."""
        mask = ndi.binary_closing(mask, structure=np.ones((3, 3)))
        # large regions (a tray, a bag, the liquid) stay whole; smaller ones may be touching objects
        comp, n = ndi.label(mask, structure=np.ones((3, 3)))
        if n == 0:
            return []
        large = np.flatnonzero(np.bincount(comp.ravel())[1:] > REGION_SPLIT_MAX * mask.size) + 1
        whole = np.isin(comp, large)
        if len(large) and np.isfinite(self._thing_threshold):
            # a carrier colour (it has a large region): objects lying on it are things, and its
            # small pieces are fragments between and around them, not parts
            return self._components(whole, close=False)
        return self._components(whole, close=False) + self._split_touching(mask & ~whole)

    def _split_touching(self, mask: np.ndarray) -> list[dict]:
        """Components, with touching round objects split by a watershed on the distance
        transform: markers are its h-maxima, so a flat ridge (a screw's shaft) stays one marker
        while two fruits joined by a narrow neck get one each."""
        from skimage.morphology import h_maxima
        from skimage.segmentation import watershed

        out = []
        comp, _ = ndi.label(mask, structure=np.ones((3, 3)))
        for i, sl in enumerate(ndi.find_objects(comp), start=1):
            if sl is None:
                continue
            own = comp[sl] == i
            area = int(own.sum())
            if area < self._min_px:
                continue
            # rings (washers, nuts) have no neck to cut: never split a component with a hole
            ring = ndi.binary_fill_holes(own).sum() > 1.05 * area
            pieces = []
            if area >= 2 * self._min_px and not ring:
                padded = np.pad(own, 1)
                dist = ndi.distance_transform_edt(padded)
                # the saddle must be deep relative to the object's width too: a screw's threads and
                # its head make shallow necks, two touching fruits a deep one
                depth = max(SPLIT_DEPTH, SPLIT_RELATIVE_DEPTH * float(dist.max()))
                markers, n = ndi.label(h_maxima(dist, depth), structure=np.ones((3, 3)))
                if n > 1:
                    regions = watershed(-dist, markers, mask=padded)[1:-1, 1:-1]
                    pieces = [(regions == r) & own for r in range(1, n + 1)]
                    pieces = [p for p in pieces if p.any()]
            if len(pieces) > 1 and min(p.sum() for p in pieces) >= max(self._min_px, MIN_PIECE * area):
                out.extend(self._describe_mask_in(piece, sl) for piece in pieces)
            else:
                out.append(self._describe_mask(own, sl))
        return out

    def _describe_mask_in(self, piece: np.ndarray, sl: tuple[slice, slice]) -> dict:
        ys, xs = np.nonzero(piece)
        sub = (slice(sl[0].start + ys.min(), sl[0].start + ys.max() + 1),
               slice(sl[1].start + xs.min(), sl[1].start + xs.max() + 1))
        return self._describe_mask(piece[ys.min():ys.max() + 1, xs.min():xs.max() + 1], sub)

    def _contrast(self, small: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per-pixel colour distance (Lab) to the local surface: the median colour of a window
        wider than the objects lying on the product. Objects on a carrier (a screw on a bag, a
        pin in a box) stand out whatever their internal colours, highlights and shadows; the
        carrier's own slow shading and fine texture do not. Background pixels are first filled
        with the nearest product colour, so the product's rim does not stand out."""
        lab = rgb_to_lab(small).astype(np.float32)
        bg = np.isin(labels, list(self._background))
        if bg.all():
            return np.zeros(labels.shape, np.float32)
        idx = ndi.distance_transform_edt(bg, return_distances=False, return_indices=True)
        filled = lab[idx[0], idx[1]]
        f = SURFACE_BLOCK
        h, w = labels.shape
        hh, ww = max(1, h // f), max(1, w // f)
        blocks = filled[:hh * f, :ww * f].reshape(hh, f, ww, f, 3).mean((1, 3))
        size = max(5, int(round(max(hh, ww) * SURFACE_WINDOW)))
        surface = np.stack([ndi.median_filter(blocks[..., c], size=size, mode="nearest") for c in range(3)], -1)
        surface = ndi.zoom(surface, (h / hh, w / ww, 1), order=1)[:h, :w]
        smooth = ndi.gaussian_filter(lab, sigma=(PIXEL_BLUR, PIXEL_BLUR, 0))
        contrast = np.sqrt(((smooth - surface) ** 2).sum(-1))
        contrast[bg] = 0.0
        return contrast

    @staticmethod
    def _fit_thing_threshold(contrasts: Sequence[np.ndarray]) -> float:
        """Otsu's threshold of the references' product-pixel contrasts: the split between the
        carriers' surface and the things lying on it."""
        from skimage.filters import threshold_otsu

        values = np.concatenate([c[c > 0] for c in contrasts])
        if values.size < 16 or values.max() - values.min() < 1e-3:
            return float("inf")
        return max(MIN_THING_CONTRAST, float(threshold_otsu(values)))

    def _mark_things(self, labels: np.ndarray, contrast: np.ndarray) -> np.ndarray:
        """Pixels that stand out from the local surface get the thing label (2K): they become
        objects (step 4), not pieces of their colour's regions."""
        things = ndi.binary_opening(contrast > self._thing_threshold, structure=np.ones((3, 3)))
        # the blurred rim around a thing belongs to it, not to fragments of the carrier's colour
        things = ndi.binary_dilation(things, structure=np.ones((3, 3)))
        out = labels.copy()
        out[things] = 2 * len(self._centers)
        return out

    def _background_on_product(self, labels: np.ndarray, lightness: np.ndarray) -> np.ndarray:
        """Background-coloured regions that do not touch the image border lie on the product
        (dark almonds in a tray on a dark table): give them their own cluster index, c + K.
        So do background-coloured areas lighter than the background ever is at the border
        (dark glass, a dark bag): lightness weighs little in the colour clusters, so they
        fall into the background's cluster, though no background pixel is as light."""
        bg = np.isin(labels, list(self._background))
        enclosed = _off_border(bg)
        out = labels.copy()
        out[enclosed] += len(self._centers)
        border, border_bg = _border(lightness), _border(bg)
        if border_bg.sum() < 16:
            return out
        lit = bg & ~enclosed & (lightness > np.percentile(border[border_bg], 99) + LIT_MARGIN)
        # a lit pixel next to another colour is that colour's blurred edge, not a part of its
        # own: on the product (a nut's halo on a dark bag) it belongs to that colour; between
        # the product and the plain background (a light tray's rim) it stays background
        distance, (iy, ix) = ndi.distance_transform_edt(bg, return_indices=True)
        rim = lit & (distance <= LIT_RIM)
        inner = rim & (ndi.distance_transform_edt(~(bg & ~lit)) > LIT_RIM)
        out[inner] = labels[iy[inner], ix[inner]]
        out[_off_border(lit & ~rim)] += len(self._centers)
        return out

    def _find_background(self, labels: Sequence[np.ndarray]) -> set[int]:
        share = np.zeros(len(self._centers))
        for lab in labels:
            border = _border(lab)
            share += np.bincount(border, minlength=len(self._centers)) / border.size
        share /= len(labels)
        bg = {int(c) for c in np.flatnonzero(share >= BORDER_SHARE_BACKGROUND)}
        if not bg:
            bg = {int(share.argmax())}
        return bg

    def _components(self, mask: np.ndarray, close: bool = True) -> list[dict]:
        if close:  # closing joins a part split by a thin highlight
            mask = ndi.binary_closing(mask, structure=np.ones((3, 3)))
        lab, n = ndi.label(mask, structure=np.ones((3, 3)))
        if n == 0:
            return []
        areas = np.bincount(lab.ravel(), minlength=n + 1)
        out = []
        slices = ndi.find_objects(lab)
        for i, sl in enumerate(slices, start=1):
            if areas[i] < self._min_px:
                continue
            comp = lab[sl] == i
            out.append(self._describe_mask(comp, sl))
        return out

    @staticmethod
    def _describe_mask(comp: np.ndarray, sl: tuple[slice, slice]) -> dict:
        ys, xs = np.nonzero(comp)
        area = float(len(xs))
        cy, cx = ys.mean(), xs.mean()
        cov = np.cov(np.stack([xs, ys]).astype(float)) if len(xs) > 1 else np.zeros((2, 2))
        evals, evecs = np.linalg.eigh(cov + np.eye(2) * (1 / 12))  # a pixel has variance 1/12
        major, minor = 4 * np.sqrt(evals[1]), 4 * np.sqrt(evals[0])
        vx, vy = evecs[:, 1]
        angle = float(np.degrees(np.arctan2(-vy, vx)))  # image y points down; 0 = horizontal
        if angle > 90:
            angle -= 180
        elif angle <= -90:
            angle += 180
        filled = ndi.binary_fill_holes(comp)
        hole_frac = float((filled.sum() - area) / max(filled.sum(), 1))
        # solidity approximated by the filled area over the bounding ellipse's area
        ellipse = np.pi * major * minor / 4
        solidity = float(min(1.0, filled.sum() / max(ellipse, 1.0)))
        return {
            "area": area, "centroid": (sl[1].start + cx, sl[0].start + cy),
            "bbox": (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop),
            "major": float(major), "minor": float(minor), "orientation": angle,
            "shape": _shape_features(area, major, minor, solidity, hole_frac),
            "mask": comp, "slice": sl,
        }

    def _fit_shape_groups(self, per_cluster: dict[int, list[tuple[int, np.ndarray]]], n_refs: int) -> list[_ShapeGroup]:
        groups: list[_ShapeGroup] = []
        group_area: list[float] = []
        fg_area = sum(np.exp(f[0]) for items in per_cluster.values() for _, f in items)
        for c, items in sorted(per_cluster.items()):
            areas = np.array([np.exp(f[0]) for _, f in items])
            # the cluster's area floor: a fraction of the typical largest component per image, so
            # specks and fragments of a colour do not count as objects of that colour
            largest = [areas[[i for i, (r, _) in enumerate(items) if r == ref]].max()
                       for ref in {r for r, _ in items}]
            floor = max(float(self._min_px), MIN_AREA_OF_LARGEST * float(np.median(largest)))
            keep = [i for i in range(len(items)) if areas[i] >= floor]
            if not keep:  # every piece of this colour is a speck below the smallest component kept
                continue
            cluster_share = areas[keep].sum() / max(fg_area, 1.0)
            X = np.stack([_scaled(items[i][1]) for i in keep])
            refs_of = np.array([items[i][0] for i in keep])
            assign = np.zeros(len(keep), int)
            if len(keep) > 1:
                split = AgglomerativeClustering(n_clusters=None, distance_threshold=SHAPE_SPLIT_DISTANCE,
                                                linkage="average").fit_predict(X)
                # a colour splits by shape only into groups that every reference (nearly) shows:
                # consistent sub-parts, not the random fragments of an amorphous region
                # (rare groups are fragments: they become noise and do not block the split)
                present = [len(set(refs_of[split == g])) for g in np.unique(split)]
                frequent = sum(n >= max(1, SPLIT_PRESENCE * n_refs) for n in present)
                if c == OBJECTS or frequent >= 2:
                    assign = split
                if c == OBJECTS:
                    assign = _split_subclasses(X, refs_of, assign, n_refs, seed=self.seed)
            for g in np.unique(assign):
                members = assign == g
                imgs = set(refs_of[members])
                min_presence = SPLIT_PRESENCE if len(np.unique(assign)) > 1 else 0.5
                noise = len(imgs) < max(1, min_presence * n_refs) or cluster_share < MIN_PART_SHARE
                groups.append(_ShapeGroup(c, X[members].mean(0), bool(noise), min_area=floor))
                group_area.append(float(areas[keep][members].sum()))
        # at most max_parts parts: the smallest (by area in the references) become noise
        real = sorted((i for i, g in enumerate(groups) if not g.noise), key=lambda i: -group_area[i])
        for i in real[self.max_parts:]:
            groups[i].noise = True
        return groups

    def _enlist_rare_regions(self) -> None:
        """Region groups seen in too few references to be parts of their own (an orange juice in
        one reference of four) get provisional ids, so that the first parse measures them and
        ``_join_colour_variants`` can join them to the part they stand in for."""
        k = len(self._groups)
        for g in self._groups:
            if g.noise and g.cluster != OBJECTS:
                k += 1
                g.part_id, g.noise, g.provisional = f"p{k}", False, True

    def _join_colour_variants(self, scenes: Sequence[Scene]) -> bool:
        """Regions of two colours that stand for one part in different references (a tray that is
        bluish-white in one photograph and white in the others, a juice that is red in three and
        orange in the fourth) become one part: each colour is a large region in some references,
        never both in the same one (nor does either hold over ``VARIANT_OVERLAP`` of the other's
        share there), and they cover about the same share of the product at about the same
        place. A colour seen in a single reference (a provisional group, see
        ``_enlist_rare_regions``) may join a part but never takes one in; if it joins none it
        stays noise."""
        provisional = {g.part_id for g in self._groups if g.provisional}
        region_ids = {g.part_id for g in self._groups if not g.noise and g.cluster != OBJECTS}
        if len(scenes) < 2:  # one image cannot show a colour standing in for another
            region_ids = set()
        stats = {}
        for pid in region_ids:
            # present where it is a large region: a speck of the colour elsewhere (a reflection of
            # a red juice on an orange one) is not that part standing in that reference
            shares = np.array([sum(c.area_frac for c in s.components if c.part == pid) for s in scenes])
            present = shares >= VARIANT_MIN_AREA
            comps = [c for s, here in zip(scenes, present) if here for c in s.components if c.part == pid]
            if not comps:
                continue
            area = float(shares[present].mean())
            w = np.array([c.area_frac for c in comps])
            centre = (np.array([c.centroid_rel for c in comps]) * w[:, None]).sum(0) / max(w.sum(), 1e-9)
            stats[pid] = (present, float(area), centre, shares)
        joined = False
        ids = sorted(stats, key=lambda p: -stats[p][1])
        absorbed: set[str] = set()
        for a in ids:
            if a in absorbed or a in provisional:
                continue
            pres_a, area_a, centre_a, shares_a = stats[a]
            for b in ids:
                if b == a or b in absorbed or (b not in provisional and stats[b][1] > area_a):
                    continue  # a real part joins only a larger one; a provisional group any part
                pres_b, area_b, centre_b, shares_b = stats[b]
                # one colour stands in for the other: in no reference do both hold a real share
                if (pres_a & pres_b).any() or (np.minimum(shares_a, shares_b)
                                               > VARIANT_OVERLAP * np.maximum(shares_a, shares_b)).any():
                    continue
                if (min(area_a, area_b) < VARIANT_AREA_RATIO * max(area_a, area_b)
                        or np.abs(centre_a - centre_b).max() > VARIANT_PLACE):
                    continue
                for g in self._groups:
                    if g.part_id == b:
                        g.part_id, g.provisional = a, False
                pres_a, shares_a = pres_a | pres_b, shares_a + shares_b
                absorbed.add(b)
                joined = True
        for g in self._groups:
            if g.provisional:  # joined no part: noise, as before
                g.part_id, g.noise, g.provisional = "", True, False
        # the gap an absorbed id leaves closes when _fit_statistics renumbers the parts by area
        return joined

    def _part_order(self) -> None:
        """Provisional ids; final ids are re-assigned by reference area in _fit_statistics."""
        k = 0
        for g in self._groups:
            if not g.noise:
                k += 1
                g.part_id = f"p{k}"

    # ------------------------------------------------------------------ parse
    def _check(self) -> None:
        if not self._fitted:
            raise NotFittedError("SceneParser is not fitted: call fit(references) first.")

    def parse(self, image: ImageInput, features: Any = None) -> Scene:
        """Parse one image. ``features``: this image's backbone FeatureMaps, if already computed."""
        self._check()
        small, size = self._small(image)
        deep = None
        if self._pca is not None:
            deep = self._deep_features(image, small.shape[:2], features)
        feats = self._pixel_features(small, deep)
        labels = self._label_map(feats, small.shape[:2])
        labels = self._background_on_product(labels, _lightness(feats, labels.shape))
        labels = self._mark_things(labels, self._contrast(small, labels))
        return self._parse_small(small, size, labels)

    def _parse_small(self, small: np.ndarray, size: tuple[int, int], labels: np.ndarray,
                     places: Optional[list] = None) -> Scene:
        """Parse one downscaled image's labels. ``places``: a list that receives each counted
        piece's (group, shape, place relative to the product's box), to learn where parts lie."""
        h, w = labels.shape
        sx, sy = size[0] / w, size[1] / h
        fg = ~np.isin(labels, list(self._background))
        x0, y0, x1, y1 = self._product_box(fg)
        pw, ph = max(x1 - x0, 1), max(y1 - y0, 1)
        product_area = float(fg[y0:y1, x0:x1].sum()) or float(pw * ph)
        comps: list[Component] = []
        segmentation = np.zeros((h, w), np.int32)
        part_ids = self.part_ids()
        by_cluster: dict[int, list[_ShapeGroup]] = {}
        for g in self._groups:
            by_cluster.setdefault(g.cluster, []).append(g)
        lab_img = rgb_to_lab(small)
        pieces: list[tuple[dict, _ShapeGroup]] = []
        strays: list[dict] = []  # pieces of no part
        for c, groups in by_cluster.items():
            found = self._objects(labels, lab_img) if c == OBJECTS else self._regions(labels == c)
            for props in found:
                if props["area"] < groups[0].min_area:
                    continue
                f = _scaled(props["shape"])
                g = min(groups, key=lambda gg: float(np.linalg.norm(gg.center - f)))
                if not g.noise:
                    pieces.append((props, g))
                elif self._places:
                    strays.append(props)
        if self._places:  # a colour that formed no piece in the references (a juice of a new colour)
            for c in sorted(self._carriers - set(by_cluster)):
                mask = labels == c
                if mask.any():
                    strays += self._regions(mask)
        if strays:
            pieces += self._stand_ins(strays, pieces, (x0, y0, pw, ph))
        counted = self._absorb_fragments(pieces, sx * sy)
        if places is not None:
            places += [(g, props["shape"], ((props["centroid"][0] - x0) / pw, (props["centroid"][1] - y0) / ph))
                       for props, g in counted]
        for props, g in pieces:  # fragments are painted with their part, not counted
            segmentation[props["slice"]][props["mask"]] = part_ids.index(g.part_id) + 1
        for props, g in counted:
            sl = props["slice"]
            rgb = small[sl][props["mask"]].mean(0)
            rgb_t = (int(round(rgb[0])), int(round(rgb[1])), int(round(rgb[2])))
            cx, cy = props["centroid"]
            rx, ry = (cx - x0) / pw, (cy - y0) / ph
            rx, ry = float(np.clip(rx, 0, 1)), float(np.clip(ry, 0, 1))
            horizontal, vertical = position_words(rx, ry)
            bx0, by0, bx1, by1 = props["bbox"]
            scale_len = np.sqrt(sx * sy)
            comps.append(Component(
                id=len(comps), part=g.part_id, area=props["area"] * sx * sy,
                area_frac=props["area"] / product_area,
                centroid=((cx + 0.5) * sx, (cy + 0.5) * sy), centroid_rel=(rx, ry),
                bbox=(int(bx0 * sx), int(by0 * sy), int(np.ceil(bx1 * sx)), int(np.ceil(by1 * sy))),
                orientation=props["orientation"], major_axis=props["major"] * scale_len,
                minor_axis=props["minor"] * scale_len, color_rgb=rgb_t, color_name=color_name(rgb_t),
                horizontal=horizontal, vertical=vertical,
                grid_cell=self._grid_cell(rx, ry),
            ))
        parts = []
        for pid in part_ids:
            mine = [c for c in comps if c.part == pid]
            info = self._part_info.get(pid, {}) if hasattr(self, "_part_info") else {}
            parts.append(Part(
                id=pid, name=self.part_names.get(pid), description=info.get("description", pid),
                color_name=info.get("color_name", mine[0].color_name if mine else "unknown"),
                count=len(mine), total_area=float(sum(c.area for c in mine)),
                ref_count=info.get("ref_count"), ref_area=info.get("ref_area"),
            ))
        return Scene(
            image_size=size,
            product_bbox=(int(x0 * sx), int(y0 * sy), int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy))),
            grid=None if self._grid is None else (len(self._grid[1]) + 1, len(self._grid[0]) + 1),
            parts=parts, components=comps, segmentation=segmentation,
        )

    def _stand_ins(self, strays: list[dict], pieces: list[tuple[dict, "_ShapeGroup"]],
                   box: tuple[int, int, int, int]) -> list[tuple[dict, "_ShapeGroup"]]:
        """Pieces of no part that stand in for a part: where a component of it lay in a
        reference, with its shape, while the image holds fewer of that part than usual. Neither
        their colour nor whether they parsed as a region or as objects is asked (a juice of an
        unknown colour may fall to either): a juice or a cable of a colour that no reference
        shows as that part is still that part, and its colour is measured, so a rule can say it
        is the wrong colour rather than that it is missing."""
        x0, y0, pw, ph = box
        group_of = {g.part_id: g for g in self._groups if not g.noise}
        have: dict[str, int] = {}
        for _, g in pieces:
            have[g.part_id] = have.get(g.part_id, 0) + 1
        out = []
        for props in sorted(strays, key=lambda t: -t["area"]):
            shape = props["shape"][:len(SHAPE_SCALES)] / SHAPE_SCALES
            rx, ry = (props["centroid"][0] - x0) / pw, (props["centroid"][1] - y0) / ph
            best, best_d = None, np.inf
            for pid, place, ref_shape in self._places:
                if pid not in group_of or have.get(pid, 0) >= self._usual_count.get(pid, 0):
                    continue
                if abs(place[0] - rx) > STAND_IN_PLACE or abs(place[1] - ry) > STAND_IN_PLACE:
                    continue
                d = float(np.linalg.norm(shape - ref_shape))
                if d <= SHAPE_SPLIT_DISTANCE and d < best_d:
                    best, best_d = pid, d
            if best is not None:
                out.append((props, group_of[best]))
                have[best] = have.get(best, 0) + 1
        return out

    def _learn_places(self, places: list, scenes: Sequence[Scene]) -> None:
        """Where each part's components lie in the references, with their shapes (colour left
        out), and each part's usual count, for ``_stand_ins``. The usual count is the median, not
        the most one reference held: with the most, a juice parsed as two pieces in one reference
        let two pieces stand in elsewhere (four synthetic seeds: juice counts right 18 of 40 with
        the most, 27 with the median)."""
        self._places = [(g.part_id, (float(p[0]), float(p[1])), shape[:len(SHAPE_SCALES)] / SHAPE_SCALES)
                        for g, shape, p in places if not g.noise]
        per_part: dict[str, list[int]] = {}
        for scene in scenes:
            for pid, n in scene.counts().items():
                per_part.setdefault(pid, []).append(n)
        self._usual_count = {pid: int(np.ceil(np.median(ns))) for pid, ns in per_part.items()}

    def _absorb_fragments(self, pieces: list[tuple[dict, "_ShapeGroup"]], px_area: float) -> list[tuple[dict, "_ShapeGroup"]]:
        """A piece much smaller than its part's components in the references, lying next to a
        larger piece of the same part, is a fragment of it (a shaded fruit, a glinting nut, a
        bottle cut by its label): its area joins that piece and it is not counted on its own.
        So is a piece next to another one when both are too small for one object and together
        about one (``HALF_SHARE``, ``HALF_UNION``)."""
        typical = self._typical_area
        if not typical:
            return pieces
        kept: list[tuple[dict, _ShapeGroup]] = []
        order = sorted(range(len(pieces)), key=lambda i: -pieces[i][0]["area"])
        for i in order:
            props, g = pieces[i]
            ref = typical.get(g.part_id)
            area = props["area"] * px_area
            if ref and area < max(FRAGMENT_SHARE, HALF_SHARE) * ref:
                x0, y0, x1, y1 = props["bbox"]
                host = next((h for h, hg in kept if hg.part_id == g.part_id
                             and h["bbox"][0] - FRAGMENT_GAP <= x1 and x0 <= h["bbox"][2] + FRAGMENT_GAP
                             and h["bbox"][1] - FRAGMENT_GAP <= y1 and y0 <= h["bbox"][3] + FRAGMENT_GAP
                             and _joins(area, h["area"] * px_area, ref)), None)
                if host is not None:
                    host["area"] += props["area"]  # the part's area stays whole
                    continue
            kept.append((props, g))
        return kept

    def _product_box(self, fg: np.ndarray) -> tuple[int, int, int, int]:
        lab, n = ndi.label(fg)
        if n == 0:
            return 0, 0, fg.shape[1], fg.shape[0]
        areas = np.bincount(lab.ravel())[1:]
        keep = np.flatnonzero(areas >= 0.05 * areas.max()) + 1
        ys, xs = np.nonzero(np.isin(lab, keep))
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    def _grid_cell(self, rx: float, ry: float) -> Optional[tuple[int, int]]:
        if self._grid is None:
            return None
        xs, ys = self._grid
        return (int(np.searchsorted(ys, ry)), int(np.searchsorted(xs, rx)))

    # ------------------------------------------------------------------ statistics and words
    def part_ids(self) -> list[str]:
        return sorted({g.part_id for g in self._groups if not g.noise}, key=lambda p: int(p[1:]))

    def _typical_areas(self, scenes: Sequence[Scene]) -> dict[str, float]:
        """Each part's median component area in the references (full-resolution pixels)."""
        out = {}
        for pid in self.part_ids():
            areas = [c.area for s in scenes for c in s.components if c.part == pid]
            if areas:
                out[pid] = float(np.median(areas))
        return out

    def _fit_statistics(self, scenes: Sequence[Scene]) -> None:
        ids = self.part_ids()
        counts = {p: [s.part(p).count for s in scenes] for p in ids}
        areas = {p: [sum(c.area_frac for c in s.components if c.part == p) for s in scenes] for p in ids}
        # stable ids: by decreasing mean area in the references
        order = sorted(ids, key=lambda p: -float(np.mean(areas[p])))
        rename = {old: f"p{i + 1}" for i, old in enumerate(order)}
        if any(k != v for k, v in rename.items()):
            for g in self._groups:
                if not g.noise:
                    g.part_id = rename[g.part_id]
            # the segmentation holds 1 + the index of the part id: remap it with the ids
            new_ids = sorted(rename.values(), key=lambda p: int(p[1:]))
            lut = np.zeros(len(ids) + 1, np.int32)
            for i, old in enumerate(ids, start=1):
                lut[i] = new_ids.index(rename[old]) + 1
            for s in scenes:
                if s.segmentation is not None:
                    s.segmentation = lut[s.segmentation]
                for c in s.components:
                    c.part = rename[c.part]
                for p in s.parts:
                    p.id = rename[p.id]
            counts = {rename[k]: v for k, v in counts.items()}
            areas = {rename[k]: v for k, v in areas.items()}
            self._typical_area = {rename[k]: v for k, v in getattr(self, "_typical_area", {}).items()}
            self._places = [(rename.get(pid, pid), *rest) for pid, *rest in self._places]
            self._usual_count = {rename.get(k, k): v for k, v in self._usual_count.items()}
        info: dict[str, dict] = {}
        for p in self.part_ids():
            comps = [c for s in scenes for c in s.components if c.part == p]
            abs_areas = [sum(c.area for c in s.components if c.part == p) for s in scenes]
            rgb = np.mean([c.color_rgb for c in comps], axis=0) if comps else np.zeros(3)
            cname = color_name(tuple(int(v) for v in rgb))
            info[p] = {
                "color_name": cname, "color_rgb": [int(v) for v in rgb],
                "ref_count": Stats.of(counts[p]), "ref_area": Stats.of(abs_areas),
                "ref_area_frac": Stats.of(areas[p]),
                "description": self._describe(p, cname, comps, counts[p]),
            }
        self._part_info = info
        for s in scenes:
            for part in s.parts:
                i = info[part.id]
                part.description, part.color_name = i["description"], i["color_name"]
                part.ref_count, part.ref_area = i["ref_count"], i["ref_area"]

    @staticmethod
    def _describe(pid: str, cname: str, comps: Sequence[Component], counts: Sequence[int]) -> str:
        if not comps:
            return f"{pid}: {cname}, rarely present"
        elong = float(np.median([c.major_axis / max(c.minor_axis, 1e-6) for c in comps]))
        frac = float(np.median([c.area_frac for c in comps]))
        shape = "elongated" if elong > 2.5 else ("oval" if elong > 1.5 else "round")
        size = "tiny" if frac < 0.003 else "small" if frac < 0.02 else "medium" if frac < 0.1 else "large"
        hs = [c.horizontal for c in comps]
        vs = [c.vertical for c in comps]
        # the most common, ties to the first component: max over a set broke ties by string
        # hash, which Python randomises per process, so the parts table (and the LogiCode
        # written from it, and its cache key) changed from run to run
        h = max(hs, key=hs.count)
        v = max(vs, key=vs.count)
        where = {"center": "", "left": "left", "right": "right"}[h]
        where = (" ".join(x for x in ({"middle": "", "top": "top", "bottom": "bottom"}[v], where) if x)
                 or "center")
        lo, hi = int(min(counts)), int(max(counts))
        n = f"usually {int(np.median(counts))}" if lo == hi else f"{lo}-{hi}"
        mean_len = float(np.median([c.major_axis for c in comps]))
        return (f"{pid}: {cname}, {shape}, {size} ({100 * frac:.1f}% of product each, ~{mean_len:.0f} px long), "
                f"{n} per image, {where}")

    def describe_parts(self) -> str:
        """The parts table a language model reads to map rule nouns to part ids."""
        self._check()
        lines = ["id | name | description | ref count mean (min-max) | ref area fraction mean"]
        for pid in self.part_ids():
            i = self._part_info[pid]
            rc, ra = i["ref_count"], i["ref_area_frac"]
            lines.append(f"{pid} | {self.part_names.get(pid, '-')} | {i['description']} | "
                         f"{rc.mean:.1f} ({rc.min:.0f}-{rc.max:.0f}) | {ra.mean:.3f}")
        if self._grid is not None:
            lines.append(f"grid: {len(self._grid[1]) + 1} rows x {len(self._grid[0]) + 1} cols")
        return "\n".join(lines)

    # ------------------------------------------------------------------ grid
    def _detect_grid(self, scenes: Sequence[Scene]) -> Optional[tuple[list[float], list[float]]]:
        """A part that repeats >= 4 times at the same positions in every reference forms a grid."""
        for pid in self.part_ids():
            counts = [s.part(pid).count for s in scenes]
            if min(counts) < 4 or max(counts) - min(counts) > 1:
                continue
            pts = np.array([c.centroid_rel for s in scenes for c in s.components if c.part == pid])
            xs, ys = _split_1d(pts[:, 0]), _split_1d(pts[:, 1])
            if len(xs) < 2 and len(ys) < 2:
                continue
            cells = len(xs) * len(ys)
            if 0.75 * cells <= np.median(counts) <= cells:
                return (_edges(xs), _edges(ys))
        return None

    # ------------------------------------------------------------------ names
    def set_part_names(self, names: Mapping[str, str]) -> None:
        """Name parts: ``{part_id: name}`` (ids from :meth:`describe_parts`)."""
        self._check()
        unknown = [p for p in names if p not in self.part_ids()]
        if unknown:
            raise KeyError(f"unknown part ids {unknown}; parts are {self.part_ids()}")
        self.part_names.update({str(k): str(v) for k, v in names.items()})
        for s in self.reference_scenes:
            for p in s.parts:
                p.name = self.part_names.get(p.id)

    def _apply_hints(self) -> None:
        """``part_hints={"orange": "orange", "cable": "yellow|blue|red"}``: name -> colour words."""
        taken = set(self.part_names)
        for name, colours in self.part_hints.items():
            words = {w.strip().lower() for w in str(colours).split("|") if w.strip()}
            for pid in self.part_ids():  # ids are by decreasing area: the largest match wins
                if pid in taken:
                    continue
                cname = self._part_info[pid]["color_name"]
                if cname in words or cname.split()[-1] in words:
                    self.part_names[pid] = name
                    taken.add(pid)
                    break
        self.set_part_names({})

    def _label_with(self, refs: Sequence[ImageInput], smalls: Sequence[np.ndarray], labels) -> None:
        """Ask an optional labeler (e.g. CLIP) for names: crops of each part's components."""
        crops: dict[str, list[Image.Image]] = {}
        for ref, scene in zip(refs, self.reference_scenes):
            img = load_image(ref)
            for c in scene.components:
                if len(crops.setdefault(c.part, [])) < 4:
                    crops[c.part].append(img.crop(c.bbox))
        try:
            names = self.labeler.name_parts(crops)
        except Exception as exc:  # a labeler failure must not lose the parse
            warnings.warn(f"SceneParser: labeler failed ({exc}); parts keep their ids.", stacklevel=2)
            return
        self.set_part_names({k: v for k, v in dict(names).items() if k in self.part_ids() and k not in self.part_names})

    # ------------------------------------------------------------------ composition
    def composition_score(self, scene: Scene) -> float:
        """Calibrated rules-free composition anomaly score in [0, 1]; 0.5 is the threshold."""
        self._check()
        return self.composition.score(scene)

    def composition_report(self, scene: Scene, top: int | None = 5) -> list[Deviation]:
        """The quantities that deviate most from the references, largest z first."""
        self._check()
        return self.composition.report(scene, top)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Save as JSON (no pickles): clusters, parts, statistics and the reference scenes."""
        self._check()
        data = {
            "format": "logiscan.SceneParser", "version": FORMAT_VERSION,
            "config": {"backbone": self.backbone_name, "max_parts": self.max_parts, "image_size": self.image_size,
                       "backbone_weight": self.backbone_weight, "seed": self.seed,
                       "object_share": self.object_share, "part_hints": self.part_hints},
            "centers": self._centers.tolist(), "background": sorted(self._background),
            "carriers": sorted(self._carriers), "min_px": self._min_px, "deep_layer": self._deep_layer,
            "thing_threshold": None if not np.isfinite(self._thing_threshold) else self._thing_threshold,
            "pca": None if self._pca is None else {"components": self._pca.tolist(), "mean": self._pca_mean.tolist(),
                                                   "scale": self._pca_scale},
            "groups": [g.to_dict() for g in self._groups],
            "typical_area": self._typical_area,
            "places": [[pid, list(place), shape.tolist()] for pid, place, shape in self._places],
            "usual_count": self._usual_count,
            "grid": None if self._grid is None else [list(self._grid[0]), list(self._grid[1])],
            "part_names": self.part_names,
            "part_info": {p: {**{k: v for k, v in i.items() if not isinstance(v, Stats)},
                              **{k: v.model_dump() for k, v in i.items() if isinstance(v, Stats)}}
                          for p, i in self._part_info.items()},
            "reference_scenes": [s.model_dump(mode="json") for s in self.reference_scenes],
            "composition": self.composition.to_dict(),
        }
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> "SceneParser":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"Cannot load a SceneParser from '{path}': {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != "logiscan.SceneParser":
            raise ValueError(f"'{path}' is not a saved SceneParser.")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"'{path}' has SceneParser format version {data.get('version')}; "
                             f"this version reads {FORMAT_VERSION}. Fit and save it again.")
        cfg = data["config"]
        obj = cls(backbone=cfg["backbone"], max_parts=cfg["max_parts"], image_size=cfg["image_size"],
                  backbone_weight=cfg["backbone_weight"], seed=cfg["seed"],
                  object_share=cfg.get("object_share", 0.0), part_hints=cfg["part_hints"])
        obj._centers = np.asarray(data["centers"], float)
        obj._background = set(int(b) for b in data["background"])
        obj._carriers = set(int(b) for b in data["carriers"])
        obj._deep_layer = data.get("deep_layer")
        obj._min_px = int(data["min_px"])
        threshold = data.get("thing_threshold")
        obj._thing_threshold = float("inf") if threshold is None else float(threshold)
        obj._pca = None
        if data["pca"] is not None:
            obj._pca = np.asarray(data["pca"]["components"], float)
            obj._pca_mean = np.asarray(data["pca"]["mean"], float)
            obj._pca_scale = float(data["pca"]["scale"])
        obj._groups = [_ShapeGroup.from_dict(g) for g in data["groups"]]
        obj._typical_area = {str(k): float(v) for k, v in data["typical_area"].items()}
        obj._places = [(str(pid), (float(p[0]), float(p[1])), np.asarray(sh, float)) for pid, p, sh in data["places"]]
        obj._usual_count = {str(k): int(v) for k, v in data["usual_count"].items()}
        obj._grid = None if data["grid"] is None else (list(data["grid"][0]), list(data["grid"][1]))
        obj.part_names = dict(data["part_names"])
        obj._part_info = {p: {k: (Stats.model_validate(v) if k.startswith("ref_") else v) for k, v in i.items()}
                          for p, i in data["part_info"].items()}
        obj.reference_scenes = [Scene.model_validate(s) for s in data["reference_scenes"]]
        obj.composition = CompositionScorer.from_dict(data["composition"])
        obj._fitted = True
        return obj


def _split_1d(values: np.ndarray, gap: float = 0.06) -> list[float]:
    """Centres of 1-D clusters separated by gaps wider than ``gap``."""
    v = np.sort(values)
    groups, cur = [], [v[0]]
    for a in v[1:]:
        if a - cur[-1] > gap:
            groups.append(cur)
            cur = []
        cur.append(a)
    groups.append(cur)
    return [float(np.mean(g)) for g in groups]


def _edges(centres: list[float]) -> list[float]:
    return [(a + b) / 2 for a, b in zip(centres[:-1], centres[1:])]
