"""Few-shot scene parsing (parts, counts, geometry) and the rules-free composition score."""

from .composition import CompositionScorer, Deviation
from .parser import SceneParser

__all__ = ["CompositionScorer", "Deviation", "SceneParser"]
