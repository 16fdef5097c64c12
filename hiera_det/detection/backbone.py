"""Hiera as a Detectron2 backbone, and the FPN that keeps Hiera's input-size rule."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from detectron2.modeling.backbone.fpn import FPN

from ..modeling import Hiera


class HieraBackbone(Backbone):
    """A Hiera trunk returning the requested stage grids, named ``stage1``..``stage4``.

    ``freeze_at``: 0 trains everything; 1 freezes the patch embedding and position embeddings; k >= 2
    also freezes stages 1..k-1. ``square_pad`` > 0 pads every batch to that square (large-scale-jitter
    training sees only such squares, so test images must be placed the same way).
    """

    def __init__(
        self,
        trunk: Hiera,
        out_features: Sequence[str] = ("stage1", "stage2", "stage3", "stage4"),
        freeze_at: int = 0,
        square_pad: int = 0,
    ):
        super().__init__()
        if trunk.ndim != 2:
            raise ValueError(f"{trunk.name} is a video trunk; HieraBackbone takes image trunks")
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
        self._size_divisibility = math.lcm(*trunk.size_multiple)
        self._square_pad = square_pad
        if square_pad % self._size_divisibility:
            raise ValueError(f"square_pad {square_pad} must be a multiple of {self._size_divisibility}, the "
                             f"input multiple of {trunk.name}")
        self._freeze_unused(stages.index(self._out_features[-1]) + 1)
        self.freeze(freeze_at)

    def _stage_blocks(self, stage: int) -> range:
        """Indices of the blocks of 1-based ``stage``."""
        ends = self.trunk.stage_ends
        start = ends[stage - 2] + 1 if stage > 1 else 0
        return range(start, ends[stage - 1] + 1)

    def _freeze_unused(self, last_stage: int) -> None:
        # The final norm feeds only the classifier, and blocks past the deepest requested stage feed no
        # output: they would get no gradient, which DistributedDataParallel rejects.
        self.trunk.norm.requires_grad_(False)
        for stage in range(last_stage + 1, len(self.trunk.stage_ends) + 1):
            for i in self._stage_blocks(stage):
                self.trunk.blocks[i].requires_grad_(False)

    def freeze(self, freeze_at: int) -> "HieraBackbone":
        if not 0 <= freeze_at <= len(self.trunk.stage_ends) + 1:
            raise ValueError(f"freeze_at must be in 0..{len(self.trunk.stage_ends) + 1}, got {freeze_at}")
        if freeze_at >= 1:
            self.trunk.patch_embed.requires_grad_(False)
            for name, p in self.trunk.named_parameters(recurse=False):
                if name.startswith("pos_embed"):
                    p.requires_grad_(False)
        for stage in range(1, freeze_at):
            for i in self._stage_blocks(stage):
                self.trunk.blocks[i].requires_grad_(False)
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stages = self.trunk(x)
        return {name: stages[name] for name in self._out_features}

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
