"""``logicode``: the helpers LogiCode programs may import (``import logicode as lc``).

A program is called as ``check(scene, references)`` where ``scene`` is the JSON dict of
``detectors.schema.Scene`` and ``references`` a list of such dicts for normal images; it
returns a list of findings built with :func:`finding`.

Every helper is pure and deterministic, works on plain dicts/lists/numpy arrays, and
touches no file, environment or process state. Helpers that take ``part`` accept a part id
(``"p2"``), a part name (case-insensitive, ``"screw"``), or a part dict.
"""

from __future__ import annotations

import colorsys
import statistics
from collections import Counter
from typing import Any, Callable, Iterable, Optional

import numpy as np
from scipy import ndimage

API_VERSION = "4"  # 2: lc.color_name uses the scene parser's colour words; 3: lc.calibrated;
# 4: lc.finding takes a description given as evidence into the explanation; the mask helpers refuse a scene

#: the helpers a check of a parsed scene can use: what the agent's prompt lists. The scene a check
#: receives is plain data without pixel masks, so the mask helpers below would only mislead a
#: model (the CPU default model called them on the scene, and its first attempt was lost). The
#: components' ``color_rgb`` stays unlisted: listed, it led the model to a check of "the first
#: component's colour" that passed the references and misfired on normal splicing connectors.
SCENE_API_REFERENCE = """\
lc.part(scene, name) -> part dict {id,name,description,color_name,count,total_area,ref_count,ref_area}; name = id like "p2" or a name, case-insensitive
lc.parts_like(scene, color=None, name=None) -> list of part dicts with that colour name and/or a name containing `name`
lc.components(scene, part=None, where=None) -> list of component dicts {id,part,area,centroid_rel,bbox,major_axis,color_name,horizontal,vertical,grid_cell}
   part: id/name or None for all parts; where: "left","right","top","bottom","center","middle","top left","bottom right",... of the product
lc.count(scene, part=None, where=None) -> int, number of components
lc.areas(scene, part=None, where=None) -> list of areas in pixels;  lc.total_area(...) -> float, their sum
lc.lengths(scene, part=None, where=None) -> list of major-axis lengths in pixels (use max(..., default=0))
lc.colors(scene, part=None, where=None) -> list of colour names;  lc.boxes(...) -> list of [x0, y0, x1, y1]
lc.positions(scene, part=None, where=None) -> list of [x, y] centroids relative to the product, each in [0, 1]
lc.ref_values(references, fn) -> [fn(r) for r in references], e.g. fn = lambda s: lc.count(s, "p1")
lc.typical(references, fn) -> median of fn over the references (most common value if not numbers)
lc.within_references(value, references, fn, tolerance=0.1, stds=2.0) -> bool, value inside the references' [min, max] widened by tolerance*|max| + stds*std
lc.grid_counts(scene, part=None) -> {"(r,c)": count} for every grid cell ({} when the product has no grid)
lc.color_name(rgb) -> the scene's colour words: red, dark red, orange, brown, beige, yellow, olive, green, cyan, blue, purple, pink, white, gray, dark gray, black
lc.relative_position(box_a, box_b) -> "left of", "right of", "above", "below" or "overlapping" (a relative to b)
lc.finding(rule_id, passed, observed, expected, explanation="", evidence=None) -> the finding dict to return
   evidence: a list of boxes or component dicts (their bbox is used)
"""

#: helpers for programs that are given pixel masks (a user's own program on their own data)
MASK_API_REFERENCE = """\
lc.count_components(mask, min_area=1) -> int, 8-connected components of a 2-D numpy mask
lc.component_areas(mask, min_area=1) -> list of component areas;  lc.centroids(mask, min_area=1) -> list of [x, y]
"""

#: every helper of the module
API_REFERENCE = SCENE_API_REFERENCE + MASK_API_REFERENCE

PALETTE = ("red", "dark red", "orange", "brown", "beige", "yellow", "olive", "green", "cyan", "blue", "purple", "pink",
           "white", "gray", "dark gray", "black")
