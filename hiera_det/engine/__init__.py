"""Training: the Detectron2 trainer for Hiera models and the layer-decayed optimizer."""

from .optimizer import build_optimizer, get_param_groups
from .trainer import VIDEO_META_ARCHITECTURES, Trainer, check_dataset_available, is_video_config

__all__ = [
    "VIDEO_META_ARCHITECTURES",
    "Trainer",
    "build_optimizer",
    "check_dataset_available",
    "get_param_groups",
    "is_video_config",
]
