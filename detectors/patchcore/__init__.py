"""PatchCore-style few-shot structural anomaly detection.

``torch_model`` holds the pure-torch numerics; ``detector`` the :class:`PatchCore`
glue (images, backbone, calibration, save/load).
"""

from .detector import PatchCore

__all__ = ["PatchCore"]
