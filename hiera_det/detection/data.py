"""Training data mapping for image detectors: Detectron2's mapper, with large-scale jitter when asked."""

from __future__ import annotations

import detectron2.data.transforms as T
from ..data.image_io import CheckedDatasetMapper


def build_lsj_augmentations(cfg) -> list[T.Augmentation]:
    """Large-scale jitter (``INPUT.LSJ``): random rescale, crop or pad to a square, horizontal flip."""
    lsj = cfg.INPUT.LSJ
    size = lsj.IMAGE_SIZE
    return [
        T.ResizeScale(
            min_scale=lsj.MIN_SCALE, max_scale=lsj.MAX_SCALE, target_height=size, target_width=size
        ),
        T.FixedSizeCrop(crop_size=(size, size)),
        T.RandomFlip(horizontal=True),
    ]


def build_detection_train_mapper(cfg) -> CheckedDatasetMapper:
    """Detectron2's ``DatasetMapper`` for training, reading images through ``hiera_det.data.image_io`` (clear
    errors for unreadable files, 16-bit scaling); with ``INPUT.LSJ.ENABLED`` its augmentations are LSJ."""
    if not cfg.INPUT.LSJ.ENABLED:
        return CheckedDatasetMapper(cfg, is_train=True)
    # Cropping cuts instances, so boxes are recomputed from the cropped masks when there are masks.
    return CheckedDatasetMapper(
        cfg, is_train=True, augmentations=build_lsj_augmentations(cfg), recompute_boxes=cfg.MODEL.MASK_ON
    )
