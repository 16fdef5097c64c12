"""hiera_det: Hiera backbones for detection and video.

``hiera_det.modeling`` (the model core) and ``hiera_det.checkpoint`` (weight loading) need only torch. The
Detectron2 parts register themselves when ``hiera_det.d2`` is imported.
"""

__version__ = "0.1.0"
