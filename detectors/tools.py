"""The detectors as LangChain tools, so that any LangChain agent can call them.

>>> tools = detector_tools(structural=patchcore, parser=scene_parser, clip_detectors=[winclip])
>>> [t.name for t in tools]
['structural_score', 'parse_scene', 'composition_score', 'winclip_score']
>>> tools[0].invoke({"image_path": "bottle.png"})["score"]

Every tool takes a typed input (:class:`ImageArgs`: an image path) and returns plain JSON
data validated by a pydantic output model (listed in :data:`TOOL_OUTPUT_MODELS`, and in
each tool's ``metadata["output_schema"]``). Errors a caller can fix (a missing file, an
unfitted detector) come back as a :class:`~langchain_core.tools.ToolException` message
the agent can read, not as a crash.

Tools built by one :func:`detector_tools` call share a small cache: the backbone runs
once per image when the structural detector and the parser use the same features, and
``composition_score`` reuses the scene that ``parse_scene`` just computed.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, runtime_checkable

import numpy as np
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field

from .base import Detector, NotFittedError
from .images import ImageInputError
from .schema import AnomalyResult, Scene

__all__ = [
    "AnomalyScoreOutput",
    "CompositionOutput",
    "DeviationOutput",
    "ImageArgs",
    "NoArgs",
    "Region",
    "SceneParserLike",
    "TOOL_OUTPUT_MODELS",
    "anomaly_regions",
    "bound_tools",
    "detector_score_tool",
    "detector_tools",
]


# ---------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------


class ImageArgs(BaseModel):
    """Input of every detector tool."""

    image_path: str = Field(description="Path of the image file to inspect (PNG, JPEG, ...).")


class NoArgs(BaseModel):
    """Input of a tool bound to one image (:func:`bound_tools`): nothing."""


class Region(BaseModel):
    """A connected region of the anomaly map above the decision threshold."""

    bbox: tuple[int, int, int, int] = Field(description="(x0, y0, x1, y1) in image pixels, exclusive end")
    centroid: tuple[float, float] = Field(description="(x, y) in image pixels")
    area_frac: float = Field(description="region area as a fraction of the image area")
    peak: float = Field(description="largest map value inside the region")


class AnomalyScoreOutput(BaseModel):
    """Result of an image-level anomaly detector, as JSON."""

    detector: str
    score: float = Field(description="anomaly score; in [0, 1] with 0.5 as threshold when calibrated")
    raw_score: float
    calibrated: bool
    is_anomalous: Optional[bool] = Field(
        default=None, description="score >= 0.5, when the score is calibrated; null otherwise"
    )
    peak_xy: Optional[tuple[int, int]] = Field(default=None, description="(x, y) of the map's maximum")
    image_size: Optional[tuple[int, int]] = Field(default=None, description="(width, height) in pixels")
    regions: list[Region] = Field(
        default_factory=list, description="map regions above 0.5 (calibrated maps only), strongest first"
    )
    seconds: float = 0.0


class DeviationOutput(BaseModel):
    """How one quantity of one part compares with the references."""

    part: str
    quantity: str
    observed: float
    ref_mean: float
    ref_std: float
    z: float


class CompositionOutput(BaseModel):
    """The rules-free composition score of an image, with the quantities that drive it."""

    score: float = Field(description="calibrated composition anomaly score in [0, 1]; 0.5 is the threshold")
    is_anomalous: bool
    deviations: list[DeviationOutput] = Field(
        default_factory=list, description="the part quantities furthest from the references, largest first"
    )


#: tool name (or, for generic detector tools, the suffix ``_score``) -> output model
TOOL_OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "structural_score": AnomalyScoreOutput,
    "parse_scene": Scene,
    "composition_score": CompositionOutput,
    "*_score": AnomalyScoreOutput,
}


@runtime_checkable
class SceneParserLike(Protocol):
    """What the tools need from a scene parser (``detectors.parsing.SceneParser``)."""

    def parse(self, image: Any) -> Scene: ...

    def composition_score(self, scene: Scene) -> float: ...


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def anomaly_regions(anomaly_map: np.ndarray | None, threshold: float = 0.5, max_regions: int = 5,
                    work_side: int = 256) -> list[Region]:
    """Connected regions of ``anomaly_map`` above ``threshold``, strongest first.

    The map is labelled on a copy downsampled to ``work_side`` on its long side (regions
    smaller than a few pixels of a 1600 px image are not meaningful for an explanation,
    and labelling the full map costs tens of milliseconds).
    """
    if anomaly_map is None or anomaly_map.size == 0:
        return []
    from scipy import ndimage as ndi

    h, w = anomaly_map.shape
    step = max(1, int(np.ceil(max(h, w) / work_side)))
    small = anomaly_map[::step, ::step]
    labels, n = ndi.label(small >= threshold)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    peaks = ndi.maximum(small, labels, idx)
    sizes = ndi.sum(np.ones_like(small), labels, idx)
    centers = ndi.center_of_mass(np.ones_like(small), labels, idx)
    slices = ndi.find_objects(labels)
    regions = []
    for k in np.argsort(-np.asarray(peaks))[:max_regions]:
        sy, sx = slices[k]
        cy, cx = centers[k]
        regions.append(Region(
            bbox=(int(sx.start * step), int(sy.start * step), int(min(w, sx.stop * step)), int(min(h, sy.stop * step))),
            centroid=(float(cx * step), float(cy * step)),
            area_frac=float(sizes[k] / small.size),
            peak=float(peaks[k]),
        ))
    return regions


def _to_output(result: AnomalyResult) -> AnomalyScoreOutput:
    amap = result.anomaly_map
    return AnomalyScoreOutput(
        detector=result.detector,
        score=result.score,
        raw_score=result.raw_score,
        calibrated=result.calibrated,
        is_anomalous=(result.score >= 0.5) if result.calibrated else None,
        peak_xy=result.peak_xy,
        image_size=None if amap is None else (int(amap.shape[1]), int(amap.shape[0])),
        regions=anomaly_regions(amap) if (result.calibrated and amap is not None) else [],
        seconds=result.seconds,
    )


def _checked_path(image_path: str) -> Path:
    path = Path(os.path.expanduser(image_path))
    try:
        is_file = path.is_file()
    except OSError as exc:  # a name too long, a folder we may not enter
        raise ToolException(f"Cannot read image '{image_path[:200]}': {exc.strerror or exc}.") from exc
    if not is_file:
        raise ToolException(
            f"Cannot read image '{image_path}': "
            + ("it is a directory, not a file." if path.is_dir() else "the file does not exist.")
        )
    return path


class _Cache:
    """A tiny LRU keyed by (kind, resolved path, mtime, size) -- safe if a file is rewritten."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._data: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(kind: str, path: Path) -> tuple:
        st = path.stat()
        return (kind, str(path.resolve()), st.st_mtime_ns, st.st_size)

    def get_or_compute(self, kind: str, path: Path, compute: Callable[[], Any]) -> Any:
        key = self.key(kind, path)
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = compute()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
        return value


