"""Agent configuration: one pydantic object, loadable from YAML/JSON, with sensible CPU defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field


def default_cache_dir() -> Path:
    root = os.environ.get("LOGISCAN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "logiscan"


class PerceptionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: str = "efficientnet-lite0"
    structural: bool = True
    part_names: dict[str, str] = Field(default_factory=dict, description="part id -> name hints")


class FusionConfig(BaseModel):
    """How the three evidence sources become one score (see ``agent.fusion``)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    weight_structural: float = Field(default=1.0, ge=0.0, le=1.0)
    weight_composition: float = Field(default=1.0, ge=0.0, le=1.0)


class AgentConfig(BaseModel):
    """Everything that selects models and behaviour. ``Agent()`` uses these defaults."""

    model_config = ConfigDict(extra="forbid")  # a typo in a config file is an error, not a no-op

    llm: Optional[dict] = Field(
        default=None, description="agent.llm.LLMConfig fields; None = CPU default (llama.cpp Qwen2.5-Coder-1.5B)"
    )
    mode: Literal["pipeline", "agentic"] = "pipeline"
    perception: PerceptionConfig = Field(default_factory=PerceptionConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    repair_rounds: int = Field(default=3, ge=0, le=10)
    program_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    program_memory_mb: int = Field(default=1024, ge=64)
    generation_timeout_s: float = Field(default=120.0, gt=0)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    use_disk_cache: bool = True
    #: a user-written or edited LogiCode program that replaces generation
    pinned_program: Optional[Path] = None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "AgentConfig":
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return cls.model_validate(data)
