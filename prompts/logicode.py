"""The LogiCode request: the prompt that asks a model for a rule-checking function.

Templates are files in ``prompts/templates`` with the version in their name; the
version is part of the program cache key, so editing a template means bumping it.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from .rules import NormalityRules, Rule, rule_key

#: v3: the examples and what the function receives depend on whether normal references exist
#: v4: what every rule set shares (helper API, examples) comes first, the product and its parts
#: after it, so a local model reads the shared part once per process, not once per rule set
LOGICODE_TEMPLATE_VERSION = "v4"
#: the examples and the repair request, unchanged since the request's v3
EXAMPLES_TEMPLATE_VERSION = "v3"
REPAIR_TEMPLATE_VERSION = "v3"
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


# The texts below fill the request's slots: like the template files, they change only with a
# new LOGICODE_TEMPLATE_VERSION (it is part of every program's cache key).
#: what the function receives, with and without normal references (zero-shot)
_REFERENCES_NOTE = {
    False: ("`references`: a list of such dicts, one per NORMAL reference image.\n"
            "The parts found in this product (part id: description, measured on the normal references):"),
    True: ("`references`: an EMPTY list. No normal reference image is given, so nothing can be compared with "
           "references: lc.within_references, lc.typical and lc.ref_values cannot be used.\n"
           "The parts found in this image (part id: description, measured on this image alone):"),
}
_NUMBERS_NOTE = {
    False: "If the rule states a number, use it; otherwise compare with the references.",
    True: "Check only what the rule states (a number, a colour, a position); there are no references to compare with.",
}


def logicode_rule_request(
    rules: NormalityRules, rule: Rule, *, parts_table: str, api_reference: str, zero_shot: bool = False
) -> str:
    """The request for one rule. Everything before the rule is shared by all rules of a set, and
    everything before the product (the helper API and the examples) by all rule sets, so a local
    model's prompt cache is reused across rules and rule sets. ``zero_shot``: no normal
    references exist (the rules alone), so the examples and the task use only what a rule states."""
    fn_id = rule_function_name(rule)[len("check_"):]
    examples = "zero_shot" if zero_shot else "references"
    return load_template(f"logicode_rule_{LOGICODE_TEMPLATE_VERSION}.md").format(
        category=rules.category,
        class_context=rules.class_context or "(none given)",
        references_note=_REFERENCES_NOTE[zero_shot],
        examples=load_template(f"logicode_examples_{examples}_{EXAMPLES_TEMPLATE_VERSION}.md"),
        numbers_note=_NUMBERS_NOTE[zero_shot],
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


_REPAIR_GOAL = {
    False: "It must PASS on every normal reference image, because they are correct by definition.",
    True: "It must run on this image without error; `references` is an empty list.",
}
_REPAIR_ADVICE = {
    False: ("- If no part shows the number the rule states (look at \"usually N per image\"), the parse splits or "
            "merges objects differently: compare with the references instead of the stated number, as in check_e2."),
    True: "- Do not use the helpers that compare with references (lc.within_references, lc.typical, lc.ref_values).",
}


def logicode_repair_request(rule: Rule, *, problem: str, observations: str = "", zero_shot: bool = False) -> str:
    return load_template(f"logicode_repair_{REPAIR_TEMPLATE_VERSION}.md").format(
        rule_id=rule.id,
        rule_text=rule.text.replace('"', "'"),
        problem=problem.strip(),
        observations=observations.strip(),
        goal=_REPAIR_GOAL[zero_shot],
        advice=_REPAIR_ADVICE[zero_shot],
    )
