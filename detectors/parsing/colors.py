"""Colour conversion and human colour names.

Names are what a language model reads to map rule nouns ("orange", "yellow cable",
"white label") to part ids, so they follow everyday words, not a colour-science scale.
"""

from __future__ import annotations

import colorsys

import numpy as np
from skimage.color import lab2rgb, rgb2lab


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 3) float32 CIE Lab."""
    return rgb2lab(np.asarray(rgb, dtype=np.float32) / 255.0).astype(np.float32)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) Lab -> (..., 3) uint8 RGB."""
    lab = np.asarray(lab, dtype=np.float64)
    flat = lab.reshape(-1, 1, 3)
    rgb = lab2rgb(flat).reshape(lab.shape)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def color_name(rgb: tuple[int, int, int] | np.ndarray) -> str:
    """A plain colour word for an RGB triple (0..255)."""
    r, g, b = (float(c) / 255.0 for c in rgb)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    hue = h * 360.0
    if v < 0.16:
        return "black"
    if s < 0.12 or (s < 0.2 and v > 0.8):
        if v > 0.78:
            return "white"
        return "gray" if v > 0.3 else "dark gray"
    if s < 0.3 and v > 0.65 and 15 <= hue < 70:
        return "beige"
    if hue < 12 or hue >= 340:
        return "red" if v > 0.35 else "dark red"
    if hue < 42:
        # orange and brown share hues; brown is the dark, less saturated end
        if v < 0.55 or (s < 0.45 and v < 0.75):
            return "brown"
        return "orange"
    if hue < 70:
        if v < 0.45:
            return "olive"
        return "yellow"
    if hue < 165:
        return "green"
    if hue < 195:
        return "cyan"
    if hue < 255:
        return "blue"
    if hue < 290:
        return "purple"
    return "pink" if v > 0.5 else "purple"
