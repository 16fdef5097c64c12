"""What can be exported, as tensor-in / tensor-out modules built from a Detectron2 config.

* ``backbone``: the image trunk + FPN of a detector config. In: ``images [B, 3, H, W]``, float pixels
  0-255 in ``INPUT.FORMAT`` channel order; out: the FPN levels (``p2`` ... ``p6``).
* ``mask_rcnn``: the whole detector through Detectron2's ``TracingAdapter``, as Detectron2's
  ``tools/deploy/export_model.py`` does it (``model.inference(..., do_postprocess=False)``). In: one
  ``image [3, H, W]`` as above; out: ``boxes [N, 4]`` (XYXY, input pixels), ``classes [N]``,
  ``masks [N, 1, M, M]`` (per-box mask probabilities, to be pasted into the image with
  ``detectron2.layers.paste_masks_in_image``), ``scores [N]``.
* ``video_trunk``: the video Hiera of a video config. In: ``clips [B, 3, T, H, W]``, 0-255 in
  ``INPUT.FORMAT`` order; out: ``stage1`` ... ``stage4`` ``[B, C, T/2, H/s, W/s]``.
* ``video_classifier``: a ``HieraVideoClassifier`` config's trunk and head. In: clips as above; out:
  ``logits [B, K]`` and ``probabilities [B, K]`` (softmax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from hiera_det.modeling import Hiera

TARGETS = ("backbone", "mask_rcnn", "video_trunk", "video_classifier")
IMAGE_TARGETS = ("backbone", "mask_rcnn")


class ExportRefused(ValueError):
    """A target / format / shape combination that cannot be exported; the message says why and what to do."""


@dataclass
class ExportTarget:
    """A module ready for export, its example input and how its outputs are named and judged."""

    name: str
    module: nn.Module
    example: torch.Tensor
    input_name: str
    output_names: list[str]
    size_multiple: int
    # the coarsest output's stride: a dynamic size must be traced where that output is at least 2 x 2
    max_stride: int = 32
    # dims of the input that may be dynamic: {"batch": 0, "height": 2, "width": 3}
    dynamic_dims: dict[str, int] = field(default_factory=dict)
    tracing_only: bool = False
    # (H, W) the trunk stores its position embedding for. Hiera.pos_embed_for resamples it only when the
    # input differs, a Python branch that torch.export turns into a guard on the input size.
    stored_size: tuple[int, int] | None = None


def _normalizer(mean, std, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1) + (1,) * dims
    return torch.tensor(mean, dtype=torch.float32).view(shape), torch.tensor(std, dtype=torch.float32).view(shape)


class BackboneWithFPN(nn.Module):
    """Pixel normalisation + a Detectron2 backbone (Hiera + FPN); returns the levels as a tuple."""

    def __init__(self, backbone: nn.Module, pixel_mean, pixel_std):
        super().__init__()
        self.backbone = backbone
        mean, std = _normalizer(pixel_mean, pixel_std, 2)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.output_names = list(backbone.output_shape())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone((images - self.pixel_mean) / self.pixel_std)
        return tuple(features[name] for name in self.output_names)


class VideoTrunk(nn.Module):
    """Pixel normalisation + the video Hiera; returns the stage maps as a tuple."""

    def __init__(self, trunk: Hiera, pixel_mean, pixel_std, with_logits: bool = False):
        super().__init__()
        self.trunk = trunk
        self.with_logits = with_logits
        mean, std = _normalizer(pixel_mean, pixel_std, 3)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.trunk((clips - self.pixel_mean) / self.pixel_std, return_logits=self.with_logits)
        if self.with_logits:
            logits = out["logits"]
            return logits, logits.float().softmax(dim=-1)
        return tuple(out[name] for name in self.trunk.out_features)


def _find_trunk(model: nn.Module) -> Hiera:
    for module in model.modules():
        if isinstance(module, Hiera):
            return module
    raise ExportRefused(f"{type(model).__name__} holds no Hiera trunk; export needs a hiera_det config")


def _check_size(what: str, sizes: tuple[int, ...], multiple: int) -> None:
    bad = [s for s in sizes if s <= 0 or s % multiple]
    if bad:
        fixed = "x".join(str(max(multiple, math.ceil(s / multiple) * multiple)) for s in sizes)
        raise ExportRefused(
            f"{what} size {'x'.join(map(str, sizes))} is not a multiple of {multiple}: Hiera's patch stride (4) "
            f"times its three 2x poolings needs every side divisible by {multiple}. Export at {fixed} and pad "
            f"(or resize) inputs to it"
        )


def build_target(target: str, cfg, model: nn.Module, size: tuple[int, int] | None, batch: int) -> ExportTarget:
    """The exportable module for ``target`` from a built Detectron2 ``model`` of ``cfg`` (weights loaded).

    ``size`` is the image / frame ``(H, W)``; ``batch`` the example batch (mask_rcnn takes one image).
    """
    built = _build_target(target, cfg, model, size, batch)
    built.stored_size = tuple(_find_trunk(model).input_size[-2:])
    return built


def _build_target(target: str, cfg, model: nn.Module, size, batch: int) -> ExportTarget:
    from . import samples

    if target not in TARGETS:
        raise ExportRefused(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
    model = model.eval()
    meta = cfg.MODEL.META_ARCHITECTURE
    trunk = _find_trunk(model)
    if target in IMAGE_TARGETS:
        if trunk.ndim != 2 or not hasattr(getattr(model, "backbone", None), "bottom_up"):
            raise ExportRefused(f"{target} needs an image detector config with a Hiera + FPN backbone "
                                f"(configs/hiera_fpn.yaml and variants); {meta} with {cfg.MODEL.BACKBONE.NAME} "
                                f"is not one")
        multiple = model.backbone.size_divisibility
        _check_size("export", size, multiple)
        fmt = cfg.INPUT.FORMAT
        if target == "backbone":
            module = BackboneWithFPN(model.backbone, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
            example = samples.photographs(batch, size, fmt)
            max_stride = max(spec.stride for spec in model.backbone.output_shape().values())
            return ExportTarget("backbone", module, example, "images", module.output_names, multiple,
                                max_stride, {"batch": 0, "height": 2, "width": 3})
        return _mask_rcnn_target(cfg, model, size, multiple)

    if trunk.ndim != 3:
        raise ExportRefused(f"{target} needs a video config (MODEL.HIERA.NAME *_16x224); {meta} has an image trunk")
    multiple = trunk.size_multiple[-1]
    _check_size("frame", size, multiple)
    frames = cfg.MODEL.HIERA_VIDEO.NUM_FRAMES
    example = samples.panning_clips(batch, frames, size, cfg.INPUT.FORMAT)
    dims = {"batch": 0, "height": 3, "width": 4}
    if target == "video_trunk":
        module = VideoTrunk(trunk, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
        return ExportTarget("video_trunk", module, example, "clips", trunk.out_features, multiple,
                            trunk.stage_strides[-1], dims)
    if meta != "HieraVideoClassifier" or trunk.head is None:
        raise ExportRefused(f"video_classifier needs a HieraVideoClassifier config (configs/video/*k400*.yaml); "
                            f"MODEL.META_ARCHITECTURE is {meta}. Export its trunk with --target video_trunk")
    module = VideoTrunk(trunk, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, with_logits=True)
    return ExportTarget("video_classifier", module, example, "clips", ["logits", "probabilities"], multiple,
                        trunk.stage_strides[-1], dims)


def _mask_rcnn_target(cfg, model, size, multiple) -> ExportTarget:
    from detectron2.export import TracingAdapter
    from detectron2.modeling import GeneralizedRCNN

    from . import samples

    if not isinstance(model, GeneralizedRCNN) or not cfg.MODEL.MASK_ON:
        raise ExportRefused(
            f"mask_rcnn needs a GeneralizedRCNN config with MODEL.MASK_ON (configs/hiera_fpn.yaml, "
            f"hiera_cascade_fpn.yaml); {cfg.MODEL.META_ARCHITECTURE} with MASK_ON={cfg.MODEL.MASK_ON} is not one. "
            f"Export its backbone with --target backbone"
        )
    image = samples.photographs(1, size, cfg.INPUT.FORMAT)[0]

    def inference(model, inputs):
        # Detectron2's export convention: no post-processing, so masks stay per-box (M x M probabilities)
        instances = model.inference(inputs, do_postprocess=False)[0]
        return [{"instances": instances}]

    adapter = TracingAdapter(model, [{"image": image}], inference)
    adapter.eval()
    with torch.no_grad():
        flat = adapter(image)
    names = [f"output{i}" for i in range(len(flat))]
    schema = adapter.outputs_schema.schemas[0].schemas[0]  # list -> dict("instances") -> Instances
    fields = {"pred_boxes": "boxes", "pred_classes": "classes", "pred_masks": "masks", "scores": "scores"}
    names[: len(schema.keys)] = [fields.get(k, k) for k in schema.keys]
    if len(flat) == len(schema.keys) + 1:  # Instances flatten their image_size last
        names[-1] = "image_size"
    return ExportTarget("mask_rcnn", adapter, image, "image", names, multiple, tracing_only=True)
