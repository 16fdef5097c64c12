"""Mask R-CNN inference without the per-class loops: exact top-k batched NMS (``HieraROIHeads``, the
``MODEL.ROI_HEADS.NAME`` of the packaged configs) and masks pasted on the GPU by two small matrix products
(``HieraRCNN``, their ``MODEL.META_ARCHITECTURE``).

Detectron2's ``fast_rcnn_inference`` hands every (proposal, class) pair above the score threshold to
``batched_nms``: with 1000 proposals x 80 classes and a low threshold that is up to 80,000 boxes, which
torchvision handles by one NMS call (and host round trip) per class. ``paste_masks_in_image`` builds a
``N x H x W x 2`` sampling grid in float32 for ``grid_sample``. Both give the same answers as the code below,
which is what the tests (``tests/test_fast_inference.py``) and the GPU benchmark check.

In training, ``HieraROIHeads`` labels and samples the proposals of the whole batch at once
(``proposals.label_and_sample_proposals``), where Detectron2 loops over the images with host round trips.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, ROI_HEADS_REGISTRY, GeneralizedRCNN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import BitMasks, Boxes, Instances, ROIMasks
from torchvision.ops import nms

from .proposals import label_and_sample_proposals

logger = logging.getLogger(__name__)

# the first NMS round looks at this many of the best (proposal, class) pairs, or 8 x the detections kept
MIN_CANDIDATES = 1024
# bytes of pasted masks produced at once (the masks of a crowded 4K image would not fit in one go)
PASTE_CHUNK_BYTES = 1 << 30


def inference_autocast(cfg, device: str | torch.device | None = None):
    """The autocast context of ``TEST.PRECISION`` for inference on ``device`` (default ``MODEL.DEVICE``):
    none for ``float32`` or off CUDA."""
    device = torch.device(device if device is not None else cfg.MODEL.DEVICE)
    if cfg.TEST.PRECISION == "float32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, cfg.TEST.PRECISION))


def use_cuda_graphs(cfg, model) -> bool:
    """With ``TEST.CUDA_GRAPHS`` on and ``model`` on CUDA, compile ``model.backbone`` in place for inference
    replayed from CUDA graphs (``mode="reduce-overhead"``, static shapes; parameter names unchanged, so weights
    load before or after). Whether it did; off CUDA the setting is ignored, as ``TEST.PRECISION`` is."""
    if not cfg.TEST.CUDA_GRAPHS or next(model.parameters()).device.type != "cuda":
        return False
    model.backbone.compile(mode="reduce-overhead", dynamic=False)
    if not cfg.INPUT.LSJ.ENABLED:
        logger.warning(
            "TEST.CUDA_GRAPHS: the backbone compiles and captures again for each new input size "
            "(about 30 s each); pad the images to one square (INPUT.LSJ.ENABLED) for mixed sizes"
        )
    return True


def topk_batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> tuple[Instances, torch.Tensor]:
    """What ``detectron2``'s ``fast_rcnn_inference_single_image`` returns, computed from the best-scoring
    candidates only.

    ``boxes``: R x (K*4) or R x 4 per-class boxes; ``scores``: R x (K+1) class probabilities (background
    last). Returns the detections and, for each, the row of the proposal it came from.

    Why it is exact: greedy NMS keeps or drops a box by looking only at the boxes of its class that score
    higher, and every one of those is among the best ``k`` pairs if the box is. So NMS over the best ``k``
    pairs keeps exactly the boxes that full NMS keeps among them; once ``topk_per_image`` of them survive (or
    ``k`` covers every pair above the threshold), no pair outside can enter the top ``topk_per_image``.
    Otherwise ``k`` grows and the round repeats. The NMS runs once for all classes (boxes shifted apart per
    class, in float64 so that the shift loses no precision).
    """
    scores = scores[:, :-1]
    rows, classes = scores.shape
    boxes = boxes.reshape(rows, -1, 4)
    per_class = boxes.shape[1] > 1
    valid = torch.isfinite(boxes).all(dim=2).all(dim=1) & torch.isfinite(scores).all(dim=1)
    height, width = image_shape
    boxes = torch.where(valid[:, None, None], boxes, torch.zeros((), dtype=boxes.dtype, device=boxes.device))
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    flat = scores.masked_fill(~valid[:, None] | (scores <= score_thresh), -math.inf).flatten()
    total = flat.numel()
    wanted = topk_per_image if topk_per_image >= 0 else total
    k = min(total, max(MIN_CANDIDATES, 8 * wanted))
    shift = float(max(height, width) + 1)
    while True:
        top_scores, top = flat.topk(k) if k < total else flat.sort(descending=True)
        row, cls = top // classes, top % classes
        candidates = boxes[row, cls] if per_class else boxes[row, 0]
        shifted = candidates.double() + (cls.double() * shift)[:, None]
        keep = nms(shifted, top_scores.double(), nms_thresh)[:wanted]
        kept, above = torch.stack(
            [torch.isfinite(top_scores[keep]).sum(), torch.isfinite(flat).sum()]
        ).tolist()
        if kept >= wanted or k >= above or k >= total:
            break
        k = min(total, 4 * k)
    keep = keep[:kept]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(candidates[keep])
    result.scores = top_scores[keep]
    result.pred_classes = cls[keep]
    return result, row[keep]


def paste_masks_separable(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_shape: tuple[int, int],
    threshold: float = 0.5,
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """``detectron2.layers.paste_masks_in_image`` as two batched matrix products.

    ``grid_sample`` (bilinear, zero padding, ``align_corners=False``) with an axis-aligned grid is
    separable: pixel (y, x) of mask i is ``sum_a sum_b wy[i, y, a] * masks[i, a, b] * wx[i, x, b]`` with the
    triangle weights ``max(0, 1 - |u - a|)`` of the sampling position u in mask pixels. So the N x H x W
    result is ``Wy @ masks @ Wx^T``: no grid tensor, and the products run on tensor cores in ``dtype``
    (float16 moves a pixel across ``threshold`` only when it lies within about 1e-3 of it; float32 matches
    ``grid_sample`` to rounding). Returns bool masks (uint8 probabilities times 255 if ``threshold`` < 0)."""
    if masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"masks must be square (N x M x M), got {tuple(masks.shape)}")
    if isinstance(boxes, Boxes):
        boxes = boxes.tensor
    count, size = masks.shape[0], masks.shape[-1]
    height, width = int(image_shape[0]), int(image_shape[1])
    out_dtype = torch.bool if threshold >= 0 else torch.uint8
    result = torch.empty(count, height, width, dtype=out_dtype, device=masks.device)
    if count == 0:
        return result
    masks = masks.reshape(count, size, size)
    boxes = boxes.float()
    taps = torch.arange(size, device=masks.device, dtype=torch.float32)

    def weights(lo, hi, length):
        # sampling position of each pixel center in mask pixels, as grid_sample unnormalizes it
        centers = torch.arange(length, device=masks.device, dtype=torch.float32) + 0.5
        position = (centers[None, :] - lo[:, None]) / (hi - lo)[:, None] * size - 0.5
        return (1 - (position[:, :, None] - taps).abs()).clamp(min=0).to(dtype)

    per_chunk = max(1, PASTE_CHUNK_BYTES // (height * width * torch.finfo(dtype).bits // 8))
    for start in range(0, count, per_chunk):
        part = slice(start, start + per_chunk)
        x0, y0, x1, y1 = boxes[part].unbind(dim=1)
        rows = weights(y0, y1, height)  # n x H x M
        cols = weights(x0, x1, width)  # n x W x M
        pasted = torch.bmm(torch.bmm(rows, masks[part].to(dtype)), cols.transpose(1, 2))
        if threshold >= 0:
            result[part] = pasted >= threshold
        else:
            result[part] = (pasted.float() * 255).round().to(torch.uint8)
    return result


class GPUPastedMasks(ROIMasks):
    """Per-box M x M mask probabilities that ``detector_postprocess`` pastes with ``paste_masks_separable``
    on CUDA (Detectron2's ``paste_masks_in_image`` elsewhere: on the CPU it pastes box by box, which is
    already fast there)."""

    def __getitem__(self, item) -> "GPUPastedMasks":
        return GPUPastedMasks(super().__getitem__(item).tensor)

    def to(self, device) -> "GPUPastedMasks":
        return GPUPastedMasks(self.tensor.to(device))

    def to_bitmasks(self, boxes, height, width, threshold=0.5) -> BitMasks:
        if self.tensor.device.type != "cuda" or torch.jit.is_tracing() or torch.jit.is_scripting():
            return super().to_bitmasks(boxes, height, width, threshold)
        return BitMasks(paste_masks_separable(self.tensor, boxes, (height, width), threshold))


class TopKNMSOutputLayers(FastRCNNOutputLayers):
    """Detectron2's box predictor (same parameters, losses and training behaviour) whose inference runs
    ``topk_batched_nms`` instead of the per-class NMS loop. A traced export runs Detectron2's own inference:
    the trace would record ``topk_batched_nms``'s host-side counts as constants, fixing the number of
    detections of every image to the traced image's."""

    def inference(self, predictions, proposals: list[Instances]):
        if torch.jit.is_tracing():
            return super().inference(predictions, proposals)
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        image_shapes = [x.image_size for x in proposals]
        results = [
            topk_batched_nms(
                b, s, shape, self.test_score_thresh, self.test_nms_thresh, self.test_topk_per_image
            )
            for b, s, shape in zip(boxes, scores, image_shapes)
        ]
        return [r[0] for r in results], [r[1] for r in results]


