"""hiera_det: Hiera backbones for detection and video.

``hiera_det.modeling`` (the model core) and ``hiera_det.checkpoint`` (weight loading) need only torch. The
Detectron2 parts register themselves when ``hiera_det.d2`` is imported.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # hiera_det.FeatureExtractor without importing it (and its dependencies) at ``import hiera_det``
    if name == "FeatureExtractor":
        from .features import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'hiera_det' has no attribute {name!r}")
