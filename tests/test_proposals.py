"""HieraRPN's batched proposal selection gives Detectron2's proposals: select_proposals against
find_top_rpn_proposals (clipping, empty and non-finite boxes, levels shorter than pre_nms_topk, training and
inference), segment_nms's Triton kernel against torchvision's NMS (Triton's CPU interpreter here, the GPU
under -m gpu), and a built detector's proposals against Detectron2's RPN on the same weights."""

import pytest
import torch
from detectron2.modeling.proposal_generator import proposal_utils
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from torchvision.ops import nms
from torchvision.ops.boxes import _batched_nms_vanilla

from hiera_det.detection.proposals import _float32_threshold, segment_nms, select_proposals
from triton_interpreter import interpreted

LEVELS = (300, 120, 40, 9)  # boxes per level; pre_nms_topk 100 cuts the first two


def _rpn_outputs(images, seed, integer=False, spread=1.0):
    """Per-level proposals [N, R, 4] (some outside the image, some empty or tiny) and logits [N, R]."""
    g = torch.Generator().manual_seed(seed)
    proposals, logits = [], []
    for count in LEVELS:
        xy = torch.rand(images, count, 2, generator=g) * 90 - 10
        wh = torch.rand(images, count, 2, generator=g) * 40 * spread
        wh[:, ::17] = 0.0  # empty boxes
        boxes = torch.cat([xy, xy + wh], dim=2)
        proposals.append(boxes.round() if integer else boxes)
        logits.append(torch.randn(images, count, generator=g))
    return proposals, logits


def _assert_same(want, got):
    assert len(want) == len(got)
    for w, o in zip(want, got):
        assert w.image_size == o.image_size
        assert torch.equal(w.proposal_boxes.tensor, o.proposal_boxes.tensor)
        assert torch.equal(w.objectness_logits, o.objectness_logits)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("min_box_size", [0.0, 3.0])
def test_selection_equals_detectron2(training, min_box_size):
    # integer coordinates: Detectron2's batched_nms shifts each level's boxes by an offset (its coordinate
    # trick), which rounds fractional coordinates; integers stay exact, so the IoUs are the same
    sizes = [(70, 64), (50, 80), (64, 64)]
    for seed in range(3):
        proposals, logits = _rpn_outputs(len(sizes), seed, integer=True)
        args = (sizes, 0.7, 100, 60, min_box_size, training)
        want = find_top_rpn_proposals([p.clone() for p in proposals], logits, *args)
        got = select_proposals(proposals, logits, *args)
        assert all(len(w) == 60 for w in want)  # post_nms_topk reached: the cut is checked too
        _assert_same(want, got)


def test_selection_equals_per_level_nms_with_fractional_coordinates(monkeypatch):
    # fractional coordinates against batched_nms's per-level path (its choice for large inputs), which
    # computes the IoUs on the boxes as they are
    monkeypatch.setattr(
        proposal_utils, "batched_nms", lambda b, s, i, t: _batched_nms_vanilla(b.float(), s, i, t)
    )
    sizes = [(70, 64), (50, 80)]
    for seed, (topk, post) in enumerate([(100, 60), (1000, 1000), (5, 3)]):
        proposals, logits = _rpn_outputs(len(sizes), seed, spread=2.0)
        args = (sizes, 0.5, topk, post, 0.0, False)
        _assert_same(find_top_rpn_proposals([p.clone() for p in proposals], logits, *args),
                     select_proposals(proposals, logits, *args))  # fmt: skip


def test_non_finite_proposals_are_dropped_at_inference_and_stop_training():
    sizes = [(70, 64), (50, 80)]
    proposals, logits = _rpn_outputs(2, 4, integer=True)
    proposals[0][1, 5, 2] = float("nan")
    logits[2][0, 3] = float("inf")
    logits[1][1, 7] = float("-inf")
    args = (sizes, 0.7, 100, 1000, 0.0)
    _assert_same(find_top_rpn_proposals([p.clone() for p in proposals], logits, *args, False),
                 select_proposals(proposals, logits, *args, False))  # fmt: skip
    with pytest.raises(FloatingPointError, match="diverged"):
        select_proposals(proposals, logits, *args, True)


