"""Video data: decoding, errors, clip sampling and transforms, datasets, mappers, moving shapes."""

from __future__ import annotations

import filecmp
import json
import os
import time
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("decord")
pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.common import MapDataset  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

from hiera_det.config import get_hiera_cfg  # noqa: E402
from hiera_det.data import video_transforms as vt  # noqa: E402
from hiera_det.data.catalog import register_builtin_datasets, register_kinetics  # noqa: E402
from hiera_det.data.datasets import moving_shapes as ms  # noqa: E402
from hiera_det.data.datasets.kinetics import (  # noqa: E402
    load_class_folders,
    load_keyframe_coco_json,
    load_kinetics_csv,
)
from hiera_det.data.video_io import FrameFolderReader, VideoReadError, open_video  # noqa: E402
from hiera_det.data.video_mapper import (  # noqa: E402
    KeyframeClipMapper,
    VideoClassificationMapper,
    expand_test_views,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- helpers
def blob_box(t: int, width: int) -> tuple[int, int, int, int]:
    """A rectangle that moves 3 px right per frame: XYXY in continuous pixel coordinates."""
    x0 = 4 + 3 * t
    return x0, 6, x0 + 14, 6 + 10


def blob_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        x0, y0, x1, y1 = blob_box(t, width)
        frames[t, y0:y1, x0:x1] = 255
    return frames


def measured_box(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(frame[..., 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def write_opencv(path, frames_rgb, fps=10.0, color=True):
    size = (frames_rgb.shape[2], frames_rgb.shape[1])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size, isColor=color)
    assert writer.isOpened()
    for frame in frames_rgb:
        writer.write(np.ascontiguousarray(frame[..., ::-1]) if color else frame)
    writer.release()
    return str(path)


def write_pyav(path, frames_rgb, pts_ms, faststart=False):
    import av

    options = {"movflags": "faststart"} if faststart else {}
    container = av.open(str(path), "w", options=options)
    stream = container.add_stream("mpeg4", rate=30)
    stream.width, stream.height = frames_rgb.shape[2], frames_rgb.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = Fraction(1, 1000)
    for frame_rgb, pts in zip(frames_rgb, pts_ms):
        frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
        frame.pts, frame.time_base = pts, Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return str(path)


def gray_levels(num_frames, height=48, width=64):
    """Frame t is uniformly gray at level 20 * t + 10: the decoded frame index is readable from pixels."""
    return np.stack([np.full((height, width, 3), 20 * t + 10, np.uint8) for t in range(num_frames)])


def frame_ids(frames: np.ndarray) -> list[int]:
    return [int(round((f.mean() - 10) / 20)) for f in frames]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "moving_shapes"
    return ms.ensure_moving_shapes_dataset(str(root), num_train=12, num_val=6)


def video_cfg(**overrides):
    cfg = get_hiera_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.HIERA_VIDEO.NUM_FRAMES = 8
    cfg.MODEL.HIERA_VIDEO.SAMPLING_RATE = 2
    cfg.INPUT.VIDEO.TRAIN_JITTER_SCALES = (64, 80)
    cfg.INPUT.VIDEO.TRAIN_CROP_SIZE = 64
    cfg.INPUT.VIDEO.TEST_CROP_SIZE = 64
    cfg.INPUT.VIDEO.NUM_TEMPORAL_VIEWS = 2
    cfg.INPUT.VIDEO.NUM_SPATIAL_VIEWS = 3
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.MIN_SIZE_TEST = 96
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


# ---------------------------------------------------------------------------------------------- reading
def test_opencv_mp4_reads_with_count_fps_timestamps_and_content(tmp_path):
    path = write_opencv(tmp_path / "cv.mp4", blob_frames(12, 48, 64), fps=12.5)
    with open_video(path) as reader:
        assert reader.num_frames == 12
        assert reader.size == (48, 64)
        assert reader.fps == pytest.approx(12.5)
        np.testing.assert_allclose(reader.timestamps(), np.arange(12) / 12.5, atol=1e-3)
        frames = reader.get_frames([0, 11, 5, 5])
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
    for frame, t in zip(frames, [0, 11, 5, 5]):
        np.testing.assert_allclose(measured_box(frame), blob_box(t, 64), atol=1)


def test_pyav_variable_frame_rate_timestamps(tmp_path):
    pts_ms = [0, 100, 150, 400, 450, 500, 900, 1000]
    path = write_pyav(tmp_path / "vfr.mp4", gray_levels(len(pts_ms)), pts_ms)
    reader = open_video(path)
    assert reader.num_frames == 8
    np.testing.assert_allclose(reader.timestamps(), np.array(pts_ms) / 1000, atol=1e-3)
    assert frame_ids(reader.get_frames(range(8))) == list(range(8))
    assert reader.fps == pytest.approx(7 / 1.0, rel=0.2)  # average rate, not the nominal 30


def test_grayscale_sources_come_out_as_three_channels(tmp_path):
    gray = gray_levels(5)[..., 0]
    path = write_opencv(tmp_path / "gray.mp4", gray, color=False)
    frames = open_video(path).get_frames(range(5))
    assert frames.shape == (5, 48, 64, 3)
    assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).max() <= 2
    assert frame_ids(frames) == list(range(5))

    folder = tmp_path / "frames"
    folder.mkdir()
    for t, image in enumerate(gray):
        cv2.imwrite(str(folder / f"{t:06d}.png"), image)
    reader = open_video(str(folder))
    assert isinstance(reader, FrameFolderReader) and reader.num_frames == 5
    frames = reader.get_frames([4, 0])
    assert frames.shape == (2, 48, 64, 3) and frame_ids(frames) == [4, 0]


def test_short_video_is_edge_padded(tmp_path):
    path = write_opencv(tmp_path / "short.mp4", gray_levels(5))
    with open_video(path) as reader:
        assert frame_ids(reader.get_frames(vt.clip_indices(0, 4, 3, reader.num_frames))) == [0, 3, 4, 4]
        keyframe_clip = vt.clip_indices(1, 5, 1, reader.num_frames, anchor_position=2)
        assert frame_ids(reader.get_frames(keyframe_clip)) == [0, 0, 1, 2, 3]
        chunks = list(reader.iter_chunks(stride=2, chunk=2))
    assert [idx.tolist() for idx, _ in chunks] == [[0, 2], [4]]
    assert frame_ids(np.concatenate([f for _, f in chunks])) == [0, 2, 4]


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "zero_frames",
        "truncated",
        "truncated_faststart",
        "corrupt_tail",
        "random_bytes",
        "directory",
    ],
)
def test_unreadable_videos_raise_clear_errors(tmp_path, case):
    good = write_opencv(tmp_path / "good.mp4", gray_levels(10))
    path = str(tmp_path / f"{case}.mp4")
    if case == "empty":
        open(path, "wb").close()
    elif case == "zero_frames":
        cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48)).release()
    elif case == "truncated":
        data = open(good, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif case in ("truncated_faststart", "corrupt_tail"):
        # Index at the front: the container still reports every frame, the data behind it is gone or zeroed,
        # so decord opens the file and fails while decoding (or already on the first frame).
        rng = np.random.default_rng(0)
        noisy = rng.integers(0, 255, (30, 48, 64, 3), dtype=np.uint8)
        full = write_pyav(tmp_path / "fs.mp4", noisy, [i * 33 for i in range(30)], faststart=True)
        data = open(full, "rb").read()
        half = len(data) // 2
        open(path, "wb").write(
            data[:half] if case == "truncated_faststart" else data[:half] + bytes(len(data) - half)
        )
    elif case == "random_bytes":
        open(path, "wb").write(np.random.default_rng(1).bytes(4096))
    elif case == "directory":
        path = str(tmp_path / "not_a_video.mp4")
        os.makedirs(path)
        open(os.path.join(path, "notes.txt"), "w").write("x")

    with pytest.raises((VideoReadError, IndexError)) as info:
        with open_video(path) as reader:
            reader.get_frames(range(reader.num_frames))
    error = info.value
    assert isinstance(error, VideoReadError), f"{case}: expected VideoReadError, got {error!r}"
    message = str(error)
    assert path in message
    expected = {
        "missing": "does not exist",
        "empty": "empty (0 bytes)",
        "zero_frames": "no video stream",
        "truncated": "truncated",
        "random_bytes": "corrupt, truncated or not a video",
        "corrupt_tail": "corrupt",
        "directory": "no images",
    }
    if case in expected:
        assert expected[case] in message
    assert any(fix in message for fix in ("re-encode", "check", "re-download", "extract"))


def test_frame_indices_out_of_range_are_rejected(tmp_path):
    reader = open_video(write_opencv(tmp_path / "v.mp4", gray_levels(4)))
    with pytest.raises(IndexError, match="outside"):
        reader.get_frames([0, 4])


# ---------------------------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("seed", range(4))
def test_train_transform_moves_boxes_with_pixels(seed):
    clip = blob_frames(6, 60, 90)
    rng = np.random.RandomState(seed)
    for relative in (None, (0.4, 1.0)):
        geometry = vt.train_transform(
            60, 90, crop_size=48, jitter_scales=(60, 72), flip_prob=0.5, relative_scales=relative, rng=rng
        )
        out = vt.apply_to_clip(geometry, clip)
        assert out.shape == (6, 48, 48, 3) and out.dtype == np.uint8
        boxes = np.clip(geometry.apply_box(np.array([blob_box(t, 90) for t in range(6)], float)), 0, 48)
        for t in range(6):
            visible = boxes[t][2] - boxes[t][0] > 2 and boxes[t][3] - boxes[t][1] > 2
            if visible:  # the crop may cut the blob off entirely
                np.testing.assert_allclose(measured_box(out[t]), boxes[t], atol=1.5)


@pytest.mark.parametrize("size", [(37, 71), (90, 130)])
def test_uint8_clip_scale_matches_fvcore_within_one_level(size):
    # apply_to_clip resizes uint8 clips with OpenCV instead of fvcore's float32 round trip (the loader workers'
    # main cost): same sampling grid, so at most one gray level apart; a flipped (negative-stride) clip works
    clip = np.random.RandomState(0).randint(0, 256, (3, 60, 90, 3)).astype(np.uint8)
    scale = T.ScaleTransform(60, 90, *size, interp="bilinear")
    expected = scale.apply_image(clip)  # fvcore, on the whole stack
    out = vt.apply_to_clip(scale, clip)
    assert out.shape == expected.shape == (3, *size, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    flipped = vt.apply_to_clip(T.TransformList([T.HFlipTransform(90), scale]), clip[..., :1])
    assert flipped.shape == (3, *size, 1)


def test_crop_and_flip_are_exact():
    clip = blob_frames(5, 40, 70)
    geometry = T.TransformList([vt.spatial_view_crop(40, 70, 40, 0, 3), T.HFlipTransform(40)])
    out = vt.apply_to_clip(geometry, clip)
    for t in range(5):
        expected = geometry.apply_box(np.array([blob_box(t, 70)], float))[0]
        np.testing.assert_array_equal(measured_box(out[t]), expected)
        np.testing.assert_array_equal(out[t], clip[t, :, :40][:, ::-1])


def test_temporal_and_spatial_view_arithmetic():
    # 100 frames, 16x4 clips span 61 frames: 5 views start evenly from 0 to 39 (the last ends on frame 99).
    assert vt.test_clip_starts(100, 16, 4, 5) == [0, 10, 20, 29, 39]
    assert vt.test_clip_starts(100, 16, 4, 1) == [19]
    assert vt.test_clip_starts(30, 16, 4, 3) == [0, 0, 0]  # shorter than a clip: padded views
    assert vt.clip_span(16, 4) == 61
    starts = [vt.train_clip_start(100, 16, 4, np.random.RandomState(s)) for s in range(200)]
    assert min(starts) >= 0 and max(starts) <= 39 and len(set(starts)) > 20

    three_wide = [vt.spatial_view_crop(64, 100, 64, i, 3) for i in range(3)]
    assert [(c.x0, c.y0) for c in three_wide] == [(0, 0), (18, 0), (36, 0)]
    three_tall = [vt.spatial_view_crop(90, 64, 64, i, 3) for i in range(3)]
    assert [(c.x0, c.y0) for c in three_tall] == [(0, 0), (0, 13), (0, 26)]
    five = [vt.spatial_view_crop(80, 100, 64, i, 5) for i in range(5)]
    assert [(c.x0, c.y0) for c in five] == [(0, 0), (36, 0), (18, 8), (0, 16), (36, 16)]
    assert (vt.spatial_view_crop(80, 100, 64, 0, 1).x0, vt.spatial_view_crop(80, 100, 64, 0, 1).y0) == (18, 8)
    with pytest.raises(ValueError, match="does not fit"):
        vt.spatial_view_crop(50, 100, 64, 0, 3)

    videos = [{"file_name": f"v{i}.mp4", "label": i, "video_id": f"v{i}"} for i in range(2)]
    views = expand_test_views(videos, 5, 3)
    assert len(views) == 30
    assert [v["view"] for v in views[:15]] == [(t, s) for t in range(5) for s in range(3)]
    assert {v["video_id"] for v in views[:15]} == {"v0"} and views[0]["num_views"] == (5, 3)


def test_tensor_layout():
    clip = np.random.default_rng(0).integers(0, 256, (4, 8, 10, 3), dtype=np.uint8)
    tensor = vt.clip_to_tensor(clip)
    assert tensor.shape == (3, 4, 8, 10) and tensor.dtype == torch.uint8
    assert torch.equal(tensor[:, 2, 3, 4], torch.from_numpy(clip[2, 3, 4]))
    assert torch.equal(vt.clip_to_tensor(clip, "BGR")[0], tensor[2])


# ---------------------------------------------------------------------------------------------- datasets
def test_kinetics_csv_and_class_folders(tmp_path):
    root = tmp_path / "k"
    for rel in ("a/x y.mp4", "b/z.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_opencv(root / rel, gray_levels(3))
    (root / "train.csv").write_text("a/x y.mp4 0\nb/z.mp4 2\nb/gone.mp4 1\n\n")
    records, classes = load_kinetics_csv(str(root / "train.csv"), str(root))
    assert [r["label"] for r in records] == [0, 2]  # the missing file is dropped (and logged)
    assert records[0]["file_name"] == str(root / "a/x y.mp4") and records[0]["video_id"] == "a/x y"
    assert classes == ["0", "1", "2"]
    (root / "classes.txt").write_text("abseiling\nbowling\ncooking\n")
    assert load_kinetics_csv(str(root / "train.csv"), str(root))[1] == ["abseiling", "bowling", "cooking"]
    (root / "val.csv").write_text("a/x y.mp4,1\n")
    assert load_kinetics_csv(str(root / "val.csv"), str(root), separator=",")[0][0]["label"] == 1
    (root / "bad.csv").write_text("a/x y.mp4 walking\n")
    with pytest.raises(ValueError, match="not an integer"):
        load_kinetics_csv(str(root / "bad.csv"), str(root))
    with pytest.raises(FileNotFoundError, match="PySlowFast format"):
        load_kinetics_csv(str(root / "test.csv"), str(root))
    with pytest.raises(FileNotFoundError, match="none of the 3 videos"):
        load_kinetics_csv(str(root / "train.csv"), str(tmp_path))

    folders = tmp_path / "f" / "train"
    for name, count in (("walk", 2), ("run", 1)):
        (folders / name).mkdir(parents=True)
        for i in range(count):
            write_opencv(folders / name / f"{i}.mp4", gray_levels(3))
    (folders / "run" / "readme.txt").write_text("not a video")
    records, classes = load_class_folders(str(folders))
    assert classes == ["run", "walk"]
    assert [(r["video_id"], r["label"]) for r in records] == [("run/0", 0), ("walk/0", 1), ("walk/1", 1)]
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        load_class_folders(str(tmp_path / "nowhere"))

    register_kinetics("_test_kinetics_folders", str(tmp_path / "f"), "train", layout="folders")
    assert MetadataCatalog.get("_test_kinetics_folders").classes == ["run", "walk"]
    assert MetadataCatalog.get("_test_kinetics_folders").evaluator_type == "video_classification"
    assert len(DatasetCatalog.get("_test_kinetics_folders")) == 3
    register_kinetics("_test_kinetics_missing", str(tmp_path / "none"), "val")  # lazy: no error yet
    with pytest.raises(FileNotFoundError, match="val.csv"):
        DatasetCatalog.get("_test_kinetics_missing")


def test_moving_shapes_is_deterministic_fast_and_consistent(tmp_path, shapes_root):
    start = time.perf_counter()
    a = ms.ensure_moving_shapes_dataset(str(tmp_path / "a"), num_train=12, num_val=6)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"generating 18 videos took {elapsed:.1f} s"
    for rel in ("train.csv", "val.csv", "classes.txt", "annotations/keyframes_train.json"):
        assert filecmp.cmp(os.path.join(a, rel), os.path.join(shapes_root, rel), shallow=False), rel
    assert np.array_equal(
        open_video(os.path.join(a, "videos/val_0003.mp4")).get_frames(range(16)),
        open_video(os.path.join(shapes_root, "videos/val_0003.mp4")).get_frames(range(16)),
    )
    other = ms.ensure_moving_shapes_dataset(str(tmp_path / "b"), num_train=12, num_val=6, seed=1)
    assert not filecmp.cmp(
        os.path.join(other, "annotations/keyframes_train.json"),
        os.path.join(a, "annotations/keyframes_train.json"),
        shallow=False,
    )
    assert ms.ensure_moving_shapes_dataset(a, num_train=12) == a  # idempotent
    with pytest.raises(FileExistsError, match="other parameters"):
        ms.ensure_moving_shapes_dataset(a, num_train=99)
    assert not [d for d in os.listdir(tmp_path) if d.startswith(".moving_shapes.tmp")]

    records, classes = load_kinetics_csv(os.path.join(a, "train.csv"), a)
    assert classes == list(ms.CLASSES) and sorted({r["label"] for r in records}) == list(range(6))
    dicts, meta = load_keyframe_coco_json(os.path.join(a, "annotations/keyframes_val.json"), a)
    assert len(dicts) == 6 * 3 and meta["thing_classes"] == list(ms.CLASSES)
    for record in dicts[:9]:
        frame = open_video(record["video_file"]).get_frames([record["frame_index"]])[0].astype(int)
        (anno,) = record["annotations"]
        assert (
            anno["bbox_mode"] == BoxMode.XYWH_ABS and anno["category_id"] == int(record["video_id"][-1]) % 6
        )
        x, y, w, h = (int(v) for v in anno["bbox"])
        assert w > 3 and h > 3 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
        # the box is tight: the object touches each of its four edges. Backgrounds have every channel
        # below 70 and shapes one at least 90, so a bright pixel on an edge is the object.
        crop = frame[y : y + h, x : x + w]
        for edge in (crop[0], crop[-1], crop[:, 0], crop[:, -1]):
            assert edge.max() >= 80
        polygon = np.asarray(anno["segmentation"][0]).reshape(-1, 2)
        assert polygon[:, 0].min() >= x and polygon[:, 0].max() <= x + w
        assert polygon[:, 1].min() >= y and polygon[:, 1].max() <= y + h
    # every class moves: the first and last keyframe of each video differ (one val video per class)
    for video in range(6):
        first, last = dicts[3 * video], dicts[3 * video + 2]
        frames = (
            open_video(first["video_file"])
            .get_frames([first["frame_index"], last["frame_index"]])
            .astype(int)
        )
        assert np.abs(frames[0] - frames[1]).max(-1).sum() > 40, ms.CLASSES[video]


@pytest.fixture
def restore_moving_shapes_registration():
    yield
    register_builtin_datasets()  # back to the default root, as importing hiera_det.d2 registers it


def test_moving_shapes_registration_is_lazy(tmp_path, shapes_root, restore_moving_shapes_registration):
    register_builtin_datasets(tmp_path / "absent")
    assert MetadataCatalog.get("moving_shapes_kf_val").evaluator_type == "coco"
    with pytest.raises(FileNotFoundError, match="python -m hiera_det.data.datasets.moving_shapes"):
        DatasetCatalog.get("moving_shapes_cls_train")
    assert not os.path.exists(tmp_path / "absent")
    register_builtin_datasets(os.path.dirname(shapes_root))
    assert len(DatasetCatalog.get("moving_shapes_cls_train")) == 12
    assert len(DatasetCatalog.get("moving_shapes_kf_val")) == 18
    assert MetadataCatalog.get("moving_shapes_cls_val").classes == list(ms.CLASSES)
    assert MetadataCatalog.get("moving_shapes_kf_train").thing_dataset_id_to_contiguous_id[1] == 0


# ---------------------------------------------------------------------------------------------- mappers
def test_classification_mapper_train_and_test_views(shapes_root):
    records, _ = load_kinetics_csv(os.path.join(shapes_root, "val.csv"), shapes_root)
    cfg = video_cfg()
    train = VideoClassificationMapper(cfg, is_train=True)
    item = train(records[0])
    assert item["clip"].shape == (3, 8, 64, 64) and item["clip"].dtype == torch.uint8
    assert item["label"] == records[0]["label"] and item["video_id"] == records[0]["video_id"]

    test = VideoClassificationMapper(cfg, is_train=False)
    views = expand_test_views(
        records[:1], cfg.INPUT.VIDEO.NUM_TEMPORAL_VIEWS, cfg.INPUT.VIDEO.NUM_SPATIAL_VIEWS
    )
    outputs = [test(v) for v in views]
    assert [o["view"] for o in outputs] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    # 16 frames, 8x2 clips span 15 frames: temporal views start at 0 and 1
    assert outputs[0]["frame_indices"].tolist() == list(range(0, 16, 2))
    assert outputs[3]["frame_indices"].tolist() == list(range(1, 16, 2))
    for o in outputs:
        assert o["clip"].shape == (3, 8, 64, 64)
    assert torch.equal(outputs[0]["clip"], outputs[1]["clip"])  # square frames: all crops coincide
    centered = test(records[0])
    assert centered["view"] == (0, 0) and centered["num_views"] == (1, 1)
    with pytest.raises(ValueError, match="TRAIN_JITTER_SCALES"):
        VideoClassificationMapper(video_cfg(**{"INPUT.VIDEO.TRAIN_CROP_SIZE": 96}), is_train=True)


def test_keyframe_mapper_boxes_follow_frames(tmp_path):
    width, height, num_frames = 80, 48, 12
    video = write_opencv(tmp_path / "blob.mp4", blob_frames(num_frames, height, width))
    x0, y0, x1, y1 = blob_box(7, width)
    record = {
        "video_file": video,
        "file_name": video,
        "frame_index": 7,
        "height": height,
        "width": width,
        "image_id": 1,
        "annotations": [
            {
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": 0,
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
            }
        ],
    }
    mapper = KeyframeClipMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(96, 1000), T.RandomFlip(prob=1.0)],
        num_frames=4,
        sampling_rate=3,
        use_instance_mask=True,
    )
    out = mapper(record)
    assert out["image"].shape == (3, 4, 96, 160) and out["keyframe_index"] == 2
    assert out["frame_indices"].tolist() == [1, 4, 7, 10]
    assert (out["height"], out["width"]) == (height, width)
    frames = out["image"].permute(1, 2, 3, 0).numpy()
    gt = out["instances"].gt_boxes.tensor[0].numpy()
    np.testing.assert_allclose(measured_box(frames[2]), gt, atol=1.5)
    # every frame went through the same resize + flip: blob of source frame f sits at its transformed box
    for position, source in enumerate([1, 4, 7, 10]):
        sx0, sy0, sx1, sy1 = blob_box(source, width)
        expected = np.array([width - sx1, sy0, width - sx0, sy1]) * 2.0
        np.testing.assert_allclose(measured_box(frames[position]), expected, atol=1.5)
    assert out["instances"].gt_masks.polygons[0][0].max() <= 160

    evaluation = KeyframeClipMapper(
        is_train=False, augmentations=[T.ResizeShortestEdge(96, 1000)], num_frames=4, sampling_rate=3
    )
    out = evaluation(record)
    assert "annotations" not in out and "instances" not in out and out["image"].shape == (3, 4, 96, 160)
    with pytest.raises(ValueError, match="outside the 12 frames"):
        evaluation(dict(record, frame_index=12))
    late_keyframe = KeyframeClipMapper(
        is_train=False, augmentations=[], num_frames=4, sampling_rate=3, keyframe_index=3
    )(record)
    assert late_keyframe["frame_indices"].tolist() == [0, 1, 4, 7] and late_keyframe["keyframe_index"] == 3


def test_keyframe_mapper_from_config_on_moving_shapes(shapes_root):
    dicts, _ = load_keyframe_coco_json(
        os.path.join(shapes_root, "annotations/keyframes_train.json"), shapes_root
    )
    mapper = KeyframeClipMapper(video_cfg(), is_train=True)
    out = mapper(dicts[0])
    assert out["image"].shape == (3, 8, 96, 96) and out["image"].dtype == torch.uint8
    assert len(out["instances"]) == 1 and out["instances"].gt_classes.tolist() == [
        dicts[0]["annotations"][0]["category_id"]
    ]


class _TinyDataset(torch.utils.data.Dataset):
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def test_unreadable_training_video_is_skipped_and_counted_across_workers(shapes_root, tmp_path):
    records, _ = load_kinetics_csv(os.path.join(shapes_root, "val.csv"), shapes_root)
    broken = str(tmp_path / "broken.mp4")
    open(broken, "wb").write(b"\x00" * 100)
    records = records[:5] + [dict(records[0], file_name=broken, video_id="broken")]
    mapper = VideoClassificationMapper(video_cfg(), is_train=True)
    dataset = MapDataset(_TinyDataset(records), mapper)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, num_workers=2, timeout=60, collate_fn=lambda batch: batch
    )
    items = [item for batch in loader for item in batch]
    assert len(items) == 6  # the broken video was replaced by another one
    assert "broken" not in {item["video_id"] for item in items}
    assert mapper.num_skipped >= 1 and set(mapper.skipped_videos) == {broken}

    evaluation = VideoClassificationMapper(video_cfg(), is_train=False)
    with pytest.raises(VideoReadError, match="broken.mp4"):
        evaluation(records[-1])
    assert evaluation.num_skipped == 0
