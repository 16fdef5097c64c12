"""Hiera as a Detectron2 backbone (image or video trunk), and the FPN that keeps Hiera's input-size rule."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import Backbone
from detectron2.modeling.backbone.fpn import FPN

from ..modeling import Hiera
from .trunk import freeze_trunk, freeze_unread


class HieraBackbone(Backbone):
    """A Hiera trunk returning the requested stage grids, named ``stage1``..``stage4``.

    Image trunks give ``[B, C, H/s, W/s]``; video trunks take clips ``[B, 3, T, H, W]`` and give
    ``[B, C, T/2, H/s, W/s]`` (``output_shape`` reports the spatial strides 4..32 either way).
    ``freeze_at`` follows ``hiera_det.detection.trunk.freeze_trunk``; the final norm and the blocks past the
    deepest requested stage are always frozen, since nothing reads them. ``square_pad`` > 0 pads every
    batch to that square (large-scale-jitter training sees only such squares, so test images must be
    placed the same way). ``out_norm`` ("LN" or "GN", Detectron2's channel norms) normalizes each returned
    stage: the pre-norm blocks hand on an un-normalized residual stream, whose scale drifts while a trunk
    trains from random init (ViTDet puts a LayerNorm on its pyramid inputs for the same reason).
    """

    def __init__(
        self,
        trunk: Hiera,
        out_features: Sequence[str] = ("stage1", "stage2", "stage3", "stage4"),
        freeze_at: int = 0,
        square_pad: int = 0,
        out_norm: str = "",
    ):
        super().__init__()
        if trunk.head is not None:
            raise ValueError(f"{trunk.name} was built with a classifier; build it with num_classes=0")
        stages = trunk.out_features
        unknown = [f for f in out_features if f not in stages]
        if unknown or not out_features:
            raise ValueError(f"out_features {list(out_features)} must be a non-empty subset of {stages}")
        self.trunk = trunk
        self._out_features = [f for f in stages if f in out_features]
        self._out_feature_channels = dict(zip(stages, trunk.stage_dims))
        self._out_feature_strides = dict(zip(stages, trunk.stage_strides))
        self._size_divisibility = math.lcm(*trunk.size_multiple[-2:])
        self._square_pad = square_pad
        if square_pad % self._size_divisibility:
            raise ValueError(f"square_pad {square_pad} must be a multiple of {self._size_divisibility}, the "
                             f"input multiple of {trunk.name}")
        if out_norm and trunk.ndim != 2:
            raise ValueError(f"out_norm is for image trunks, and {trunk.name} is a video trunk; leave it ''")
        self.stage_norms = nn.ModuleDict(
            {name: get_norm(out_norm, self._out_feature_channels[name]) for name in self._out_features}
            if out_norm else {}
        )
        freeze_unread(trunk, stages.index(self._out_features[-1]) + 1)
        freeze_trunk(trunk, freeze_at)

    @property
    def is_video(self) -> bool:
        return self.trunk.ndim == 3

    @property
    def temporal_stride(self) -> int:
        """Frames per temporal slice of the features (1 for images)."""
        return self.trunk.patch_stride[0] if self.is_video else 1

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stages = self.trunk(x)
        return {name: self.stage_norms[name](stages[name]) if self.stage_norms else stages[name]
                for name in self._out_features}

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


class HieraFPN(FPN):
    """Detectron2's FPN, padding inputs to the bottom-up network's multiple as well as its own.

    FPN pads to the largest stride among its inputs; a Hiera trunk needs multiples of 32 even when the
    FPN reads only stages up to stride 16.
    """

    @property
    def size_divisibility(self) -> int:
        return math.lcm(self._size_divisibility, self.bottom_up.size_divisibility)

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self.size_divisibility, "square_size": self._square_pad}
