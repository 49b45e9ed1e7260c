"""Multi-modal inspection prompts: rules + references + query, for any kind of model.

Three modes, one template (``prompts/templates/inspect_v1.md``):

- ``"images"``: each reference and the query go in as their own image content block
  (data URLs; VLMs and OpenAI-compatible servers read them).
- ``"grid"``: references and the query are composed into ONE labelled image
  (:func:`compose_grid`), for models that accept a single image.
- ``"text"``: for text-only models the scene parse stands in for pixels (parts, counts,
  sizes and positions of the references and of the query).

:func:`parse_inspection_answer` reads the per-rule JSON back, tolerating prose around it.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from string import Template
from typing import Any, Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, Field

from detectors.images import ImageInput, load_image
from detectors.schema import Scene

from .rules import NormalityRules

#: The inspection template in use; part of every cache key that depends on the prompt.
TEMPLATE_VERSION = "inspect_v1"

PromptMode = Literal["images", "grid", "text"]
# Closes image prompts: after many image tokens, models follow a format restated last more reliably.
ANSWER_REMINDER = "Judge the query against every rule and answer with the JSON object only."
_SECTION = re.compile(r"^=== (system|user) ===\s*$", re.MULTILINE)
_JSON_START = re.compile(r"[\[{]")


class PromptError(ValueError):
    """A prompt cannot be built from the given inputs; the message says what is missing."""


class InspectionTemplate(BaseModel):
    version: str
    system: str
    user: str


@lru_cache(maxsize=8)
def load_template(version: str = TEMPLATE_VERSION) -> InspectionTemplate:
    """Read a versioned template file from ``prompts/templates/<version>.md``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", version):
        raise PromptError(f"invalid template version {version!r}")
    file = resources.files("prompts") / "templates" / f"{version}.md"
    if not file.is_file():
        raise PromptError(f"no prompt template {version!r} (expected prompts/templates/{version}.md)")
    text = re.sub(r"<!--.*?-->", "", file.read_text(encoding="utf-8"), flags=re.DOTALL)
    pieces = _SECTION.split(text)
    sections = {pieces[i]: pieces[i + 1].strip() for i in range(1, len(pieces) - 1, 2)}
    if set(sections) != {"system", "user"}:
        raise PromptError(f"template {version!r} must have '=== system ===' and '=== user ===' sections")
    return InspectionTemplate(version=version, **sections)


# -- the unified 2D composite -------------------------------------------------------------