_HORIZONTAL_WORDS = {"left": "left", "right": "right", "center": "center", "centre": "center", "middle": "center"}
_VERTICAL_WORDS = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom", "middle": "middle", "center": "middle", "centre": "middle"}


# -- parts --------------------------------------------------------------------------------
def _parts(scene: dict) -> list[dict]:
    if not isinstance(scene, dict) or not isinstance(scene.get("parts"), list):
        raise TypeError("scene must be a scene dict with a 'parts' list")
    return scene["parts"]


def part(scene: dict, name: Any) -> dict:
    """The part whose id or name matches ``name`` (case-insensitive); a unique name containing
    ``name`` also matches. Raises ValueError naming the available parts otherwise."""
    if isinstance(name, dict) and "id" in name:
        name = name["id"]
    parts = _parts(scene)
    key = str(name).strip().lower()
    for p in parts:
        if str(p.get("id", "")).lower() == key:
            return p
    for p in parts:
        if str(p.get("name") or "").lower() == key:
            return p
    loose = [p for p in parts if key and key in str(p.get("name") or "").lower()]
    if len(loose) == 1:
        return loose[0]
    known = ", ".join(f"{p.get('id')} ({p.get('name') or p.get('color_name', '')})" for p in parts)
    raise ValueError(f"no part {name!r}; the parts are: {known}")


_find_part = part  # the helpers below take a parameter named ``part``


def parts_like(scene: dict, color: Optional[str] = None, name: Optional[str] = None) -> list[dict]:
    """Parts with colour name ``color`` and/or a name or description containing ``name``."""
    out = []
    for p in _parts(scene):
        if color is not None and str(p.get("color_name", "")).lower() != str(color).lower():
            continue
        if name is not None:
            text = f"{p.get('name') or ''} {p.get('description') or ''}".lower()
            if str(name).lower() not in text:
                continue
        out.append(p)
    return out


# -- components ---------------------------------------------------------------------------
def _where_filter(where: Optional[str]) -> Callable[[dict], bool]:
    if where is None:
        return lambda c: True
    words = str(where).lower().replace("-", " ").replace("_", " ").split()
    if not words or len(words) > 2:
        raise ValueError(f"where={where!r}: use left, right, top, bottom, center, middle or a pair like 'top right'")
    horizontal = vertical = None
    for w in words:
        if w in ("top", "upper", "bottom", "lower"):
            vertical = _VERTICAL_WORDS[w]
        elif w in ("left", "right"):
            horizontal = _HORIZONTAL_WORDS[w]
        elif w not in ("center", "centre", "middle"):
            raise ValueError(f"where={where!r}: unknown position word {w!r}")
    if len(words) == 1 and words[0] in ("center", "centre", "middle"):
        horizontal, vertical = "center", "middle"
    elif len(words) == 2:
        # "top center": the word center/middle fixes the other axis to its middle third
        if horizontal is None:
            horizontal = "center"
        if vertical is None:
            vertical = "middle"

    def third(value: float, names: tuple[str, str, str]) -> str:
        return names[0] if value < 1 / 3 else names[2] if value > 2 / 3 else names[1]

    def keep(c: dict) -> bool:
        rel = c.get("centroid_rel") or (0.5, 0.5)
        h = c.get("horizontal") or third(float(rel[0]), ("left", "center", "right"))
        v = c.get("vertical") or third(float(rel[1]), ("top", "middle", "bottom"))
        return (horizontal is None or h == horizontal) and (vertical is None or v == vertical)

    return keep


def components(scene: dict, part: Any = None, where: Optional[str] = None) -> list[dict]:
    """Components of ``part`` (all parts when None), optionally only those at ``where``."""
    comps = scene.get("components") if isinstance(scene, dict) else None
    if not isinstance(comps, list):
        raise TypeError("scene must be a scene dict with a 'components' list")
    part_id = None if part is None else _find_part(scene, part)["id"]
    keep = _where_filter(where)
    return [c for c in comps if (part_id is None or c.get("part") == part_id) and keep(c)]


