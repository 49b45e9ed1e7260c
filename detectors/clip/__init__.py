"""CLIP-based zero-/few-shot detectors on open_clip: WinCLIP, InCTRL, AdaCLIP, part labelling.

>>> from detectors.clip import load_clip, WinCLIP
>>> clip = load_clip("ViT-B-16-plus-240", "laion400m_e32")        # cuda > mps > cpu, bf16 on GPU
>>> detector = WinCLIP(clip, class_name="screw bag").fit(references)  # fit([]) = zero-shot
>>> result = detector.score("query.png")                           # AnomalyResult with a map
"""

from .adaclip import AdaCLIP, HybridPrompts, TrainingSample, anomaly_folder_samples
from .inctrl import InCTRL
from .labeler import CLIPPartLabeler
from .loading import (
    ClipModel, CLIPModelError, CLIPWeightsUnavailable, load_clip, random_clip_config, select_device, select_dtype,
)
from .prompts import compose_prompts, prompt_ensemble
from .winclip import WinCLIP

__all__ = [
    "AdaCLIP", "CLIPModelError", "CLIPPartLabeler", "CLIPWeightsUnavailable", "ClipModel", "HybridPrompts",
    "InCTRL", "TrainingSample", "WinCLIP", "anomaly_folder_samples", "compose_prompts", "load_clip",
    "prompt_ensemble", "random_clip_config", "select_device", "select_dtype",
]
