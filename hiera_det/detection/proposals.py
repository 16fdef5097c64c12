"""The RPN's proposals for a whole batch at once: ``HieraRPN``, the ``MODEL.PROPOSAL_GENERATOR.NAME`` of the
packaged configs (same parameters, checkpoints, losses and proposals as Detectron2's ``RPN``).

Detectron2's ``find_top_rpn_proposals`` takes the best ``pre_nms_topk`` boxes of each feature level, then
loops over the images: a check for non-finite values, clipping, removal of empty boxes and one
``batched_nms`` each, with a host round trip at every step. torchvision's NMS ends in a scan over the boxes
in score order that runs as one thread block: about 2.5 ms on an H100 for the 8,768 boxes of a 1024 image in
training, so 20 ms of a batch of 8 on an otherwise idle GPU, and 40 ms for the whole selection
(``benchmarks/detector_speed.py --parts training``).

``select_proposals`` does the same for the whole batch in one pass: boxes of different levels never suppress
each other in ``batched_nms``, so each (image, level) is a separate NMS problem of at most ``pre_nms_topk``
boxes, and ``segment_nms`` solves all of them at once (on CUDA one Triton program each, in parallel). One host
round trip remains, for the number of proposals each image keeps.

In training, ``label_and_sample_anchors`` has the same per-image loop (IoU against every anchor, matching,
sampling, three host round trips per image): ``match_boxes`` and ``subsample_batch`` do it for the batch, with
the same random draws, and ``label_and_sample_proposals`` does the same for the RoI heads' proposals
(``HieraROIHeads``). All of it gives Detectron2's results exactly (``tests/test_proposals.py``). The one
freedom left is the order of boxes of equal score: here topk's order (a stable sort); torchvision's NMS sorts
the scores again, and may take two tied, overlapping boxes the other way round.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator import RPN
from detectron2.structures import Boxes, Instances
from torchvision.ops import nms

from ..modeling.window_attention import exporting

try:
    import triton  # noqa: F401

    _HAS_TRITON = True
except ImportError:  # pragma: no cover - the CPU path does not need it
    _HAS_TRITON = False

# NMS segments longer than this use torchvision's NMS per segment: the kernel holds a segment in registers
MAX_KERNEL_SEGMENT = 4096


def segment_nms(boxes: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS inside each segment: ``boxes`` ``[S, P, 4]`` (x1, y1, x2, y2), each segment sorted by
    decreasing score; ``valid`` ``[S, P]`` marks the boxes that take part (the others are neither kept nor
    suppress anything). Returns ``keep`` ``[S, P]`` (bool): what ``torchvision.ops.nms`` keeps of each
    segment's valid boxes, taken in this order.

    On CUDA with Triton, one program per segment scans its boxes (``segment_nms_triton``), all segments in
    parallel, computing the IoU as torchvision does; elsewhere torchvision's NMS runs once per segment."""
    S, P, _ = boxes.shape
    boxes = boxes.float().contiguous()
    if boxes.is_cuda and _HAS_TRITON and 0 < P <= MAX_KERNEL_SEGMENT and S > 0:
        from .segment_nms_triton import segment_nms_kernel

        keep = torch.zeros(S, P, dtype=torch.uint8, device=boxes.device)
        block = max(triton.next_power_of_2(P), 16)
        segment_nms_kernel[(S,)](
            boxes, valid.to(torch.uint8).contiguous(), keep, P, _float32_threshold(threshold), BLOCK=block,
            num_warps=4 if block <= 2048 else 8, enable_fp_fusion=False,
        )  # fmt: skip
        return keep.bool()
    keep = torch.zeros(S, P, dtype=torch.bool, device=boxes.device)
    # nms sorts by score; a strictly decreasing ramp makes it take the slots in their given order
    order = torch.arange(P, 0, -1, dtype=torch.float32, device=boxes.device)
    for s in range(S):
        slots = valid[s].nonzero().squeeze(1)
        if len(slots):
            keep[s, slots[nms(boxes[s, slots], order[slots], threshold)]] = True
    return keep


def _float32_threshold(threshold: float) -> float:
    """The float32 ``t`` with ``iou > t`` exactly when ``iou > threshold`` for every float32 ``iou``:
    torchvision compares its float32 IoU with the threshold as a double, the kernel compares in float32."""
    t = np.float32(threshold)
    if float(t) > threshold:
        t = np.nextafter(t, np.float32(-np.inf))
    return float(t)


