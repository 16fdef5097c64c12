"""``HieraActionDetector``: AVA-style spatiotemporal action detection with a video Hiera trunk.

A clip centred on a keyframe goes through the trunk; one stage's features are averaged over time, each person
box (given: jittered ground truth in training, proposals at test time) is pooled from them with RoIAlign,
max-pooled over its cells, and a dropout + linear layer scores every action independently (sigmoid, trained
with binary cross-entropy: a person does several actions at once). This is the PySlowFast / MViTv2 AVA head.

Which stage. ``MODEL.ACTION_HEAD.IN_FEATURE`` picks stage4 (stride 32, the default) or stage3 (stride 16).
The default follows MViTv2, whose AVA head pools the last stage: it is the only one that has passed through
every block, i.e. what Kinetics pre-training shaped into action features, and it has the most channels
(768 for Hiera-B). Its cost is resolution: a 256 x 455 test frame gives an 8 x 14 map, so a small person
covers one or two cells. Stage3 (16 x 28 there) suits small frames or small people and skips the last
stage's blocks' contribution; PySlowFast's ResNets make the same trade by removing res5's stride (stride 16).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, ImageList, Instances
from torchvision.ops import roi_align

from ..config import validate_ava_config
from ..detection import HieraBackbone, build_trunk


@META_ARCH_REGISTRY.register()
class HieraActionDetector(nn.Module):
    """Inputs (``hiera_det.data.ava_mapper.AvaClipMapper``): ``"image"`` uint8 ``[3, T, H, W]``, ``"boxes"``
    ``[N, 4]`` in the clip's pixels, ``"box_scores"`` ``[N]``, ``"height"`` / ``"width"`` of the source frames
    and, in training, ``"labels"`` ``[N, num_classes]`` multi-hot.

    Training returns ``{"loss_action"}``; inference one ``{"instances": Instances}`` per input, boxes in source
    pixels with ``scores`` (the person score) and ``action_scores`` ``[N, num_classes]`` (sigmoid; column k is
    action id k + 1).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: HieraVideoBackbone,
        in_feature: str,
        num_classes: int,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        pooler_resolution: int = 7,
        sampling_ratio: int = 0,
        aligned: bool = True,
        spatial_pool: str = "max",
        dropout: float = 0.5,
    ):
        super().__init__()
        self.backbone = backbone
        self.in_feature = in_feature
        self.stride = backbone.output_shape()[in_feature].stride
        channels = backbone.output_shape()[in_feature].channels
        self.num_frames = backbone.trunk.input_size[0]
        self.pooler_resolution = pooler_resolution
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.spatial_pool = spatial_pool
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        self.num_classes = num_classes
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        validate_ava_config(cfg)
        h = cfg.MODEL.ACTION_HEAD
        trunk = build_trunk(cfg)
        # blocks after the pooled stage and the classifier's final norm would get no gradient (DDP refuses that)
        del trunk.blocks[trunk.stage_ends[int(h.IN_FEATURE[-1]) - 1] + 1 :]
        trunk.norm = nn.Identity()
        backbone = HieraBackbone(trunk, out_features=[h.IN_FEATURE], freeze_at=cfg.MODEL.HIERA.FREEZE_AT)
        return {
            "backbone": backbone,
            "in_feature": h.IN_FEATURE,
            "num_classes": h.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "pooler_resolution": h.POOLER_RESOLUTION,
            "sampling_ratio": h.POOLER_SAMPLING_RATIO,
            "aligned": h.POOLER_ALIGNED,
            "spatial_pool": h.SPATIAL_POOL,
            "dropout": h.DROPOUT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise the clips and pad them to one size divisible by the trunk's 32-pixel mask units."""
        clips = []
        for i, x in enumerate(batched_inputs):
            clip = x["image"]
            if clip.dim() != 4 or clip.shape[0] != 3 or clip.shape[1] != self.num_frames:
                raise ValueError(
                    f'batched_inputs[{i}]["image"] must be a clip [3, {self.num_frames}, H, W] '
                    f"(MODEL.HIERA_VIDEO.NUM_FRAMES), got {tuple(clip.shape)}; use hiera_det.data.ava_mapper.AvaClipMapper"
                )
            clips.append((clip.to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(clips, self.backbone.size_divisibility)

    def action_logits(self, clips: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """``[sum N_i, num_classes]`` logits of the boxes (clip pixels) of each clip in ``clips`` ``[B, 3, T, H, W]``."""
        features = self.backbone(clips)[self.in_feature].mean(dim=2)  # [B, C, H', W'], time averaged
        rois = roi_align(features, [b.to(features.dtype) for b in boxes], self.pooler_resolution,
                         spatial_scale=1.0 / self.stride, sampling_ratio=self.sampling_ratio, aligned=self.aligned)
        pooled = rois.amax(dim=(2, 3)) if self.spatial_pool == "max" else rois.mean(dim=(2, 3))
        return self.classifier(self.dropout(pooled))

    def forward(self, batched_inputs: list[dict]):
        images = self.preprocess(batched_inputs)
        boxes = [x["boxes"].to(self.device).reshape(-1, 4) for x in batched_inputs]
        logits = self.action_logits(images.tensor, boxes)
        if self.training:
            labels = torch.cat([x["labels"].to(self.device) for x in batched_inputs]).float()
            if labels.shape != logits.shape:
                raise ValueError(
                    f"labels {tuple(labels.shape)} do not match {len(logits)} boxes x MODEL.ACTION_HEAD.NUM_CLASSES="
                    f"{self.num_classes}"
                )
            if not len(labels):  # no person in the batch: a zero loss that still reaches every parameter
                return {"loss_action": logits.sum() * 0.0 + sum(p.sum() * 0.0 for p in self.classifier.parameters())}
            return {"loss_action": F.binary_cross_entropy_with_logits(logits.float(), labels)}
        scores = logits.float().sigmoid().split([len(b) for b in boxes])
        results = []
        for x, image_size, box, action_scores in zip(batched_inputs, images.image_sizes, boxes, scores):
            height, width = x.get("height", image_size[0]), x.get("width", image_size[1])
            scale = box.new_tensor([width / image_size[1], height / image_size[0]] * 2)
            instances = Instances((height, width))
            instances.pred_boxes = Boxes(box.float() * scale)
            instances.scores = x.get("box_scores", torch.ones(len(box))).to(box.device).float()
            instances.action_scores = action_scores
            results.append({"instances": instances})
        return results