def _run(fn: Callable[[], Any]) -> Any:
    """Turn the errors a caller can act on into ToolExceptions with the same message."""
    try:
        return fn()
    except (ImageInputError, NotFittedError, FileNotFoundError, ValueError) as exc:
        raise ToolException(str(exc)) from exc


def _make_tool(func: Callable[..., dict], name: str, description: str,
               output_model: type[BaseModel], args_schema: type[BaseModel] = ImageArgs) -> StructuredTool:
    return StructuredTool.from_function(
        func=func,
        name=name,
        description=description,
        args_schema=args_schema,
        handle_tool_error=True,
        metadata={"output_schema": output_model.model_json_schema(mode="serialization"),
                  "output_model": output_model.__name__},
    )


# ---------------------------------------------------------------------------------------
# Tool builders
# ---------------------------------------------------------------------------------------

STRUCTURAL_DESCRIPTION = (
    "Structural anomaly score of an image (scratches, dents, contamination, broken or "
    "deformed parts), from a few-shot patch memory of normal references. Returns JSON with "
    "'score' in [0, 1] (0.5 = threshold), 'is_anomalous', 'peak_xy' and 'regions' "
    "(bounding boxes of the anomalous areas). It cannot count parts: use parse_scene for that."
)
LAYOUT_DESCRIPTION = (
    "Layout anomaly score of an image: each region compared with the same region of the normal "
    "references, so a missing, extra, moved or swapped part stands out even when every part looks "
    "perfect. Returns JSON with 'score' in [0, 1] (0.5 = threshold), 'is_anomalous', 'peak_xy' "
    "(where the arrangement differs most) and 'regions'. It says where, not what: use parse_scene "
    "to see which part is there."
)
PARSE_DESCRIPTION = (
    "Parse an image into the product's parts: for each part its id, name (if known), colour, "
    "count and total area next to the normal references' statistics, and each connected "
    "component's area, centroid, bounding box, orientation, axis lengths, colour name and "
    "position (left/center/right, top/middle/bottom, grid cell). Use it to count parts and "
    "check colours, sizes and positions."
)
COMPOSITION_DESCRIPTION = (
    "Rules-free composition anomaly score of an image in [0, 1] (0.5 = threshold): how far the "
    "counts, areas, positions and colours of its parts lie from the normal references, with the "
    "deviations that drive it (part, quantity, observed value, reference mean and std, z-score)."
)
#: what a bound tool's description says instead of taking an image path
_BOUND_NOTE = " This tool is bound to the image under inspection: call it without arguments."


