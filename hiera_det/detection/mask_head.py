"""``MaskRCNNGPUTargetsHead``: Detectron2's Mask R-CNN mask head whose loss cuts polygon mask targets on the
GPU (``hiera_det.detection.mask_targets``) instead of per instance with pycocotools on the CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
)
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from .mask_targets import pad_polygons, rasterize_polygons_in_boxes

POLYGON_FIELD = "gt_polygons"  # packed polygons (instances, parts, vertices, 2) the loader hands over


def mask_targets(instances: list[Instances], mask_size: int, device: torch.device) -> torch.Tensor:
    """Boolean targets (R, mask_size, mask_size) of the sampled foreground proposals of every image: from
    the packed polygons (``gt_polygons``) in one rasterisation, or, for data without them (bitmasks,
    ``MODEL.ROI_MASK_HEAD.GPU_TARGETS`` off), from ``gt_masks`` as Detectron2 cuts them."""
    instances = [i for i in instances if len(i)]
    if instances and all(i.has(POLYGON_FIELD) for i in instances):
        polygons = torch.cat(pad_polygons([i.get(POLYGON_FIELD) for i in instances])).to(device)
        boxes = torch.cat([i.proposal_boxes.tensor for i in instances]).to(device)
        return rasterize_polygons_in_boxes(polygons, boxes, mask_size)
    masks = [i.gt_masks.crop_and_resize(i.proposal_boxes.tensor, mask_size).to(device) for i in instances]
    return torch.cat(masks) > 0.5 if masks else torch.zeros(0, mask_size, mask_size, dtype=torch.bool,
                                                             device=device)


def mask_loss(pred_mask_logits: torch.Tensor, instances: list[Instances], vis_period: int = 0) -> torch.Tensor:
    """Detectron2's ``mask_rcnn_loss`` (binary cross-entropy on the logits of each proposal's class, and the
    same ``mask_rcnn/*`` metrics), with targets from :func:`mask_targets`."""
    side = pred_mask_logits.size(2)
    targets = mask_targets(instances, side, pred_mask_logits.device)
    if targets.shape[0] == 0:
        return pred_mask_logits.sum() * 0
    if pred_mask_logits.size(1) == 1:
        logits = pred_mask_logits[:, 0]
    else:
        classes = torch.cat([i.gt_classes for i in instances if len(i)]).to(torch.int64)
        logits = pred_mask_logits[torch.arange(len(classes), device=classes.device), classes]
    # the three metrics come back in one host transfer, not three
    wrong = (logits > 0.0) != targets
    positives = targets.sum()
    counts = torch.stack([wrong.sum(), positives, (wrong & ~targets).sum(), (wrong & targets).sum()]).tolist()
    total = targets.numel()
    storage = get_event_storage()
    storage.put_scalar("mask_rcnn/accuracy", 1 - counts[0] / max(total, 1.0))
    storage.put_scalar("mask_rcnn/false_positive", counts[2] / max(total - counts[1], 1.0))
    storage.put_scalar("mask_rcnn/false_negative", counts[3] / max(counts[1], 1.0))
    float_targets = targets.to(torch.float32)
    if vis_period > 0 and storage.iter % vis_period == 0:
        pictures = torch.cat([logits.sigmoid(), float_targets], dim=2)
        for index, picture in enumerate(pictures):
            storage.put_image(f"Left: mask prediction;   Right: mask GT ({index})", picture[None].repeat(3, 1, 1))
    return F.binary_cross_entropy_with_logits(logits, float_targets, reduction="mean")


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNGPUTargetsHead(MaskRCNNConvUpsampleHead):
    """``MaskRCNNConvUpsampleHead`` (same layers, weights and inference) whose training loss takes its
    targets from :func:`mask_targets`: polygons rasterised on the GPU when the loader hands them over as
    tensors (``MODEL.ROI_MASK_HEAD.GPU_TARGETS``)."""

    reads_polygon_tensors = True

    def forward(self, x, instances: list[Instances]):
        x = self.layers(x)
        if self.training:
            return {"loss_mask": mask_loss(x, instances, self.vis_period) * self.loss_weight}
        mask_rcnn_inference(x, instances)
        return instances
