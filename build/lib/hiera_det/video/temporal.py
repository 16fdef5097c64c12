"""Temporal pooling: turns a video backbone's clip features into the 2-D maps that an ordinary FPN / RPN /
ROI-head stack expects. It is the only video-specific part of the clip detector's backbone."""

from __future__ import annotations

import torch
import torch.nn as nn
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from ..config import TEMPORAL_POOLS
from ..detection.backbone import HieraBackbone


class TemporalPool(nn.Module):
    """``[B, C, T', H, W]`` -> ``[B, C, H, W]``.

    ``mean`` / ``max`` over time; ``keyframe`` keeps the slice whose frames include the keyframe;
    ``learned`` takes a softmax-weighted sum with one weight per slice, starting equal (= mean).
    """

    def __init__(self, mode: str, num_slices: int, keyframe_slice: int):
        super().__init__()
        if mode not in TEMPORAL_POOLS:
            raise ValueError(f"unknown temporal pool {mode!r}; choose one of {TEMPORAL_POOLS}")
        if not 0 <= keyframe_slice < num_slices:
            raise ValueError(f"keyframe slice {keyframe_slice} is outside the clip's {num_slices} slices")
        self.mode = mode
        self.num_slices = num_slices
        self.keyframe_slice = keyframe_slice
        if mode == "learned":
            self.logits = nn.Parameter(torch.zeros(num_slices))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode in ("keyframe", "learned") and x.shape[2] != self.num_slices:
            raise ValueError(
                f"{self.mode} temporal pooling was built for {self.num_slices} temporal slices "
                f"(MODEL.HIERA_VIDEO.NUM_FRAMES / 2) but got {x.shape[2]}: feed clips of the configured length"
            )
        if self.mode == "mean":
            return x.mean(dim=2)
        if self.mode == "max":
            return x.amax(dim=2)
        if self.mode == "keyframe":
            return x[:, :, self.keyframe_slice]
        weights = self.logits.softmax(0).to(x.dtype)
        return torch.einsum("bcthw,t->bchw", x, weights)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, num_slices={self.num_slices}, keyframe_slice={self.keyframe_slice}"


class TemporallyPooledBackbone(Backbone):
    """A clip backbone whose stage outputs are pooled over time: clip in, 2-D feature maps out, so that
    Detectron2's FPN and heads work unchanged (used as the FPN's ``bottom_up``)."""

    def __init__(self, video_backbone: HieraBackbone, mode: str, num_frames: int, keyframe: int):
        super().__init__()
        if not video_backbone.is_video:
            raise ValueError(f"{video_backbone.trunk.name} is an image trunk; temporal pooling needs a video one")
        stride = video_backbone.temporal_stride
        if num_frames % stride:
            raise ValueError(f"clip length {num_frames} must be a multiple of the temporal stride {stride}")
        self.video = video_backbone
        self.pools = nn.ModuleDict(
            {f: TemporalPool(mode, num_frames // stride, keyframe // stride) for f in video_backbone._out_features}
        )
        self._out_features = video_backbone._out_features
        self._out_feature_channels = video_backbone._out_feature_channels
        self._out_feature_strides = video_backbone._out_feature_strides

    @property
    def size_divisibility(self) -> int:
        return self.video.size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return self.video.padding_constraints

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.video(clips)
        return {f: self.pools[f](x) for f, x in features.items()}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return self.video.output_shape()
