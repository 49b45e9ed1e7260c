"""The reasoning agent: perceives, writes and runs LogiCode programs, returns verdicts."""

from importlib import import_module
from typing import Any

from .schema import Finding, ProgramInfo, Region, ToolCall, Verdict

_LAZY = {
    "Agent": "agent.core",
    "AgentConfig": "agent.config",
}

__all__ = ["Finding", "ProgramInfo", "Region", "ToolCall", "Verdict", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