def test_float32_threshold_compares_as_torchvision_compares_with_a_double():
    for threshold in (0.7, 0.5, 0.3, 0.1, 0.9, 0.6):
        t = _float32_threshold(threshold)
        near = torch.tensor(t, dtype=torch.float32)
        for iou in (near, torch.nextafter(near, torch.tensor(1.0)), torch.nextafter(near, torch.tensor(0.0))):
            assert bool(iou > t) == (float(iou) > threshold)


def test_segment_nms_keeps_what_torchvision_keeps_per_segment():
    g = torch.Generator().manual_seed(0)
    boxes, valid = _segments(g, segments=6, length=50)
    keep = segment_nms(boxes, valid, 0.5)
    for s in range(6):
        slots = valid[s].nonzero().squeeze(1)
        ramp = torch.arange(len(slots), 0, -1, dtype=torch.float32)
        assert torch.equal(keep[s].nonzero().squeeze(1), slots[nms(boxes[s, slots], ramp, 0.5)].sort().values)
    assert not keep[~valid].any()


def _segments(g, segments, length):
    xy = torch.rand(segments, length, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + torch.rand(segments, length, 2, generator=g) * 30 + 1], dim=2)
    valid = torch.rand(segments, length, generator=g) > 0.15
    return boxes, valid


def test_the_kernel_keeps_what_torchvision_keeps_in_tritons_cpu_interpreter():
    script = """
import torch
from hiera_det.detection import segment_nms_triton, proposals
from test_proposals import _segments
g = torch.Generator().manual_seed(1)
boxes, valid = _segments(g, segments=5, length=37)  # a length that is not a power of two
keep = torch.zeros(5, 37, dtype=torch.uint8)
for threshold in (0.5, 0.7, 0.3):
    keep.zero_()
    segment_nms_triton.segment_nms_kernel[(5,)](
        boxes, valid.to(torch.uint8), keep, 37, proposals._float32_threshold(threshold), BLOCK=64)
    assert torch.equal(keep.bool(), proposals.segment_nms(boxes, valid, threshold)), threshold
print(float(keep.sum()))
"""
    assert interpreted(script) > 0


def test_hiera_rpn_gives_detectron2s_proposals_on_the_same_weights(monkeypatch):
    from detectron2.modeling import build_model

    from benchmarks.peers import _ours_cfg

    monkeypatch.setattr(
        proposal_utils, "batched_nms", lambda b, s, i, t: _batched_nms_vanilla(b.float(), s, i, t)
    )
    cfg = _ours_cfg("mask_unit", (64, 64), True, torch.device("cpu"))
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "HieraRPN"  # the packaged configs' default
    torch.manual_seed(0)
    ours = build_model(cfg)
    cfg.defrost()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
    detectron2 = build_model(cfg)
    detectron2.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8) for _ in range(2)]
    inputs = [{"image": image, "height": 64, "width": 64} for image in images]
    ours.eval(), detectron2.eval()
    with torch.no_grad():
        batch = ours.preprocess_image(inputs)
        features = ours.backbone(batch.tensor)
        got, _ = ours.proposal_generator(batch, features)
        want, _ = detectron2.proposal_generator(batch, features)
    assert len(got[0]) > 0
    _assert_same(want, got)
    ours.train(), detectron2.train()  # training's pre_nms_topk and post_nms_topk
    with torch.no_grad():
        _assert_same(_proposals(detectron2, batch, features), _proposals(ours, batch, features))


