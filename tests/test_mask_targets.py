"""Polygon mask targets cut on the GPU (``hiera_det.detection.mask_targets``, ``MaskRCNNGPUTargetsHead``)
against Detectron2's CPU ``crop_and_resize`` (pycocotools), and a training step that uses them."""

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.structures import Boxes, Instances, PolygonMasks  # noqa: E402
from detectron2.structures.masks import rasterize_polygons_within_box  # noqa: E402

from hiera_det.detection.mask_head import mask_loss  # noqa: E402
from hiera_det.detection.mask_targets import (  # noqa: E402
    pack_polygons,
    pad_polygons,
    rasterize_polygons_in_boxes,
)

SIDE = 28


def _polygon(rng, concave: bool) -> np.ndarray:
    """A star-shaped polygon (convex when all radii are equal) as a flat [x0, y0, x1, y1, ...] array."""
    n = int(rng.integers(3, 40))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(0.5, 60) * (rng.uniform(0.3, 1.0, n) if concave else np.ones(n))
    centre = rng.uniform(20, 200, 2)
    return np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1).reshape(-1)


def _random_case(rng, count: int):
    instances, boxes = [], []
    for _ in range(count):
        instances.append([_polygon(rng, rng.random() < 0.6) for _ in range(int(rng.integers(1, 4)))])
        x0, y0 = rng.uniform(0, 200, 2)
        kind = rng.random()
        if kind < 0.1:  # tiny: under a pixel
            w, h = rng.uniform(0, 1, 2)
        elif kind < 0.15:  # degenerate: zero width
            w, h = 0.0, rng.uniform(0, 30)
        else:
            w, h = rng.uniform(1, 120, 2)
        boxes.append([x0, y0, x0 + w, y0 + h])
    return instances, boxes


def test_targets_match_detectron2_cpu_crop_and_resize_on_random_polygons():
    rng = np.random.default_rng(0)
    instances, boxes = _random_case(rng, 600)
    reference = torch.stack([rasterize_polygons_within_box(p, np.array(b), SIDE) for p, b in zip(instances, boxes)])
    ours = rasterize_polygons_in_boxes(pack_polygons(instances), torch.tensor(boxes, dtype=torch.float32), SIDE)
    assert ours.shape == reference.shape and ours.dtype == torch.bool

    differing = (ours != reference).flatten(1).sum(1)
    inter = (ours & reference).flatten(1).sum(1).float()
    union = (ours | reference).flatten(1).sum(1).float()
    area = reference.flatten(1).sum(1)
    sized = area >= 20  # IoU says little about masks of a few pixels; their differing pixels are bounded below
    iou = inter[sized] / union[sized]
    exact = (differing == 0).float().mean().item()
    pixels = 1 - differing.sum().item() / ours.numel()
    # measured: one mask of 600 off by one pixel (float rounding at a tie); 0.998 exact on a real COCO-like batch
    assert exact >= 0.99, exact
    assert pixels >= 0.99999, pixels
    assert iou.mean().item() >= 0.999 and iou.min().item() >= 0.99, (iou.mean().item(), iou.min().item())
    assert differing.max().item() <= 2


def test_even_odd_within_a_part_and_union_across_parts():
    # a square part, and a second part overlapping its right half: the overlap stays inside (union, not xor)
    square = [np.array([0, 0, 28, 0, 28, 28, 0, 28], dtype=float)]
    overlapping = square + [np.array([14, 0, 42, 0, 42, 28, 14, 28], dtype=float)]
    # one self-intersecting part (a bow tie) whose crossing regions are inside by the even-odd rule
    bow_tie = [np.array([1.3, 2.1, 26.2, 25.7, 26.2, 2.1, 1.3, 25.7], dtype=float)]
    packed = pack_polygons([square, overlapping, bow_tie])
    boxes = torch.tensor([[0, 0, 28, 28], [0, 0, 28, 28], [0, 0, 28, 28]], dtype=torch.float32)
    ours = rasterize_polygons_in_boxes(packed, boxes, SIDE)
    assert ours[0].all() and ours[1].all()
    for index, polygons in enumerate([square, overlapping, bow_tie]):
        reference = rasterize_polygons_within_box(polygons, boxes[index].numpy().astype(float), SIDE)
        assert torch.equal(ours[index], reference), index
    assert 200 < ours[2].sum() < 400 and ours[2][14, 3] and not ours[2][3, 14]  # left and right triangles


