"""Colour conversion and human colour names.

Names are what a language model reads to map rule nouns ("orange", "yellow cable",
"white label") to part ids, so they follow everyday words, not a colour-science scale.
"""

from __future__ import annotations

import numpy as np
from skimage.color import lab2rgb, rgb2lab

# One vocabulary for the scene and for LogiCode programs: the sandbox's helper module owns
# it (it must stay self-contained, the sandbox loads it by path), and the parser names with it.
from sandbox.logicode import PALETTE, color_name  # noqa: F401  (re-exported)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 3) float32 CIE Lab."""
    return rgb2lab(np.asarray(rgb, dtype=np.float32) / 255.0).astype(np.float32)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) Lab -> (..., 3) uint8 RGB."""
    lab = np.asarray(lab, dtype=np.float64)
    flat = lab.reshape(-1, 1, 3)
    rgb = lab2rgb(flat).reshape(lab.shape)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