def _proposals(model, batch, features):
    """What ``model``'s RPN proposes for ``features``, without the losses (which need targets)."""
    rpn = model.proposal_generator
    feats = [features[f] for f in rpn.in_features]
    anchors = rpn.anchor_generator(feats)
    logits, deltas = rpn.rpn_head(feats)
    logits = [s.permute(0, 2, 3, 1).flatten(1) for s in logits]
    deltas = [d.view(d.shape[0], -1, rpn.anchor_generator.box_dim, d.shape[-2], d.shape[-1])
              .permute(0, 3, 4, 1, 2).flatten(1, -2) for d in deltas]  # fmt: skip
    return rpn.predict_proposals(anchors, logits, deltas, batch.image_sizes)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
def test_the_kernel_keeps_what_torchvision_keeps_on_the_gpu():
    """Training's shapes (8 images x 5 levels x 2,000 boxes) and inference's, against torchvision's CPU NMS."""
    g = torch.Generator().manual_seed(0)
    for segments, length, threshold in ((40, 2000, 0.7), (5, 1000, 0.7), (7, 300, 0.5), (3, 4000, 0.7)):
        boxes, valid = _segments(g, segments, length)
        boxes = boxes * 8  # 1024-pixel images, as densely covered as the RPN's boxes
        got = segment_nms(boxes.cuda(), valid.cuda(), threshold).cpu()
        assert torch.equal(got, segment_nms(boxes, valid, threshold)), (segments, length)


def _gt_instances(sizes, seed, counts):
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    out = []
    for (h, w), count in zip(sizes, counts):
        xy = torch.rand(count, 2, generator=g) * torch.tensor([w, h]) * 0.8
        wh = torch.rand(count, 2, generator=g) * 40 + 2
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        out.append(inst)
    return out