def _composition_output(score: float, deviations: Sequence[Any], top: int | None = None) -> dict:
    rows = [_deviation(d) for d in deviations]
    return CompositionOutput(score=score, is_anomalous=score >= 0.5,
                             deviations=rows[:top] if top is not None else rows).model_dump(mode="json")


def detector_score_tool(detector: Detector, name: str | None = None, description: str | None = None,
                        score_fn: Callable[[Path], AnomalyResult] | None = None) -> StructuredTool:
    """A tool that scores an image with any :class:`~detectors.base.Detector`.

    ``name`` defaults to ``"<detector.name>_score"``. ``score_fn`` overrides how the image
    is scored (used to share backbone features); by default ``detector.score(path)``.
    """
    if not isinstance(detector, Detector):
        raise TypeError(f"detector_score_tool needs a detectors.base.Detector, got {type(detector).__name__}.")
    tool_name = name or f"{detector.name}_score"
    scorer = score_fn or (lambda path: detector.score(str(path)))

    def score_image(image_path: str) -> dict:
        path = _checked_path(image_path)
        return _run(lambda: _to_output(scorer(path)).model_dump(mode="json"))

    desc = description or (
        f"Anomaly score of an image from the '{detector.name}' detector. Returns JSON with "
        "'score' (in [0, 1] with 0.5 as threshold when 'calibrated' is true), 'is_anomalous', "
        "'peak_xy' (where the evidence is strongest) and 'regions' (bounding boxes above threshold)."
    )
    return _make_tool(score_image, tool_name, desc, AnomalyScoreOutput)


def detector_tools(structural: Detector | None = None, parser: SceneParserLike | None = None,
                   clip_detectors: Sequence[Detector] | Mapping[str, Detector] | None = None,
                   cache_size: int = 4, layout: Detector | None = None) -> list[BaseTool]:
    """LangChain tools for the fitted detectors given (at least one is required).

    - ``structural_score`` (``structural``, e.g. a fitted :class:`~detectors.patchcore.PatchCore`):
      scratches, contamination, broken parts, with regions;
    - ``parse_scene`` and ``composition_score`` (``parser``, e.g. a fitted
      :class:`~detectors.parsing.SceneParser`): parts, counts, geometry and the rules-free
      composition score;
    - ``layout_score`` (``layout``, e.g. a fitted :class:`~detectors.layout.LayoutDetector`):
      where the arrangement differs from the references';
    - ``<name>_score`` for each of ``clip_detectors`` (a list, or a mapping name -> detector).
    """
    if structural is None and parser is None and layout is None and not clip_detectors:
        raise ValueError("detector_tools needs at least one of structural, parser, layout or clip_detectors.")
    if parser is not None and not isinstance(parser, SceneParserLike):
        raise TypeError(
            f"parser must provide parse(image) -> Scene and composition_score(scene) -> float; "
            f"got {type(parser).__name__}."
        )
    cache = _Cache(cache_size)
    share = _shared_features(structural, parser)

    def features_of(path: Path) -> Any:
        assert share is not None
        backbone, size, layers = share
        return cache.get_or_compute("features", path, lambda: backbone.extract(str(path), size=size, layers=layers))

    tools: list[BaseTool] = []
    if structural is not None:
        if share is not None:
            structural_fn = lambda path: structural.score(str(path), features=features_of(path))  # noqa: E731
        else:
            structural_fn = None
        tools.append(detector_score_tool(
            structural, name="structural_score", score_fn=structural_fn,
            description=STRUCTURAL_DESCRIPTION,
        ))
    if parser is not None:
        def scene_of(path: Path) -> Scene:
            if share is not None:
                return cache.get_or_compute("scene", path, lambda: parser.parse(str(path), features=features_of(path)))
            return cache.get_or_compute("scene", path, lambda: parser.parse(str(path)))

        def parse_scene(image_path: str) -> dict:
            path = _checked_path(image_path)
            return _run(lambda: scene_of(path).model_dump(mode="json"))

        def composition_score(image_path: str) -> dict:
            path = _checked_path(image_path)

            def compute() -> dict:
                scene = scene_of(path)
                report = getattr(parser, "composition_report", None)
                return _composition_output(float(parser.composition_score(scene)),
                                           report(scene) if callable(report) else [])
            return _run(compute)

        tools.append(_make_tool(parse_scene, "parse_scene", PARSE_DESCRIPTION, Scene))
        tools.append(_make_tool(composition_score, "composition_score", COMPOSITION_DESCRIPTION, CompositionOutput))
    if layout is not None:
        tools.append(detector_score_tool(layout, name="layout_score", description=LAYOUT_DESCRIPTION))
    if clip_detectors:
        items = clip_detectors.items() if isinstance(clip_detectors, Mapping) else \
            [(d.name, d) for d in clip_detectors]
        for name, det in items:
            tools.append(detector_score_tool(det, name=f"{name}_score"))
    names = [t.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"detector_tools: two tools would be named {duplicates}; pass clip_detectors as a mapping with distinct names.")
    return tools


