"""Prompts: normality rules, versioned templates and multi-modal prompt building."""

from .rules import NormalityRules, Rule, RuleCheck, RulesError, builtin_categories, load_rules

__all__ = ["NormalityRules", "Rule", "RuleCheck", "RulesError", "builtin_categories", "load_rules"]
