"""HieraROIHeads' fast inference gives Detectron2's answers: top-k batched NMS against
fast_rcnn_inference_single_image, separable mask pasting against paste_masks_in_image, and a whole tiny
Mask R-CNN with both heads on the same weights; and the switches TEST.PRECISION, TEST.CUDA_GRAPHS and
SOLVER.COMPILE_BACKBONE."""

import pytest
import torch
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image

from hiera_det.detection import fast_inference
from hiera_det.detection.fast_inference import paste_masks_separable, topk_batched_nms


def _predictions(rows, classes, per_class, seed, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    reg = classes if per_class else 1
    xy = torch.rand(rows, reg, 2, generator=g) * 200 - 10  # some boxes reach outside the image
    wh = torch.rand(rows, reg, 2, generator=g) * 80 + 1
    boxes = torch.cat([xy, xy + wh], dim=-1).reshape(rows, -1)
    scores = torch.softmax(torch.randn(rows, classes + 1, generator=g) * spread, dim=-1)
    return boxes, scores


def _assert_same(expected, got):
    (ref, ref_rows), (out, out_rows) = expected, got
    assert len(ref) == len(out)
    assert torch.equal(ref.pred_classes, out.pred_classes)
    assert torch.equal(ref.scores, out.scores)
    assert torch.equal(ref.pred_boxes.tensor, out.pred_boxes.tensor)
    assert torch.equal(ref_rows, out_rows)


def test_topk_nms_equals_detectron2_for_thresholds_and_box_kinds():
    for seed, (thresh, per_class, topk) in enumerate(
        [(0.0, True, 100), (0.05, True, 100), (0.0, False, 100), (0.3, True, 100), (0.0, True, -1), (0.0, True, 7)]
    ):
        boxes, scores = _predictions(300, 10, per_class, seed)
        args = ((180, 220), thresh, 0.5, topk)
        _assert_same(fast_rcnn_inference_single_image(boxes, scores, *args), topk_batched_nms(boxes, scores, *args))


def test_topk_nms_grows_the_candidates_until_enough_survive(monkeypatch):
    # few candidates in the first round and heavily overlapping boxes: most candidates are suppressed, so
    # the round must repeat with more of them to find 50 survivors
    monkeypatch.setattr(fast_inference, "MIN_CANDIDATES", 4)
    g = torch.Generator().manual_seed(3)
    rows, classes = 400, 3
    boxes = (torch.tensor([10.0, 10.0, 60.0, 60.0]) + torch.randn(rows, classes, 4, generator=g)).reshape(rows, -1)
    scores = torch.softmax(torch.randn(rows, classes + 1, generator=g), dim=-1)
    args = ((100, 100), 0.0, 0.9, 50)
    expected = fast_rcnn_inference_single_image(boxes, scores, *args)
    _assert_same(expected, topk_batched_nms(boxes, scores, *args))


def test_topk_nms_drops_non_finite_predictions():
    boxes, scores = _predictions(50, 4, True, 0)
    boxes[3, 2] = float("nan")
    scores[7, 1] = float("inf")
    result, rows = topk_batched_nms(boxes, scores, (180, 220), 0.0, 0.5, 100)
    assert len(result) > 0 and torch.isfinite(result.scores).all()
    assert not ({3, 7} & set(rows.tolist()))


def _masks_and_boxes(count, seed):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(count, 28, 28, generator=g)
    xy = torch.rand(count, 2, generator=g) * 150  # some boxes reach past the bottom and right edges
    boxes = torch.cat([xy, xy + torch.rand(count, 2, generator=g) * 100 + 0.5], dim=1)
    return masks, boxes


def test_separable_paste_equals_grid_sample_in_float32_and_is_close_in_float16():
    masks, boxes = _masks_and_boxes(20, 0)
    expected = paste_masks_in_image(masks, boxes, (200, 230))
    exact = paste_masks_separable(masks, boxes, (200, 230), dtype=torch.float32)
    assert exact.dtype == torch.bool and exact.shape == expected.shape
    assert (exact != expected).sum() <= 2  # float32 rounding at the threshold
    half = paste_masks_separable(masks, boxes, (200, 230), dtype=torch.float16)
    iou = (half & expected).sum((1, 2)).float() / (half | expected).sum((1, 2)).clamp(min=1).float()
    # uniform noise puts many pixels next to the threshold: the worst case for float16
    assert iou.min() > 0.97 and iou.mean() > 0.995


def test_separable_paste_soft_masks_and_empty_input():
    masks, boxes = _masks_and_boxes(5, 1)
    soft = paste_masks_separable(masks, boxes, (160, 170), threshold=-1, dtype=torch.float32)
    expected = paste_masks_in_image(masks, boxes, (160, 170), threshold=-1)
    assert soft.dtype == torch.uint8 and (soft.int() - expected.int()).abs().max() <= 1
    empty = paste_masks_separable(masks[:0], boxes[:0], (10, 10))
    assert empty.shape == (0, 10, 10)


def test_hiera_roi_heads_give_the_standard_heads_detections(tmp_path):
    from detectron2.modeling import build_model

    from benchmarks.peers import _ours_cfg

    cfg = _ours_cfg("mask_unit", (64, 64), True, torch.device("cpu"))
    assert cfg.MODEL.ROI_HEADS.NAME == "HieraROIHeads"  # the packaged configs' default
    assert cfg.MODEL.META_ARCHITECTURE == "HieraRCNN"
    torch.manual_seed(0)
    fast = build_model(cfg).eval()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    standard = build_model(cfg).eval()
    with torch.no_grad():
        fast.roi_heads.box_predictor.cls_score.weight.mul_(20)  # distinct scores, no ties
    standard.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8), "height": 48, "width": 40}]
    with torch.no_grad():
        got, want = fast(inputs)[0]["instances"], standard(inputs)[0]["instances"]
    assert len(got) == len(want) > 0
    assert torch.equal(got.pred_classes, want.pred_classes)
    assert torch.allclose(got.scores, want.scores) and torch.allclose(got.pred_boxes.tensor, want.pred_boxes.tensor)
    assert got.pred_masks.shape == want.pred_masks.shape == (len(want), 48, 40)
    assert torch.equal(got.pred_masks, want.pred_masks)  # on the CPU both paste with Detectron2's code
    # without post-processing the outputs are Detectron2's own: per-box N x 1 x M x M mask probabilities
    with torch.no_grad():
        raw = fast.inference(inputs, do_postprocess=False)[0]
    assert type(fast).__name__ == "HieraRCNN"
    assert isinstance(raw.pred_masks, torch.Tensor) and raw.pred_masks.dim() == 4 and raw.pred_masks.shape[1] == 1