def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` where supported; shared by every image annotation."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def compose_grid(
    references: Sequence[ImageInput],
    query: ImageInput,
    *,
    cell: int = 384,
    label_height: int = 32,
    gap: int = 8,
) -> Image.Image:
    """One labelled image: "reference 1..k" then "query" (framed in red), in a near-square grid.

    Each image is fitted into a ``cell`` x ``cell`` box keeping its aspect ratio.
    """
    if cell < 32:
        raise PromptError(f"grid cell size must be at least 32 pixels, got {cell}")
    tiles = [(f"reference {i}", load_image(ref)) for i, ref in enumerate(references, 1)]
    tiles.append(("query", load_image(query)))
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    width = columns * cell + (columns + 1) * gap
    height = rows * (cell + label_height) + (rows + 1) * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = label_font(max(10, label_height - 10))
    for index, (label, image) in enumerate(tiles):
        row, col = divmod(index, columns)
        x0 = gap + col * (cell + gap)
        y0 = gap + row * (cell + label_height + gap)
        is_query = label == "query"
        draw.rectangle([x0, y0, x0 + cell - 1, y0 + label_height - 1],
                       fill=(200, 30, 30) if is_query else (40, 40, 40))
        draw.text((x0 + 6, y0 + 4), label, fill=(255, 255, 255), font=font)
        fitted = image.copy()
        fitted.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        px = x0 + (cell - fitted.width) // 2
        py = y0 + label_height + (cell - fitted.height) // 2
        canvas.paste(fitted, (px, py))
        if is_query:
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + label_height + cell - 1], outline=(200, 30, 30), width=3)
    return canvas


# -- the scene parse as text --------------------------------------------------------------

def describe_scene(scene: Scene, *, title: str = "image", max_components: int = 40) -> str:
    """The scene parse in words: per part its count, size, colour; per component its position."""
    width, height = scene.image_size
    lines = [f"{title} ({width}x{height} px" + (f", grid {scene.grid[0]}x{scene.grid[1]}" if scene.grid else "") + "):"]
    if not scene.parts:
        lines.append("  no parts found")
    for part in scene.parts:
        name = f"{part.id} ({part.name})" if part.name else part.id
        ref = f"; references: {part.ref_count.mean:.1f} on average, range {part.ref_count.min:g}-{part.ref_count.max:g}" if part.ref_count else ""
        lines.append(f"  part {name}: count {part.count}, colour {part.color_name}, total area {part.total_area:.0f} px{ref}")
    for comp in scene.components[:max_components]:
        cell = f", grid cell {comp.grid_cell}" if comp.grid_cell else ""
        lines.append(
            f"    {comp.part}#{comp.id}: {comp.vertical}-{comp.horizontal}, centre ({comp.centroid_rel[0]:.2f}, "
            f"{comp.centroid_rel[1]:.2f}) of the product, area {comp.area_frac:.3f} of it, "
            f"{comp.major_axis:.0f}x{comp.minor_axis:.0f} px, {comp.color_name}{cell}"
        )
    if len(scene.components) > max_components:
        lines.append(f"    ... and {len(scene.components) - max_components} more components")
    return "\n".join(lines)


def _as_text(scene: str | Scene | None, title: str) -> str | None:
    if scene is None:
        return None
    if isinstance(scene, Scene):
        return describe_scene(scene, title=title)
    return str(scene).strip() or None


# -- message building ---------------------------------------------------------------------

def _image_block(image: ImageInput) -> dict:
    from agent.llm.messages import image_to_data_url

    return {"type": "image_url", "image_url": {"url": image_to_data_url(image)}}


def build_inspection_messages(
    rules: NormalityRules,
    query_image: ImageInput | None,
    reference_images: Sequence[ImageInput] = (),
    scene_text: str | Scene | None = None,
    reference_scene_text: str | Scene | Sequence[str | Scene] | None = None,
    mode: PromptMode = "images",
    *,
    template_version: str = TEMPLATE_VERSION,
) -> list[BaseMessage]:
    """System + user messages asking for a per-rule JSON verdict on the query.

    ``scene_text``/``reference_scene_text`` may be text or :class:`~detectors.schema.Scene`
    parses; in "images"/"grid" mode they are added as extra evidence when given, and in
    "text" mode they replace the pixels (``scene_text`` is then required).
    """
    if not isinstance(rules, NormalityRules):
        raise PromptError(f"rules must be NormalityRules (see prompts.load_rules), got {type(rules).__name__}")
    if mode not in ("images", "grid", "text"):
        raise PromptError(f"unknown prompt mode {mode!r}; use 'images', 'grid' or 'text'")
    template = load_template(template_version)
    query_text = _as_text(scene_text, "query")
    if isinstance(reference_scene_text, (list, tuple)):
        ref_texts = [_as_text(s, f"reference {i}") for i, s in enumerate(reference_scene_text, 1)]
        reference_text = "\n".join(t for t in ref_texts if t) or None
    else:
        reference_text = _as_text(reference_scene_text, "references")  # type: ignore[arg-type]
    if mode == "text" and query_text is None:
        raise PromptError("mode 'text' needs scene_text: the scene parse of the query stands in for its pixels")
    if mode != "text" and query_image is None:
        raise PromptError(f"mode {mode!r} needs query_image")

    n_refs = len(reference_images)
    if mode == "images":
        evidence = (f"You are shown {n_refs} reference image(s) of NORMAL products, then the query image."
                    if n_refs else "You are shown the query image.")
    elif mode == "grid":
        evidence = ("You are shown ONE composite image: tiles labelled 'reference 1'.."
                    f"'reference {n_refs}' are NORMAL products; the tile labelled 'query' (red frame) is the one to judge."
                    if n_refs else "You are shown ONE image, labelled 'query'.")
    else:
        evidence = ("You cannot see the images. Instead you get the scene parse of each: the parts found, "
                    "their counts, sizes, colours and positions.")
    if reference_text:
        evidence += f"\n\nScene parse of the NORMAL references:\n{reference_text}"
    if query_text:
        evidence += f"\n\nScene parse of the QUERY:\n{query_text}"

    user_text = Template(template.user).substitute(
        product_noun="product",
        category=rules.category,
        class_context=rules.class_context or "(none given)",
        rules=rules.numbered(),
        evidence=evidence,
    )
    content: list[dict] | str
    if mode == "images":
        content = [{"type": "text", "text": user_text}]
        for i, ref in enumerate(reference_images, 1):
            content += [{"type": "text", "text": f"reference {i}:"}, _image_block(ref)]
        content += [{"type": "text", "text": "query:"}, _image_block(query_image), {"type": "text", "text": ANSWER_REMINDER}]
    elif mode == "grid":
        grid = compose_grid(reference_images, query_image)
        content = [{"type": "text", "text": user_text}, _image_block(grid), {"type": "text", "text": ANSWER_REMINDER}]
    else:
        content = user_text
    return [SystemMessage(content=template.system), HumanMessage(content=content)]


# -- reading the answer back --------------------------------------------------------------

class RuleAnswer(BaseModel):
    """A model's judgement of one rule."""

    rule_id: str
    passed: bool | None = Field(default=None, description="None when the model's value was unreadable")
    observed: str = ""
    expected: str = ""
    reason: str = ""


_TRUE = {"true", "yes", "pass", "passed", "ok", "normal", "1"}
_FALSE = {"false", "no", "fail", "failed", "violated", "anomalous", "0"}


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


def _json_values(text: str) -> list[Any]:
    """Every JSON object or array embedded in ``text``, outermost first, in order."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    index = 0
    while index < len(text):
        match = _JSON_START.search(text, index)
        if not match:
            break
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            value, end = _python_literal(text, match.start())
            if end is None:
                index = match.start() + 1
                continue
        found.append(value)
        index = end
    return found


def _python_literal(text: str, start: int) -> tuple[Any, int | None]:
    """Small models often answer with Python dicts (single quotes, True/False) or trailing commas."""
    depth, quote, escaped = 0, None, False
    for pos in range(start, len(text)):
        char = text[pos]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                source = re.sub(r"\btrue\b", "True", text[start:pos + 1])
                source = re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", source))
                try:
                    return ast.literal_eval(source), pos + 1
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    return None, None
    return None, None


def _rule_entries(value: Any) -> list[dict] | None:
    if isinstance(value, dict):
        for key in ("rules", "results", "findings"):
            if isinstance(value.get(key), list):
                return [v for v in value[key] if isinstance(v, dict)]
        if "rule_id" in value:
            return [value]
        return None
    if isinstance(value, list) and any(isinstance(v, dict) and "rule_id" in v for v in value):
        return [v for v in value if isinstance(v, dict)]
    return None


def parse_inspection_answer(text: str | None) -> list[dict]:
    """Per-rule answers (rule_id, passed, observed, expected, reason) from a model's reply.

    Tolerates prose and code fences around the JSON, several JSON fragments, and
    yes/no/pass/fail for booleans. Returns [] when the reply holds no rule JSON (prose only):
    the caller treats that as "no answer", never as a crash.
    """
    if not text:
        return []
    entries: list[dict] = []
    for value in _json_values(text):
        found = _rule_entries(value)
        if found:
            entries.extend(found)
    answers: list[dict] = []
    seen: set[str] = set()
    for entry in entries:
        rule_id = entry.get("rule_id", entry.get("id"))
        if rule_id is None or str(rule_id) in seen:
            continue
        seen.add(str(rule_id))
        answers.append(RuleAnswer(
            rule_id=str(rule_id),
            passed=_to_bool(entry.get("passed")),
            observed=str(entry.get("observed", "") or ""),
            expected=str(entry.get("expected", "") or ""),
            reason=str(entry.get("reason", "") or ""),
        ).model_dump())
    return answers


def parse_inspection_verdict(
    text: str | None, rule_ids: Sequence[str] | None = None
) -> Literal["normal", "anomalous"] | None:
    """The overall verdict of a reply: its "verdict" field, else derived from the rule answers.

    Derived verdicts: any failed rule gives "anomalous"; "normal" needs every rule answered
    as passed (all of ``rule_ids`` when given, e.g. a reply cut off by the token limit is not
    "normal"); otherwise None.
    """
    for value in _json_values(text or ""):
        if isinstance(value, dict) and isinstance(value.get("verdict"), str):
            verdict = value["verdict"].strip().lower()
            if verdict in ("normal", "anomalous"):
                return verdict  # type: ignore[return-value]
    answers = parse_inspection_answer(text)
    if any(a["passed"] is False for a in answers):
        return "anomalous"
    answered = {a["rule_id"] for a in answers if a["passed"] is True}
    if not answers or len(answered) < len(answers) or (rule_ids is not None and not set(rule_ids) <= answered):
        return None
    return "normal"