def count(scene: dict, part: Any = None, where: Optional[str] = None) -> int:
    return len(components(scene, part, where))


def areas(scene: dict, part: Any = None, where: Optional[str] = None) -> list[float]:
    return [float(c["area"]) for c in components(scene, part, where)]


def total_area(scene: dict, part: Any = None, where: Optional[str] = None) -> float:
    return float(sum(areas(scene, part, where)))


def lengths(scene: dict, part: Any = None, where: Optional[str] = None) -> list[float]:
    return [float(c["major_axis"]) for c in components(scene, part, where)]


def colors(scene: dict, part: Any = None, where: Optional[str] = None) -> list[str]:
    return [str(c["color_name"]) for c in components(scene, part, where)]


def boxes(scene: dict, part: Any = None, where: Optional[str] = None) -> list[list[int]]:
    return [[int(v) for v in c["bbox"]] for c in components(scene, part, where)]


def positions(scene: dict, part: Any = None, where: Optional[str] = None) -> list[list[float]]:
    return [[float(v) for v in c["centroid_rel"]] for c in components(scene, part, where)]


def grid_counts(scene: dict, part: Any = None) -> dict[str, int]:
    """``{"(r,c)": count}`` for every cell of the product's grid; {} without a grid."""
    grid = scene.get("grid") if isinstance(scene, dict) else None
    if not grid:
        return {}
    rows, cols = int(grid[0]), int(grid[1])
    out = {f"({r},{c})": 0 for r in range(rows) for c in range(cols)}
    for comp in components(scene, part):
        cell = comp.get("grid_cell")
        if cell is not None:
            key = f"({int(cell[0])},{int(cell[1])})"
            if key in out:
                out[key] += 1
    return out


# -- reference statistics -----------------------------------------------------------------
def ref_values(references: Iterable[dict], fn: Callable[[dict], Any]) -> list:
    return [fn(r) for r in references]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _typical_value(values: list) -> Any:
    """Median of numbers, else the most common value (ties broken by sorted text, so the
    answer is deterministic)."""
    if all(_is_number(v) for v in values):
        median = statistics.median(values)
        return int(median) if float(median).is_integer() and all(isinstance(v, int) for v in values) else float(median)
    counts = Counter(repr(v) for v in values)
    best = max(counts.values())
    winner = sorted(k for k, n in counts.items() if n == best)[0]
    return next(v for v in values if repr(v) == winner)


def typical(references: Iterable[dict], fn: Callable[[dict], Any]) -> Any:
    """Median of ``fn`` over the references when it gives numbers, else the most common value
    (ties broken by sorted text, so the answer is deterministic)."""
    values = [_plain(v) for v in ref_values(references, fn)]
    if not values:
        raise ValueError("typical() needs at least one reference")
    return _typical_value(values)


def _in_range(value: float, values: list, tolerance: float, stds: float) -> bool:
    """``value`` inside [min, max] of ``values`` widened on each side by
    ``tolerance * max(|min|, |max|) + stds * std``."""
    arr = np.asarray(values, dtype=float)
    lo, hi = float(arr.min()), float(arr.max())
    margin = float(tolerance) * max(abs(lo), abs(hi)) + float(stds) * float(arr.std())
    return lo - margin <= float(value) <= hi + margin


def within_references(
    value: Any, references: Iterable[dict], fn: Callable[[dict], Any], tolerance: float = 0.1, stds: float = 2.0
) -> bool:
    """True when ``value`` lies in [min, max] of ``fn`` over the references, widened on each
    side by ``tolerance * max(|min|, |max|) + stds * std``. Non-numbers: equal to one of them."""
    values = [_plain(v) for v in ref_values(references, fn)]
    if not values:
        raise ValueError("within_references() needs at least one reference")
    value = _plain(value)
    if not (_is_number(value) and all(_is_number(v) for v in values)):
        return value in values
    return _in_range(value, values, tolerance, stds)