def select_proposals(
    proposals: list[torch.Tensor],
    logits: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> list[Instances]:
    """Detectron2's ``find_top_rpn_proposals`` for the whole batch at once: per level the ``pre_nms_topk``
    best boxes; drop non-finite ones (in training they raise ``FloatingPointError``, the run has diverged),
    clip to the image, drop boxes not wider and taller than ``min_box_size``; NMS per level; the
    ``post_nms_topk`` best of each image over all levels, by decreasing score.

    ``proposals``: per level ``[N, Hi*Wi*A, 4]``; ``logits``: per level ``[N, Hi*Wi*A]``."""
    num_images, levels = len(image_sizes), len(proposals)
    device = proposals[0].device
    counts = [min(level.shape[1], pre_nms_topk) for level in logits]
    width = max(counts)
    boxes = proposals[0].new_zeros(num_images, levels, width, 4)
    scores = logits[0].new_full((num_images, levels, width), -math.inf)
    present = torch.zeros(num_images, levels, width, dtype=torch.bool, device=device)
    for level, (boxes_l, logits_l, k) in enumerate(zip(proposals, logits, counts)):
        top_scores, top = logits_l.topk(k, dim=1)
        boxes[:, level, :k] = torch.gather(boxes_l, 1, top.unsqueeze(2).expand(-1, -1, 4))
        scores[:, level, :k] = top_scores
        present[:, level, :k] = True

    finite = torch.isfinite(boxes).all(dim=3) & torch.isfinite(scores)
    h, w = torch.tensor(image_sizes, device=device, dtype=boxes.dtype).unbind(1)
    h, w = h.view(-1, 1, 1), w.view(-1, 1, 1)
    zero = boxes.new_zeros(())
    x1, y1, x2, y2 = boxes.unbind(3)
    # Boxes.clip: clamp(min=0, max=size) per coordinate
    boxes = torch.stack([
        torch.minimum(torch.maximum(x1, zero), w), torch.minimum(torch.maximum(y1, zero), h),
        torch.minimum(torch.maximum(x2, zero), w), torch.minimum(torch.maximum(y2, zero), h),
    ], dim=3)  # fmt: skip
    x1, y1, x2, y2 = boxes.unbind(3)
    nonempty = (x2 - x1 > min_box_size) & (y2 - y1 > min_box_size)
    valid = present & finite & nonempty

    keep = segment_nms(boxes.view(-1, width, 4), valid.view(-1, width), nms_thresh).view_as(valid)
    # by decreasing score over all levels; among equal scores in level order, as batched_nms's one sort
    ranked = torch.where(keep, scores, scores.new_tensor(-math.inf)).view(num_images, -1)
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :post_nms_topk]
    kept = keep.view(num_images, -1).sum(dim=1).clamp(max=post_nms_topk)
    diverged = (present & ~finite).any().view(1)
    *kept, diverged = torch.cat([kept, diverged.long()]).tolist()  # the one host round trip
    if training and diverged:
        raise FloatingPointError(
            "Predicted boxes or scores contain Inf/NaN. Training has diverged: lower SOLVER.BASE_LR, lengthen "
            "SOLVER.WARMUP_ITERS or turn on SOLVER.CLIP_GRADIENTS, and check the inputs for NaN"
        )
    boxes = torch.gather(boxes.view(num_images, -1, 4), 1, order.unsqueeze(2).expand(-1, -1, 4))
    scores = torch.gather(scores.view(num_images, -1), 1, order)
    results = []
    for n, image_size in enumerate(image_sizes):
        result = Instances(image_size)
        result.proposal_boxes = Boxes(boxes[n, : kept[n]])
        result.objectness_logits = scores[n, : kept[n]]
        results.append(result)
    return results


# elements of the [images, gt boxes, boxes, 2] intersection tensor that match_boxes makes at once
MATCH_CHUNK_ELEMENTS = 1 << 27


