"""Vectorised drawing primitives for the synthetic LOCO-like scenes.

Scenes are laid out in *nominal* coordinates: pixels of the full-resolution MVTec LOCO
image of the category. A :class:`Canvas` maps them through a random pose (rotation,
zoom, shift, optional mirror) and the output scale, so that every object moves with
the scene and the scene jitters as a whole, the way a product moves under a camera.

Every primitive works on the bounding-box patch of its shape only, so a scene with
dozens of objects costs a few full-frame passes (lighting, blur, noise), not dozens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

_BANK_SIZE = 1024


@lru_cache(maxsize=1)
def _noise_bank() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fine, medium and smooth unit-variance noise fields, built once with a fixed seed.

    Patches are cut from them at random offsets, which is far cheaper than drawing
    fresh filtered noise per object and still deterministic for a sample's seed.
    """
    rng = np.random.default_rng(20221)
    white = rng.standard_normal((_BANK_SIZE, _BANK_SIZE)).astype(np.float32)
    out = []
    for sigma in (0.8, 3.0, 24.0):
        field = ndimage.gaussian_filter(white, sigma, mode="wrap")
        field -= field.mean()
        field /= field.std() + 1e-6
        out.append(field.astype(np.float32))
    return out[0], out[1], out[2]


def noise_patch(rng: np.random.Generator, h: int, w: int, kind: str = "fine", zoom: float = 1.0) -> np.ndarray:
    """An ``(h, w)`` patch of unit-variance noise; ``zoom`` > 1 stretches it (coarser grain)."""
    fine, medium, smooth = _noise_bank()
    bank = {"fine": fine, "medium": medium, "smooth": smooth}[kind]
    oy, ox = (int(v) for v in rng.integers(0, _BANK_SIZE, size=2))
    step = 1.0 / max(zoom, 1e-3)
    rows = (oy + (np.arange(h) * step).astype(np.int64)) % _BANK_SIZE
    cols = (ox + (np.arange(w) * step).astype(np.int64)) % _BANK_SIZE
    return bank.take(rows, axis=0).take(cols, axis=1)  # two 1-D takes: ~2x faster than 2-D fancy indexing


@dataclass
class Region:
    """A boolean shape stored as a patch: rows ``r0:r0+h``, cols ``c0:c0+w`` of the image."""

    r0: int
    c0: int
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        h, w = self.mask.shape
        out[self.r0 : self.r0 + h, self.c0 : self.c0 + w] = self.mask
        return out

    def add_to(self, target: np.ndarray) -> None:
        h, w = self.mask.shape
        target[self.r0 : self.r0 + h, self.c0 : self.c0 + w] |= self.mask

    def centroid(self) -> tuple[float, float]:
        """(x, y) in image pixels."""
        ys, xs = np.nonzero(self.mask)
        if ys.size == 0:
            return (float(self.c0), float(self.r0))
        return (float(xs.mean() + self.c0), float(ys.mean() + self.r0))


EMPTY = Region(0, 0, np.zeros((0, 0), dtype=bool))


