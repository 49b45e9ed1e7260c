"""Agent configuration: one pydantic object, loadable from YAML/JSON, with sensible CPU defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


def default_cache_dir() -> Path:
    root = os.environ.get("LOGISCAN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "logiscan"


class SceneParserSettings(BaseModel):
    """``detectors.parsing.SceneParser`` arguments; None keeps the parser's own default."""

    model_config = ConfigDict(extra="forbid")

    deep_features: bool = Field(
        default=False,
        description="cluster the perception backbone's features beside colour; off by default because "
                    "they made per-part counts less stable on the synthetic benchmark",
    )
    max_parts: Optional[int] = Field(default=None, ge=1)
    image_size: Optional[int] = Field(default=None, ge=64, description="long side the parser works at, pixels")
    backbone_weight: Optional[float] = Field(default=None, ge=0)
    object_share: Optional[float] = Field(default=None, ge=0, lt=1)
    seed: Optional[int] = Field(default=None, ge=0)


class PatchCoreSettings(BaseModel):
    """``detectors.patchcore.PatchCore`` arguments; None keeps the detector's own default."""

    model_config = ConfigDict(extra="forbid")

    layers: Optional[list[str]] = None
    grid_layer: Optional[str] = None
    image_size: Optional[int] = Field(default=None, ge=1)
    neighbourhood: Optional[int] = Field(default=None, ge=1)
    coreset_ratio: Optional[float] = Field(default=None, gt=0, le=1)
    max_bank_size: Optional[int] = Field(default=None, ge=1)
    projection_dim: Optional[int] = Field(default=None, ge=1)
    sigma: Optional[float] = Field(default=None, ge=0)
    calibration_sigmas: Optional[float] = Field(default=None, gt=0)
    max_references: Optional[int] = Field(default=None, ge=1)
    augment: Optional[str] = None
    seed: Optional[int] = Field(default=None, ge=0)


class LayoutSettings(BaseModel):
    """``detectors.layout.LayoutDetector`` arguments; None keeps the detector's own default."""

    model_config = ConfigDict(extra="forbid")

    layer: Optional[str] = None
    image_size: Optional[int] = Field(default=None, ge=1)
    window: Optional[int] = Field(default=None, ge=0, description="how far (grid cells) a part may move")
    top_fraction: Optional[float] = Field(default=None, gt=0, le=1)
    sigma: Optional[float] = Field(default=None, ge=0)
    calibration_sigmas: Optional[float] = Field(default=None, gt=0)
    max_references: Optional[int] = Field(default=None, ge=1)
    missing: Optional[bool] = Field(default=None, description="also score what the references show and the "
                                    "image lacks")
    missing_top_fraction: Optional[float] = Field(default=None, gt=0, le=1)


class PerceptionConfig(BaseModel):
    """What the detectors are fitted with. Every field is part of the fitted-detector cache key."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = "efficientnet-lite0"
    structural: bool = True
    layout: bool = Field(
        default=True,
        description="the layout detector: each region against the same region of the references (logical "
                    "anomalies of products with a fixed arrangement); needs references",
    )
    part_names: dict[str, str] = Field(default_factory=dict, description="part id -> name hints")
    parser: SceneParserSettings = Field(default_factory=SceneParserSettings)
    patchcore: PatchCoreSettings = Field(default_factory=PatchCoreSettings)
    layout_detector: LayoutSettings = Field(default_factory=LayoutSettings)

    def parser_kwargs(self) -> dict:
        settings = self.parser.model_dump(exclude_none=True)
        deep = settings.pop("deep_features")
        return {"backbone": self.backbone if deep else None, **settings}

    def patchcore_kwargs(self) -> dict:
        return {"backbone": self.backbone, **self.patchcore.model_dump(exclude_none=True)}

    def layout_kwargs(self) -> dict:
        return {"backbone": self.backbone, **self.layout_detector.model_dump(exclude_none=True)}


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the problem."""


class FusionConfig(BaseModel):
    """How the evidence sources (rules, structural, composition, layout) become one score (see ``agent.fusion``)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    #: relative trust in each detector (0 leaves it out of the score; it is still reported)
    weight_structural: float = Field(default=1.0, ge=0.0, le=1.0)
    # the parse's composition score is near chance on the synthetic set with more than a few
    # images (AUROC 0.55-0.58, two seeds, 10 good vs 10 logical per category): it speaks, but
    # softly (see agent.fusion for the figures)
    weight_composition: float = Field(default=0.25, ge=0.0, le=1.0)
    weight_layout: float = Field(default=1.0, ge=0.0, le=1.0)
    power: float = Field(
        default=0.5, gt=0.0, le=64.0,
        description="exponent of the power mean of the detectors' calibrated odds: small values need the "
                    "detectors to agree, large ones follow the strongest (64 is nearly the maximum)",
    )


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
    generation_budget_s: Optional[float] = Field(
        default=60.0, gt=0,
        description="time budget of writing one rule set's checks: every model call, first attempts included, "
                    "must end within it, and a repair starts only if an attempt of the usual length still fits "
                    "(None: a first attempt for every rule and all repair_rounds, however long they take)",
    )
    program_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    program_memory_mb: int = Field(default=1024, ge=64)
    generation_timeout_s: float = Field(
        default=120.0, gt=0,
        description="time budget of every language-model call the agent makes; the agent also passes it to "
                    "the backend as LLMConfig.timeout_s, so it is the only model timeout to set",
    )
    link_evidence_to_rules: bool = Field(
        default=False,
        description="ask the model once per rule set which parts each rule is about, and name the rules whose "
                    "parts the detectors' evidence implicates ('likely violated'). Off by default: the CPU "
                    "default model's mapping named the wrong rule for every detected synthetic anomaly",
    )
    cache_dir: Path = Field(default_factory=default_cache_dir)
    use_disk_cache: bool = True
    #: a user-written or edited LogiCode program that replaces generation
    pinned_program: Optional[Path] = None

    @field_validator("llm")
    @classmethod
    def _one_model_timeout(cls, value: Optional[dict]) -> Optional[dict]:
        # Two budgets (the agent's and the backend's) used to coexist and the smaller one won
        # silently; the agent now hands generation_timeout_s down, so a second one is refused.
        if value and "timeout_s" in value:
            raise ValueError(
                "llm.timeout_s is not used by the agent: set generation_timeout_s instead "
                "(the agent passes it to the model backend as its timeout)"
            )
        return value

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "AgentConfig":
        """Read a YAML/JSON config; any problem is a :class:`ConfigError` that names the file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file '{path}' does not exist.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"Config file '{path}' cannot be read as YAML/JSON: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
                                 for err in exc.errors())
            raise ConfigError(f"Config file '{path}' is not a valid agent configuration: {problems}") from exc