@pytest.mark.parametrize("boundary", [-1, 0])
def test_anchor_labels_and_samples_equal_detectron2(boundary, monkeypatch):
    from detectron2.modeling import build_model

    from benchmarks.peers import _ours_cfg
    from hiera_det.detection import proposals

    cfg = _ours_cfg("mask_unit", (64, 64), True, torch.device("cpu"))
    cfg.defrost()
    cfg.MODEL.RPN.BOUNDARY_THRESH = boundary
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64  # fewer than the positives of the crowded image: sampling decides
    rpn = build_model(cfg).proposal_generator
    assert type(rpn).__name__ == "HieraRPN"
    sizes = [(64, 64), (48, 64), (64, 40), (64, 64)]
    features = [torch.zeros(1, 1, 64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]
    anchors = rpn.anchor_generator(features)
    # an image without gt boxes, one crowded, and one whose only box lies outside every anchor's reach
    gt = _gt_instances(sizes, 0, [3, 0, 40, 1])
    gt[3].gt_boxes.tensor[0] = torch.tensor([500.0, 500.0, 510.0, 510.0])
    for chunk in (proposals.MATCH_CHUNK_ELEMENTS, 1):  # all images in one go, and one image at a time
        monkeypatch.setattr(proposals, "MATCH_CHUNK_ELEMENTS", chunk)
        torch.manual_seed(0)
        want_labels, want_boxes = RPN_label_and_sample_anchors(rpn, anchors, gt)
        torch.manual_seed(0)
        got_labels, got_boxes = rpn.label_and_sample_anchors(anchors, gt)
        for a, b in zip(want_labels, got_labels):
            assert a.dtype == b.dtype and torch.equal(a, b)
        for a, b in zip(want_boxes, got_boxes):
            assert torch.equal(a, b)
    assert 0 < int((got_labels[2] == 1).sum()) <= 32 and int((got_labels[1] == 1).sum()) == 0
    assert (
        int((got_labels[3] == 1).sum()) > 0
    )  # Detectron2's low-quality matches: the anchors of IoU 0 with the far box


def RPN_label_and_sample_anchors(rpn, anchors, gt):
    from detectron2.modeling.proposal_generator import RPN

    return RPN.label_and_sample_anchors(rpn, anchors, gt)


def test_images_without_any_usable_box_get_no_proposals_and_bf16_logits_work():
    sizes = [(70, 64), (50, 80)]
    proposals, logits = _rpn_outputs(2, 5, integer=True)
    for level in proposals:  # every box of image 1 lies left of the image: clipped to zero width
        level[1, :, 0::2] = -level[1, :, 0::2].abs() - 1
    # distinct bf16 logits, as the RPN head gives them under autocast (ties would be taken in topk's order)
    logits = [torch.randperm(level.numel(), generator=torch.Generator().manual_seed(i)).view_as(level).bfloat16() / 8
              for i, level in enumerate(logits)]  # fmt: skip
    args = (sizes, 0.7, 100, 60, 0.0, True)
    # torchvision's CPU NMS wants the boxes' dtype (on CUDA its autocast wrapper casts): the same values in fp32
    want = find_top_rpn_proposals([p.clone() for p in proposals], [l.float() for l in logits], *args)
    got = select_proposals(proposals, logits, *args)
    assert len(got[1]) == len(want[1]) == 0 and len(got[0]) == 60
    assert got[0].objectness_logits.dtype == torch.bfloat16
    for result in got:
        result.objectness_logits = result.objectness_logits.float()
    _assert_same(want, got)


def test_roi_heads_label_and_sample_proposals_equal_detectron2(monkeypatch):
    from detectron2.modeling import build_model
    from detectron2.modeling.roi_heads import StandardROIHeads
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    from benchmarks.peers import _ours_cfg
    from hiera_det.detection import proposals as proposals_module

    cfg = _ours_cfg("mask_unit", (64, 64), True, torch.device("cpu"))
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32  # fewer than the candidates: sampling decides
    heads = build_model(cfg).roi_heads
    assert type(heads).__name__ == "HieraROIHeads"
    sizes = [(64, 64), (48, 64), (64, 40)]
    targets = _gt_instances(sizes, 1, [4, 0, 12])
    g = torch.Generator().manual_seed(2)
    for t in targets:
        t.gt_classes = torch.randint(0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, (len(t),), generator=g)
        t.gt_masks = BitMasks(torch.rand(len(t), *t.image_size, generator=g) > 0.5)
    proposals = []
    for (h, w), count in zip(sizes, [50, 30, 0]):  # the last image has only its gt boxes as proposals
        xy = torch.rand(count, 2, generator=g) * torch.tensor([w, h]) * 0.8
        p = Instances((h, w))
        p.proposal_boxes = Boxes(torch.cat([xy, xy + torch.rand(count, 2, generator=g) * 30 + 1], dim=1))
        p.objectness_logits = torch.randn(count, generator=g)
        proposals.append(p)
    for chunk in (proposals_module.MATCH_CHUNK_ELEMENTS, 1):
        monkeypatch.setattr(proposals_module, "MATCH_CHUNK_ELEMENTS", chunk)
        with EventStorage() as storage:
            torch.manual_seed(0)
            want = StandardROIHeads.label_and_sample_proposals(heads, proposals, targets)
            want_counts = {
                k: storage.latest()[k][0] for k in ("roi_head/num_fg_samples", "roi_head/num_bg_samples")
            }
            torch.manual_seed(0)
            got = heads.label_and_sample_proposals(proposals, targets)
            got_counts = {k: storage.latest()[k][0] for k in want_counts}
        assert want_counts == got_counts
        for w, o in zip(want, got):
            assert set(w.get_fields()) == set(o.get_fields())
            for name, value in w.get_fields().items():
                other = o.get(name)
                value, other = (value.tensor, other.tensor) if hasattr(value, "tensor") else (value, other)
                assert torch.equal(value, other), name
    assert (
        len(got[1]) > 0 and (got[1].gt_classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES).all()
    )  # no gt: background
    assert (got[0].gt_classes < cfg.MODEL.ROI_HEADS.NUM_CLASSES).any()
