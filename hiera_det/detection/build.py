"""Detectron2 registry builders: Hiera, Hiera + FPN (P2-P6) and Hiera + RetinaNet FPN (P3-P7)."""

from __future__ import annotations

import logging
import math

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from ..config import hiera_input_size, validate_hiera_config
from ..modeling import Hiera, build_hiera
from .backbone import HieraBackbone, HieraFPN

logger = logging.getLogger(__name__)


def build_hiera_trunk(cfg, in_chans: int = 3) -> Hiera:
    """The feature-only Hiera trunk of ``cfg.MODEL.HIERA``, with ``MODEL.HIERA.WEIGHTS`` loaded."""
    validate_hiera_config(cfg)
    h = cfg.MODEL.HIERA
    overrides = dict(
        num_classes=0,
        in_chans=in_chans,
        input_size=hiera_input_size(cfg),
        drop_path_rate=h.DROP_PATH_RATE,
        attention=h.ATTENTION,
        pos_embed=h.POS_EMBED or None,
        window_spec=tuple(h.WINDOW_SPEC) or None,
        global_blocks=tuple(h.GLOBAL_BLOCKS) or None,
        stages=tuple(h.STAGES) or None,
        activation_checkpointing=h.ACTIVATION_CHECKPOINTING,
    )
    # unset keys are left out rather than passed as None, so that the window-layout presets fill them
    trunk = build_hiera(h.NAME, **{k: v for k, v in overrides.items() if v is not None})
    if h.WEIGHTS:
        from ..checkpoint import load_checkpoint

        report = load_checkpoint(trunk, h.WEIGHTS, strict=False)
        logger.info(f"Loaded MODEL.HIERA.WEIGHTS {h.WEIGHTS} into {h.NAME}:\n{report}")
    return trunk


def _square_pad(cfg) -> int:
    return cfg.INPUT.LSJ.IMAGE_SIZE if cfg.INPUT.LSJ.ENABLED else 0


@BACKBONE_REGISTRY.register()
def build_hiera_backbone(cfg, input_shape: ShapeSpec) -> HieraBackbone:
    """``MODEL.BACKBONE.NAME: build_hiera_backbone``: the trunk alone, its OUT_FEATURES."""
    trunk = build_hiera_trunk(cfg, in_chans=input_shape.channels)
    return HieraBackbone(trunk, cfg.MODEL.HIERA.OUT_FEATURES, cfg.MODEL.HIERA.FREEZE_AT, _square_pad(cfg))


def _fpn_in_features(cfg, bottom_up: HieraBackbone, default: list[str]) -> list[str]:
    in_features = list(cfg.MODEL.FPN.IN_FEATURES) or default
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(f"MODEL.FPN.IN_FEATURES {in_features} reads {missing}, which "
                         f"MODEL.HIERA.OUT_FEATURES {list(cfg.MODEL.HIERA.OUT_FEATURES)} does not produce; "
                         "add them there")
    return in_features


@BACKBONE_REGISTRY.register()
def build_hiera_fpn_backbone(cfg, input_shape: ShapeSpec) -> HieraFPN:
    """Hiera + FPN with a max-pooled P6: p2..p6 at strides 4..64 from stage1..stage4 (Mask R-CNN)."""
    bottom_up = build_hiera_backbone(cfg, input_shape)
    in_features = _fpn_in_features(cfg, bottom_up, list(cfg.MODEL.HIERA.OUT_FEATURES))
    top_block = LastLevelMaxPool()
    # it pools "p5" by default; pool the deepest level this FPN makes, which is p4 without stage4
    top_block.in_feature = f"p{int(math.log2(bottom_up.output_shape()[in_features[-1]].stride))}"
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
def build_hiera_retinanet_fpn_backbone(cfg, input_shape: ShapeSpec) -> HieraFPN:
    """Hiera + FPN for RetinaNet: p3..p5 from stage2..stage4, then P6 and P7 by strided 3x3 convs on
    stage4, as Detectron2's ResNet RetinaNet does on res5."""
    bottom_up = build_hiera_backbone(cfg, input_shape)
    in_features = _fpn_in_features(cfg, bottom_up, ["stage2", "stage3", "stage4"])
    last = in_features[-1]
    return HieraFPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()[last].channels, cfg.MODEL.FPN.OUT_CHANNELS, last),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        square_pad=_square_pad(cfg),
    )
