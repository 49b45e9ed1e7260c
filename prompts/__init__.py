"""Prompts: normality rules, versioned templates and multi-modal prompt building."""

from importlib import import_module
from typing import Any

from .rules import NormalityRules, Rule, RuleCheck, RulesError, builtin_categories, load_rules

# Multi-modal prompt building pulls in LangChain and PIL: loaded on first use.
_LAZY = {
    name: "prompts.multimodal"
    for name in (
        "TEMPLATE_VERSION",
        "PromptError",
        "build_inspection_messages",
        "compose_grid",
        "describe_scene",
        "load_template",
        "parse_inspection_answer",
        "parse_inspection_verdict",
    )
}

__all__ = ["NormalityRules", "Rule", "RuleCheck", "RulesError", "builtin_categories", "load_rules", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prompts' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
