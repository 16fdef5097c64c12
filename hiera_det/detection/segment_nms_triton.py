"""The Triton kernel of ``proposals.segment_nms`` (imported only when it launches, so that importing the
detector never imports Triton): greedy NMS inside each segment of score-sorted boxes, one program per
segment, all segments at once."""

import triton
import triton.language as tl


@triton.jit
def segment_nms_kernel(boxes_ptr, valid_ptr, keep_ptr, P, threshold, BLOCK: tl.constexpr):
    # Program `seg` owns boxes [seg * P, (seg + 1) * P), sorted by decreasing score. Their coordinates,
    # areas and "removed" flags live in registers; the scan walks the boxes in order and a box still not
    # removed when reached is kept and removes the later boxes it overlaps by more than `threshold`.
    seg = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    inside = offs < P
    at = boxes_ptr + (seg * P + offs) * 4
    x1 = tl.load(at, mask=inside, other=0.0)
    y1 = tl.load(at + 1, mask=inside, other=0.0)
    x2 = tl.load(at + 2, mask=inside, other=0.0)
    y2 = tl.load(at + 3, mask=inside, other=0.0)
    area = (x2 - x1) * (y2 - y1)
    removed = tl.load(valid_ptr + seg * P + offs, mask=inside, other=0) == 0
    for i in range(P):
        if tl.sum(tl.where((offs == i) & removed, 1, 0)) == 0:
            box = boxes_ptr + (seg * P + i) * 4
            bx1 = tl.load(box)
            by1 = tl.load(box + 1)
            bx2 = tl.load(box + 2)
            by2 = tl.load(box + 3)
            # torchvision's IoU, operation for operation (the launch turns off FMA contraction)
            width = tl.maximum(tl.minimum(bx2, x2) - tl.maximum(bx1, x1), 0.0)
            height = tl.maximum(tl.minimum(by2, y2) - tl.maximum(by1, y1), 0.0)
            inter = width * height
            iou = tl.math.div_rn(inter, (bx2 - bx1) * (by2 - by1) + area - inter)
            removed = removed | ((iou > threshold) & (offs > i))
            tl.store(keep_ptr + seg * P + i, 1)
