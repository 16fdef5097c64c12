"""Training: the Detectron2 trainer for Hiera models, its data loaders, the layer-decayed optimizer and the
crash-safe checkpointer."""

from .optimizer import build_optimizer, get_param_groups
from .trainer import Trainer

__all__ = ["Trainer", "build_optimizer", "get_param_groups"]
