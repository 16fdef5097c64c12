"""Video Hiera as a Detectron2 backbone, and the temporal pooling that turns its clip features into the
2-D maps an ordinary FPN / RPN / ROI-head stack expects."""

from __future__ import annotations

import torch
import torch.nn as nn
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from hiera_det.modeling import Hiera

TEMPORAL_POOLS = ("mean", "max", "keyframe", "learned")


def freeze_trunk(trunk: Hiera, freeze_at: int) -> None:
    """0 trains everything; 1 freezes the patch embedding and position embeddings; k >= 2 also stages
    1..k-1 (Detectron2's FREEZE_AT convention, counted in Hiera stages)."""
    if freeze_at <= 0:
        return
    frozen = [trunk.patch_embed] + [p for n, p in trunk.named_parameters(recurse=False) if "pos_embed" in n]
    last_block = trunk.stage_ends[freeze_at - 2] if freeze_at >= 2 else -1
    frozen += list(trunk.blocks[: last_block + 1])
    for item in frozen:
        params = item.parameters() if isinstance(item, nn.Module) else [item]
        for p in params:
            p.requires_grad_(False)


class HieraVideoBackbone(Backbone):
    """A video Hiera trunk: ``[B, 3, T, H, W]`` -> ``{stageK: [B, C_K, T', H/s_K, W/s_K]}``.

    ``T' = T / 2`` (the official temporal patch stride; video Hiera never pools time). ``output_shape``
    reports the spatial strides 4/8/16/32.
    """

    def __init__(self, trunk: Hiera, out_features: list[str] | None = None, freeze_at: int = 0):
        super().__init__()
        if trunk.ndim != 3:
            raise ValueError(f"{trunk.name} is an image model; HieraVideoBackbone needs a *_16x224 video trunk")
        self.trunk = trunk
        self._out_features = list(out_features or trunk.out_features)
        unknown = sorted(set(self._out_features) - set(trunk.out_features))
        if unknown:
            raise ValueError(f"unknown out_features {unknown}; {trunk.name} has {trunk.out_features}")
        stage = {name: i for i, name in enumerate(trunk.out_features)}
        self._out_feature_channels = {f: trunk.stage_dims[stage[f]] for f in self._out_features}
        self._out_feature_strides = {f: trunk.stage_strides[stage[f]] for f in self._out_features}
        self.temporal_stride = trunk.patch_stride[0]
        freeze_trunk(trunk, freeze_at)

    @property
    def size_divisibility(self) -> int:
        return self.trunk.size_multiple[-1]

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self.size_divisibility, "square_size": 0}

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(clips)
        return {f: features[f] for f in self._out_features}


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

    def __init__(self, video_backbone: HieraVideoBackbone, mode: str, num_frames: int, keyframe: int):
        super().__init__()
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
