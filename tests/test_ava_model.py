"""HieraActionDetector, AvaClipMapper and the AVA loaders / evaluator on the tiny bundled data."""

from __future__ import annotations

import copy
import csv
import os
import shutil

import numpy as np
import pytest
import torch

import hiera_det.d2  # noqa: F401  (registers HieraActionDetector)
from hiera_det.data import ava
from hiera_det.data.datasets import ava_shapes
from hiera_det.data.video_io import VideoReadError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = ava_shapes.ensure_ava_shapes_dataset(str(tmp_path_factory.mktemp("d") / "ava_shapes_tiny"), preset="tiny",
                                                write_videos=True)
    ava_shapes.register_ava_shapes(root, prefix="test_avs")
    ava_shapes.register_ava_shapes(root, prefix="test_avs_videos", layout="videos")
    return root


def make_cfg(*opts):
    from hiera_det.config import get_hiera_cfg, merge_config

    return merge_config(get_hiera_cfg(), "video/ava_shapes.yaml", [
        "DATASETS.TRAIN", "('test_avs_train',)", "DATASETS.TEST", "('test_avs_val',)", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2", *opts])


def test_mapper_train_and_test(tiny):
    from detectron2.data import DatasetCatalog

    from hiera_det.data.ava_mapper import AvaClipMapper

    cfg = make_cfg()
    record = DatasetCatalog.get("test_avs_train")[0]
    out = AvaClipMapper(cfg, is_train=True)(copy.deepcopy(record))
    assert out["image"].shape == (3, 8, 64, 64) and out["image"].dtype == torch.uint8
    assert out["boxes"].shape == (len(record["annotations"]), 4) and out["labels"].shape == (len(record["annotations"]), 9)
    for row, person in enumerate(record["annotations"]):
        assert sorted(torch.nonzero(out["labels"][row]).flatten().add(1).tolist()) == person["actions"]
        truth = torch.tensor(person["bbox"]) * 64
        assert (out["boxes"][row] - truth).abs().max() <= 0.05 * 64 * 0.6 + 1e-4  # jittered by <= 5% of the size
    # keyframe t s at 8 fps from 900 s is frame 8 (t - 900); the clip takes 8 frames 2 apart around it
    keyframe = 8 * (record["timestamp"] - 900)
    assert out["frame_indices"].tolist() == np.clip(keyframe + 2 * (np.arange(8) - 4), 0, 23).tolist()

    val = DatasetCatalog.get("test_avs_val")[0]
    test_out = AvaClipMapper(cfg, is_train=False)(copy.deepcopy(val))
    assert "labels" not in test_out and len(test_out["boxes"]) == len(val["proposals"]["boxes"])
    keyframe_only = AvaClipMapper(make_cfg("INPUT.AVA.KEYFRAME_ONLY", "True"), is_train=False)(copy.deepcopy(val))
    assert (keyframe_only["image"] == keyframe_only["image"][:, :1]).all()
    assert torch.equal(keyframe_only["image"][:, 0], test_out["image"][:, 4])  # the keyframe is at T // 2


def test_model_trains_and_predicts(tiny):
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from hiera_det.data.ava_mapper import AvaClipMapper

    cfg = make_cfg()
    model = build_model(cfg)
    mapper = AvaClipMapper(cfg, is_train=True)
    batch = [mapper(copy.deepcopy(r)) for r in DatasetCatalog.get("test_avs_train")[:2]]
    losses = model(batch)
    assert set(losses) == {"loss_action"} and losses["loss_action"].item() == pytest.approx(np.log(2), abs=0.05)
    losses["loss_action"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    test_mapper = AvaClipMapper(cfg, is_train=False)
    inputs = [test_mapper(copy.deepcopy(r)) for r in DatasetCatalog.get("test_avs_val")[:2]]
    with torch.no_grad():
        outputs = model(inputs)
    for inp, out in zip(inputs, outputs):
        inst = out["instances"]
        assert inst.action_scores.shape == (len(inp["boxes"]), 9)
        assert ((inst.action_scores > 0) & (inst.action_scores < 1)).all()
        assert torch.allclose(inst.pred_boxes.tensor, inp["boxes"])  # 64x64 frames: source pixels == clip pixels


def test_stage4_and_non_square_frames():
    from detectron2.modeling import build_model

    cfg = make_cfg("MODEL.ACTION_HEAD.IN_FEATURE", "stage4")
    model = build_model(cfg).eval()
    clip = torch.randint(0, 255, (3, 8, 64, 96), dtype=torch.uint8)
    boxes = torch.tensor([[4.0, 4.0, 40.0, 60.0], [50.0, 10.0, 90.0, 50.0]])
    with torch.no_grad():
        out = model([{"image": clip, "boxes": boxes, "height": 128, "width": 192}])[0]["instances"]
    assert model.stride == 32 and out.image_size == (128, 192)
    assert torch.allclose(out.pred_boxes.tensor, boxes * 2)


def test_evaluator_end_to_end_writes_official_files(tiny, tmp_path):
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model

    from hiera_det.engine import loaders
    from hiera_det.video.ava_evaluation import frame_map

    cfg = make_cfg()
    model = build_model(cfg).eval()
    evaluator = loaders.build_evaluator(cfg, "test_avs_val", str(tmp_path))
    results = inference_on_dataset(model, loaders.build_test_loader(cfg, "test_avs_val"), evaluator)
    value = results["ava"]["frame-mAP@0.5IOU"]
    assert 0.0 <= value <= 100.0 and results["ava"]["mAP"] == value  # the copypaste summary shows "mAP"
    rows = list(csv.reader(open(tmp_path / "ava_detections.csv")))
    assert len(rows[0]) == 8 and rows[0][1] in ("0901", "0902") and int(rows[0][6]) in ava_shapes.EVALUATED_IDS
    # scoring the written file with the file-based evaluator gives the same number
    split = ava_shapes.splits(tiny)["val"]
    again = frame_map(ava.read_label_map(split.eval_label_map_file), split.annotation_file, str(tmp_path / "ava_detections.csv"),
                      excluded_timestamps=split.excluded_timestamps_file)
    assert 100 * again.mean_ap == pytest.approx(value)
    table = (tmp_path / "ava_per_class_ap.txt").read_text()
    assert "shake" not in table and "frame-mAP@0.5IOU" in table


def test_videos_layout_matches_frames(tiny):
    from detectron2.data import DatasetCatalog

    from hiera_det.data.ava_mapper import AvaClipMapper

    mapper = AvaClipMapper(make_cfg(), is_train=False)
    from_frames = mapper(DatasetCatalog.get("test_avs_val")[0])
    from_video = mapper(DatasetCatalog.get("test_avs_videos_val")[0])
    assert from_video["frame_indices"].tolist() == from_frames["frame_indices"].tolist()
    assert (from_video["image"].float() - from_frames["image"].float()).abs().mean() < 12


def test_bad_videos_skipped_in_training_and_fatal_in_evaluation(tiny, tmp_path):
    from detectron2.data import DatasetCatalog

    from hiera_det.data.ava_mapper import AvaClipMapper

    cfg = make_cfg()
    record = copy.deepcopy(DatasetCatalog.get("test_avs_train")[0])
    # a missing frame
    frames = ava.FrameSequence(**record["frames"])
    folder = tmp_path / "frames"
    shutil.copytree(os.path.dirname(frames.path(0)), folder)
    os.remove(folder / os.path.basename(frames.path(8)))
    broken = dict(record, frames=dict(record["frames"], template=str(folder / os.path.basename(frames.template))))
    train, test = AvaClipMapper(cfg, is_train=True), AvaClipMapper(cfg, is_train=False)
    assert train(copy.deepcopy(broken)) is None and train.num_skipped == 1
    with pytest.raises(VideoReadError, match=r"_000009\.jpg.*missing \(row 10 of .*train\.csv\)"):
        test(copy.deepcopy(broken))
    # a video shorter than the clip span (8 frames x rate 2 = 15 source frames)
    short = dict(record, frames=dict(record["frames"], count=10))
    with pytest.raises(VideoReadError, match="10 frames, fewer than the clip span of 15"):
        test(copy.deepcopy(short))
    # a keyframe past the end of the video
    late = dict(record, timestamp=905)
    with pytest.raises(VideoReadError, match="keyframe 905 s is frame 40 at 8 fps"):
        test(copy.deepcopy(late))
    assert train(copy.deepcopy(late)) is None and train.num_skipped == 2


def test_train_loader_through_the_engine_loaders(tiny):
    from hiera_det.engine import loaders as builders

    cfg = make_cfg()
    batch = next(iter(builders.build_train_loader(cfg)))
    assert len(batch) == 2 and all(b["labels"].shape[1] == 9 for b in batch)
    with pytest.raises(ValueError, match="NUM_CLASSES is 4; set it to 9"):
        builders.build_train_loader(make_cfg("MODEL.ACTION_HEAD.NUM_CLASSES", "4"))


def test_config_checks_and_full_size_recipe_loads():
    from hiera_det.config import get_hiera_cfg, merge_config, validate_ava_config

    with pytest.raises(ValueError, match=r"MODEL.ACTION_HEAD.IN_FEATURE 'stage2'; choose one of: stage3, stage4"):
        validate_ava_config(make_cfg("MODEL.ACTION_HEAD.IN_FEATURE", "stage2"))
    cfg = merge_config(get_hiera_cfg(), "video/hiera_base_16x224_ava.yaml")
    validate_ava_config(cfg)
    assert (cfg.MODEL.ACTION_HEAD.NUM_CLASSES, cfg.MODEL.HIERA_VIDEO.NUM_FRAMES, cfg.MODEL.HIERA_VIDEO.SAMPLING_RATE) == (80, 16, 4)
    assert cfg.INPUT.VIDEO.TEST_CROP_SIZE == 256 and cfg.INPUT.AVA.PROPOSAL_SCORE_THRESH == 0.8