def test_padding_changes_nothing_and_chunks_agree():
    rng = np.random.default_rng(1)
    instances, boxes = _random_case(rng, 40)
    boxes = torch.tensor(boxes, dtype=torch.float32)
    packed = pack_polygons(instances)
    wider = pad_polygons([packed, torch.zeros(1, packed.shape[1] + 7, 5)])[0]
    assert wider.shape[1:] == (packed.shape[1] + 7, 5)
    expected = rasterize_polygons_in_boxes(packed, boxes, SIDE)
    assert torch.equal(rasterize_polygons_in_boxes(wider, boxes, SIDE), expected)
    import hiera_det.detection.mask_targets as module

    chunk, module._CHUNK_ELEMENTS = module._CHUNK_ELEMENTS, 1  # one RoI per chunk
    try:
        assert torch.equal(rasterize_polygons_in_boxes(packed, boxes, SIDE), expected)
    finally:
        module._CHUNK_ELEMENTS = chunk
    with pytest.raises(ValueError, match=r"polygons must be \(R, edges, 5\)"):
        rasterize_polygons_in_boxes(packed, boxes[:3], SIDE)


def test_loss_matches_detectron2_mask_rcnn_loss():
    from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
    from detectron2.utils.events import EventStorage

    rng = np.random.default_rng(2)
    per_image = []
    for count in (5, 0, 7):
        polygons, boxes = _random_case(rng, count)
        instances = Instances((256, 256), proposal_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
                              gt_classes=torch.as_tensor(rng.integers(0, 3, count)))
        instances.gt_masks = PolygonMasks(polygons)
        per_image.append(instances)
    with_tensors = []
    for instances in per_image:
        copy = Instances(instances.image_size, **instances.get_fields())
        copy.remove("gt_masks")
        copy.gt_polygons = pack_polygons(instances.gt_masks.polygons)
        with_tensors.append(copy)
    logits = torch.randn(12, 3, SIDE, SIDE)
    with EventStorage():
        expected = mask_rcnn_loss(logits, per_image)
        ours = mask_loss(logits, with_tensors)
        fallback = mask_loss(logits, per_image)  # no gt_polygons: Detectron2's targets
    assert torch.allclose(fallback, expected)
    assert abs(ours.item() - expected.item()) < 0.01 * expected.item()
    with EventStorage():
        assert mask_loss(logits[:0], [per_image[1]]).item() == 0.0


def test_training_step_uses_polygon_tensors_from_the_loader(tmp_path):
    """The mapper hands polygons over as one padded tensor (no gt_masks), the head trains on them, and with
    the same weights and batch the losses equal those of Detectron2's CPU targets up to the target pixels
    that differ."""
    import cv2

    import hiera_det.d2  # noqa: F401
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from hiera_det.config import get_hiera_cfg, merge_config
    from hiera_det.data.image_mapper import build_detection_train_mapper

    image = np.zeros((96, 128, 3), np.uint8)
    image[20:70, 30:90] = (200, 50, 50)
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), image)
    annotations = [
        {"bbox": [30, 20, 60, 50], "bbox_mode": 1, "category_id": 0,
         "segmentation": [[30, 20, 90, 20, 60, 70], [70, 50, 90, 50, 90, 70, 70, 70]]},
        {"bbox": [10, 10, 20, 30], "bbox_mode": 1, "category_id": 1,
         "segmentation": [[10, 10, 30, 10, 30, 40, 20, 25, 10, 40]]},
    ]  # fmt: skip
    record = {"file_name": str(path), "height": 96, "width": 128, "image_id": 0, "annotations": annotations}

    def configured(gpu_targets: bool):
        cfg = get_hiera_cfg()
        merge_config(cfg, "hiera_fpn.yaml", [
            "MODEL.HIERA.NAME", "hiera_tiny_224", "MODEL.HIERA.STAGES", "[1,1,1,1]", "MODEL.DEVICE", "cpu",
            "MODEL.HIERA.INPUT_SIZE", "[128,128]", "INPUT.LSJ.ENABLED", "False", "INPUT.MIN_SIZE_TRAIN", "(96,)",
            "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.RANDOM_FLIP", "none", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
            "MODEL.ROI_MASK_HEAD.GPU_TARGETS", str(gpu_targets),
            "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNGPUTargetsHead" if gpu_targets else "MaskRCNNConvUpsampleHead",
        ])  # fmt: skip
        return cfg

    losses = {}
    for gpu_targets in (True, False):
        cfg = configured(gpu_targets)
        mapper = build_detection_train_mapper(cfg)
        assert not mapper.polygon_tensors  # on the CPU the targets are Detectron2's (faster there) ...
        mapper.polygon_tensors = gpu_targets  # ... but the GPU path runs on the CPU too, so compare it here
        mapped = mapper(record)
        fields = mapped["instances"].get_fields()
        if gpu_targets:
            assert "gt_masks" not in fields and fields["gt_polygons"].shape == (2, 7, 5)
        else:
            assert isinstance(fields["gt_masks"], PolygonMasks) and "gt_polygons" not in fields
        torch.manual_seed(0)
        model = build_model(cfg)
        model.train()
        assert type(model.roi_heads.mask_head).__name__ == cfg.MODEL.ROI_MASK_HEAD.NAME
        with EventStorage():
            torch.manual_seed(1)  # the same proposal sampling in both runs
            step = model([mapped, mapped])
        losses[gpu_targets] = step
    ours, expected = losses[True], losses[False]
    assert ours.keys() == expected.keys() and "loss_mask" in ours
    assert all(torch.isfinite(v) for v in ours.values())
    assert abs(ours["loss_mask"].item() - expected["loss_mask"].item()) < 0.01 * expected["loss_mask"].item()
    ours["loss_mask"].backward()


