"""Perception outputs: the contracts between detectors, the sandbox and the agent.

Everything here serialises to JSON (``model_dump(mode="json")``) so that it can
cross into the sandbox as plain data. Arrays that are too big for JSON (the part
segmentation, anomaly maps) are carried beside the JSON fields and excluded from it.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Stats(BaseModel):
    """Summary statistics of one quantity over the reference images."""

    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values) -> "Stats":
        arr = np.asarray(list(values), dtype=float)
        if arr.size == 0:
            return cls(mean=0.0, std=0.0, min=0.0, max=0.0)
        return cls(mean=float(arr.mean()), std=float(arr.std()), min=float(arr.min()), max=float(arr.max()))


def position_words(x_rel: float, y_rel: float) -> tuple[str, str]:
    """A position inside the product's box in words: thirds of its width and of its height."""
    horizontal = "left" if x_rel < 1 / 3 else ("right" if x_rel > 2 / 3 else "center")
    vertical = "top" if y_rel < 1 / 3 else ("bottom" if y_rel > 2 / 3 else "middle")
    return horizontal, vertical


class Component(BaseModel):
    """One connected component of one part, in image pixel coordinates."""

    id: int
    part: str = Field(description="id of the part this component belongs to, e.g. 'p2'")
    area: float = Field(description="area in pixels")
    area_frac: float = Field(description="area as a fraction of the product's area")
    centroid: tuple[float, float] = Field(description="(x, y) in pixels")
    centroid_rel: tuple[float, float] = Field(
        description="(x, y) relative to the product's bounding box, each in [0, 1]"
    )
    bbox: tuple[int, int, int, int] = Field(description="(x0, y0, x1, y1) in pixels, exclusive end")
    orientation: float = Field(description="angle of the major axis in degrees, 0 = horizontal")
    major_axis: float = Field(description="major-axis length in pixels")
    minor_axis: float = Field(description="minor-axis length in pixels")
    color_rgb: tuple[int, int, int]
    color_name: str
    horizontal: Literal["left", "center", "right"]
    vertical: Literal["top", "middle", "bottom"]
    grid_cell: Optional[tuple[int, int]] = Field(
        default=None, description="(row, col) of the product's grid, where it has one"
    )


class Part(BaseModel):
    """A part class learned from the references, with its state in one image."""

    id: str
    name: Optional[str] = Field(default=None, description="a human name, from the user or CLIP")
    description: str = Field(description="colour, size, typical count and position in the references")
    color_name: str
    count: int
    total_area: float
    ref_count: Optional[Stats] = None
    ref_area: Optional[Stats] = None


class Scene(BaseModel):
    """The parse of one image: parts, their components and the product's frame."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image_size: tuple[int, int] = Field(description="(width, height) in pixels")
    product_bbox: tuple[int, int, int, int]
    grid: Optional[tuple[int, int]] = Field(default=None, description="(rows, cols) if the product has a grid")
    parts: list[Part]
    components: list[Component]
    segmentation: Optional[np.ndarray] = Field(
        default=None, exclude=True, description="(H, W) int array: 0 background, i = i-th part"
    )

    def part(self, part_id: str) -> Part:
        for p in self.parts:
            if p.id == part_id or p.name == part_id:
                return p
        raise KeyError(f"no part {part_id!r}; parts are {[p.id for p in self.parts]}")

    def counts(self) -> dict[str, int]:
        return {p.id: p.count for p in self.parts}


class AnomalyResult(BaseModel):
    """What every detector's ``score(image)`` returns."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    detector: str
    score: float = Field(description="anomaly score; in [0, 1] when the detector is calibrated")
    raw_score: float = Field(description="uncalibrated score")
    calibrated: bool = False
    anomaly_map: Optional[np.ndarray] = Field(
        default=None, exclude=True, description="(H, W) float32 map at image resolution"
    )
    peak_xy: Optional[tuple[int, int]] = Field(default=None, description="(x, y) of the map's maximum")
    seconds: float = 0.0
