"""Detectron2 registry builders for every Hiera backbone: config in, modules out.

Image: ``build_hiera_backbone`` (the trunk's stages), ``build_hiera_fpn_backbone`` (P2-P6, Mask R-CNN) and
``build_hiera_retinanet_fpn_backbone`` (P3-P7). Video: ``build_hiera_video_backbone`` (clip features per
stage) and ``build_hiera_video_fpn_backbone`` (each stage pooled over time, then the same FPN as images).
"""

from __future__ import annotations

import math

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from ..config import is_video_config, keyframe_position
from .backbone import HieraBackbone, HieraFPN
from .trunk import build_trunk


def _square_pad(cfg) -> int:
    return cfg.INPUT.LSJ.IMAGE_SIZE if cfg.INPUT.LSJ.ENABLED and not is_video_config(cfg) else 0


def _require_modality(cfg, video: bool, builder: str) -> None:
    if is_video_config(cfg) != video:
        wanted = "a video architecture (*_16x224)" if video else "an image architecture (*_224)"
        other = "build_hiera_video_fpn_backbone" if not video else "build_hiera_fpn_backbone"
        raise ValueError(f"MODEL.BACKBONE.NAME {builder} needs MODEL.HIERA.NAME to be {wanted}, got "
                         f"{cfg.MODEL.HIERA.NAME!r}; use {other} for it")


def build_backbone_from_cfg(cfg, in_chans: int = 3) -> HieraBackbone:
    """The trunk of ``MODEL.HIERA`` as a backbone returning its ``OUT_FEATURES``."""
    h = cfg.MODEL.HIERA
    return HieraBackbone(build_trunk(cfg, in_chans=in_chans), h.OUT_FEATURES, h.FREEZE_AT, _square_pad(cfg),
                         h.OUT_NORM)


def build_fpn(cfg, bottom_up: Backbone, default_in_features: list[str], retinanet: bool = False) -> HieraFPN:
    """Detectron2's FPN on ``bottom_up``: P2-P6 with a max-pooled top level, or P3-P7 (RetinaNet) with
    strided 3x3 convs on the deepest input, as Detectron2's ResNet RetinaNet does on res5."""
    shapes = bottom_up.output_shape()
    in_features = list(cfg.MODEL.FPN.IN_FEATURES) or default_in_features
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ValueError(f"MODEL.FPN.IN_FEATURES {in_features} reads {missing}, which MODEL.HIERA.OUT_FEATURES "
                         f"{list(cfg.MODEL.HIERA.OUT_FEATURES)} does not produce; add them there")
    last = in_features[-1]
    if retinanet:
        top_block = LastLevelP6P7(shapes[last].channels, cfg.MODEL.FPN.OUT_CHANNELS, last)
    else:
        top_block = LastLevelMaxPool()
        # it pools "p5" by default; pool the deepest level this FPN makes, which is p4 without stage4
        top_block.in_feature = f"p{int(math.log2(shapes[last].stride))}"
    return HieraFPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        square_pad=_square_pad(cfg),
    )


@BACKBONE_REGISTRY.register()
def build_hiera_backbone(cfg, input_shape: ShapeSpec) -> HieraBackbone:
    """``MODEL.BACKBONE.NAME: build_hiera_backbone``: the image trunk alone, its OUT_FEATURES."""
    _require_modality(cfg, False, "build_hiera_backbone")
    return build_backbone_from_cfg(cfg, in_chans=input_shape.channels)


@BACKBONE_REGISTRY.register()
def build_hiera_fpn_backbone(cfg, input_shape: ShapeSpec) -> HieraFPN:
    """Hiera + FPN with a max-pooled P6: p2..p6 at strides 4..64 from stage1..stage4 (Mask R-CNN)."""
    bottom_up = build_hiera_backbone(cfg, input_shape)
    return build_fpn(cfg, bottom_up, list(bottom_up.output_shape()))


@BACKBONE_REGISTRY.register()
def build_hiera_retinanet_fpn_backbone(cfg, input_shape: ShapeSpec) -> HieraFPN:
    """Hiera + FPN for RetinaNet: p3..p5 from stage2..stage4, then P6 and P7."""
    return build_fpn(cfg, build_hiera_backbone(cfg, input_shape), ["stage2", "stage3", "stage4"], retinanet=True)


@BACKBONE_REGISTRY.register()
def build_hiera_video_backbone(cfg, input_shape: ShapeSpec | None = None) -> HieraBackbone:
    """``MODEL.BACKBONE.NAME: build_hiera_video_backbone``: clip in, ``[B, C, T', H', W']`` per stage out."""
    _require_modality(cfg, True, "build_hiera_video_backbone")
    return build_backbone_from_cfg(cfg)


@BACKBONE_REGISTRY.register()
def build_hiera_video_fpn_backbone(cfg, input_shape: ShapeSpec | None = None) -> HieraFPN:
    """Each stage of the video trunk pooled over time by ``MODEL.HIERA_VIDEO.TEMPORAL_POOL``, then the same
    FPN as images: p2-p6 (strides 4-64)."""
    from ..video.temporal import TemporallyPooledBackbone

    m = cfg.MODEL.HIERA_VIDEO
    video = build_hiera_video_backbone(cfg, input_shape)
    bottom_up = TemporallyPooledBackbone(video, m.TEMPORAL_POOL, m.NUM_FRAMES, keyframe_position(cfg))
    return build_fpn(cfg, bottom_up, list(bottom_up.output_shape()))
