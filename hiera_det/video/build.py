"""Registry builders for the video backbones: config in, modules out (the modules know nothing of configs)."""

from __future__ import annotations

import logging

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from hiera_det.modeling import Hiera, build_hiera

from .backbone import HieraVideoBackbone, TemporallyPooledBackbone
from .config import keyframe_position, validate_video_config

logger = logging.getLogger(__name__)


def build_video_trunk(cfg, num_classes: int = 0) -> Hiera:
    """The video Hiera of ``MODEL.HIERA_VIDEO`` with its weights loaded when ``WEIGHTS`` is set.

    The stored position embedding covers ``NUM_FRAMES x TRAIN_CROP_SIZE x TRAIN_CROP_SIZE``; other frame sizes (the
    detector's) interpolate it at run time.
    """
    validate_video_config(cfg)
    m = cfg.MODEL.HIERA_VIDEO
    crop = cfg.INPUT.VIDEO.TRAIN_CROP_SIZE
    trunk = build_hiera(
        m.NAME,
        input_size=(m.NUM_FRAMES, crop, crop),
        num_classes=num_classes,
        stages=tuple(m.STAGES) or None,
        embed_dim=m.EMBED_DIM or None,
        num_heads=m.NUM_HEADS or None,
        drop_path_rate=m.DROP_PATH_RATE,
        head_dropout=m.HEAD_DROPOUT,
        activation_checkpointing=m.ACTIVATION_CHECKPOINTING,
    )
    if m.WEIGHTS:
        from hiera_det.checkpoint import load_checkpoint

        report = load_checkpoint(trunk, m.WEIGHTS)
        logger.info("MODEL.HIERA_VIDEO.WEIGHTS=%s loaded into %s:\n%s", m.WEIGHTS, m.NAME, report)
    return trunk


def build_video_backbone(cfg) -> HieraVideoBackbone:
    m = cfg.MODEL.HIERA_VIDEO
    return HieraVideoBackbone(build_video_trunk(cfg), out_features=list(m.OUT_FEATURES), freeze_at=m.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_hiera_video_backbone(cfg, input_shape: ShapeSpec | None = None) -> HieraVideoBackbone:
    """``MODEL.BACKBONE.NAME: build_hiera_video_backbone``: clip in, ``[B, C, T', H', W']`` per stage out."""
    return build_video_backbone(cfg)


@BACKBONE_REGISTRY.register()
def build_hiera_video_fpn_backbone(cfg, input_shape: ShapeSpec | None = None) -> FPN:
    """``MODEL.BACKBONE.NAME: build_hiera_video_fpn_backbone``: each stage pooled over time by
    ``MODEL.HIERA_VIDEO.TEMPORAL_POOL``, then a standard FPN giving p2-p6 (strides 4-64)."""
    m = cfg.MODEL.HIERA_VIDEO
    bottom_up = TemporallyPooledBackbone(
        build_video_backbone(cfg), m.TEMPORAL_POOL, m.NUM_FRAMES, keyframe_position(cfg)
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=list(m.OUT_FEATURES),
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
