"""Perception: image input, datasets, backbones, structural detectors, scene parsing, CLIP.

Public names are imported lazily so that ``import detectors`` stays cheap (no torch)
until a model is actually used.
"""

from importlib import import_module
from typing import Any

from .base import Detector, NotFittedError
from .images import ImageInput, ImageInputError, load_image, to_array
from .schema import AnomalyResult, Component, Part, Scene, Stats

# public name -> module that defines it
_LAZY = {
    # backbones and structural detection
    "Backbone": "detectors.backbones",
    "get_backbone": "detectors.backbones",
    "list_backbones": "detectors.backbones",
    "register_backbone": "detectors.backbones",
    "FeatureMaps": "detectors.backbones",
    "PatchCore": "detectors.patchcore",
    # logical detection by position (each region against the same region of the references)
    "LayoutDetector": "detectors.layout",
    # scene parsing and the rules-free composition score
    "SceneParser": "detectors.parsing",
    "CompositionScorer": "detectors.parsing",
    # CLIP-based detectors
    "load_clip": "detectors.clip",
    "WinCLIP": "detectors.clip",
    "InCTRL": "detectors.clip",
    "AdaCLIP": "detectors.clip",
    "CLIPPartLabeler": "detectors.clip",
    # data
    "LocoDataset": "detectors.data.loco",
    "LocoLayoutError": "detectors.data.loco",
    "SynthGenerator": "detectors.data.synth",
    "generate_dataset": "detectors.data.synth",
    # LangChain tools
    "detector_tools": "detectors.tools",
}

__all__ = [
    "AnomalyResult", "Component", "Detector", "ImageInput", "ImageInputError", "NotFittedError",
    "Part", "Scene", "Stats", "load_image", "to_array", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'detectors' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
