"""The Hiera trunk of a config (image or video) and the freezing rules every Hiera model shares."""

from __future__ import annotations

import logging

import torch.nn as nn

from ..config import is_video_config, trunk_input_size, validate_hiera_config
from ..modeling import Hiera, build_hiera

logger = logging.getLogger(__name__)


def trunk_overrides(cfg, **extra) -> dict:
    """``build_hiera`` arguments of ``cfg.MODEL.HIERA`` (the trunk's size, depth, width and, for images, its
    attention layout), plus ``extra``; unset keys are left out rather than passed as None, so that the
    architecture (and its window presets) fills them."""
    validate_hiera_config(cfg)
    h = cfg.MODEL.HIERA
    overrides = dict(
        input_size=trunk_input_size(cfg),
        drop_path_rate=h.DROP_PATH_RATE,
        stages=tuple(h.STAGES) or None,
        embed_dim=h.EMBED_DIM or None,
        num_heads=h.NUM_HEADS or None,
        activation_checkpointing=h.ACTIVATION_CHECKPOINTING,
        gelu_epilogue=h.GELU_EPILOGUE or None,
    )
    if not is_video_config(cfg):
        overrides.update(
            attention=h.ATTENTION,
            stem=h.STEM,
            pos_embed=h.POS_EMBED or None,
            window_spec=tuple(h.WINDOW_SPEC) or None,
            global_blocks=tuple(h.GLOBAL_BLOCKS) or None,
        )
    overrides.update(extra)
    return {k: v for k, v in overrides.items() if v is not None}


def build_trunk(cfg, num_classes: int = 0, in_chans: int = 3) -> Hiera:
    """The Hiera of ``cfg.MODEL.HIERA`` (a video trunk when ``NAME`` is ``*_16x224``), with
    ``MODEL.HIERA.WEIGHTS`` loaded. ``num_classes`` > 0 keeps the classifier head (video classifier)."""
    h = cfg.MODEL.HIERA
    extra = dict(num_classes=num_classes, in_chans=in_chans)
    if is_video_config(cfg):
        extra["head_dropout"] = cfg.MODEL.HIERA_VIDEO.HEAD_DROPOUT
    trunk = build_hiera(h.NAME, **trunk_overrides(cfg, **extra))
    if h.WEIGHTS:
        from ..checkpoint import load_checkpoint

        report = load_checkpoint(trunk, h.WEIGHTS, strict=False)
        logger.info(f"Loaded MODEL.HIERA.WEIGHTS {h.WEIGHTS} into {h.NAME}:\n{report}")
    return trunk


def stage_blocks(trunk: Hiera, stage: int) -> range:
    """Indices of the blocks of 1-based ``stage``."""
    ends = trunk.stage_ends
    start = ends[stage - 2] + 1 if stage > 1 else 0
    return range(start, ends[stage - 1] + 1)


def freeze_trunk(trunk: Hiera, freeze_at: int) -> None:
    """Detectron2's FREEZE_AT, counted in Hiera stages: 0 trains everything; 1 freezes the patch embedding
    and position embeddings; k >= 2 also stages 1..k-1; 5 the whole trunk."""
    num_stages = len(trunk.stage_ends)
    if not 0 <= freeze_at <= num_stages + 1:
        raise ValueError(f"freeze_at must be in 0..{num_stages + 1}, got {freeze_at}")
    if freeze_at >= 1:
        trunk.patch_embed.requires_grad_(False)
        for name, p in trunk.named_parameters(recurse=False):
            if name.startswith("pos_embed"):
                p.requires_grad_(False)
    for stage in range(1, min(freeze_at, num_stages + 1)):
        for i in stage_blocks(trunk, stage):
            trunk.blocks[i].requires_grad_(False)


def freeze_unread(trunk: Hiera, deepest_stage: int) -> None:
    """Freeze what a feature backbone never reads: the final norm (it feeds only the classifier) and the
    blocks past ``deepest_stage``. They would get no gradient, which DistributedDataParallel rejects unless
    it searches for unused parameters every step."""
    modules: list[nn.Module] = [trunk.norm]
    for stage in range(deepest_stage + 1, len(trunk.stage_ends) + 1):
        modules += [trunk.blocks[i] for i in stage_blocks(trunk, stage) if i < len(trunk.blocks)]
    for module in modules:
        module.requires_grad_(False)
