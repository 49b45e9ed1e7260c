"""Normality rules: what a normal product looks like, in a person's words.

Rules come from YAML/JSON files, plain lists of strings, free text, or by the
name of a built-in rule pack (the five MVTec LOCO AD categories ship with the
package, see ``prompts/rulepacks/``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator


class RulesError(ValueError):
    """Rules could not be loaded or are malformed. The message says where and why."""


Comparison = Literal["==", "!=", "<", "<=", ">", ">=", "in", "matches"]


#: a rules file is a page of text; anything much larger is a mistake (or an attack)
MAX_RULES_FILE_BYTES = 1_000_000
MAX_CHECK_VALUE_ITEMS = 1000


class RuleCheck(BaseModel):
    """An optional structured form of a rule, e.g. ``count of screw == 2``."""

    attribute: Literal["count", "area", "length", "position", "color", "presence", "relation"]
    subject: str = Field(description="the thing the rule is about, as the rule names it, e.g. 'screw'")
    op: Comparison = "=="
    value: Any = None
    where: Optional[str] = Field(default=None, description="a region qualifier, e.g. 'left'")

    @field_validator("value")
    @classmethod
    def _ordered(cls, value: Any) -> Any:
        """A set (YAML ``!!set``) becomes a sorted list: a set's order, and so the rules' digest
        (a cache key) and the prompt's text, would change with each process's hash seed."""
        return _ordered_value(value)

    def __str__(self) -> str:
        where = f" in {self.where}" if self.where else ""
        return f"{self.attribute} of {self.subject}{where} {self.op} {self.value!r}"


def _ordered_value(value: Any, budget: Optional[list[int]] = None) -> Any:
    # YAML anchors let a few hundred bytes stand for billions of nested items; a check's value
    # is a number, a word or a short list, so anything larger is refused before it is expanded
    budget = [MAX_CHECK_VALUE_ITEMS] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"a rule check's value may hold at most {MAX_CHECK_VALUE_ITEMS} items")
    if isinstance(value, (set, frozenset)):
        return sorted((_ordered_value(v, budget) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_ordered_value(v, budget) for v in value]
    if isinstance(value, dict):
        return {k: _ordered_value(v, budget) for k, v in value.items()}
    return value


class Rule(BaseModel):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    text: str = Field(min_length=3, max_length=1000)
    check: Optional[RuleCheck] = None

    @field_validator("text")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = " ".join(value.split())
        if len(value) < 3:
            raise ValueError("rule text is empty")
        return value


def rule_key(rule_id: str) -> str:
    """The rule id as a Python identifier's tail (``R-1`` -> ``r_1``); unique within a rule set."""
    return re.sub(r"\W", "_", rule_id).lower()