# -- colours and geometry -----------------------------------------------------------------
def color_name(rgb: Any) -> str:
    """A plain colour word for an RGB triple (0..255), decided in HSV space.

    This is also how the scene parser names the colours of parts and components (it imports
    this function), so a word a program computes always matches the words in the scene.
    Everyday words, not a colour-science scale: they are what rules say ("yellow cable").
    """
    # The CPU default model has passed a colour word (a part's 'color_name') here; the error it
    # gets back goes into its repair request, so it says what to pass instead.
    if isinstance(rgb, str):
        raise TypeError(f"lc.color_name takes an (r, g, b) colour such as a component's 'color_rgb', not the "
                        f"text {rgb!r}: a part's or component's 'color_name' already is the colour word")
    try:
        values = [float(v) for v in list(rgb)[:3]]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3:
        raise TypeError(f"lc.color_name takes an (r, g, b) colour of three numbers 0-255, got {rgb!r}")
    r, g, b = (min(max(v, 0.0), 255.0) / 255.0 for v in values)
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
        return "olive" if v < 0.45 else "yellow"
    if hue < 165:
        return "green"
    if hue < 195:
        return "cyan"
    if hue < 255:
        return "blue"
    if hue < 290:
        return "purple"
    return "pink" if v > 0.5 else "purple"


def _box(b: Any) -> list[int]:
    if isinstance(b, dict) and "bbox" in b:
        b = b["bbox"]
    vals = [int(round(float(v))) for v in list(b)]
    if len(vals) != 4:
        raise ValueError(f"a box needs 4 numbers [x0, y0, x1, y1], got {len(vals)}")
    return vals


def relative_position(box_a: Any, box_b: Any) -> str:
    """Where box a lies relative to box b (image coordinates: y grows downwards)."""
    ax0, ay0, ax1, ay1 = _box(box_a)
    bx0, by0, bx1, by1 = _box(box_b)
    if min(ax1, bx1) > max(ax0, bx0) and min(ay1, by1) > max(ay0, by0):
        return "overlapping"
    dx = (ax0 + ax1) / 2 - (bx0 + bx1) / 2
    dy = (ay0 + ay1) / 2 - (by0 + by1) / 2
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


# -- masks --------------------------------------------------------------------------------
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _labels(mask: Any, min_area: int) -> tuple[np.ndarray, list[int], np.ndarray]:
    if isinstance(mask, dict):
        raise TypeError("the mask helpers take a 2-D array, not a scene; for a part's components use "
                        "lc.count(scene, part), lc.areas(scene, part) or lc.positions(scene, part)")
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {arr.shape}")
    labels, n = ndimage.label(arr > 0, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = [i for i in range(1, n + 1) if sizes[i] >= min_area]
    return labels, keep, sizes


def count_components(mask: Any, min_area: int = 1) -> int:
    return len(_labels(mask, min_area)[1])


def component_areas(mask: Any, min_area: int = 1) -> list[int]:
    _, keep, sizes = _labels(mask, min_area)
    return [int(sizes[i]) for i in keep]


def centroids(mask: Any, min_area: int = 1) -> list[list[float]]:
    labels, keep, _ = _labels(mask, min_area)
    if not keep:
        return []
    centres = ndimage.center_of_mass(np.ones(labels.shape), labels, keep)
    return [[float(x), float(y)] for (y, x) in centres]


# -- findings -----------------------------------------------------------------------------
def _plain(value: Any, depth: int = 0) -> Any:
    """Plain JSON data: numpy scalars and arrays converted, tuples and sets to lists."""
    if depth > 32:
        raise ValueError("value is nested too deeply")
    if value is None or type(value) in (bool, str):
        return value
    if isinstance(value, np.generic):
        return _plain(value.item(), depth)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), depth)
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v, depth + 1) for v in value), key=repr)
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    return str(value)


