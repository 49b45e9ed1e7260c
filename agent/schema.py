"""What the agent returns: findings per rule and the verdict. All JSON round-trippable."""

from __future__ import annotations

import hashlib
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, field_validator


class Region(BaseModel):
    """Evidence in image coordinates: a box, optionally with a run-length mask inside it."""

    bbox: tuple[int, int, int, int] = Field(description="(x0, y0, x1, y1) in pixels, exclusive end")
    label: str = ""
    mask_rle: Optional[list[int]] = Field(
        default=None, description="row-major run lengths (starting with zeros) of a mask over bbox"
    )

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = b
        if x1 < x0 or y1 < y0:
            raise ValueError(f"bbox {b} must satisfy x0 <= x1 and y0 <= y1")
        return b


class Finding(BaseModel):
    """The outcome of one rule on one image."""

    rule_id: str
    rule_text: str
    passed: bool
    expected: Any = None
    observed: Any = None
    explanation: str = Field(default="", description="one sentence")
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)
    evidence: list[Region] = Field(default_factory=list)
    #: "advisory": a LogiCode check that passed the references but not slightly altered copies of
    #: them; it names its rule in an anomalous verdict and never decides one
    source: Literal["logicode", "composition", "structural", "layout", "model", "unavailable", "advisory"] = "logicode"


class ProgramInfo(BaseModel):
    """The LogiCode program that produced the findings: the audit trail."""

    source: str
    sha256: str
    model_id: str = ""
    origin: Literal["generated", "pinned", "cached", "fallback"] = "generated"
    attempts: int = 1
    path: Optional[str] = None

    @classmethod
    def of(cls, source: str, **kwargs: Any) -> "ProgramInfo":
        return cls(source=source, sha256=hashlib.sha256(source.encode()).hexdigest(), **kwargs)


class ToolCall(BaseModel):
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    output: Any = None


class Verdict(BaseModel):
    """The agent's answer for one image."""

    score: float = Field(ge=0.0, le=1.0, description="higher = more anomalous")
    is_anomalous: bool
    threshold: float = Field(ge=0.0, le=1.0)
    findings: list[Finding] = Field(default_factory=list)
    explanation: str = ""
    category: str = "product"
    image: Optional[str] = Field(default=None, description="path or description of the inspected image")
    logic_available: bool = True
    logic_note: str = ""
    component_scores: dict[str, float] = Field(
        default_factory=dict, description="e.g. logic, composition, structural (all in [0, 1])"
    )
    anomaly_map_path: Optional[str] = Field(default=None, description="where the structural map was saved, if it was")
    anomaly_peak_xy: Optional[tuple[int, int]] = None
    program: Optional[ProgramInfo] = None
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")
    models: dict[str, str] = Field(default_factory=dict, description="role -> model or detector id")
    tool_trace: list[ToolCall] = Field(default_factory=list)

    @property
    def failed_findings(self) -> list[Finding]:
        return [f for f in self.findings if not f.passed]