def bound_tools(*, scene: Scene | None = None, structural: AnomalyResult | None = None,
                composition: float | None = None, deviations: Sequence[Any] = (),
                max_deviations: int = 5, layout: AnomalyResult | None = None) -> list[BaseTool]:
    """The detector tools for one image whose perception has already run.

    An agent that has parsed and scored the image under inspection (``Agent.run_prepared``)
    serves those results to a tool-calling model without running a detector again. The tools
    have the names, descriptions and output models of :func:`detector_tools`, but take no
    input (:class:`NoArgs`): they are bound to that one image. A tool is built only for the
    results given: ``structural_score`` for ``structural``, ``parse_scene`` for ``scene``,
    ``composition_score`` for ``composition`` (with the first ``max_deviations`` of
    ``deviations``, e.g. ``parser.composition_report(scene)``), ``layout_score`` for ``layout``.
    """
    if scene is None and structural is None and composition is None and layout is None:
        raise ValueError("bound_tools needs at least one of scene, structural, composition or layout.")
    tools: list[BaseTool] = []
    if structural is not None:
        structural_json = _to_output(structural).model_dump(mode="json")
        tools.append(_make_tool(lambda: structural_json, "structural_score", STRUCTURAL_DESCRIPTION + _BOUND_NOTE,
                                AnomalyScoreOutput, NoArgs))
    if scene is not None:
        scene_json = scene.model_dump(mode="json")
        tools.append(_make_tool(lambda: scene_json, "parse_scene", PARSE_DESCRIPTION + _BOUND_NOTE, Scene, NoArgs))
    if composition is not None:
        composition_json = _composition_output(float(composition), deviations, top=max_deviations)
        tools.append(_make_tool(lambda: composition_json, "composition_score", COMPOSITION_DESCRIPTION + _BOUND_NOTE,
                                CompositionOutput, NoArgs))
    if layout is not None:
        layout_json = _to_output(layout).model_dump(mode="json")
        tools.append(_make_tool(lambda: layout_json, "layout_score", LAYOUT_DESCRIPTION + _BOUND_NOTE,
                                AnomalyScoreOutput, NoArgs))
    return tools


def _deviation(d: Any) -> DeviationOutput:
    data = d.model_dump() if isinstance(d, BaseModel) else dict(d)
    return DeviationOutput.model_validate(data)


def _shared_features(structural: Any, parser: Any) -> tuple[Any, int, list[str]] | None:
    """(backbone, size, layers) when both detectors can use one backbone pass per image."""
    request = getattr(structural, "feature_request", None)
    if structural is None or parser is None or not callable(request):
        return None
    req = request()
    if getattr(parser, "backbone_name", None) != req["backbone"] or getattr(parser, "image_size", None) != req["size"]:
        return None
    try:
        import inspect

        if "features" not in inspect.signature(parser.parse).parameters:
            return None
    except (TypeError, ValueError):
        return None
    return structural.backbone, req["size"], req["layers"]