def test_gpu_targets_need_a_head_that_reads_them():
    from hiera_det.config import get_hiera_cfg, merge_config, validate_hiera_config

    cfg = get_hiera_cfg()
    merge_config(cfg, "hiera_fpn.yaml", ["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"])
    assert cfg.MODEL.ROI_MASK_HEAD.GPU_TARGETS  # the Hiera configs' default
    with pytest.raises(ValueError, match="MODEL.ROI_MASK_HEAD.NAME to one of MaskRCNNGPUTargetsHead"):
        validate_hiera_config(cfg)


@pytest.mark.gpu
def test_targets_on_cuda_equal_the_cpu_ones():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    rng = np.random.default_rng(3)
    instances, boxes = _random_case(rng, 300)
    packed, boxes = pack_polygons(instances), torch.tensor(boxes, dtype=torch.float32)
    cpu = rasterize_polygons_in_boxes(packed, boxes, SIDE)
    assert torch.equal(rasterize_polygons_in_boxes(packed.cuda(), boxes.cuda(), SIDE).cpu(), cpu)


def test_clipped_bounds_of_polygons_cut_by_the_image():
    from hiera_det.detection.mask_targets import clipped_bounds

    # a U whose arms leave the image on the left (100 x 80) and whose bottom bar stays inside: the box of
    # what is inside starts at the arms' tops, not at the side where the arms were cut
    u_shape = np.array([[-20, 10], [30, 10], [30, 70], [-20, 70], [-20, 60], [20, 60], [20, 20], [-20, 20]], float)
    assert np.allclose(clipped_bounds(u_shape, 100, 80), [0, 10, 30, 70])
    # a triangle covering the image's bottom-right corner: the corner is an extreme
    corner = np.array([[60, 90], [110, 40], [110, 90]], float)
    assert np.allclose(clipped_bounds(corner, 100, 80), [70, 50, 100, 80])
    assert clipped_bounds(np.array([[-30, -30], [-10, -30], [-10, -10]], float), 100, 80) is None
    inside = np.array([[5, 6], [50, 6], [20, 40]], float)
    assert np.allclose(clipped_bounds(inside, 100, 80), [5, 6, 50, 40])


def test_lsj_mapper_gives_detectron2s_instances_without_cropping_polygons(tmp_path):
    """Same instances, classes and boxes (up to the slivers shapely's clean-up removes) as Detectron2's
    polygon path, which crops with shapely."""
    pytest.importorskip("shapely")
    import random

    import cv2

    from hiera_det.config import get_hiera_cfg, merge_config
    from hiera_det.data.image_mapper import build_detection_train_mapper

    rng = np.random.default_rng(4)
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), np.zeros((120, 160, 3), np.uint8))
    annotations = []
    for k in range(12):
        parts = [_polygon(rng, concave=True) * 0.6 for _ in range(int(rng.integers(1, 3)))]
        points = np.concatenate([p.reshape(-1, 2) for p in parts])
        box = [*points.min(0), *(points.max(0) - points.min(0))]
        annotations.append({"bbox": box, "bbox_mode": 1, "category_id": k % 3, "segmentation": [p.tolist() for p in parts]})
    record = {"file_name": str(path), "height": 120, "width": 160, "image_id": 0, "annotations": annotations}
    cfg = get_hiera_cfg()
    merge_config(cfg, "hiera_fpn.yaml", ["MODEL.DEVICE", "cpu", "INPUT.LSJ.IMAGE_SIZE", "128",
                                         "MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    ours, theirs = build_detection_train_mapper(cfg), build_detection_train_mapper(cfg)
    ours.polygon_tensors, theirs.polygon_tensors = True, False  # MODEL.DEVICE cuda would choose the first
    compared = 0
    for seed in range(6):
        for mapper in (ours, theirs):
            random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
            mapper.result = mapper(dict(record, annotations=[dict(a) for a in annotations]))["instances"]
        a, b = ours.result, theirs.result
        assert len(a) == len(b) and torch.equal(a.gt_classes, b.gt_classes)
        assert "gt_masks" not in a.get_fields() and len(a.gt_polygons) == len(a)
        assert (a.gt_boxes.tensor - b.gt_boxes.tensor).abs().max().item() <= 2.0 if len(a) else True
        compared += len(a)
    assert compared > 20