def _pairwise_iou(gt: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Detectron2's ``pairwise_iou`` of ``[B, G, 4]`` gt boxes against ``[B, N, 4]`` boxes (or ``[1, N, 4]``,
    shared by every image), ``[B, G, N]``, operation for operation."""
    gt_area = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    box_area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    width_height = torch.min(gt[:, :, None, 2:], boxes[:, None, :, 2:]) - torch.max(
        gt[:, :, None, :2], boxes[:, None, :, :2]
    )
    inter = width_height.clamp_(min=0).prod(dim=3)
    return torch.where(
        inter > 0, inter / (gt_area[..., None] + box_area[:, None] - inter), inter.new_zeros(1)
    )


def match_boxes(
    boxes: torch.Tensor, gt_boxes: list[torch.Tensor], matcher
) -> tuple[torch.Tensor, torch.Tensor]:
    """Detectron2's ``Matcher`` applied to each image's IoU matrix, for the whole batch at once: the matched
    gt index and the match label of every box, ``[B, N]`` each (int64, int8). ``boxes``: ``[N, 4]`` shared by
    all images (anchors) or ``[B, N, 4]``. Images pad their gt boxes to the largest count with rows that never
    match; an image without gt boxes gets index 0 and label ``matcher.labels[0]``, as Detectron2 gives it."""
    boxes = boxes if boxes.dim() == 3 else boxes[None]
    num_images, num_boxes = len(gt_boxes), boxes.shape[1]
    counts = [len(g) for g in gt_boxes]
    width = max(counts, default=0)
    matches = torch.zeros(num_images, num_boxes, dtype=torch.int64, device=boxes.device)
    labels = torch.full((num_images, num_boxes), matcher.labels[0], dtype=torch.int8, device=boxes.device)
    if width == 0 or num_boxes == 0:
        return matches, labels
    gt = boxes.new_zeros(num_images, width, 4)
    real = torch.zeros(num_images, width, dtype=torch.bool, device=boxes.device)
    for n, image_gt in enumerate(gt_boxes):
        gt[n, : len(image_gt)] = image_gt
        real[n, : len(image_gt)] = True
    chunk = max(1, MATCH_CHUNK_ELEMENTS // (width * num_boxes * 2))
    for first in range(0, num_images, chunk):
        part = slice(first, first + chunk)
        part_boxes = boxes if len(boxes) == 1 else boxes[part]
        # IoUs are >= 0, so a padding row at -1 is never a box's best match
        iou = _pairwise_iou(gt[part], part_boxes).masked_fill_(~real[part, :, None], -1.0)
        values, matches[part] = iou.max(dim=1)
        part_labels = torch.ones_like(labels[part])
        for label, low, high in zip(matcher.labels, matcher.thresholds[:-1], matcher.thresholds[1:]):
            part_labels[(values >= low) & (values < high)] = label
        if matcher.allow_low_quality_matches:
            # every box with a gt box's highest IoU (ties included) is a match (Matcher.set_low_quality_matches_)
            best = iou == iou.max(dim=2, keepdim=True).values
            part_labels[(best & real[part, :, None]).any(dim=1)] = 1
        labels[part] = part_labels
    return matches, labels


def subsample_batch(
    labels: torch.Tensor, num_samples: int, positive_fraction: float, bg_label: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Detectron2's ``subsample_labels`` of every row of ``labels`` (``[B, N]``; -1 ignored, ``bg_label``
    negative, anything else positive): per image the indices of at most ``num_samples * positive_fraction``
    random positives and of negatives up to ``num_samples``. The random draws are Detectron2's, image by image
    (two ``randperm`` each), so a seeded run samples the same boxes. One host round trip for the batch."""
    positive, negative = (labels != -1) & (labels != bg_label), labels == bg_label
    counts = torch.stack([positive.sum(dim=1), negative.sum(dim=1)], dim=1).tolist()
    positives, negatives = positive.nonzero()[:, 1], negative.nonzero()[:, 1]
    samples = []
    pos_start = neg_start = 0
    for num_positive, num_negative in counts:
        num_pos = min(num_positive, int(num_samples * positive_fraction))
        num_neg = min(num_negative, num_samples - num_pos)
        pos = positives[pos_start : pos_start + num_positive]
        neg = negatives[neg_start : neg_start + num_negative]
        perm_pos = torch.randperm(num_positive, device=labels.device)[:num_pos]
        perm_neg = torch.randperm(num_negative, device=labels.device)[:num_neg]
        samples.append((pos[perm_pos], neg[perm_neg]))
        pos_start += num_positive
        neg_start += num_negative
    return samples


