"""Short texts for verdicts: long reasons are cut at a word, with an ellipsis, never mid-word,
and a finding's values are printed the same way wherever people read them."""

from __future__ import annotations

from collections import Counter

#: a finding's explanation, and a rule's reason for having no check in a verdict's logic note
EXPLANATION_CHARS = 300
REASON_CHARS = 160


def clip(text: object, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters: cut at the last word boundary in the
    second half of the limit (else at the limit) and marked with an ellipsis. A note cut mid-word
    ("list index out of ran") reads as a different error."""
    line = " ".join(str(text).split())
    if len(line) <= limit:
        return line
    cut = line[:max(1, limit - 1)]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


#: values of a finding longer than this are clipped in tables and sentences
VALUE_CHARS = 120


def format_value(value: object, limit: int = VALUE_CHARS) -> str:
    """A finding's expected or observed value for people to read.

    Check programs return what they measured, and small models often return the scene's own
    objects rather than a number: a list of components or parts. Printed raw, such a value is
    a JSON dump (or, when empty, ``[]``); here it reads as what it is: "none", "2 components
    of p3", "parts p2 (2), p5 (1)". Numbers keep three significant digits at any depth."""
    return clip(_readable(value), limit)


def _readable(value: object) -> str:
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        if not value:
            return "none"
        if all("bbox" in v and "part" in v for v in value):
            return _components(value)
        if all("id" in v and "count" in v for v in value):
            return "parts " + ", ".join(f"{v['id']} ({v['count']})" for v in value)
    return _compact(value)


def _components(components: list[dict]) -> str:
    per_part = Counter(str(c["part"]) for c in components)
    noun = "component" if len(components) == 1 else "components"
    if len(per_part) == 1:
        return f"{len(components)} {noun} of {next(iter(per_part))}"
    tally = ", ".join(f"{p} x{n}" for p, n in sorted(per_part.items()))
    return f"{len(components)} {noun} ({tally})"


def _compact(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    return str(value)
