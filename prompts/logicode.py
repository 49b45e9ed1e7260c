"""The LogiCode request: the prompt that asks a model for a rule-checking function.

Templates are files in ``prompts/templates`` with the version in their name; the
version is part of the program cache key, so editing a template means bumping it.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from .rules import NormalityRules, Rule, rule_key

LOGICODE_TEMPLATE_VERSION = "v2"
GROUNDING_TEMPLATE_VERSION = "v2"


@lru_cache(maxsize=None)
def load_template(name: str) -> str:
    path = resources.files("prompts") / "templates" / name
    if not path.is_file():
        raise FileNotFoundError(f"prompt template '{name}' is missing from prompts/templates")
    return path.read_text(encoding="utf-8")


def rule_function_name(rule: Rule) -> str:
    """A Python identifier for a rule's check function, e.g. ``check_r1``."""
    return "check_" + rule_key(rule.id)


def _hint(rule: Rule) -> str:
    if rule.check is None:
        return ""
    return f"(Structured form of the rule, for guidance: {rule.check}.)"


def logicode_rule_request(
    rules: NormalityRules, rule: Rule, *, parts_table: str, api_reference: str
) -> str:
    """The request for one rule. Everything before the rule is shared by all rules of a set,
    so a local model's prompt cache is reused across the rules."""
    fn_id = rule_function_name(rule)[len("check_"):]
    return load_template(f"logicode_rule_{LOGICODE_TEMPLATE_VERSION}.md").format(
        category=rules.category,
        class_context=rules.class_context or "(none given)",
        parts_table=parts_table.strip(),
        api_reference=api_reference.strip(),
        fn_id=fn_id,
        rule_id=rule.id,
        rule_text=rule.text.replace('"', "'"),
        rule_hint=_hint(rule),
    )


def grounding_request(rules: NormalityRules, *, parts_table: str) -> str:
    """The request that maps each rule to the part ids it is about (one call per rule set)."""
    listing = "\n".join(f"{r.id}: {r.text}" for r in rules.rules)
    return load_template(f"grounding_{GROUNDING_TEMPLATE_VERSION}.md").format(
        category=rules.category,
        class_context=rules.class_context or "(none given)",
        parts_table=parts_table.strip(),
        rules=listing,
    )


def logicode_repair_request(rule: Rule, *, problem: str, observations: str = "") -> str:
    return load_template(f"logicode_repair_{LOGICODE_TEMPLATE_VERSION}.md").format(
        rule_id=rule.id,
        rule_text=rule.text.replace('"', "'"),
        problem=problem.strip(),
        observations=observations.strip(),
    )
