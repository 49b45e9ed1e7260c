"""WinCLIP's compositional prompt ensemble: state words x templates, per class name."""

from __future__ import annotations

import re
from typing import Optional

#: state words of a normal object ("{}" is the class name)
NORMAL_STATES: tuple[str, ...] = (
    "{}", "flawless {}", "perfect {}", "unblemished {}",
    "{} without flaw", "{} without defect", "{} without damage",
)
#: state words of an anomalous object
ANOMALOUS_STATES: tuple[str, ...] = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")

#: the template lists of CLIP's ImageNet ensemble that WinCLIP uses
TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.",
    "a close-up photo of the {}.", "a bright photo of a {}.", "a bright photo of the {}.",
    "a dark photo of the {}.", "a dark photo of a {}.", "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.", "a blurry photo of a {}.",
    "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.", "a photo of the small {}.",
    "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
)


def class_name_from(category: Optional[str] = None, rules=None, default: str = "object") -> str:
    """A readable class name: an explicit one, else the rules' category ('screw_bag' -> 'screw bag')."""
    name = category or (getattr(rules, "category", None) if rules is not None else None) or default
    name = re.sub(r"[_\-]+", " ", str(name)).strip()
    if not name:
        raise ValueError("the class name is empty")
    return name


def compose_prompts(class_name: str, states=None, templates=TEMPLATES) -> list[str]:
    """Every state word filled with the class name, put in every template (|states| x |templates| sentences)."""
    if not class_name or not class_name.strip():
        raise ValueError("the class name is empty")
    states = NORMAL_STATES if states is None else states
    return [template.format(state.format(class_name.strip())) for state in states for template in templates]


def prompt_ensemble(class_name: str) -> tuple[list[str], list[str]]:
    """(normal sentences, anomalous sentences) for a class."""
    return compose_prompts(class_name, NORMAL_STATES), compose_prompts(class_name, ANOMALOUS_STATES)
