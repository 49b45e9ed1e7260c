"""The detectors' evidence in a quality engineer's words: where the arrangement differs, which
parts are missing or extra there, and which rules those parts concern.

A failed LogiCode check is the strongest explanation there is. When no validated check judged
a rule, the detectors' evidence can still point at it: the model mapped every rule to the parts
it is about (``LogiCodeProgram.rule_parts``), and a part that the layout detector finds missing
where the references show it, or whose count or area deviates, implicates the rules about that
part. Such findings say that they are evidence, not a validated check, and do not change the
score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from prompts.rules import NormalityRules

from .schema import Finding
from .text import EXPLANATION_CHARS, clip

#: a component whose box covers this share of the product's box is the carrier the parts lie on
CARRIER_SHARE = 0.5
#: composition deviations at least this large (z) implicate their part
MIN_Z = 3.0
#: the confidence of a rule finding that rests on detector evidence alone
EVIDENCE_CONFIDENCE = 0.5


def _components_at(scene: Any, x_rel: float, y_rel: float) -> list[Any]:
    """The components of ``scene`` whose box holds the point at (x_rel, y_rel) of the image;
    carriers (a tray, a bag: their box spans much of the product's) hold every point and are
    left out."""
    w, h = scene.image_size
    x, y = x_rel * w, y_rel * h
    px0, py0, px1, py1 = scene.product_bbox
    product = max((px1 - px0) * (py1 - py0), 1)
    return [c for c in scene.components
            if (c.bbox[2] - c.bbox[0]) * (c.bbox[3] - c.bbox[1]) < CARRIER_SHARE * product
            and c.bbox[0] <= x < c.bbox[2] and c.bbox[1] <= y < c.bbox[3]]


def part_words(scene: Any, part_id: str) -> str:
    """``"orange (p2)"`` for a named part, ``"p2 (orange)"`` (its colour) otherwise."""
    part = next((p for p in scene.parts if p.id == part_id), None)
    name = getattr(part, "name", None)
    colour = getattr(part, "color_name", None)
    return f"{name} ({part_id})" if name else f"{part_id} ({colour})" if colour else part_id


@dataclass
class LayoutPeak:
    """What lies where the layout detector sees the largest difference."""

    xy: tuple[int, int]
    where: str
    n_references: int
    seen: dict[str, int] = field(default_factory=dict)  # part -> references showing it there
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    here: list[str] = field(default_factory=list)

    @classmethod
    def locate(cls, peak_xy: tuple[int, int], scene: Any, reference_scenes: Sequence[Any]) -> "LayoutPeak":
        w, h = scene.image_size
        x_rel, y_rel = peak_xy[0] / max(w, 1), peak_xy[1] / max(h, 1)
        horizontal = "left" if x_rel < 1 / 3 else "right" if x_rel > 2 / 3 else "centre"
        vertical = "top" if y_rel < 1 / 3 else "bottom" if y_rel > 2 / 3 else "middle"
        seen: dict[str, int] = {}
        for ref in reference_scenes:
            for pid in {c.part for c in _components_at(ref, x_rel, y_rel)}:
                seen[pid] = seen.get(pid, 0) + 1
        n = len(reference_scenes)
        here = sorted({c.part for c in _components_at(scene, x_rel, y_rel)})
        usual = [p for p, k in sorted(seen.items(), key=lambda kv: -kv[1]) if k * 2 > n]
        return cls(xy=(int(peak_xy[0]), int(peak_xy[1])), where=f"{vertical} {horizontal} of the image",
                   n_references=n, seen={p: seen[p] for p in usual},
                   missing=[p for p in usual if p not in here], extra=[p for p in here if p not in usual], here=here)

    def sentence(self, scene: Any) -> str:
        """E.g. ``(812, 230), top left of the image; the references show p2 (orange) in 4 of 4;
        this image lacks p2 (orange) there``."""
        note = f"({self.xy[0]}, {self.xy[1]}), {self.where}"
        n = self.n_references
        if not n:
            return note
        if self.seen:
            note += "; the references show " + ", ".join(
                f"{part_words(scene, p)} in {k} of {n}" for p, k in self.seen.items())
        else:
            note += "; the references show none of the parsed parts there consistently"
        if self.missing:
            note += "; this image lacks " + ", ".join(part_words(scene, p) for p in self.missing) + " there"
        if self.extra:
            note += "; this image shows " + ", ".join(part_words(scene, p) for p in self.extra) + " there instead"
        if not self.seen and not self.here:
            note += " nor does this image: the difference lies in a surface or a detail the parse does not separate"
        elif not self.missing and not self.extra:
            note += "; this image shows the same parts there, looking different"
        return note


@dataclass
class _Evidence:
    part: str
    expected: str
    observed: str
    sentence: str
    source: str
    strength: float


def _evidence_by_part(scene: Any, deviations: Sequence[Any], layout_peak: Optional[LayoutPeak]) -> dict[str, list]:
    by_part: dict[str, list[_Evidence]] = {}
    if layout_peak is not None:
        x, y = layout_peak.xy
        n = layout_peak.n_references
        for p in layout_peak.missing:
            by_part.setdefault(p, []).append(_Evidence(
                p, f"{part_words(scene, p)} at ({x}, {y}), as in {layout_peak.seen[p]} of {n} references",
                "absent there", f"the layout detector finds {part_words(scene, p)} missing at ({x}, {y}), "
                f"{layout_peak.where}", "layout", float("inf")))
        for p in layout_peak.extra:
            by_part.setdefault(p, []).append(_Evidence(
                p, f"no {part_words(scene, p)} at ({x}, {y})", "present there",
                f"the layout detector finds {part_words(scene, p)} at ({x}, {y}), {layout_peak.where}, "
                "where the references show none", "layout", float("inf")))
    for d in deviations:
        z = float(getattr(d, "z", 0.0))
        if z < MIN_Z:
            continue
        label = part_words(scene, d.part)
        by_part.setdefault(d.part, []).append(_Evidence(
            d.part, f"{d.ref_mean:.3g} ± {d.ref_std:.2g} ({d.quantity} of {label})", f"{d.observed:.3g}",
            d.sentence(label), "composition", z))
    for items in by_part.values():
        items.sort(key=lambda e: -e.strength)
    return by_part


def linked_rule_findings(
    rules: NormalityRules,
    rule_parts: dict[str, list[str]],
    *,
    scene: Any,
    judged: set[str],
    deviations: Sequence[Any] = (),
    layout_peak: Optional[LayoutPeak] = None,
) -> list[Finding]:
    """Failed-rule findings from detector evidence, for the rules no validated check judged
    (``judged``) whose parts (``rule_parts``) the evidence implicates; the strongest evidence
    per rule (layout first, then the largest composition z)."""
    by_part = _evidence_by_part(scene, deviations, layout_peak)
    out = []
    for rule in rules.rules:
        if rule.id in judged:
            continue
        found = sorted((e for p in rule_parts.get(rule.id, []) for e in by_part.get(p, [])),
                       key=lambda e: -e.strength)
        if not found:
            continue
        best = found[0]
        out.append(Finding(
            rule_id=rule.id, rule_text=rule.text, passed=False, expected=best.expected, observed=best.observed,
            explanation=clip(f"evidence, not a validated check: {best.sentence}", EXPLANATION_CHARS),
            confidence=EVIDENCE_CONFIDENCE, source=best.source,
        ))
    return out