def test_test_precision_switch():
    import contextlib

    import pytest

    from hiera_det.config import get_hiera_cfg, validate_hiera_config
    from hiera_det.detection.fast_inference import inference_autocast

    cfg = get_hiera_cfg()
    assert cfg.TEST.PRECISION == "float32"
    assert isinstance(inference_autocast(cfg, "cuda"), contextlib.nullcontext)
    cfg.TEST.PRECISION = "bfloat16"
    context = inference_autocast(cfg, "cuda")
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    assert isinstance(inference_autocast(cfg, "cpu"), contextlib.nullcontext)  # ignored on the CPU
    cfg.TEST.PRECISION = "half"
    with pytest.raises(ValueError, match="TEST.PRECISION 'half' is unknown; choose one of"):
        validate_hiera_config(cfg)


def test_compile_backbone_keeps_parameter_names_and_refuses_models_without_backbone():
    import pytest

    from hiera_det.engine.trainer import compile_backbone

    model = torch.nn.Module()
    model.backbone = torch.nn.Sequential(torch.nn.Linear(2, 2))
    names = list(model.state_dict())
    compile_backbone(model)  # compiles lazily, at the first call: nothing runs here
    assert list(model.state_dict()) == names and model.backbone._compiled_call_impl is not None
    with pytest.raises(ValueError, match="SOLVER.COMPILE_BACKBONE needs a model with a .backbone module"):
        compile_backbone(torch.nn.Linear(2, 2))


def test_cuda_graphs_switch_is_ignored_off_cuda_and_refused_for_video_models():
    import pytest

    from hiera_det.config import get_hiera_cfg, validate_hiera_config
    from hiera_det.detection.fast_inference import use_cuda_graphs

    cfg = get_hiera_cfg()
    model = torch.nn.Module()
    model.backbone = torch.nn.Linear(2, 2)
    assert not use_cuda_graphs(cfg, model)  # off by default
    cfg.TEST.CUDA_GRAPHS = True
    validate_hiera_config(cfg)
    assert not use_cuda_graphs(cfg, model)  # a model on the CPU: ignored, as TEST.PRECISION is
    assert model.backbone._compiled_call_impl is None
    cfg.MODEL.HIERA.NAME = "hiera_base_16x224"
    with pytest.raises(ValueError, match="TEST.CUDA_GRAPHS is for image detectors.*set TEST.CUDA_GRAPHS False"):
        validate_hiera_config(cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_give_the_eager_detections():
    """Our Mask R-CNN (tiny trunk, random weights) on CUDA in bf16: with the backbone replayed from CUDA
    graphs, repeated calls give the eager model's detections (scores within bf16 noise)."""
    from detectron2.modeling import build_model

    from benchmarks.peers import _ours_cfg
    from hiera_det.detection.fast_inference import inference_autocast, use_cuda_graphs

    cfg = _ours_cfg("mask_unit", (256, 256), True, torch.device("cuda"))
    cfg.defrost()
    cfg.TEST.PRECISION, cfg.TEST.CUDA_GRAPHS = "bfloat16", True
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, 256, 256), generator=g, dtype=torch.uint8)}]
    with torch.no_grad(), inference_autocast(cfg):
        eager = model(inputs)[0]["instances"]
        assert use_cuda_graphs(cfg, model)
        for _ in range(3):  # compiles, records, replays
            graphed = model(inputs)[0]["instances"]
    assert len(graphed) == len(eager) > 0
    torch.testing.assert_close(graphed.scores, eager.scores, atol=2e-2, rtol=0)