class Canvas:
    """An RGB float image, its part map, and the nominal-to-pixel pose transform."""

    def __init__(
        self,
        nominal_size: tuple[int, int],
        scale: float,
        rng: np.random.Generator,
        part_names: list[str],
        *,
        rotation_deg: float = 0.0,
        zoom: float = 1.0,
        shift: tuple[float, float] = (0.0, 0.0),
        mirror: bool = False,
    ) -> None:
        self.nominal_w, self.nominal_h = nominal_size
        self.scale = scale
        self.width = max(8, int(round(self.nominal_w * scale)))
        self.height = max(8, int(round(self.nominal_h * scale)))
        self.rng = rng
        self.part_names = list(part_names)
        self.img = np.zeros((self.height, self.width, 3), dtype=np.float32)
        self.parts = np.zeros((self.height, self.width), dtype=np.uint8)
        self.rotation = math.radians(rotation_deg)
        self.zoom = zoom
        self.shift = shift
        self.mirror = mirror
        self._cos = math.cos(self.rotation)
        self._sin = math.sin(self.rotation)

    # -- geometry ----------------------------------------------------------------
    def pt(self, x: float, y: float) -> tuple[float, float]:
        """Nominal point -> output pixel (x, y)."""
        if self.mirror:
            x = self.nominal_w - x
        cx, cy = self.nominal_w / 2, self.nominal_h / 2
        dx, dy = (x - cx) * self.zoom, (y - cy) * self.zoom
        rx = dx * self._cos - dy * self._sin + cx + self.shift[0]
        ry = dx * self._sin + dy * self._cos + cy + self.shift[1]
        return rx * self.scale, ry * self.scale

    def nominal(self, px: float, py: float) -> tuple[float, float]:
        """Output pixel (x, y) -> nominal point (the inverse of :meth:`pt`)."""
        cx, cy = self.nominal_w / 2, self.nominal_h / 2
        rx, ry = px / self.scale - cx - self.shift[0], py / self.scale - cy - self.shift[1]
        dx = (rx * self._cos + ry * self._sin) / self.zoom
        dy = (-rx * self._sin + ry * self._cos) / self.zoom
        x, y = dx + cx, dy + cy
        return (self.nominal_w - x if self.mirror else x), y

    def nominal_grid(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """Nominal (x, y) of every pixel of a patch, as two 2-D arrays."""
        ys = np.arange(r0, r1, dtype=np.float32)[:, None]
        xs = np.arange(c0, c1, dtype=np.float32)[None, :]
        cx, cy = self.nominal_w / 2, self.nominal_h / 2
        rx, ry = xs / self.scale - cx - self.shift[0], ys / self.scale - cy - self.shift[1]
        x = (rx * self._cos + ry * self._sin) / self.zoom + cx
        y = (-rx * self._sin + ry * self._cos) / self.zoom + cy
        return (self.nominal_w - x if self.mirror else x), y

    def length(self, d: float) -> float:
        return d * self.zoom * self.scale

    def angle(self, a: float) -> float:
        """Nominal angle (radians, x towards y) -> output angle."""
        if self.mirror:
            a = math.pi - a
        return a + self.rotation

    def part_id(self, name: str | None) -> int:
        return 0 if name is None else self.part_names.index(name) + 1

    def _patch(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int] | None:
        c0, r0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
        c1, r1 = min(self.width, int(math.ceil(x1)) + 1), min(self.height, int(math.ceil(y1)) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        return r0, r1, c0, c1

    # -- painting ----------------------------------------------------------------
    def paint(self, r0: int, c0: int, color: np.ndarray, alpha: np.ndarray, part: str | None) -> Region:
        """Blend a colour patch in with a soft alpha; pixels over half alpha become ``part``."""
        h, w = alpha.shape
        view = self.img[r0 : r0 + h, c0 : c0 + w]
        a = alpha[..., None]
        view *= 1.0 - a
        view += color * a
        inside = alpha > 0.5
        if part is not None:
            self.parts[r0 : r0 + h, c0 : c0 + w][inside] = self.part_id(part)
        return Region(r0, c0, inside)

    def fill(self, color: tuple[float, float, float], noise: float = 0.0, kind: str = "smooth") -> None:
        self.img[:] = np.asarray(color, dtype=np.float32)
        if noise:
            field = noise_patch(self.rng, self.height, self.width, kind, zoom=self.scale * 2)
            self.img *= (1.0 + noise * field)[..., None]


def jitter_color(rng: np.random.Generator, color, amount: float = 0.06, brightness: float = 0.08) -> np.ndarray:
    """A colour with per-channel and overall jitter, as lighting and batches vary."""
    c = np.asarray(color, dtype=np.float32)
    c = c * (1.0 + rng.normal(0, amount, 3)) * (1.0 + rng.normal(0, brightness))
    return np.clip(c, 0, 255).astype(np.float32)


def _radius_fn(u: np.ndarray, v: np.ndarray, shape: str, power: float) -> np.ndarray:
    if shape == "ellipse":
        return np.sqrt(u * u + v * v)
    if shape == "superellipse":
        # Powers are rounded to 2, 4, 8 or 16 so that the norm is a few multiplications
        # and square roots instead of float ``pow`` over the whole patch (5x faster).
        steps = int(min(4, max(1, round(math.log2(max(power, 2.0))))))
        su, sv = u * u, v * v
        for _ in range(steps - 1):
            su, sv = su * su, sv * sv
        d = su + sv
        for _ in range(steps):
            d = np.sqrt(d)
        return d
    if shape == "hexagon":
        phi = np.arctan2(v, u)
        edge = math.cos(math.pi / 6) / np.cos(np.mod(phi, math.pi / 3) - math.pi / 6)
        return np.sqrt(u * u + v * v) / edge
    raise ValueError(f"unknown shape {shape!r}")


def blob(
    cv: Canvas,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    color,
    *,
    angle: float = 0.0,
    part: str | None = None,
    shape: str = "ellipse",
    power: float = 6.0,
    hole: float = 0.0,
    shade: float = 0.35,
    specular: float = 0.0,
    texture: float = 0.0,
    texture_kind: str = "fine",
    texture_zoom: float = 1.0,
    color2=None,
    mix_noise: float = 0.0,
    wobble: float = 0.0,
    opacity: float = 1.0,
    draw: bool = True,
) -> Region:
    """A shaded ellipse, superellipse (rounded rectangle) or hexagon, optionally a ring.

    ``rx``/``ry`` and the centre are nominal; ``angle`` is nominal radians. With
    ``draw=False`` nothing is painted and only the region is returned (used for the
    mask of an object that is *missing*).
    """
    px, py = cv.pt(cx, cy)
    a = cv.angle(angle)
    prx, pry = max(cv.length(rx), 0.6), max(cv.length(ry), 0.6)
    reach = max(prx, pry) * (1.0 + abs(wobble) * 2 + (0.45 if shape != "ellipse" else 0.05)) + 2
    box = cv._patch(px - reach, py - reach, px + reach, py + reach)
    if box is None:
        return EMPTY
    r0, r1, c0, c1 = box
    dy = (np.arange(r0, r1, dtype=np.float32) - py)[:, None]
    dx = (np.arange(c0, c1, dtype=np.float32) - px)[None, :]
    ca, sa = math.cos(a), math.sin(a)
    u = (dx * ca + dy * sa) / prx
    v = (-dx * sa + dy * ca) / pry
    d = _radius_fn(u, v, shape, power)
    if wobble:
        phi = np.arctan2(v, u)
        k = cv.rng.uniform(0, 2 * math.pi, 3)
        d = d / (1.0 + wobble * (np.cos(2 * phi + k[0]) * 0.6 + np.cos(3 * phi + k[1]) * 0.3 + np.cos(5 * phi + k[2]) * 0.2))
    edge_px = min(prx, pry)
    alpha = np.clip((1.0 - d) * edge_px + 0.5, 0.0, 1.0)
    if hole:
        alpha = np.minimum(alpha, np.clip((d - hole) * edge_px + 0.5, 0.0, 1.0))
    if not draw:
        return Region(r0, c0, alpha > 0.5)
    alpha *= opacity
    h, w = alpha.shape
    base = np.asarray(color, dtype=np.float32)
    if color2 is not None:
        t = np.clip(0.5 + 0.5 * (u * 0.8 + v * 0.6) + mix_noise * noise_patch(cv.rng, h, w, "smooth", zoom=cv.scale * 4), 0, 1)
        col = base * (1 - t[..., None]) + np.asarray(color2, dtype=np.float32) * t[..., None]
    else:
        col = np.broadcast_to(base, (h, w, 3)).copy()
    dd = np.minimum(d, 1.0)
    light = 1.0 - shade * dd * dd
    if texture:
        light = light * (1.0 + texture * noise_patch(cv.rng, h, w, texture_kind, zoom=texture_zoom * cv.scale * 2))
    col *= light[..., None]
    if specular:
        hx, hy = -0.35, -0.4
        spot = np.exp(-((u - hx) ** 2 + (v - hy) ** 2) / 0.06)
        col += (specular * 255.0 * spot)[..., None]
    return cv.paint(r0, c0, col, alpha, part)


def tube(
    cv: Canvas,
    points,
    width: float,
    color,
    *,
    part: str | None = None,
    shade: float = 0.45,
    specular: float = 0.0,
    stripes: float = 0.0,
    stripe_period: float = 12.0,
    texture: float = 0.0,
    opacity: float = 1.0,
    draw: bool = True,
) -> Region:
    """A thick, cylindrically shaded polyline through nominal ``points`` (cables, shafts, walls).

    ``stripes`` modulates brightness along the path (a screw thread).
    """
    pts = np.array([cv.pt(x, y) for x, y in points], dtype=np.float32)
    half = max(cv.length(width) / 2.0, 0.6)
    lo = pts.min(axis=0) - half - 2
    hi = pts.max(axis=0) + half + 2
    box = cv._patch(lo[0], lo[1], hi[0], hi[1])
    if box is None:
        return EMPTY
    r0, r1, c0, c1 = box
    ys = np.arange(r0, r1, dtype=np.float32)[:, None]
    xs = np.arange(c0, c1, dtype=np.float32)[None, :]
    best = np.full((r1 - r0, c1 - c0), np.inf, dtype=np.float32)
    signed = np.zeros_like(best)
    along = np.zeros_like(best)
    travelled = 0.0
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
        ex, ey = bx - ax, by - ay
        seg = math.hypot(ex, ey) or 1e-6
        t = np.clip(((xs - ax) * ex + (ys - ay) * ey) / (seg * seg), 0.0, 1.0)
        qx, qy = xs - (ax + t * ex), ys - (ay + t * ey)
        dist = np.sqrt(qx * qx + qy * qy)
        closer = dist < best
        best = np.where(closer, dist, best)
        signed = np.where(closer, (qx * -ey + qy * ex) / seg, signed)
        along = np.where(closer, travelled + t * seg, along)
        travelled += seg
    alpha = np.clip(half - best + 0.5, 0.0, 1.0)
    if not draw:
        return Region(r0, c0, alpha > 0.5)
    alpha *= opacity
    u = np.clip(signed / half, -1.0, 1.0)
    light = 1.0 - shade * u * u
    if stripes:
        light = light * (1.0 - stripes * 0.5 * (1 + np.sin(along * (2 * math.pi / max(cv.length(stripe_period), 1.0)))))
    if texture:
        light = light * (1.0 + texture * noise_patch(cv.rng, *best.shape, "fine"))
    col = np.asarray(color, dtype=np.float32) * light[..., None]
    if specular:
        col = col + (specular * 255.0 * np.exp(-((u + 0.35) ** 2) / 0.03))[..., None]
    return cv.paint(r0, c0, col, alpha, part)


def shadow(cv: Canvas, region: Region, offset: tuple[float, float] = (6, 8), strength: float = 0.35,
           blur: float = 6.0, behind: bool = False) -> None:
    """Darken the canvas under a soft, offset copy of ``region`` (a contact shadow).

    Either drawn *before* the object, which then covers its own shadow, or with
    ``behind=True`` *after* it, leaving the object's own pixels alone (one shadow for
    many objects, without rendering each shape twice).
    """
    if region.mask.size == 0:
        return
    pad = int(cv.length(blur) * 2 + cv.length(max(abs(offset[0]), abs(offset[1]))) + 2)
    h, w = region.mask.shape
    big = np.zeros((h + 2 * pad, w + 2 * pad), dtype=np.float32)
    sx, sy = int(round(cv.length(offset[0]))), int(round(cv.length(offset[1])))
    big[pad + sy : pad + sy + h, pad + sx : pad + sx + w] = region.mask
    # Two box passes approximate a Gaussian at a cost independent of the blur radius.
    size = max(1, int(round(cv.length(blur) * 1.7)))
    soft = ndimage.uniform_filter(ndimage.uniform_filter(big, size), size)
    r0, c0 = region.r0 - pad, region.c0 - pad
    rr0, cc0 = max(0, r0), max(0, c0)
    rr1, cc1 = min(cv.height, r0 + big.shape[0]), min(cv.width, c0 + big.shape[1])
    if rr1 <= rr0 or cc1 <= cc0:
        return
    piece = soft[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
    if behind:
        own = np.zeros_like(piece)
        oy, ox = region.r0 - rr0, region.c0 - cc0
        ys0, xs0 = max(0, oy), max(0, ox)
        ys1, xs1 = min(piece.shape[0], oy + h), min(piece.shape[1], ox + w)
        if ys1 > ys0 and xs1 > xs0:
            own[ys0:ys1, xs0:xs1] = region.mask[ys0 - oy : ys1 - oy, xs0 - ox : xs1 - ox]
        piece = piece * (1.0 - own)
    cv.img[rr0:rr1, cc0:cc1] *= (1.0 - strength * piece)[..., None]


def text(cv: Canvas, cx: float, cy: float, label: str, size: float, color=(30, 30, 30), angle: float = 0.0) -> None:
    """Dark print (e.g. '100% Juice') centred on a nominal point, rotated with the scene."""
    from PIL import Image, ImageDraw, ImageFont

    px_size = max(6, int(round(cv.length(size))))
    try:
        font = ImageFont.load_default(size=px_size)
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
        font = ImageFont.load_default()
    left, top, right, bottom = font.getbbox(label)
    tw, th = right - left + 4, bottom - top + 4
    layer = Image.new("L", (tw, th), 0)
    ImageDraw.Draw(layer).text((2 - left, 2 - top), label, fill=255, font=font)
    deg = -math.degrees(cv.angle(angle))
    if cv.mirror:
        deg = -math.degrees(cv.rotation)
    layer = layer.rotate(deg, resample=Image.Resampling.BILINEAR, expand=True)
    alpha = np.asarray(layer, dtype=np.float32) / 255.0
    px, py = cv.pt(cx, cy)
    h, w = alpha.shape
    r0, c0 = int(round(py - h / 2)), int(round(px - w / 2))
    rr0, cc0 = max(0, r0), max(0, c0)
    rr1, cc1 = min(cv.height, r0 + h), min(cv.width, c0 + w)
    if rr1 <= rr0 or cc1 <= cc0:
        return
    a = alpha[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
    cv.paint(rr0, cc0, np.asarray(color, dtype=np.float32), a * 0.9, None)


def finish(cv: Canvas, rng: np.random.Generator, *, gradient: float = 0.18, vignette: float = 0.15,
           blur: tuple[float, float] = (0.5, 1.3), noise: tuple[float, float] = (1.5, 4.5)) -> np.ndarray:
    """Camera effects over the whole frame: lighting gradient, vignette, blur, sensor noise."""
    h, w = cv.height, cv.width
    theta = rng.uniform(0, 2 * math.pi)
    g = rng.uniform(0.3, 1.0) * gradient
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    ox, oy = rng.uniform(-0.15, 0.15, 2)
    light = 1.0 + g * (xs * math.cos(theta) + ys * math.sin(theta)) - rng.uniform(0.4, 1.0) * vignette * ((xs - ox) ** 2 + (ys - oy) ** 2) * 2
    light *= rng.uniform(0.84, 1.12)  # exposure
    white_balance = np.clip(rng.normal(1.0, 0.035, 3), 0.88, 1.12).astype(np.float32)
    img = cv.img * light[..., None] * white_balance
    gamma = rng.uniform(0.88, 1.12)
    sigma = rng.uniform(*blur) * cv.scale * 2
    if sigma > 0.3:
        img = ndimage.gaussian_filter(img, (sigma, sigma, 0), truncate=2.5)
    img += rng.uniform(*noise) * rng.standard_normal(img.shape, dtype=np.float32)
    # sensor response curve, as a lookup table on the 8-bit result (cheaper than a float pow)
    curve = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    return curve[np.clip(img, 0, 255).astype(np.uint8)]