@ROI_HEADS_REGISTRY.register()
class HieraROIHeads(StandardROIHeads):
    """``StandardROIHeads`` (same parameters, checkpoints, training and outputs: ``pred_masks`` stays Detectron2's
    N x 1 x M x M tensor) whose box inference runs ``TopKNMSOutputLayers``, and whose training labels and
    samples the proposals of the whole batch at once (``proposals.label_and_sample_proposals``: Detectron2's
    samples, with the same random draws)."""

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals, targets):
        return label_and_sample_proposals(self, proposals, targets)

    @classmethod
    def _init_box_head(cls, cfg, input_shape: dict[str, ShapeSpec]):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = TopKNMSOutputLayers(cfg, ret["box_head"].output_shape)
        return ret


@META_ARCH_REGISTRY.register()
class HieraRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` (same parameters, checkpoints, training, and outputs with ``do_postprocess=False``)
    whose post-processing pastes masks with ``GPUPastedMasks``."""

    @staticmethod
    def _postprocess(instances, batched_inputs, image_sizes):
        # the paste is the only change, so a traced export keeps Detectron2's own post-processing
        if not torch.jit.is_tracing():
            for results in instances:
                if results.has("pred_masks") and isinstance(results.pred_masks, torch.Tensor):
                    results.pred_masks = GPUPastedMasks(results.pred_masks[:, 0])
        return GeneralizedRCNN._postprocess(instances, batched_inputs, image_sizes)
