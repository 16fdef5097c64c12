"""Video backbone, temporally pooled FPN, clip classifier, clip detector, video evaluator, mixup."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

import hiera_det.d2  # noqa: F401,E402  (registers the video parts)
from detectron2.modeling import build_backbone, build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from hiera_det.config import get_hiera_cfg, validate_hiera_config  # noqa: E402
from hiera_det.detection import HieraBackbone  # noqa: E402
from hiera_det.modeling import build_hiera  # noqa: E402
from hiera_det.video.evaluation import VideoClassificationEvaluator  # noqa: E402
from hiera_det.video.mixup import ClipMixup  # noqa: E402
from hiera_det.video.temporal import TemporalPool, TemporallyPooledBackbone  # noqa: E402

FRAMES, SIZE = 4, 64


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


def tiny_cfg(meta_arch="HieraVideoClassifier"):
    cfg = get_hiera_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.HIERA.NAME = "hiera_base_16x224"
    cfg.MODEL.META_ARCHITECTURE = meta_arch
    cfg.MODEL.HIERA.STAGES = [1, 1, 1, 1]
    cfg.MODEL.HIERA.EMBED_DIM = 32
    cfg.MODEL.HIERA_VIDEO.NUM_FRAMES = FRAMES
    cfg.MODEL.HIERA_VIDEO.NUM_CLASSES = 5
    cfg.INPUT.VIDEO.TRAIN_CROP_SIZE = cfg.INPUT.VIDEO.TEST_CROP_SIZE = SIZE
    if meta_arch == "HieraClipDetector":
        cfg.MODEL.BACKBONE.NAME = "build_hiera_video_fpn_backbone"
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
        cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
        cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
        cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
        cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
        cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
        cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
        cfg.MODEL.FPN.OUT_CHANNELS = 32
    return cfg


def clip(t=FRAMES, h=SIZE, w=SIZE):
    return torch.randint(0, 256, (3, t, h, w), dtype=torch.uint8)


# ---------------------------------------------------------------- backbone


def test_video_backbone_shapes_and_output_shape():
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_hiera_video_backbone"
    backbone = build_backbone(cfg)
    assert isinstance(backbone, HieraBackbone)
    assert backbone.size_divisibility == 32
    assert backbone.padding_constraints == {"size_divisibility": 32, "square_size": 0}
    out = backbone(torch.randn(2, 3, FRAMES, 64, 96))
    shapes = backbone.output_shape()
    for name, stride in zip(["stage1", "stage2", "stage3", "stage4"], [4, 8, 16, 32]):
        assert shapes[name].stride == stride
        assert tuple(out[name].shape) == (2, shapes[name].channels, FRAMES // 2, 64 // stride, 96 // stride)


def test_temporal_pooling_rejects_image_trunk_and_bad_clip_length():
    image = HieraBackbone(build_hiera("hiera_tiny_224", num_classes=0, stages=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match="image trunk"):
        TemporallyPooledBackbone(image, "mean", num_frames=4, keyframe=2)
    backbone = HieraBackbone(
        build_hiera("hiera_base_16x224", num_classes=0, input_size=(4, 64, 64), stages=(1, 1, 1, 1))
    )
    with pytest.raises(ValueError, match="T%2==0"):
        backbone(torch.randn(1, 3, 3, 64, 64))


def test_freeze_at_freezes_embeddings_and_early_stages():
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_hiera_video_backbone"
    cfg.MODEL.HIERA.FREEZE_AT = 2
    trunk = build_backbone(cfg).trunk
    assert not trunk.patch_embed.proj.weight.requires_grad
    assert not trunk.pos_embed_spatial.requires_grad and not trunk.pos_embed_temporal.requires_grad
    assert not any(p.requires_grad for p in trunk.blocks[0].parameters())  # stage 1
    assert all(p.requires_grad for p in trunk.blocks[1].parameters())  # stage 2


@pytest.mark.parametrize("mode", ["mean", "max", "keyframe", "learned"])
def test_temporal_pool_modes(mode):
    x = torch.randn(2, 8, 4, 3, 5)
    pool = TemporalPool(mode, num_slices=4, keyframe_slice=2)
    y = pool(x)
    assert y.shape == (2, 8, 3, 5)
    expected = {
        "mean": x.mean(2),
        "max": x.amax(2),
        "keyframe": x[:, :, 2],
        "learned": x.mean(2),  # equal weights at initialisation
    }[mode]
    torch.testing.assert_close(y, expected)
    if mode in ("keyframe", "learned"):
        with pytest.raises(ValueError, match="NUM_FRAMES"):
            pool(torch.randn(2, 8, 3, 3, 5))


@pytest.mark.parametrize("mode", ["mean", "keyframe", "learned"])
def test_video_fpn_gives_2d_pyramid(mode):
    cfg = tiny_cfg("HieraClipDetector")
    cfg.MODEL.HIERA_VIDEO.TEMPORAL_POOL = mode
    fpn = build_backbone(cfg)
    assert fpn.size_divisibility == 32
    shapes = fpn.output_shape()
    assert list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32, 64]
    out = fpn(torch.randn(1, 3, FRAMES, 64, 96))
    for name, spec in shapes.items():
        assert out[name].shape == (1, 32, math.ceil(64 / spec.stride), math.ceil(96 / spec.stride))
    if mode == "keyframe":
        # center keyframe (frame 2 of 4) lives in temporal slice 1
        assert fpn.bottom_up.pools["stage1"].keyframe_slice == 1


def test_config_validation_names_the_key():
    cfg = tiny_cfg()
    cfg.MODEL.HIERA.NAME = "hiera_base_16x24"
    with pytest.raises(ValueError, match="MODEL.HIERA.NAME .*Did you mean: hiera_base_16x224"):
        validate_hiera_config(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.HIERA_VIDEO.TEMPORAL_POOL = "median"
    with pytest.raises(ValueError, match="mean"):
        validate_hiera_config(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.HIERA_VIDEO.NUM_FRAMES = 5
    with pytest.raises(ValueError, match="even"):
        validate_hiera_config(cfg)


# ---------------------------------------------------------------- parity


def _official_video(build, **overrides):
    model = build(**overrides).eval()
    with torch.no_grad():
        for p in model.parameters():  # nonzero everywhere, so zero-initialised embeddings hide nothing
            p.normal_(0.0, 0.02)
    return model


def _compare_with_official(reference, ours, x):
    with torch.no_grad():
        probs, intermediates = reference(x, return_intermediates=True)
        out = ours(x)
    for i, name in enumerate(["stage1", "stage2", "stage3", "stage4"]):
        ref = intermediates[i].permute(0, 4, 1, 2, 3)  # official stage outputs are channels-last
        assert (out[name] - ref).abs().max().item() <= 1e-4, name
    return probs


def test_backbone_from_config_loads_official_video_weights_exactly(tmp_path, official_video_hiera):
    """Official hiera-transformer weights on disk -> MODEL.HIERA.WEIGHTS -> registry-built backbone."""
    pytest.importorskip("hiera_det.checkpoint")
    reference = _official_video(official_video_hiera, input_size=(4, 64, 64))  # base depth, small clip: fast on CPU
    path = tmp_path / "hiera_base_16x224_random.pth"
    torch.save({"model_state": reference.state_dict()}, path)
    cfg = tiny_cfg()
    cfg.MODEL.HIERA.STAGES, cfg.MODEL.HIERA.EMBED_DIM = [], 0  # the official base widths and depth
    cfg.MODEL.HIERA.WEIGHTS = str(path)
    cfg.MODEL.BACKBONE.NAME = "build_hiera_video_backbone"
    backbone = build_backbone(cfg).eval()
    _compare_with_official(reference, backbone, torch.randn(1, 3, 4, 64, 64))


@pytest.mark.slow
def test_parity_with_official_hiera_base_16x224_full_size():
    hiera = pytest.importorskip("hiera")
    reference = hiera.hiera_base_16x224(pretrained=False).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.02)
    ours = build_hiera("hiera_base_16x224").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 16, 224, 224)
    probs = _compare_with_official(reference, ours, x)
    with torch.no_grad():
        logits = ours(x, return_logits=True)["logits"]
    assert (logits.softmax(-1) - probs).abs().max().item() <= 1e-4


# ---------------------------------------------------------------- classifier


def test_classifier_training_step_with_mixup_cutmix_and_smoothing():
    cfg = tiny_cfg()
    m = cfg.MODEL.HIERA_VIDEO
    m.MIXUP_ALPHA, m.CUTMIX_ALPHA, m.LABEL_SMOOTHING = 0.8, 1.0, 0.1
    model = build_model(cfg).train()
    batch = [{"clip": clip(), "label": i % 5, "video_id": f"v{i}"} for i in range(3)]
    losses = model(batch)
    assert set(losses) == {"loss_cls"}
    loss = losses["loss_cls"]
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.trunk.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert model.trunk.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.trunk.head.projection.weight.grad.abs().sum() > 0


def test_classifier_learns_a_fixed_batch():
    cfg = tiny_cfg()
    model = build_model(cfg).train()
    batch = [{"clip": clip(), "label": i} for i in range(5)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        loss = model(batch)["loss_cls"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.7


def test_classifier_eval_returns_softmax_scores_and_checks_inputs():
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model([{"clip": clip()}, {"clip": clip()}])
    assert len(out) == 2
    for o in out:
        assert o["scores"].shape == (5,)
        assert torch.isclose(o["scores"].sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="NUM_FRAMES=4"):
        model([{"clip": clip(t=6)}])
    with pytest.raises(ValueError, match=r"\[3, T, H, W\]"):
        model([{"clip": torch.zeros(3, 64, 64)}])
    model.train()
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        model([{"clip": clip(), "label": 7}])
    with pytest.raises(ValueError, match=r"got \[2, -1\]"):  # checked on the host, before any device work
        model([{"clip": clip(), "label": 2}, {"clip": clip(), "label": -1}])


def test_mixup_and_cutmix_targets_sum_to_one_and_match_area():
    labels = torch.tensor([0, 1, 2, 3])
    targets = torch.nn.functional.one_hot(labels, 4).float()
    clips = torch.stack([torch.full((3, 2, 16, 16), float(i)) for i in range(4)])
    torch.manual_seed(1)
    mixed, soft = ClipMixup(mixup_alpha=0.0, cutmix_alpha=1.0)(clips, targets)
    torch.testing.assert_close(soft.sum(1), torch.ones(4))
    # the share of pixels that came from the partner equals the partner's target weight, in every frame
    from_partner = (mixed[0] == 3.0).float().mean().item()
    assert abs(from_partner - soft[0, 3].item()) < 1e-6
    assert torch.equal(mixed[0, :, 0], mixed[0, :, 1])  # same box on every frame
    mixed, soft = ClipMixup(mixup_alpha=0.8, cutmix_alpha=0.0)(clips, targets)
    lam = soft[0, 0].item()
    torch.testing.assert_close(mixed[0], clips[0] * lam + clips[3] * (1 - lam))
    off = ClipMixup(0.0, 0.0)
    assert not off.enabled and off(clips, targets)[0] is clips


# ---------------------------------------------------------------- evaluator


def test_evaluator_averages_views_per_video():
    ev = VideoClassificationEvaluator("toy", distributed=False)
    ev.reset()
    # video a (label 0): views disagree, average picks class 0 -> correct; clips: 1 of 2 correct
    # video b (label 2): both views say class 1 -> wrong at top-1, right at top-2.. top-5
    # video c (label 1): single view right
    inputs = [
        {"video_id": "a", "label": 0}, {"video_id": "a", "label": 0},
        {"video_id": "b", "label": 2}, {"video_id": "b", "label": 2},
        {"video_id": "c", "label": 1},
    ]
    scores = [
        [0.6, 0.4, 0.0, 0.0, 0.0, 0.0], [0.3, 0.5, 0.2, 0.0, 0.0, 0.0],
        [0.1, 0.5, 0.4, 0.0, 0.0, 0.0], [0.2, 0.6, 0.1, 0.1, 0.0, 0.0],
        [0.0, 0.9, 0.1, 0.0, 0.0, 0.0],
    ]
    ev.process(inputs[:3], [{"scores": torch.tensor(s)} for s in scores[:3]])
    ev.process(inputs[3:], [{"scores": torch.tensor(s)} for s in scores[3:]])
    res = ev.evaluate()["video_classification"]
    assert res["top1"] == pytest.approx(100 * 2 / 3)
    assert res["top5"] == pytest.approx(100.0)
    assert res["clip_top1"] == pytest.approx(100 * 2 / 5)  # a/view0 and c
    assert res["clip_top5"] == pytest.approx(100.0)
    assert res["num_videos"] == 3 and res["num_clips"] == 5


def test_evaluator_top5_misses_and_label_conflicts(tmp_path):
    ev = VideoClassificationEvaluator("toy", output_dir=str(tmp_path), distributed=False)
    scores = np.linspace(1.0, 0.0, 10)  # class 0 best, class 9 worst
    ev.process([{"video_id": "x", "label": 9}], [{"scores": scores}])
    ev.process([{"video_id": "y", "label": 4}], [{"scores": scores}])
    res = ev.evaluate()["video_classification"]
    assert res["top1"] == 0.0 and res["top5"] == 50.0
    assert (tmp_path / "video_predictions.json").is_file()
    ev.reset()
    ev.process([{"video_id": "x", "label": 1}, {"video_id": "x", "label": 2}], [{"scores": scores}] * 2)
    with pytest.raises(ValueError, match="different labels"):
        ev.evaluate()


# ---------------------------------------------------------------- clip detector


def _detector_item(h, w, boxes=((5.0, 6.0, 30.0, 40.0),), classes=(1,)):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes))
    inst.gt_classes = torch.tensor(classes)
    return {"image": clip(h=h, w=w), "instances": inst, "height": h, "width": w, "keyframe_index": FRAMES // 2}


def test_clip_detector_training_step_and_grads():
    cfg = tiny_cfg("HieraClipDetector")
    cfg.MODEL.HIERA_VIDEO.TEMPORAL_POOL = "learned"
    model = build_model(cfg).train()
    with EventStorage():
        losses = model([_detector_item(70, 90), _detector_item(64, 64)])  # odd sizes: padded to 32
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    trunk = model.backbone.bottom_up.video.trunk
    assert trunk.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.backbone.bottom_up.pools["stage2"].logits.grad.abs().sum() > 0


def test_clip_detector_inference_rescales_to_requested_size():
    cfg = tiny_cfg("HieraClipDetector")
    model = build_model(cfg).eval()
    item = dict(_detector_item(70, 90), height=140, width=180)
    with torch.no_grad():
        out = model([item])
    inst = out[0]["instances"]
    assert inst.image_size == (140, 180)
    if len(inst):
        boxes = inst.pred_boxes.tensor
        assert boxes[:, 2].max() <= 180 and boxes[:, 3].max() <= 140


def test_clip_detector_rejects_mismatched_keyframe_and_frames():
    cfg = tiny_cfg("HieraClipDetector")
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="KEYFRAME"):
        model([dict(_detector_item(64, 64), keyframe_index=0)])
    with pytest.raises(ValueError, match="NUM_FRAMES"):
        model([dict(_detector_item(64, 64), image=clip(t=8))])


# ---------------------------------------------------------------- loaders + evaluators


@pytest.fixture(scope="module")
def tiny_moving_shapes(tmp_path_factory):
    """A 6-train / 3-val moving-shapes set under test-only dataset names."""
    from hiera_det.data.catalog import register_keyframe_coco, register_kinetics
    from hiera_det.data.datasets.moving_shapes import ensure_moving_shapes_dataset

    root = ensure_moving_shapes_dataset(
        str(tmp_path_factory.mktemp("ms") / "moving_shapes"), num_train=6, num_val=3, frame_size=64, num_frames=8
    )
    for split in ("train", "val"):
        register_kinetics(f"c2_ms_cls_{split}", root, split)
        register_keyframe_coco(f"c2_ms_kf_{split}", f"{root}/annotations/keyframes_{split}.json", root)
    return root


def test_classifier_builders_train_and_multi_view_eval(tiny_moving_shapes, tmp_path):
    from detectron2.evaluation import inference_on_dataset

    from hiera_det.engine import loaders

    cfg = tiny_cfg()
    cfg.MODEL.HIERA_VIDEO.NUM_CLASSES = 6
    cfg.MODEL.HIERA_VIDEO.SAMPLING_RATE = 2
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.VIDEO.TRAIN_JITTER_SCALES = [64, 72]
    cfg.INPUT.VIDEO.NUM_TEMPORAL_VIEWS, cfg.INPUT.VIDEO.NUM_SPATIAL_VIEWS = 2, 1
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("c2_ms_cls_train",), ("c2_ms_cls_val",)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    model = build_model(cfg)
    train_loader = loaders.build_train_loader(cfg)
    batch = next(iter(train_loader))
    assert len(batch) == 2 and batch[0]["clip"].shape == (3, FRAMES, SIZE, SIZE)
    assert batch[0]["clip"].dtype == torch.uint8  # normalised by the model, on its device
    # clips are pinned for a CUDA model (so the copy to it does not block the host), not on the CPU
    assert not train_loader.pin_memory
    cuda_cfg = cfg.clone()
    cuda_cfg.MODEL.DEVICE = "cuda"
    assert loaders.build_train_loader(cuda_cfg).pin_memory
    loss = model(batch)["loss_cls"]
    assert torch.isfinite(loss)

    loader = loaders.build_test_loader(cfg, "c2_ms_cls_val")
    assert len(loader.dataset) == 3 * 2  # videos x views
    evaluator = loaders.build_evaluator(cfg, "c2_ms_cls_val", str(tmp_path))
    assert isinstance(evaluator, VideoClassificationEvaluator)
    results = inference_on_dataset(model.eval(), loader, evaluator)["video_classification"]
    assert results["num_videos"] == 3 and results["num_clips"] == 6
    assert 0.0 <= results["top1"] <= results["top5"] <= 100.0
    assert all(type(v) is float for v in results.values())  # plain floats for Detectron2's JSON writer

    cfg.MODEL.HIERA_VIDEO.NUM_CLASSES = 5
    with pytest.raises(ValueError, match="set it to 6"):
        loaders.build_train_loader(cfg)


def test_clip_detector_builders_train_and_coco_eval(tiny_moving_shapes, tmp_path):
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    from hiera_det.engine import loaders

    cfg = tiny_cfg("HieraClipDetector")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 6
    cfg.MODEL.HIERA_VIDEO.SAMPLING_RATE = 2
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 64
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 64
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("c2_ms_kf_train",), ("c2_ms_kf_val",)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    model = build_model(cfg)
    batch = next(iter(loaders.build_train_loader(cfg)))
    assert batch[0]["image"].shape == (3, FRAMES, 64, 64) and len(batch[0]["instances"]) == 1
    with EventStorage():
        losses = model(batch)
    assert torch.isfinite(sum(losses.values()))

    evaluator = loaders.build_evaluator(cfg, "c2_ms_kf_val", str(tmp_path))
    assert isinstance(evaluator, COCOEvaluator)
    results = inference_on_dataset(model.eval(), loaders.build_test_loader(cfg, "c2_ms_kf_val"), evaluator)
    assert "bbox" in results and "AP" in results["bbox"]


def test_unknown_video_dataset_names_the_choices():
    from hiera_det.data.catalog import prepare_datasets

    with pytest.raises(KeyError, match="moving_shapes_"):
        prepare_datasets(tiny_cfg(), ["my_videos_train"])