def label_and_sample_proposals(
    roi_heads, proposals: list[Instances], targets: list[Instances]
) -> list[Instances]:
    """``ROIHeads.label_and_sample_proposals`` of Detectron2 (gt boxes added to the proposals, matching,
    sampling, the gt fields of each sample, the fg/bg counts in the event storage) for the whole batch at once,
    with the same random draws."""
    from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
    from detectron2.utils.events import get_event_storage

    if roi_heads.proposal_append_gt:
        proposals = add_ground_truth_to_proposals(targets, proposals)
    num_classes = roi_heads.num_classes
    lengths = [len(p) for p in proposals]
    width = max(lengths, default=0)
    device = proposals[0].proposal_boxes.device
    boxes = torch.zeros(len(proposals), width, 4, device=device)
    for n, p in enumerate(proposals):
        boxes[n, : len(p)] = p.proposal_boxes.tensor
    matches, labels = match_boxes(boxes, [t.gt_boxes.tensor for t in targets], roi_heads.proposal_matcher)
    # ROIHeads._sample_proposals: the matched gt's class, the background class, or -1 (ignored)
    gt_classes = torch.full_like(matches, num_classes)
    for n, t in enumerate(targets):
        if len(t):
            gt_classes[n] = t.gt_classes[matches[n]]
    gt_classes[labels == 0] = num_classes
    gt_classes[labels == -1] = -1
    for n, length in enumerate(lengths):
        gt_classes[n, length:] = -1  # padding: never sampled
    samples = subsample_batch(
        gt_classes, roi_heads.batch_size_per_image, roi_heads.positive_fraction, num_classes
    )
    results, num_fg, num_bg = [], [], []
    for n, (image_proposals, image_targets, (fg, bg)) in enumerate(zip(proposals, targets, samples)):
        sampled = torch.cat([fg, bg])
        image_proposals = image_proposals[sampled]
        image_proposals.gt_classes = gt_classes[n, sampled]
        if len(image_targets):
            sampled_targets = matches[n, sampled]
            for name, value in image_targets.get_fields().items():
                if name.startswith("gt_") and not image_proposals.has(name):
                    image_proposals.set(name, value[sampled_targets])
        num_fg.append(len(fg))
        num_bg.append(len(bg))
        results.append(image_proposals)
    storage = get_event_storage()
    storage.put_scalar("roi_head/num_fg_samples", float(np.mean(num_fg)))
    storage.put_scalar("roi_head/num_bg_samples", float(np.mean(num_bg)))
    return results


@PROPOSAL_GENERATOR_REGISTRY.register()
class HieraRPN(RPN):
    """Detectron2's ``RPN`` (same parameters, checkpoints, losses and proposals) labelling the anchors
    (``match_boxes``, ``subsample_batch``) and selecting the proposals (``select_proposals``) of the whole
    batch at once. Traced or exported, it runs Detectron2's code."""

    @torch.no_grad()
    def label_and_sample_anchors(self, anchors, gt_instances):
        if torch.jit.is_scripting() or torch.jit.is_tracing() or exporting():
            return super().label_and_sample_anchors(anchors, gt_instances)
        anchors = Boxes.cat(anchors)
        gt_boxes = [x.gt_boxes.tensor for x in gt_instances]
        matches, labels = match_boxes(anchors.tensor, gt_boxes, self.anchor_matcher)
        if self.anchor_boundary_thresh >= 0:
            for n, instances in enumerate(gt_instances):
                labels[n, ~anchors.inside_box(instances.image_size, self.anchor_boundary_thresh)] = -1
        # RPN._subsample_labels: the sampled anchors keep their label, all others are ignored
        samples = subsample_batch(labels, self.batch_size_per_image, self.positive_fraction, 0)
        labels = torch.full_like(labels, -1)
        for n, (pos, neg) in enumerate(samples):
            labels[n, pos] = 1
            labels[n, neg] = 0
        matched = [
            boxes[index] if len(boxes) else torch.zeros_like(anchors.tensor)
            for boxes, index in zip(gt_boxes, matches)
        ]
        return list(labels), matched

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        if torch.jit.is_scripting() or torch.jit.is_tracing() or exporting():
            return super().predict_proposals(anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes)
        with torch.no_grad():  # the proposals are fixed inputs of the RoI heads, as in Detectron2
            return select_proposals(
                self._decode_proposals(anchors, pred_anchor_deltas),
                pred_objectness_logits,
                image_sizes,
                self.nms_thresh,
                self.pre_nms_topk[self.training],
                self.post_nms_topk[self.training],
                self.min_box_size,
                self.training,
            )