class NormalityRules(BaseModel):
    """A product category, a sentence or two of class context, and its rules."""

    category: str = Field(default="product", min_length=1, max_length=100)
    class_context: str = Field(default="", max_length=2000)
    rules: list[Rule] = Field(min_length=1, max_length=50)

    @model_validator(mode="after")
    def _unique_ids(self) -> "NormalityRules":
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"rule ids must be unique; repeated: {dupes}")
        # each rule's check is a Python function named after its id (check_r1): ids that differ
        # only in case or in '.', '-', '_' would name one function, and one check would judge both
        keys: dict[str, str] = {}
        for i in ids:
            other = keys.setdefault(rule_key(i), i)
            if other != i:
                raise ValueError(f"rule ids {other!r} and {i!r} differ only in case or in '.', '-', '_'; "
                                 "give them distinct ids")
        return self

    # -- constructors -------------------------------------------------------------
    @classmethod
    def from_strings(
        cls, texts: Iterable[str], *, category: str = "product", class_context: str = ""
    ) -> "NormalityRules":
        texts = [t for t in (str(t).strip() for t in texts) if t]
        if not texts:
            raise RulesError("No rules given: the list of rule texts is empty.")
        return cls._validated(
            {"category": category, "class_context": class_context,
             "rules": [{"id": f"r{i + 1}", "text": t} for i, t in enumerate(texts)]},
            source="rules",
        )

    @classmethod
    def _validated(cls, data: dict, *, source: str) -> "NormalityRules":
        """``cls(**data)``, with pydantic's complaints turned into one :class:`RulesError`."""
        try:
            return cls(**data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise RulesError(f"Malformed {source}: {problems}") from exc

    @classmethod
    def from_text(cls, text: str, **kwargs: Any) -> "NormalityRules":
        """Split free text into rules: one per line or bullet, else one per sentence."""
        lines = [re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", ln).strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln]
        if len(lines) <= 1:
            lines = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9'\"])", text.strip()) if s.strip()]
        return cls.from_strings(lines, **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "NormalityRules":
        path = Path(path)
        if not path.is_file():
            raise RulesError(f"Rules file '{path}' does not exist.")
        if path.stat().st_size > MAX_RULES_FILE_BYTES:
            raise RulesError(f"Rules file '{path}' is {path.stat().st_size} bytes; a rules file holds at most "
                             f"{MAX_RULES_FILE_BYTES} bytes.")
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise RulesError(f"Rules file '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
        try:
            data = json.loads(raw) if path.suffix.lower() == ".json" else yaml.safe_load(raw)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise RulesError(f"Rules file '{path}' is not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {exc}") from exc
        return cls.from_data(data, source=f"rules file '{path}'")

    @classmethod
    def from_data(cls, data: Any, *, source: str = "rules") -> "NormalityRules":
        """From parsed YAML/JSON: a mapping with ``rules`` (strings or objects), or a list."""
        if isinstance(data, list):
            data = {"rules": data}
        if not isinstance(data, dict):
            raise RulesError(f"Malformed {source}: expected a mapping with a 'rules' list or a list of rules, got {type(data).__name__}.")
        if "rules" not in data:
            raise RulesError(f"Malformed {source}: missing the 'rules' list.")
        rules = data["rules"]
        if not isinstance(rules, list) or not rules:
            raise RulesError(f"Malformed {source}: 'rules' must be a non-empty list.")
        items = []
        for i, item in enumerate(rules):
            if isinstance(item, str):
                items.append({"id": f"r{i + 1}", "text": item})
            elif isinstance(item, dict):
                items.append({"id": f"r{i + 1}", **item})
            else:
                raise RulesError(f"Malformed {source}: rule {i + 1} must be a string or a mapping, got {type(item).__name__}.")
        payload = {k: v for k, v in data.items() if k in ("category", "class_context")}
        return cls._validated({**payload, "rules": items}, source=source)

    @classmethod
    def for_category(cls, category: str) -> "NormalityRules":
        name = category.strip().lower().replace("-", "_").replace(" ", "_")
        pack = resources.files("prompts") / "rulepacks" / f"{name}.yaml"
        if not pack.is_file():
            raise RulesError(
                f"No built-in rule pack for category '{category}'. Built-in packs: {', '.join(builtin_categories())}."
            )
        return cls.from_data(yaml.safe_load(pack.read_text(encoding="utf-8")), source=f"rule pack '{name}'")

    # -- helpers ------------------------------------------------------------------
    def digest(self) -> str:
        """A stable hash of the rules and class context (a cache key part)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)

    def numbered(self) -> str:
        return "\n".join(f"{r.id}: {r.text}" for r in self.rules)


RulesInput = Union[NormalityRules, str, os.PathLike, list, tuple, dict, None]


def builtin_categories() -> list[str]:
    folder = resources.files("prompts") / "rulepacks"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def names_a_rules_file(rules: Any) -> bool:
    """Whether :func:`load_rules` reads ``rules`` as a file path (a path, or one line ending in
    .yaml/.yml/.json) rather than as rule text."""
    return isinstance(rules, os.PathLike) or (
        isinstance(rules, str) and "\n" not in rules and rules.lower().endswith((".yaml", ".yml", ".json")))


def load_rules(
    rules: RulesInput = None, *, category: str | None = None, class_context: str | None = None
) -> NormalityRules:
    """Turn any accepted form of rules into :class:`NormalityRules`.

    ``rules`` may be a :class:`NormalityRules`, a path to a YAML/JSON file, free text,
    a list of strings, a parsed mapping, or ``None`` when ``category`` names a built-in pack.
    """
    if rules is None:
        if not category:
            raise RulesError("No rules given: pass rules, a rules file, or a category with a built-in rule pack.")
        out = NormalityRules.for_category(category)
    elif isinstance(rules, NormalityRules):
        out = rules
    elif names_a_rules_file(rules):
        out = NormalityRules.from_file(rules)
    elif isinstance(rules, str):
        if not rules.strip():
            raise RulesError("No rules given: the rule text is empty.")
        out = NormalityRules.from_text(rules)
    elif isinstance(rules, (list, tuple)):
        if all(isinstance(r, str) for r in rules):
            out = NormalityRules.from_strings(rules)
        else:
            out = NormalityRules.from_data(list(rules))
    elif isinstance(rules, dict):
        out = NormalityRules.from_data(rules)
    else:
        raise RulesError(f"Cannot use rules of type {type(rules).__name__}: pass text, a list, a file path or NormalityRules.")

    updates: dict[str, Any] = {}
    if category and out.category == "product":
        updates["category"] = category
    if class_context:
        updates["class_context"] = class_context
    elif not out.class_context and category:
        try:
            updates["class_context"] = NormalityRules.for_category(category).class_context
        except RulesError:
            pass
    if not updates:
        return out
    # validated again (model_copy would not check the category's and context's lengths)
    return NormalityRules._validated({**out.model_dump(), **updates}, source="rules")
