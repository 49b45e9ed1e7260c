"""Short texts for verdicts: long reasons are cut at a word, with an ellipsis, never mid-word."""

from __future__ import annotations

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