def finding(
    rule_id: Any, passed: Any, observed: Any, expected: Any, explanation: str = "", evidence: Any = None
) -> dict:
    """A well-formed finding dict: {rule_id, passed, observed, expected, explanation, evidence}."""
    if isinstance(evidence, str):
        # small models pass a second description where the evidence goes: keep its words
        explanation, evidence = f"{explanation} ({evidence})" if explanation else evidence, None
    if evidence is None:
        boxes_out: list[list[int]] = []
    elif isinstance(evidence, dict) or (
        isinstance(evidence, (list, tuple)) and len(evidence) == 4 and all(_is_number(v) for v in evidence)
    ):
        boxes_out = [_box(evidence)]  # a single box or component
    else:
        boxes_out = [_box(b) for b in evidence]
    return {
        "rule_id": str(rule_id),
        "passed": bool(passed),
        "observed": _plain(observed),
        "expected": _plain(expected),
        "explanation": str(explanation),
        "evidence": boxes_out,
    }


def _number_lists(values: list) -> bool:
    return bool(values) and all(
        isinstance(v, list) and len(v) == len(values[0]) and all(_is_number(x) for x in v) for v in values)


def _within_observed(value: Any, reference_values: list, tolerance: float, stds: float) -> bool:
    """Does ``value`` lie where the references' values do? Numbers: as in
    :func:`within_references`; lists of numbers: element by element (same length); anything
    else: equal to one of them."""
    value = _plain(value)
    refs = [_plain(v) for v in reference_values]
    if _is_number(value) and all(_is_number(v) for v in refs):
        return _in_range(value, refs, tolerance, stds)
    if _number_lists([value, *refs]):
        return all(_in_range(x, [v[i] for v in refs], tolerance, stds) for i, x in enumerate(value))
    return value in refs


def _typical_observed(reference_values: list) -> Any:
    """The references' typical value, element by element for lists of numbers. Numbers that
    differ give their range as words ("1 to 2"): a median count of 1.5 reads as nonsense."""
    refs = [_plain(v) for v in reference_values]
    if all(_is_number(v) for v in refs) and min(refs) != max(refs):
        return f"{min(refs):g} to {max(refs):g}"
    if _number_lists(refs):
        return [_typical_value([v[i] for v in refs]) for i in range(len(refs[0]))]
    return _typical_value(refs)


def calibrated(
    rule_id: Any, measure: Callable[[dict, list], dict], scene: dict, references: list,
    tolerance: float = 0.15, stds: float = 0.5,
) -> dict:
    """Judge the value a check measures against the references instead of its own verdict.

    ``measure(scene, references)`` is a rule check that returns a finding. Its ``observed``
    value is taken on ``scene`` and on every reference; the finding passes when the scene's
    value lies where the references' values do (numbers: their range widened by ``tolerance``
    of its size plus ``stds`` standard deviations; lists of numbers: element by element;
    other values: equal to one of them). ``expected`` is the references' value, or their range
    when their numbers differ.

    The margin is narrow on purpose: the agent accepts a calibrated check only when every
    reference passes it against the others, and that test must reject a measurement that
    wanders between normal images (a count of 0 to 3 pieces where the product holds two).
    With 3 standard deviations it accepted such counts on the synthetic screw bag, which then
    passed almost every anomaly and failed normal images with an outlying count."""
    if not references:
        raise ValueError("calibrated() needs at least one reference")
    found = measure(scene, references)
    if not isinstance(found, dict):
        raise TypeError("the measured check returned no finding")
    reference_values = [measure(r, references).get("observed") for r in references]
    passed = _within_observed(found.get("observed"), reference_values, tolerance, stds)
    described = str(found.get("explanation") or "").strip()
    note = "as measured on the normal references: " + ", ".join(str(_plain(v)) for v in reference_values)
    out = finding(rule_id, passed, found.get("observed"), _typical_observed(reference_values),
                  f"{described} ({note})" if described else note)
    out["evidence"] = found.get("evidence") or []
    return out


__all__ = [
    "API_VERSION", "API_REFERENCE", "SCENE_API_REFERENCE", "MASK_API_REFERENCE", "PALETTE", "part", "parts_like", "components", "count", "areas",
    "total_area", "lengths", "colors", "boxes", "positions", "grid_counts", "ref_values", "typical",
    "within_references", "color_name", "relative_position", "count_components", "component_areas",
    "centroids", "finding", "calibrated",
]
