"""hiera_det: Hiera backbones for detection and video.

The model core (``hiera_det.modeling``) and the weight loader (``hiera_det.checkpoint``) need only torch.
When detectron2 is importable, importing ``hiera_det`` also registers the Detectron2 parts (backbones,
meta-architectures, the bundled datasets), so a yacs config can name them.
"""

from importlib.util import find_spec

__version__ = "0.1.0"

if find_spec("detectron2") is not None:
    from . import detection as _detection  # noqa: F401  (image backbones, FPN)
    from . import video as _video  # noqa: F401  (video backbones and meta-architectures)
    from .data import builtin as _builtin  # noqa: F401  (bundled datasets)
