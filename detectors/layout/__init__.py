"""Layout detection: is every region of the image like the same region of the references?

``torch_model`` holds the pure-torch numerics; ``detector`` the :class:`LayoutDetector`
glue (images, backbone, calibration, save/load).
"""

from .detector import LayoutDetector

__all__ = ["LayoutDetector"]
