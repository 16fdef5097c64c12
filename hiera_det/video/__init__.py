"""Video in Detectron2: the video Hiera backbone (and its temporally pooled FPN), the clip classifier and
the clip-to-keyframe detector. Importing this package registers them:

* backbones ``build_hiera_video_backbone``, ``build_hiera_video_fpn_backbone``
* meta-architectures ``HieraVideoClassifier``, ``HieraClipDetector``

Data loaders and evaluators for them come from ``hiera_det.video.builders``.
"""

from .backbone import HieraVideoBackbone, TemporallyPooledBackbone, TemporalPool
from .build import build_hiera_video_backbone, build_hiera_video_fpn_backbone, build_video_trunk
from .config import add_video_config
from .evaluation import VideoClassificationEvaluator
from .meta_arch import HieraClipDetector, HieraVideoClassifier
from .action_detector import HieraActionDetector  # noqa: F401  (registers the AVA meta-architecture)
from .mixup import ClipMixup

VIDEO_META_ARCHITECTURES = ("HieraVideoClassifier", "HieraClipDetector", "HieraActionDetector")

__all__ = [
    "VIDEO_META_ARCHITECTURES",
    "ClipMixup",
    "HieraClipDetector",
    "HieraVideoBackbone",
    "HieraVideoClassifier",
    "TemporalPool",
    "TemporallyPooledBackbone",
    "VideoClassificationEvaluator",
    "add_video_config",
    "build_hiera_video_backbone",
    "build_hiera_video_fpn_backbone",
    "build_video_trunk",
]
