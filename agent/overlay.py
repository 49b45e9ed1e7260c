"""Draw what the agent saw on top of the image.

Three layers: the structural anomaly map as a translucent heat-map, a thin box
around every part component the scene parser found, and a thick red box with
the rule id around each failed finding's evidence. Everything stays in the
image's own pixel coordinates; the result can be shrunk for thumbnails.
"""

from __future__ import annotations

import base64
import io
import warnings
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from detectors.images import DEFAULT_MAX_SIDE, ImageInput, load_image
from prompts.multimodal import label_font

from .schema import Verdict

# a small qualitative palette so neighbouring parts are told apart
_PART_COLOURS = [
    (31, 119, 180), (44, 160, 44), (148, 103, 189), (23, 190, 207),
    (188, 189, 34), (227, 119, 194), (127, 127, 127), (140, 86, 75),
]
_FAIL_COLOUR = (230, 25, 25)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB with a blue-green-yellow-red ramp (uint8, shape + (3,))."""
    v = np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def _normalise_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim != 2:
        amap = amap.squeeze()
    lo, hi = float(np.nanmin(amap)), float(np.nanmax(amap))
    # calibrated maps live in [0, 1] already; others are stretched to their own range
    if lo < 0.0 or hi > 1.0:
        amap = (amap - lo) / (hi - lo) if hi > lo else np.zeros_like(amap)
    if amap.shape[::-1] != size:
        amap = np.asarray(Image.fromarray(amap, mode="F").resize(size, Image.Resampling.BILINEAR))
    return amap


def render_overlay(
    image: ImageInput,
    verdict: Optional[Verdict] = None,
    *,
    scene=None,
    anomaly_map: Optional[np.ndarray] = None,
    heat_alpha: float = 0.45,
    max_side: Optional[int] = None,
) -> Image.Image:
    """The image with heat-map, part boxes and failed-finding boxes drawn on it."""
    # the frame the detectors saw: an image over DEFAULT_MAX_SIDE was downscaled to it (with a
    # warning) before perception, and every box, peak and map of the verdict is in its pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        base = load_image(image, max_side=DEFAULT_MAX_SIDE).convert("RGB")
    out = np.asarray(base, dtype=np.float32)
    if anomaly_map is not None:
        amap = _normalise_map(anomaly_map, base.size)
        colours = heat_colours(amap).astype(np.float32)
        # weight by the map itself so normal regions stay readable
        alpha = (heat_alpha * np.clip(amap, 0.15, 1.0))[..., None]
        out = out * (1 - alpha) + colours * alpha
    canvas = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    thin = max(1, round(max(base.size) / 400))
    font = label_font(max(12, round(max(base.size) / 60)))

    if scene is not None:
        part_index = {p.id: i for i, p in enumerate(getattr(scene, "parts", []))}
        names = {p.id: (p.name or p.id) for p in getattr(scene, "parts", [])}
        for comp in getattr(scene, "components", []):
            colour = _PART_COLOURS[part_index.get(comp.part, 0) % len(_PART_COLOURS)]
            x0, y0, x1, y1 = comp.bbox
            draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=thin)
            draw.text((x0 + 2, y0 + 1), names.get(comp.part, comp.part), fill=colour, font=font)

    if verdict is not None:
        for finding in verdict.failed_findings:
            for region in finding.evidence:
                x0, y0, x1, y1 = region.bbox
                draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=_FAIL_COLOUR, width=3 * thin)
                label = f"{finding.rule_id}" + (f" {region.label}" if region.label else "")
                draw.text((x0 + 3, max(0, y0 - font.size - 2) if hasattr(font, "size") else y0), label,
                          fill=_FAIL_COLOUR, font=font)
        if verdict.anomaly_peak_xy is not None:
            px, py = verdict.anomaly_peak_xy
            r = 4 * thin
            draw.ellipse([px - r, py - r, px + r, py + r], outline=(255, 255, 255), width=thin)

    if max_side is not None and max(canvas.size) > max_side:
        canvas.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return canvas


def png_data_uri(image: Image.Image, *, max_side: Optional[int] = None) -> str:
    """A ``data:image/png;base64,...`` URI, optionally shrunk first (for self-contained HTML)."""
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
