"""The five LOCO-like scenes, their logical anomalies and the structural defects.

Each scene follows its built-in rule pack (``prompts/rulepacks/<category>.yaml``): the
normal scene satisfies every rule, and each logical anomaly breaks exactly one rule in
a way that a correct parser (count parts, measure a length, read a colour, check a
position) can detect, while pose, object placement, size, colour and lighting vary
enough that a global image comparison cannot.

Geometry is nominal: pixels of the full-resolution LOCO image of the category.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .render import EMPTY, Canvas, Region, blob, jitter_color, noise_patch, shadow, text, tube

NOMINAL_SIZE: dict[str, tuple[int, int]] = {
    "breakfast_box": (1600, 1280),
    "juice_bottle": (800, 1600),
    "pushpins": (1700, 1000),
    "screw_bag": (1600, 1100),
    "splicing_connectors": (1700, 850),
}

PART_NAMES: dict[str, list[str]] = {
    "breakfast_box": ["tray", "orange", "nectarine", "granola", "almond", "banana_chip"],
    "juice_bottle": ["bottle", "juice", "fruit_label", "fruit_icon", "bottom_label"],
    "pushpins": ["box", "wall", "pushpin"],
    "screw_bag": ["bag", "screw", "nut", "washer"],
    "splicing_connectors": ["connector", "clamp", "cable"],
}

LOGICAL_TYPES: dict[str, tuple[str, ...]] = {
    "breakfast_box": (
        "missing_orange", "extra_fruit", "missing_almonds", "missing_banana_chips",
        "missing_granola", "compartments_swapped", "misplaced_topping",
    ),
    "juice_bottle": (
        "juice_color_mismatch", "overfilled", "underfilled", "empty_bottle",
        "missing_fruit_label", "missing_bottom_label", "misplaced_fruit_label", "misplaced_fruit_icon",
    ),
    "pushpins": ("missing_pushpin", "extra_pushpin", "missing_separator"),
    "screw_bag": (
        "missing_screw", "missing_nut", "missing_washer", "extra_screw", "extra_nut", "extra_washer",
        "both_screws_long", "both_screws_short", "screw_too_long", "screw_too_short",
    ),
    "splicing_connectors": (
        "cable_color_mismatch", "clamp_count_mismatch", "cable_cut", "missing_cable",
        "wrong_cable_location", "missing_connector", "extra_cable",
    ),
}

STRUCTURAL_TYPES: tuple[str, ...] = ("scratch", "contamination", "broken_part")

#: Parts a structural defect may land on, per category.
#: Parts that can lose a broken-off piece: drawn over the scene's substrate, so the
#: piece reveals what lies beneath (tray, bag, box, grille or background).
BROKEN_TARGETS: dict[str, tuple[str, ...]] = {
    "breakfast_box": ("orange", "nectarine"),
    "juice_bottle": ("bottle",),
    "pushpins": ("pushpin",),
    "screw_bag": ("screw", "nut", "washer"),
    "splicing_connectors": ("connector",),  # a broken cable would read as the logical 'cable_cut'
}
STRUCTURAL_TARGETS: dict[str, tuple[str, ...]] = {
    "breakfast_box": ("orange", "nectarine", "tray"),
    "juice_bottle": ("bottle", "fruit_label", "bottom_label"),
    "pushpins": ("pushpin", "box"),
    "screw_bag": ("screw", "nut", "washer"),
    "splicing_connectors": ("connector", "clamp", "cable"),
}


@dataclass
class Build:
    """What a scene function hands back: the canvas and the ground truth about it."""

    cv: Canvas
    counts: dict[str, int]
    facts: dict[str, Any] = field(default_factory=dict)
    objects: list[tuple[str, Region]] = field(default_factory=list)
    anomaly_mask: np.ndarray | None = None
    reason: str = ""
    substrate: tuple[np.ndarray, np.ndarray] | None = None

    def mark(self, *regions: Region) -> None:
        if self.anomaly_mask is None:
            self.anomaly_mask = np.zeros((self.cv.height, self.cv.width), dtype=bool)
        for region in regions:
            if region.mask.size:
                region.add_to(self.anomaly_mask)

    def keep_substrate(self) -> None:
        self.substrate = (self.cv.img.copy(), self.cv.parts.copy())


def _pose(rng: np.random.Generator, category: str, scale: float, *, rotation: float, shift: tuple[float, float],
          zoom: float = 0.03, mirror: bool = False) -> Canvas:
    return Canvas(
        NOMINAL_SIZE[category], scale, rng, PART_NAMES[category],
        rotation_deg=rng.uniform(-rotation, rotation),
        zoom=1.0 + rng.uniform(-zoom, zoom),
        shift=(rng.uniform(-shift[0], shift[0]), rng.uniform(-shift[1], shift[1])),
        mirror=mirror,
    )


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


# ----------------------------------------------------------------------------------
# breakfast box
# ----------------------------------------------------------------------------------
_ORANGE = (232, 118, 32)
_NECTARINE_A = (205, 55, 40)
_NECTARINE_B = (235, 190, 80)


def _fruit(cv: Canvas, rng, kind: str, x: float, y: float, r: float, draw: bool = True) -> Region:
    if not draw:
        return blob(cv, x, y, r, r, (0, 0, 0), draw=False)
    probe = blob(cv, x, y, r, r * 0.97, (0, 0, 0), draw=False)
    shadow(cv, probe, offset=(10, 14), strength=0.45, blur=14)
    if kind == "orange":
        reg = blob(cv, x, y, r, r * rng.uniform(0.93, 1.0), jitter_color(rng, _ORANGE), angle=rng.uniform(0, math.pi),
                   part="orange", shade=0.55, specular=0.12, texture=0.09, texture_kind="fine", wobble=0.02)
        a = rng.uniform(0, 2 * math.pi)
        blob(cv, x + 0.15 * r * math.cos(a), y + 0.15 * r * math.sin(a), r * 0.07, r * 0.07, (70, 90, 35), shade=0.2)
    else:
        reg = blob(cv, x, y, r, r * rng.uniform(0.9, 0.98), jitter_color(rng, _NECTARINE_A), angle=rng.uniform(0, 2 * math.pi),
                   part="nectarine", color2=jitter_color(rng, _NECTARINE_B), mix_noise=0.35, shade=0.5,
                   specular=0.15, texture=0.04, texture_kind="medium", wobble=0.03)
    return reg


def _topping_shape(rng, kind: str) -> tuple[float, float, float]:
    """(rx, ry, angle) of an almond or a banana chip."""
    if kind == "almond":
        return rng.uniform(44, 54), rng.uniform(24, 30), rng.uniform(0, math.pi)
    r = rng.uniform(50, 60)
    return r, r * rng.uniform(0.85, 1.0), rng.uniform(0, math.pi)


def _toppings(cv: Canvas, rng, items: list[tuple[str, float, float]]) -> list[Region]:
    """Draw almonds and banana chips; one blurred shadow for all of them (one filter, not dozens)."""
    shapes = [_topping_shape(rng, kind) for kind, _, _ in items]
    out = []
    for (kind, x, y), (rx, ry, a) in zip(items, shapes):
        if kind == "almond":
            out.append(blob(cv, x, y, rx, ry, jitter_color(rng, (140, 80, 45)), angle=a, part="almond", shade=0.55,
                            color2=jitter_color(rng, (105, 58, 32)), mix_noise=0.3, texture=0.15,
                            texture_kind="medium", specular=0.06, wobble=0.04))
        else:
            out.append(blob(cv, x, y, rx, ry, jitter_color(rng, (228, 210, 150)), angle=a, part="banana_chip",
                            shade=-0.25, texture=0.08, texture_kind="medium", wobble=0.05))
            blob(cv, x, y, rx * 0.45, rx * 0.45, (170, 135, 80), shade=0.0, texture=0.4, opacity=0.35)
    shadow(cv, _union_region(cv, out), offset=(4, 5), strength=0.45, blur=5, behind=True)
    return out


def _granola(cv: Canvas, rng, cx, cy, rx, ry) -> Region:
    """Oat clusters: thresholded grain noise, embossed so each flake catches the light."""
    region = blob(cv, cx, cy, rx, ry, (0, 0, 0), shape="superellipse", power=4, wobble=0.05, draw=False)
    h, w = region.mask.shape
    if not h or not w:
        return region
    grain = noise_patch(rng, h + 1, w + 1, "medium", zoom=max(cv.scale * 2.2, 0.35))
    emboss = np.clip((grain[1:, 1:] - grain[:-1, :-1]) * 1.6, -1, 1)
    grain = grain[1:, 1:]
    flake = np.clip((grain + 0.75) * 1.6, 0.0, 1.0)[..., None]
    light_tan = jitter_color(rng, (214, 170, 112), 0.04, 0.06)
    gap = jitter_color(rng, (92, 58, 30), 0.05, 0.1)
    col = gap * (1 - flake) + light_tan * flake
    col = col * (1.0 + 0.22 * emboss[..., None]) * (1.0 + 0.08 * noise_patch(rng, h, w, "smooth", zoom=cv.scale * 3))[..., None]
    return cv.paint(region.r0, region.c0, col, region.mask.astype(np.float32), "granola")


def _scatter(rng, cx, cy, rx, ry, n) -> list[tuple[float, float]]:
    ang = rng.uniform(0, 2 * math.pi, n)
    rad = np.sqrt(rng.uniform(0, 1, n))
    return [(cx + rx * r * math.cos(a), cy + ry * r * math.sin(a)) for a, r in zip(ang, rad)]


def breakfast_box(rng: np.random.Generator, scale: float, anomaly: str | None) -> Build:
    cv = _pose(rng, "breakfast_box", scale, rotation=4.0, shift=(70, 50), zoom=0.04)
    counts = {"orange": 2, "nectarine": 1, "granola": 1, "almond": 0, "banana_chip": 0}
    b = Build(cv, counts)
    cv.fill(jitter_color(rng, (22, 24, 30), 0.1, 0.2), noise=0.25)
    white = jitter_color(rng, (232, 230, 222), 0.02, 0.05)
    tray = blob(cv, 800, 660, 735, 598, white, shape="superellipse", power=9, part="tray", shade=0.12,
                texture=0.03, texture_kind="smooth")
    shadow(cv, tray, offset=(14, 18), strength=0.6, blur=18, behind=True)
    b.objects.append(("tray", tray))
    left = (345.0, 660.0, 235.0, 535.0)
    right = (1075.0, 660.0, 425.0, 535.0)
    for cx, cy, rx, ry in (left, right):
        blob(cv, cx, cy, rx, ry, white * 0.93, shape="superellipse", power=7, shade=-0.12, texture=0.03,
             texture_kind="smooth", part="tray")
    b.keep_substrate()

    swapped = anomaly == "compartments_swapped"
    fruit_zone, cereal_zone = (right, left) if swapped else (left, right)
    fx, fy, frx, fry = fruit_zone
    kinds = ["orange", "orange", "nectarine"]
    if anomaly == "extra_fruit":
        kinds.append(_pick(rng, ["orange", "nectarine"]))
        counts[kinds[-1]] += 1
    rng.shuffle(kinds)
    n = len(kinds)
    spacing = 2 * fry / n
    missing_index = -1
    if anomaly == "missing_orange":
        missing_index = _pick(rng, [i for i, k in enumerate(kinds) if k == "orange"])
        counts["orange"] -= 1
    for i, kind in enumerate(kinds):
        r = (158.0 if kind == "orange" else 172.0) * rng.uniform(0.95, 1.05) * (0.86 if n == 4 else 1.0)
        x = fx + rng.uniform(-0.12, 0.12) * frx + (rng.uniform(-0.35, 0.35) * frx if swapped else 0)
        y = fy - fry + spacing * (i + 0.5) + rng.uniform(-0.08, 0.08) * spacing
        region = _fruit(cv, rng, kind, x, y, r, draw=i != missing_index)
        if i == missing_index:
            b.mark(region)
            b.reason = "The fruit compartment holds only one orange instead of two oranges and a nectarine."
        else:
            b.objects.append((kind, region))
    if anomaly == "extra_fruit":
        extra = [reg for name, reg in b.objects if name in ("orange", "nectarine")]
        b.mark(*extra)
        plural = lambda n, word: f"{n} {word}" + ("s" if n != 1 else "")
        b.reason = (f"The fruit compartment holds four pieces of fruit ({plural(counts['orange'], 'orange')} and "
                    f"{plural(counts['nectarine'], 'nectarine')}) instead of two oranges and one nectarine.")

    gx, gy, grx, gry = cereal_zone
    granola_cy, granola_ry = gy - gry * 0.5, gry * 0.48 * rng.uniform(0.86, 1.04)
    topping_cy, topping_ry = gy + gry * 0.5, gry * 0.45
    if anomaly == "missing_granola":
        counts["granola"] = 0
        b.mark(blob(cv, gx, granola_cy, grx * 0.92, granola_ry, (0, 0, 0), shape="superellipse", power=4, draw=False))
        b.reason = "The granola is missing from the upper part of the right compartment."
    else:
        g = _granola(cv, rng, gx, granola_cy + rng.uniform(-15, 15), grx * 0.92 * rng.uniform(0.95, 1.02), granola_ry)
        shadow(cv, g, offset=(6, 8), strength=0.3, blur=8, behind=True)
        b.objects.append(("granola", g))

    n_almonds = int(rng.integers(22, 31))
    n_chips = int(rng.integers(11, 16))
    order = ["almond"] * n_almonds + ["banana_chip"] * n_chips
    rng.shuffle(order)
    spots = _scatter(rng, gx, topping_cy, grx * 0.8, topping_ry * 0.82, len(order))
    dropped = {"missing_almonds": "almond", "missing_banana_chips": "banana_chip"}.get(anomaly or "")
    if dropped:
        area = blob(cv, gx, topping_cy, grx * 0.9, topping_ry, (0, 0, 0), shape="superellipse", power=4, draw=False)
        b.mark(area)
        word = "almonds" if dropped == "almond" else "banana chips"
        b.reason = f"The {word} are missing from the lower part of the right compartment."
    kept = [(kind, x, y) for kind, (x, y) in zip(order, spots) if kind != dropped]
    for (kind, _, _), region in zip(kept, _toppings(cv, rng, kept)):
        counts[kind] += 1
        b.objects.append((kind, region))
    if anomaly == "misplaced_topping":
        kind = _pick(rng, ["almond", "banana_chip"])
        # between two fruits, near the compartment wall: clearly inside the fruit compartment
        y = fy - fry + spacing * float(rng.integers(1, 3)) + rng.uniform(-20, 20)
        x = fx + _pick(rng, [-1, 1]) * frx * rng.uniform(0.55, 0.7)
        region = _toppings(cv, rng, [(kind, x, y)])[0]
        counts[kind] += 1
        b.mark(region)
        b.reason = f"A{'n almond' if kind == 'almond' else ' banana chip'} lies in the fruit compartment instead of with the other toppings."
    if swapped:
        b.mark(blob(cv, *left, shape="superellipse", power=7, color=(0, 0, 0), draw=False),
               blob(cv, *right, shape="superellipse", power=7, color=(0, 0, 0), draw=False))
        b.reason = "Fruit and cereal have swapped compartments: the fruit is on the right and the granola and toppings on the left."
    b.facts = {"fruit_side": "right" if swapped else "left", "almonds": counts["almond"], "banana_chips": counts["banana_chip"]}
    return b


# ----------------------------------------------------------------------------------
# juice bottle
# ----------------------------------------------------------------------------------
JUICE_COLORS = {"orange": (230, 158, 48), "cherry": (120, 14, 24), "banana": (230, 220, 172)}
JUICE_COLOR_NAMES = {"orange": "orange", "cherry": "red", "banana": "white-yellow"}
_NECK_TOP, _BODY_BOTTOM = 150.0, 1468.0


def _bottle_shapes(cv: Canvas, inset: float, draw_color=None, part=None, opacity=1.0, shade=-0.3):
    """Neck, shoulder and body of the bottle, as regions (drawn when ``draw_color`` is given)."""
    specs = [
        (400, 318, 92 - inset, 168 - inset, 12.0),   # neck 150..486
        (400, 560, 212 - inset, 120 - inset, 2.2),  # shoulder
        (400, 1000, 212 - inset, 468 - inset, 9.0),  # body 532..1468
    ]
    out = []
    for cx, cy, rx, ry, pw in specs:
        if draw_color is None:
            out.append(blob(cv, cx, cy, rx, ry, (0, 0, 0), shape="superellipse", power=pw, draw=False))
        else:
            out.append(blob(cv, cx, cy, rx, ry, draw_color, shape="superellipse", power=pw, part=part,
                            opacity=opacity, shade=shade, texture=0.04, texture_kind="medium"))
    return out


def _union(cv: Canvas, regions: list[Region]) -> tuple[int, int, np.ndarray] | None:
    regions = [r for r in regions if r.mask.size]
    if not regions:
        return None
    r0 = min(r.r0 for r in regions)
    c0 = min(r.c0 for r in regions)
    r1 = max(r.r0 + r.mask.shape[0] for r in regions)
    c1 = max(r.c0 + r.mask.shape[1] for r in regions)
    m = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    for r in regions:
        m[r.r0 - r0 : r.r0 - r0 + r.mask.shape[0], r.c0 - c0 : r.c0 - c0 + r.mask.shape[1]] |= r.mask
    return r0, c0, m


def _juice(cv: Canvas, rng, fill_y: float, color, draw: bool = True) -> Region:
    """Liquid inside the bottle from nominal height ``fill_y`` down, cylindrically shaded."""
    u = _union(cv, _bottle_shapes(cv, inset=10))
    if u is None:
        return EMPTY
    r0, c0, m = u
    h, w = m.shape
    nx, ny = cv.nominal_grid(r0, r0 + h, c0, c0 + w)
    inside = m & (ny >= fill_y)
    if not draw:
        return Region(r0, c0, inside)
    across = np.clip((nx - 400.0) / 205.0, -1, 1)
    light = 1.0 - 0.35 * across ** 2 + 0.18 * np.exp(-((across + 0.55) ** 2) / 0.01)
    light = light * (1.0 + 0.08 * np.exp(-np.clip(ny - fill_y, 0, None) / 12.0))  # meniscus glint
    col = np.asarray(color, dtype=np.float32) * light[..., None]
    return cv.paint(r0, c0, col, inside.astype(np.float32) * 0.96, "juice")


def _fruit_icon(cv: Canvas, rng, fruit: str, x: float, y: float, draw: bool = True) -> Region:
    if not draw:
        return blob(cv, x, y, 62, 62, (0, 0, 0), draw=False)
    if fruit == "orange":
        reg = blob(cv, x, y + 6, 52, 50, jitter_color(rng, (236, 128, 30), 0.03), part="fruit_icon", shade=0.45, specular=0.2)
        blob(cv, x + 14, y - 46, 24, 11, (70, 125, 40), angle=-0.5, part="fruit_icon", shade=0.3)
        return reg
    if fruit == "cherry":
        tube(cv, [(x - 28, y + 14), (x, y - 52), (x + 30, y + 20)], 6, (70, 95, 40), part="fruit_icon", shade=0.2)
        a = blob(cv, x - 28, y + 22, 30, 30, jitter_color(rng, (175, 20, 32), 0.03), part="fruit_icon", shade=0.45, specular=0.25)
        c = blob(cv, x + 30, y + 28, 30, 30, jitter_color(rng, (175, 20, 32), 0.03), part="fruit_icon", shade=0.45, specular=0.25)
        u = _union(cv, [a, c])
        return Region(*u) if u else EMPTY
    arc = [(x - 55 + 110 * t, y + 25 - 70 * math.sin(math.pi * t) * 0.6 + 20 * t) for t in np.linspace(0, 1, 9)]
    reg = tube(cv, arc, 30, jitter_color(rng, (240, 212, 62), 0.03), part="fruit_icon", shade=0.4, specular=0.15)
    blob(cv, arc[0][0], arc[0][1], 7, 7, (90, 70, 30))
    return reg


def juice_bottle(rng: np.random.Generator, scale: float, anomaly: str | None) -> Build:
    cv = _pose(rng, "juice_bottle", scale, rotation=1.5, shift=(35, 30), zoom=0.025)
    counts = {"bottle": 1, "juice": 1, "fruit_label": 1, "fruit_icon": 1, "bottom_label": 1}
    b = Build(cv, counts)
    cv.fill(jitter_color(rng, (9, 9, 11), 0.1, 0.3), noise=0.35)
    b.keep_substrate()
    glass = jitter_color(rng, (30, 31, 34), 0.03, 0.1)
    shapes = _bottle_shapes(cv, 0, glass, part="bottle", opacity=0.92, shade=-1.3)
    u = _union(cv, shapes)
    if u:
        b.objects.append(("bottle", Region(*u)))
    for yy in (170.0, 196.0, 222.0):  # screw thread on the neck
        tube(cv, [(312, yy), (488, yy + 6)], 7, (120, 120, 126), part="bottle", specular=0.15, opacity=0.8)

    fruit = _pick(rng, list(JUICE_COLORS))
    juice_fruit = fruit
    fill_y = 548.0 + rng.uniform(-14, 14)
    normal_fill = fill_y
    if anomaly == "juice_color_mismatch":
        juice_fruit = _pick(rng, [f for f in JUICE_COLORS if f != fruit])
    elif anomaly == "overfilled":
        fill_y = rng.uniform(250, 380)
    elif anomaly == "underfilled":
        fill_y = rng.uniform(760, 900)
    juice_color = jitter_color(rng, JUICE_COLORS[juice_fruit], 0.04, 0.06)
    if anomaly == "empty_bottle":
        counts["juice"] = 0
        region = _juice(cv, rng, normal_fill, juice_color, draw=False)
        b.mark(region)
        b.reason = "The bottle is empty: it contains no juice."
    else:
        region = _juice(cv, rng, fill_y, juice_color)
        b.objects.append(("juice", region))
        if anomaly in ("overfilled", "underfilled"):
            lo, hi = sorted((fill_y, normal_fill))
            full = _juice(cv, rng, lo, juice_color, draw=False).full((cv.height, cv.width))
            below = _juice(cv, rng, hi, juice_color, draw=False).full((cv.height, cv.width))
            b.mark(Region(0, 0, full & ~below))
            b.reason = ("The juice is filled too high, up into the bottle's neck." if anomaly == "overfilled"
                        else "The bottle is under-filled: the juice ends far below the neck.")
    # highlight streak on the glass
    tube(cv, [(265, 600), (262, 1420)], 14, (255, 255, 255), opacity=0.18, shade=0.9)

    label_x, label_y = 400 + rng.uniform(-8, 8), 1000 + rng.uniform(-10, 10)
    expected = blob(cv, label_x, label_y, 150, 150, (0, 0, 0), shape="superellipse", power=12, draw=False)
    icon_x, icon_y = label_x, label_y
    label_angle = rng.uniform(-0.03, 0.03)
    if anomaly == "misplaced_fruit_label":
        # moved up towards the shoulder (down would run into the bottom label), or stuck on askew
        if rng.uniform() < 0.5:
            label_y -= rng.uniform(180, 260)
        else:
            label_angle = _pick(rng, [-1, 1]) * rng.uniform(0.3, 0.5)
        icon_x, icon_y = label_x, label_y
    if anomaly == "misplaced_fruit_icon":
        ang = rng.uniform(0, 2 * math.pi)
        icon_x, icon_y = label_x + 82 * math.cos(ang), label_y + 82 * math.sin(ang)
    cream = jitter_color(rng, (240, 226, 190), 0.02, 0.05)
    if anomaly == "missing_fruit_label":
        counts["fruit_label"] = 0
        counts["fruit_icon"] = 0
        b.mark(expected)
        b.reason = "The fruit label is missing from the middle of the bottle."
    else:
        lab = blob(cv, label_x, label_y, 150 * rng.uniform(0.98, 1.02), 150, cream, shape="superellipse", power=12,
                   angle=label_angle, part="fruit_label", shade=0.1, color2=jitter_color(rng, (236, 196, 140), 0.03),
                   mix_noise=0.4, texture=0.03)
        blob(cv, label_x, label_y, 130, 130, (170, 140, 95), shape="superellipse", power=8, hole=0.95, opacity=0.5,
             angle=label_angle)
        b.objects.append(("fruit_label", lab))
        icon = _fruit_icon(cv, rng, fruit, icon_x, icon_y)
        b.objects.append(("fruit_icon", icon))
        if anomaly == "misplaced_fruit_label":
            b.mark(expected, lab)
            b.reason = ("The fruit label sits too high on the bottle, far from its usual centred place." if label_y < 900
                        else "The fruit label is stuck on askew instead of straight and centred.")
        elif anomaly == "misplaced_fruit_icon":
            b.mark(icon, _fruit_icon(cv, rng, fruit, label_x, label_y, draw=False))
            b.reason = "The fruit icon is not centred on its label but pushed towards an edge."
        elif anomaly == "juice_color_mismatch":
            b.mark(region, icon)
            b.reason = (f"The juice is {JUICE_COLOR_NAMES[juice_fruit]}, but the label shows "
                        f"{'cherries' if fruit == 'cherry' else 'a ' + fruit}, which needs {JUICE_COLOR_NAMES[fruit]} juice.")

    bx, by = 400 + rng.uniform(-6, 6), 1335 + rng.uniform(-8, 8)
    if anomaly == "missing_bottom_label":
        counts["bottom_label"] = 0
        b.mark(blob(cv, bx, by, 150, 50, (0, 0, 0), shape="superellipse", power=12, draw=False))
        b.reason = "The '100% Juice' label is missing from the bottom of the bottle."
    else:
        bl = blob(cv, bx, by, 150, 50, cream, shape="superellipse", power=12, part="bottom_label", shade=0.1, texture=0.03)
        blob(cv, bx, by, 140, 42, (150, 120, 80), shape="superellipse", power=8, hole=0.94, opacity=0.5)
        text(cv, bx, by, "100% Juice", 46, color=(25, 22, 18))
        b.objects.append(("bottom_label", bl))
    b.facts = {"fruit": fruit, "juice_color": JUICE_COLOR_NAMES[juice_fruit],
               "fill_level": round((_BODY_BOTTOM - fill_y) / (_BODY_BOTTOM - _NECK_TOP), 3) if counts["juice"] else 0.0}
    return b


# ----------------------------------------------------------------------------------
# pushpins
# ----------------------------------------------------------------------------------
_GRID_X0, _GRID_X1, _GRID_Y0, _GRID_Y1 = 95.0, 1605.0, 75.0, 925.0
_ROWS, _COLS = 3, 5


def _cell(r: int, c: int) -> tuple[float, float, float, float]:
    cw, ch = (_GRID_X1 - _GRID_X0) / _COLS, (_GRID_Y1 - _GRID_Y0) / _ROWS
    return _GRID_X0 + (c + 0.5) * cw, _GRID_Y0 + (r + 0.5) * ch, cw / 2, ch / 2


def _pushpin(cv: Canvas, rng, x: float, y: float, draw: bool = True) -> Region:
    ang = rng.uniform(0, 2 * math.pi)
    length = rng.uniform(80, 100)
    tip = (x + length * math.cos(ang), y + length * math.sin(ang))
    if not draw:
        return _union_region(cv, [tube(cv, [(x, y), tip], 10, (0, 0, 0), draw=False),
                                  blob(cv, x, y, 44, 34, (0, 0, 0), angle=ang, draw=False)])
    probe = blob(cv, x, y, 44, 34, (0, 0, 0), angle=ang, draw=False)
    shadow(cv, probe, offset=(8, 10), strength=0.5, blur=8)
    needle = tube(cv, [(x, y), tip], 9, jitter_color(rng, (185, 185, 190), 0.02), part="pushpin", specular=0.3, shade=0.5)
    head = blob(cv, x, y, 44 * rng.uniform(0.95, 1.05), 34, jitter_color(rng, (238, 200, 38), 0.04, 0.06), angle=ang,
                part="pushpin", shade=0.45, specular=0.28, texture=0.03)
    blob(cv, x - 10 * math.cos(ang), y - 10 * math.sin(ang), 18, 16, (250, 225, 90), angle=ang, shade=0.2, opacity=0.6)
    return _union_region(cv, [needle, head])


def _union_region(cv: Canvas, regions: list[Region]) -> Region:
    u = _union(cv, regions)
    return Region(*u) if u else EMPTY


def pushpins(rng: np.random.Generator, scale: float, anomaly: str | None) -> Build:
    cv = _pose(rng, "pushpins", scale, rotation=2.0, shift=(30, 25), zoom=0.02)
    counts = {"pushpin": 15, "wall": 2 * _COLS + (_COLS - 1) * _ROWS, "compartment": 15}
    b = Build(cv, counts)
    cv.fill(jitter_color(rng, (14, 14, 17), 0.1, 0.3), noise=0.3)
    box = blob(cv, 850, 500, 800, 470, jitter_color(rng, (58, 62, 68), 0.04, 0.1), shape="superellipse", power=14,
               part="box", shade=-0.15, texture=0.06, texture_kind="smooth")
    blob(cv, 850, 500, 800, 470, (160, 165, 170), shape="superellipse", power=14, hole=0.975, opacity=0.7)
    b.objects.append(("box", box))
    b.keep_substrate()

    walls = []
    cw, ch = (_GRID_X1 - _GRID_X0) / _COLS, (_GRID_Y1 - _GRID_Y0) / _ROWS
    for r in range(1, _ROWS):
        for c in range(_COLS):
            y = _GRID_Y0 + r * ch
            walls.append(((_GRID_X0 + c * cw, y), (_GRID_X0 + (c + 1) * cw, y)))
    for c in range(1, _COLS):
        for r in range(_ROWS):
            x = _GRID_X0 + c * cw
            walls.append(((x, _GRID_Y0 + r * ch), (x, _GRID_Y0 + (r + 1) * ch)))
    missing_wall = int(rng.integers(len(walls))) if anomaly == "missing_separator" else -1
    wall_color = jitter_color(rng, (168, 172, 178), 0.03, 0.08)
    for i, (p, q) in enumerate(walls):
        if i == missing_wall:
            b.mark(tube(cv, [p, q], 40, (0, 0, 0), draw=False))
            counts["wall"] -= 1
            counts["compartment"] -= 1
            b.reason = "A separator wall between two compartments is missing."
            continue
        w = tube(cv, [p, q], 16, wall_color, part="wall", shade=0.4, specular=0.12, opacity=0.85)
        b.objects.append(("wall", w))
    cells = [(r, c) for r in range(_ROWS) for c in range(_COLS)]
    empty_cell = cells[int(rng.integers(15))] if anomaly == "missing_pushpin" else None
    double_cell = cells[int(rng.integers(15))] if anomaly == "extra_pushpin" else None
    for r, c in cells:
        cx, cy, hw, hh = _cell(r, c)
        n = 2 if (r, c) == double_cell else 1
        for k in range(n):
            if n == 2:
                x = cx + (-0.38 if k == 0 else 0.38) * hw + rng.uniform(-0.06, 0.06) * hw
                y = cy + rng.uniform(-0.3, 0.3) * hh
            else:
                x, y = cx + rng.uniform(-0.35, 0.35) * hw, cy + rng.uniform(-0.3, 0.3) * hh
            pin = _pushpin(cv, rng, x, y, draw=(r, c) != empty_cell)
            if (r, c) == empty_cell:
                counts["pushpin"] -= 1
                b.mark(blob(cv, cx, cy, hw * 0.9, hh * 0.9, (0, 0, 0), shape="superellipse", power=6, draw=False))
                b.reason = f"The compartment in row {r + 1}, column {c + 1} holds no pushpin."
            else:
                b.objects.append(("pushpin", pin))
        if (r, c) == double_cell:
            counts["pushpin"] += 1
            b.mark(blob(cv, cx, cy, hw * 0.9, hh * 0.9, (0, 0, 0), shape="superellipse", power=6, draw=False))
            b.reason = f"The compartment in row {r + 1}, column {c + 1} holds two pushpins instead of one."
    b.facts = {"grid": [_ROWS, _COLS], "empty_cell": list(empty_cell) if empty_cell else None,
               "double_cell": list(double_cell) if double_cell else None}
    return b


# ----------------------------------------------------------------------------------
# screw bag
# ----------------------------------------------------------------------------------
LONG_SCREW, SHORT_SCREW = 420.0, 300.0


def _screw(cv: Canvas, rng, x, y, length, ang, draw=True) -> Region:
    hx, hy = x - length / 2 * math.cos(ang), y - length / 2 * math.sin(ang)
    head_len = 62.0
    sx, sy = hx + head_len * math.cos(ang), hy + head_len * math.sin(ang)
    tx, ty = x + length / 2 * math.cos(ang), y + length / 2 * math.sin(ang)
    hcx, hcy = hx + head_len / 2 * math.cos(ang), hy + head_len / 2 * math.sin(ang)
    if not draw:
        return _union_region(cv, [tube(cv, [(sx, sy), (tx, ty)], 44, (0, 0, 0), draw=False),
                                  blob(cv, hcx, hcy, 31, 38, (0, 0, 0), angle=ang, shape="superellipse", power=4, draw=False)])
    metal = jitter_color(rng, (172, 174, 178), 0.02, 0.08)
    shaft = tube(cv, [(sx, sy), (tx, ty)], 42, metal, part="screw", shade=0.6, specular=0.25, stripes=0.45, stripe_period=13)
    head = blob(cv, hcx, hcy, 31, 38, metal * 1.05, angle=ang, shape="superellipse", power=4, part="screw", shade=0.5,
                specular=0.3, texture=0.03)
    blob(cv, hcx - 8 * math.cos(ang), hcy - 8 * math.sin(ang), 8, 16, (45, 45, 50), angle=ang, shade=0.1, opacity=0.8)
    return _union_region(cv, [shaft, head])


def _nut(cv: Canvas, rng, x, y, draw=True) -> Region:
    ang = rng.uniform(0, math.pi)
    if not draw:
        return blob(cv, x, y, 54, 54, (0, 0, 0), angle=ang, shape="hexagon", draw=False)
    return blob(cv, x, y, 54, 54, jitter_color(rng, (176, 178, 184), 0.02, 0.08), angle=ang, shape="hexagon", hole=0.5,
                part="nut", shade=0.35, specular=0.25, texture=0.05, texture_kind="medium")


def _washer(cv: Canvas, rng, x, y, draw=True) -> Region:
    r = rng.uniform(54, 58)
    if not draw:
        return blob(cv, x, y, r, r, (0, 0, 0), draw=False)
    return blob(cv, x, y, r, r * rng.uniform(0.9, 1.0), jitter_color(rng, (188, 190, 194), 0.02, 0.08),
                angle=rng.uniform(0, math.pi), hole=0.5, part="washer", shade=-0.3, specular=0.2, texture=0.05)


def _place(rng, footprints: list[list[tuple[float, float, float]]], area) -> list[tuple[float, float, float]]:
    """Place items (each a list of (dx, dy, r) circles about its centre) without overlap, by rejection."""
    x0, y0, x1, y1 = area
    placed: list[tuple[float, float, float]] = []
    poses = []
    for circles in footprints:
        for attempt in range(120):
            x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
            ang = rng.uniform(0, 2 * math.pi)
            world = [(x + dx * math.cos(ang) - dy * math.sin(ang), y + dx * math.sin(ang) + dy * math.cos(ang), r)
                     for dx, dy, r in circles]
            inside = all(x0 - 40 <= px <= x1 + 40 and y0 - 40 <= py <= y1 + 40 for px, py, _ in world)
            if inside and all(math.hypot(px - qx, py - qy) > pr + qr for px, py, pr in world for qx, qy, qr in placed):
                break
        placed.extend(world)
        poses.append((x, y, ang))
    return poses


def screw_bag(rng: np.random.Generator, scale: float, anomaly: str | None) -> Build:
    cv = _pose(rng, "screw_bag", scale, rotation=3.0, shift=(45, 35))
    b = Build(cv, {"screw": 2, "nut": 2, "washer": 2})
    cv.fill(jitter_color(rng, (10, 10, 12), 0.1, 0.3), noise=0.3)
    bag = blob(cv, 760, 560, 665, 425, jitter_color(rng, (34, 34, 38), 0.03, 0.15), shape="superellipse", power=16,
               part="bag", shade=-0.2, texture=0.12, texture_kind="smooth", texture_zoom=0.35, opacity=0.95)
    b.objects.append(("bag", bag))
    # welded seams catch the light along the bag's edge
    blob(cv, 760, 560, 665, 425, (150, 150, 158), shape="superellipse", power=16, hole=0.975, opacity=0.45, shade=0.0)
    before = cv.img.copy()
    for _ in range(int(rng.integers(6, 11))):  # wrinkle highlights in the plastic
        x, y = rng.uniform(150, 1300), rng.uniform(180, 940)
        a, L = rng.uniform(0, math.pi), rng.uniform(120, 380)
        tube(cv, [(x, y), (x + L * math.cos(a), y + L * math.sin(a) + rng.uniform(-40, 40)),
                  (x + 1.6 * L * math.cos(a), y + 1.6 * L * math.sin(a))], rng.uniform(8, 30), (235, 235, 240),
             opacity=rng.uniform(0.05, 0.14), shade=0.9)
    outside = ~bag.full((cv.height, cv.width))
    cv.img[outside] = before[outside]  # the highlights belong to the plastic only
    tube(cv, [(1300, 145), (1300, 975)], 8, (150, 150, 155), opacity=0.6)
    for k in range(5):  # recycling marks printed on the strip
        yy = 215 + k * 165
        tri = [(1370, yy - 28), (1398, yy + 20), (1342, yy + 20), (1370, yy - 28)]
        tube(cv, tri, 6, (225, 225, 228), opacity=0.75, shade=0.0)
        text(cv, 1370, yy + 50, "PE-LD", 26, color=(220, 220, 222))
    b.keep_substrate()

    lengths = [LONG_SCREW * rng.uniform(0.97, 1.03), SHORT_SCREW * rng.uniform(0.97, 1.03)]
    changed_screw = -1
    if anomaly == "both_screws_long":
        lengths[1], changed_screw = LONG_SCREW * rng.uniform(0.97, 1.03), 1
        b.reason = "Both screws are long; one long and one short screw are expected."
    elif anomaly == "both_screws_short":
        lengths[0], changed_screw = SHORT_SCREW * rng.uniform(0.97, 1.03), 0
        b.reason = "Both screws are short; one long and one short screw are expected."
    elif anomaly == "screw_too_long":
        lengths[0], changed_screw = rng.uniform(550, 600), 0
        b.reason = "The long screw is far longer than usual."
    elif anomaly == "screw_too_short":
        lengths[1], changed_screw = rng.uniform(170, 200), 1
        b.reason = "The short screw is far shorter than usual."
    items = [("screw", lengths[0]), ("screw", lengths[1]), ("nut", 0.0), ("nut", 0.0), ("washer", 0.0), ("washer", 0.0)]
    if anomaly in ("extra_screw", "extra_nut", "extra_washer"):
        kind = anomaly.split("_")[1]
        items.append((kind, _pick(rng, lengths) if kind == "screw" else 0.0))
        b.counts[kind] += 1
        b.reason = f"The bag holds three {kind}s instead of two."
    missing = -1
    if anomaly in ("missing_screw", "missing_nut", "missing_washer"):
        kind = anomaly.split("_")[1]
        missing = _pick(rng, [i for i, (k, _) in enumerate(items) if k == kind])
        b.counts[kind] -= 1
        b.reason = f"The bag holds only one {kind} instead of two."
    foot = []
    for kind, length in items:
        if kind == "screw":
            n = max(2, int(length // 60))
            foot.append([(-length / 2 + (i + 0.5) * length / n, 0.0, 36.0) for i in range(n)])
        else:
            foot.append([(0.0, 0.0, 62.0)])
    poses = _place(rng, foot, (230, 230, 1180, 890))
    for i, ((kind, length), (x, y, ang)) in enumerate(zip(items, poses)):
        draw = i != missing
        if kind == "screw":
            region = _screw(cv, rng, x, y, length, ang, draw=draw)
        elif kind == "nut":
            region = _nut(cv, rng, x, y, draw=draw)
        else:
            region = _washer(cv, rng, x, y, draw=draw)
        if not draw or i == changed_screw or i >= 6:
            b.mark(region)
        if draw:
            b.objects.append((kind, region))
    screws = [round(length, 1) for i, (k, length) in enumerate(items) if k == "screw" and i != missing]
    b.facts = {"screw_lengths": sorted(screws, reverse=True), "long_screw": LONG_SCREW, "short_screw": SHORT_SCREW}
    return b


# ----------------------------------------------------------------------------------
# splicing connectors
# ----------------------------------------------------------------------------------
CABLE_COLORS = {2: (226, 196, 36), 3: (36, 86, 192), 5: (200, 34, 34)}
CABLE_COLOR_NAMES = {2: "yellow", 3: "blue", 5: "red"}
_ROW_PITCH = 88.0


def _mesh(cv: Canvas, rng) -> None:
    """Expanded-metal grille: bright diagonal strands around dark diamond holes."""
    h, w = cv.height, cv.width
    nx, ny = cv.nominal_grid(0, h, 0, w)
    px, py = rng.uniform(0, 60), rng.uniform(0, 30)
    a = (nx + px) / 62.0 + (ny + py) / 30.0
    c = (nx + px) / 62.0 - (ny + py) / 30.0
    fa, fc = np.abs(a - np.round(a)), np.abs(c - np.round(c))
    strand = np.clip(1.0 - np.minimum(fa, fc) * 7.0, 0.0, 1.0)
    metal = np.asarray(jitter_color(rng, (150, 152, 158), 0.03, 0.12), dtype=np.float32)
    hole = np.asarray((26, 26, 29), dtype=np.float32)
    sheen = 0.8 + 0.4 * np.clip(0.5 + 0.5 * np.sin((a + c) * math.pi), 0, 1)
    cv.img[:] = hole + (metal * sheen[..., None] - hole) * strand[..., None]


def _levers(cv: Canvas, rng, rows, tilt, color) -> Region:
    regs = []
    for x, y in rows:
        regs.append(blob(cv, x, y, 98, 36, color, angle=tilt, shape="superellipse", power=6, part="clamp", shade=0.35,
                         specular=0.08, texture=0.03))
        # moulded ridge along the lever and the dark slot beside it
        ca, sa = math.cos(tilt), math.sin(tilt)
        along = lambda d, off: (x + d * ca - off * sa, y + d * sa + off * ca)
        tube(cv, [along(-80, -14), along(80, -14)], 7, (255, 230, 200), opacity=0.25, shade=0.0)
        tube(cv, [along(-90, 40), along(90, 40)], 5, (60, 40, 30), opacity=0.5, shade=0.0)
    return _union_region(cv, regs)


def _cable(cv: Canvas, rng, start, end, color, sag, draw=True, width=30.0) -> Region:
    (x0, y0), (x1, y1) = start, end
    ts = np.linspace(0.0, 1.0, 20)
    phase = rng.uniform(0, 2 * math.pi)
    pts = [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t + sag * math.sin(math.pi * t) + 6 * math.sin(2 * math.pi * t * 1.5 + phase))
           for t in ts]
    if not draw:
        return tube(cv, pts, width * 2.2, (0, 0, 0), draw=False)
    probe = tube(cv, pts, width, (0, 0, 0), draw=False)
    shadow(cv, probe, offset=(6, 10), strength=0.45, blur=6)
    return tube(cv, pts, width, color, part="cable", shade=0.5, specular=0.25)


def splicing_connectors(rng: np.random.Generator, scale: float, anomaly: str | None) -> Build:
    cv = _pose(rng, "splicing_connectors", scale, rotation=2.5, shift=(40, 25), zoom=0.03)
    _mesh(cv, rng)
    k = int(_pick(rng, [2, 3, 5]))
    k_right = k
    if anomaly == "clamp_count_mismatch":
        k_right = int(_pick(rng, [v for v in (2, 3, 5) if v != k]))
    b = Build(cv, {"connector": 2, "clamp": k + k_right, "cable": 1})
    b.keep_substrate()
    row_left = int(rng.integers(min(k, k_right)))
    row_right = row_left
    if anomaly == "wrong_cable_location":
        choices = [r for r in range(k_right) if r != row_left and abs(r - row_left) >= 1]
        row_right = _pick(rng, choices)
    cable_k = k
    if anomaly == "cable_color_mismatch":
        cable_k = _pick(rng, [v for v in (2, 3, 5) if v != k])
    cable_color = jitter_color(rng, CABLE_COLORS[cable_k], 0.05, 0.08)
    lever_color = jitter_color(rng, (236, 96, 40), 0.03, 0.07)

    lx, ly = 250 + rng.uniform(-30, 30), 425 + rng.uniform(-45, 45)
    rx, ry = 1450 + rng.uniform(-30, 30), 425 + rng.uniform(-45, 45)
    lt, rt = rng.uniform(-0.06, 0.06), rng.uniform(-0.06, 0.06)
    missing_side = _pick(rng, ["left", "right"]) if anomaly == "missing_connector" else None

    def place(cx, cy, kk, side, tilt, draw):
        ca, sa = math.cos(tilt), math.sin(tilt)
        rows = []
        mouths = []
        for i in range(kk):
            off = (i - (kk - 1) / 2) * _ROW_PITCH
            rows.append((cx + 40 * side * ca - off * sa, cy + 40 * side * sa + off * ca))
            mouths.append((cx + 125 * side * ca - off * sa, cy + 125 * side * sa + off * ca))
        housing = None
        if draw:
            probe = blob(cv, cx, cy, 125, (kk * _ROW_PITCH + 46) / 2, (0, 0, 0), angle=tilt, shape="superellipse", power=8, draw=False)
            shadow(cv, probe, offset=(10, 14), strength=0.5, blur=10)
            housing = blob(cv, cx, cy, 125, (kk * _ROW_PITCH + 46) / 2, jitter_color(rng, (208, 210, 214), 0.02, 0.06),
                           angle=tilt, shape="superellipse", power=8, part="connector", shade=-0.2, texture=0.05,
                           texture_kind="medium", opacity=0.82, specular=0.1)
        else:
            housing = blob(cv, cx, cy, 125, (kk * _ROW_PITCH + 46) / 2, (0, 0, 0), angle=tilt, shape="superellipse",
                           power=8, draw=False)
        return housing, rows, mouths

    left_h, left_rows, left_mouths = place(lx, ly, k, +1, lt, missing_side != "left")
    right_h, right_rows, right_mouths = place(rx, ry, k_right, -1, rt, missing_side != "right")
    start = left_rows[row_left]
    end = right_rows[row_right]
    sag = rng.uniform(-40, 60)
    if missing_side == "left":
        start = (lx + rng.uniform(-40, 40), ly + rng.uniform(-80, 80))
    if missing_side == "right":
        end = (rx + rng.uniform(-40, 40), ry + rng.uniform(-80, 80))

    cables = []
    if anomaly == "missing_cable":
        b.counts["cable"] = 0
        b.mark(_cable(cv, rng, start, end, cable_color, sag, draw=False))
        b.reason = "The cable is missing: nothing connects the two connectors."
    elif anomaly == "cable_cut":
        gap = rng.uniform(0.12, 0.22)
        mid = rng.uniform(0.4, 0.6)
        p = lambda t: (start[0] + (end[0] - start[0]) * t, start[1] + (end[1] - start[1]) * t + sag * math.sin(math.pi * t))
        a_end, b_start = p(mid - gap / 2), p(mid + gap / 2)
        cables.append(_cable(cv, rng, start, a_end, cable_color, sag * 0.4))
        cables.append(_cable(cv, rng, b_start, end, cable_color, sag * 0.4))
        b.counts["cable"] = 2
        b.mark(_cable(cv, rng, p(mid - gap / 2 - 0.05), p(mid + gap / 2 + 0.05), cable_color, 0, draw=False))
        b.reason = "The cable is cut through: it no longer connects the two connectors."
    else:
        cables.append(_cable(cv, rng, start, end, cable_color, sag))
        if anomaly == "extra_cable":
            others = [r for r in range(min(k, k_right)) if r != row_left]
            other = _pick(rng, others)
            extra = _cable(cv, rng, left_rows[other], right_rows[other], cable_color, rng.uniform(-40, 60))
            cables.append(extra)
            b.counts["cable"] = 2
            b.mark(extra)
            b.reason = "Two cables join the connectors instead of one."
    for c in cables:
        b.objects.append(("cable", c))

    lefts = _levers(cv, rng, left_rows, lt, lever_color) if missing_side != "left" else EMPTY
    rights = _levers(cv, rng, right_rows, rt, lever_color) if missing_side != "right" else EMPTY
    for side, housing, levers in (("left", left_h, lefts), ("right", right_h, rights)):
        if missing_side == side:
            continue
        b.objects.append(("connector", housing))
        b.objects.append(("clamp", levers))
    if missing_side:
        b.counts["connector"] = 1
        b.counts["clamp"] = k_right if missing_side == "left" else k
        b.mark(left_h if missing_side == "left" else right_h)
        b.reason = f"The {missing_side} connector is missing; the cable ends loose."
    if anomaly == "clamp_count_mismatch":
        b.mark(left_h, right_h)
        b.reason = f"The connectors differ: the left one has {k} clamps and the right one has {k_right}."
    if anomaly == "cable_color_mismatch":
        b.mark(*cables)
        b.reason = (f"The cable is {CABLE_COLOR_NAMES[cable_k]}, but connectors with {k} clamps need a "
                    f"{CABLE_COLOR_NAMES[k]} cable.")
    if anomaly == "wrong_cable_location":
        b.mark(*cables)
        b.reason = (f"The cable joins clamp {row_left + 1} on the left to clamp {row_right + 1} on the right, "
                    "not mirrored positions.")
    b.facts = {"clamps_left": 0 if missing_side == "left" else k, "clamps_right": 0 if missing_side == "right" else k_right,
               "cable_color": CABLE_COLOR_NAMES[cable_k], "cable_row_left": row_left + 1, "cable_row_right": row_right + 1}
    return b


SCENES: dict[str, Callable[[np.random.Generator, float, str | None], Build]] = {
    "breakfast_box": breakfast_box,
    "juice_bottle": juice_bottle,
    "pushpins": pushpins,
    "screw_bag": screw_bag,
    "splicing_connectors": splicing_connectors,
}


# ----------------------------------------------------------------------------------
# structural defects (any category)
# ----------------------------------------------------------------------------------
def apply_structural(b: Build, rng: np.random.Generator, category: str, defect: str) -> None:
    """Scratch, contaminate or break one object of the scene, and record the mask and reason."""
    cv = b.cv
    allowed = BROKEN_TARGETS[category] if defect == "broken_part" else STRUCTURAL_TARGETS[category]
    targets = [(n, r) for n, r in b.objects if n in allowed and r.area > 40 * cv.scale]
    if not targets:
        targets = [(n, r) for n, r in b.objects if r.area > 0]
    name, region = targets[int(rng.integers(len(targets)))]
    ys, xs = np.nonzero(region.mask)
    shape = (cv.height, cv.width)
    obj = region.full(shape)
    word = name.replace("_", " ")
    if defect == "scratch":
        # A nearly straight stroke with a slight bend, starting on the object. Of a few
        # candidate strokes keep the one that stays longest on it (rings and thin screws
        # would otherwise clip most strokes to a few pixels).
        size = 2 * math.sqrt(region.area / math.pi) / (cv.scale * cv.zoom)
        width = max(rng.uniform(4, 8), 2.2 / (cv.scale * cv.zoom))  # at least ~2 px, or it vanishes in the blur
        line = np.zeros(shape, dtype=bool)
        for _ in range(6):
            i = int(rng.integers(len(ys)))
            x0, y0 = cv.nominal(xs[i] + region.c0, ys[i] + region.r0)
            length = size * rng.uniform(0.4, 0.8)
            ang = rng.uniform(0, 2 * math.pi)
            bend = rng.uniform(-0.12, 0.12) * length
            pts = [(x0 + t * length * math.cos(ang) - math.sin(ang) * bend * math.sin(math.pi * t),
                    y0 + t * length * math.sin(ang) + math.cos(ang) * bend * math.sin(math.pi * t))
                   for t in np.linspace(0, 1, 6)]
            stroke = tube(cv, pts, width, (0, 0, 0), draw=False)
            candidate = stroke.full(shape) & obj
            if candidate.sum() > line.sum():
                line = candidate
        color = np.asarray((245, 245, 240) if cv.img[obj].mean() < 120 else (40, 35, 30), dtype=np.float32)
        cv.img[line] = cv.img[line] * 0.3 + color * 0.7
        mask = line
        reason = f"The {word} has a scratch across it."
    elif defect == "contamination":
        i = int(rng.integers(len(ys)))
        x, y = cv.nominal(xs[i] + region.c0, ys[i] + region.r0)
        r = rng.uniform(18, 40)
        color = jitter_color(rng, _pick(rng, [(40, 30, 22), (90, 110, 50), (20, 20, 20), (150, 120, 160)]), 0.1, 0.1)
        mask = blob(cv, x, y, r, r * rng.uniform(0.5, 1.0), color, angle=rng.uniform(0, math.pi), wobble=0.3,
                    texture=0.3, texture_kind="medium", shade=0.2).full(shape)
        reason = f"There is a foreign stain or particle on the {word}."
    elif defect == "broken_part":
        edge = obj & ~np.pad(obj, 1)[2:, 1:-1] | obj & ~np.pad(obj, 1)[:-2, 1:-1]
        ey, ex = np.nonzero(edge)
        if ey.size == 0:
            ey, ex = ys + region.r0, xs + region.c0
        i = int(rng.integers(len(ey)))
        eq_r = math.sqrt(region.area / math.pi)
        rad = max(3.0, eq_r * rng.uniform(0.35, 0.5))
        yy, xx = np.ogrid[:shape[0], :shape[1]]
        disk = (yy - ey[i]) ** 2 + (xx - ex[i]) ** 2 <= rad * rad
        mask = disk & obj
        assert b.substrate is not None
        sub_img, sub_parts = b.substrate
        cv.img[mask] = sub_img[mask]
        cv.parts[mask] = sub_parts[mask]
        reason = f"A piece of the {word} is broken off."
    else:
        raise ValueError(f"Unknown structural defect '{defect}'. Known: {', '.join(STRUCTURAL_TYPES)}.")
    b.anomaly_mask = mask
    b.reason = reason
    b.facts = {**b.facts, "defect_on": name}
