"""hiera_det.demo.video (the library behind tools/video_demo.py) on short generated videos, with
random-weight tiny models. The command line itself runs in test_tools_cli.py."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")
decord = pytest.importorskip("decord")

import hiera_det.d2  # noqa: F401,E402
from detectron2.modeling import build_model  # noqa: E402

from hiera_det.config import get_hiera_cfg  # noqa: E402
from hiera_det.data.video_io import VideoReadError  # noqa: E402
from hiera_det.demo.video import DemoSettings, FrameWindow, VideoDemo, run_video_demo  # noqa: E402


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


def write_video(path, num_frames=7, size=(48, 80), fps=10.0, gray=False, fourcc="mp4v"):
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for i in range(num_frames):
        frame = np.full((h, w, 3), 30, np.uint8)
        cv2.rectangle(frame, (4 + 5 * i, 10), (20 + 5 * i, 30), (0, 200, 255), -1)
        if gray:
            frame = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        writer.write(frame)
    writer.release()
    return str(path)


def tiny_rcnn_heads(cfg):
    """RPN on p2-p6 and a one-layer box head: a fast Faster R-CNN on top of a tiny FPN."""
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC, cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 1, 32


def video_cfg(meta_arch):
    cfg = get_hiera_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = meta_arch
    h, m = cfg.MODEL.HIERA, cfg.MODEL.HIERA_VIDEO
    h.NAME, h.STAGES, h.EMBED_DIM = "hiera_base_16x224", [1, 1, 1, 1], 16
    m.NUM_FRAMES, m.SAMPLING_RATE, m.NUM_CLASSES = 4, 2, 3
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.VIDEO.TRAIN_CROP_SIZE = cfg.INPUT.VIDEO.TEST_CROP_SIZE = 32
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 48, 96
    if meta_arch == "HieraClipDetector":
        cfg.MODEL.BACKBONE.NAME = "build_hiera_video_fpn_backbone"
        cfg.MODEL.FPN.OUT_CHANNELS = 16
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
        tiny_rcnn_heads(cfg)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
        cfg.TEST.DETECTIONS_PER_IMAGE = 5
    return cfg


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def frames_in(path):
    return len(decord.VideoReader(str(path)))


def test_clip_detector_mode_writes_jsonl_and_mp4(tmp_path):
    video = write_video(tmp_path / "short.mp4", num_frames=7, size=(50, 78))  # shorter than a clip span
    cfg = video_cfg("HieraClipDetector")
    model = build_model(cfg)
    settings = DemoSettings(mode="clip", frame_stride=2, batch_size=3, score_threshold=0.0, chunk=4,
                            progress=False)
    out = str(tmp_path / "out")
    [summary] = run_video_demo(cfg, model, video, out, settings, class_names=["a", "b", "c"]).videos
    records = read_jsonl(summary["jsonl"])
    stamps = decord.VideoReader(video).get_frame_timestamp(range(7))[:, 0]
    assert [r["frame_index"] for r in records] == [0, 2, 4, 6]
    for r in records:
        assert r["timestamp"] == pytest.approx(stamps[r["frame_index"]], abs=1e-6)
        assert len(r["boxes"]) == len(r["scores"]) == len(r["classes"]) == len(r["class_names"])
        for x0, y0, x1, y1 in r["boxes"]:  # source-frame coordinates
            assert 0 <= x0 <= x1 <= 78 and 0 <= y0 <= y1 <= 50
    assert sum(len(r["boxes"]) for r in records) > 0  # threshold 0: the untrained head still reports boxes
    assert frames_in(summary["mp4"]) == 4
    assert decord.VideoReader(summary["mp4"])[0].shape == (50, 78, 3)
    # bounded memory: one clip span (4 frames x rate 2 -> 7) plus one read chunk
    assert summary["peak_cached_frames"] <= 7 + 4


def test_frame_window_streams_and_releases():
    class Reader:
        num_frames = 100

        def __init__(self):
            self.reads = []

        def get_frames(self, indices):
            self.reads.append(list(indices))
            return np.stack([np.full((2, 2, 3), i % 256, np.uint8) for i in indices])

    reader = Reader()
    window = FrameWindow(reader, chunk=8)
    for start in range(0, 90, 5):
        frames = window.get([start, start + 3, start + 6])
        assert [int(f[0, 0, 0]) for f in frames] == [start, start + 3, start + 6]
        window.release_below(start + 5)
    assert window.peak <= 7 + 8  # one request span (7 frames) plus one read-ahead chunk
    decoded = [i for read in reader.reads for i in read]
    assert len(decoded) == len(set(decoded))  # no frame decoded twice


def test_classifier_mode_top_k_per_clip_and_video(tmp_path):
    video = write_video(tmp_path / "cls.mp4", num_frames=20, size=(48, 64))
    cfg = video_cfg("HieraVideoClassifier")
    model = build_model(cfg)
    settings = DemoSettings(mode="classify", top_k=2, progress=False)
    summary = VideoDemo(cfg, model, settings, ["x", "y", "z"]).run(video, str(tmp_path / "out"))
    records = read_jsonl(summary["jsonl"])
    clips, last = records[:-1], records[-1]
    span = (4 - 1) * 2 + 1
    assert [c["clip_start"] for c in clips] == [0, 7, 13]  # non-overlapping, plus one covering the tail
    for c in clips:
        assert len(c["top_k"]) == 2 and c["top_k"][0]["score"] >= c["top_k"][1]["score"]
        assert c["clip_end"] == c["clip_start"] + span - 1
    assert last["num_clips"] == 3 and last["top_k"][0]["name"] in ("x", "y", "z")
    assert frames_in(summary["mp4"]) == 20


def test_image_detector_per_frame_on_grayscale_frame_folder(tmp_path):
    frames_dir = tmp_path / "gray_frames"
    frames_dir.mkdir()
    for i in range(5):
        img = np.full((45, 61), 40 + 30 * i, np.uint8)  # odd size, single channel
        cv2.imwrite(str(frames_dir / f"{i:05d}.png"), img)
    cfg = get_hiera_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_hiera_fpn_backbone"
    cfg.MODEL.HIERA.NAME = "hiera_tiny_224"
    cfg.MODEL.HIERA.STAGES = [1, 1, 1, 1]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    tiny_rcnn_heads(cfg)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    model = build_model(cfg)
    settings = DemoSettings(mode="frame", batch_size=2, score_threshold=0.0, progress=False)
    out = str(tmp_path / "out")
    [summary] = run_video_demo(cfg, model, str(frames_dir), out, settings, class_names=[]).videos
    records = read_jsonl(summary["jsonl"])
    assert [r["frame_index"] for r in records] == list(range(5))
    assert records[1]["timestamp"] == pytest.approx(1 / 30, abs=1e-6)  # frame folders: index / 30 fps
    reader = decord.VideoReader(summary["mp4"])
    assert len(reader) == 5 and reader[0].shape == (46, 62, 3)  # odd frames padded by one row/column


def test_variable_frame_rate_timestamps(tmp_path):
    av = pytest.importorskip("av")
    path = str(tmp_path / "vfr.mp4")
    pts_ms = [0, 100, 150, 400, 420, 700]
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = __import__("fractions").Fraction(1, 1000)
        for i, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts = pts
            frame.time_base = stream.codec_context.time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    expected = decord.VideoReader(path).get_frame_timestamp(range(len(pts_ms)))[:, 0]
    assert np.ptp(np.diff(expected)) > 0.1  # the file really has a variable frame rate
    cfg = video_cfg("HieraClipDetector")
    settings = DemoSettings(mode="clip", score_threshold=0.5, write_video=False, progress=False)
    out = str(tmp_path / "out")
    [summary] = run_video_demo(cfg, build_model(cfg), path, out, settings, class_names=[]).videos
    stamps = [r["timestamp"] for r in read_jsonl(summary["jsonl"])]
    np.testing.assert_allclose(stamps, expected, atol=1e-6)
    assert summary["mp4"] is None


def test_missing_and_corrupt_videos_raise_video_read_error(tmp_path):
    cfg = video_cfg("HieraVideoClassifier")
    demo = VideoDemo(cfg, build_model(cfg), DemoSettings(mode="classify", progress=False))
    with pytest.raises(VideoReadError, match="does not exist"):
        run_video_demo(cfg, demo.model, str(tmp_path / "nope.mp4"), str(tmp_path), demo.settings)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(2048))
    with pytest.raises(VideoReadError, match="corrupt.mp4"):
        demo.run(str(corrupt), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="does not fit"):
        VideoDemo(cfg, demo.model, DemoSettings(mode="clip"))


def test_a_bad_video_in_a_folder_does_not_stop_the_others(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a_corrupt.mp4").write_bytes(os.urandom(2048))
    write_video(folder / "b.avi", num_frames=5, fourcc="MJPG")
    write_video(folder / "b.mp4", num_frames=6)  # same name, other extension: its own outputs
    cfg = video_cfg("HieraVideoClassifier")
    settings = DemoSettings(mode="classify", top_k=2, write_video=False, progress=False)
    out = tmp_path / "out"
    result = run_video_demo(cfg, build_model(cfg), str(folder), str(out), settings, class_names=list("xyz"))
    assert [f["video"] for f in result.failed] == [str(folder / "a_corrupt.mp4")]
    assert "a_corrupt.mp4" in result.failed[0]["error"] and "cannot read video" in result.failed[0]["error"]
    assert [(v["video"], os.path.basename(v["jsonl"])) for v in result.videos] == [
        (str(folder / "b.avi"), "b.jsonl"), (str(folder / "b.mp4"), "b_1.jsonl")]  # fmt: skip
    assert read_jsonl(out / "b_1.jsonl")[-1]["num_clips"] >= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {"videos": result.videos, "failed": result.failed}


def test_clip_detector_on_a_video_of_extreme_aspect_ratio(tmp_path):
    """Detectron2's test resize makes an 8 x 2048 frame 0 pixels high at these sizes; the demo keeps one."""
    video = write_video(tmp_path / "strip.mp4", num_frames=3, size=(8, 2048))
    cfg = video_cfg("HieraClipDetector")
    settings = DemoSettings(mode="clip", score_threshold=0.0, write_video=False, progress=False)
    [summary] = run_video_demo(cfg, build_model(cfg), video, str(tmp_path / "out"), settings).videos
    records = read_jsonl(summary["jsonl"])
    assert [r["frame_index"] for r in records] == [0, 1, 2]
    for r in records:
        for x0, y0, x1, y1 in r["boxes"]:  # source-frame coordinates
            assert 0 <= x0 <= x1 <= 2048 and 0 <= y0 <= y1 <= 8


def _detector_cfg(mode):
    if mode == "clip":
        return video_cfg("HieraClipDetector")
    cfg = get_hiera_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_hiera_fpn_backbone"
    cfg.MODEL.HIERA.NAME, cfg.MODEL.HIERA.STAGES = "hiera_tiny_224", [1, 1, 1, 1]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    tiny_rcnn_heads(cfg)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    cfg.TEST.DETECTIONS_PER_IMAGE = 4
    return cfg


def _all_frames(path):
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


@pytest.mark.parametrize("mode", ["frame", "clip"])
def test_pipelined_run_writes_what_the_sequential_run_writes(tmp_path, mode):
    video = write_video(tmp_path / "v.mp4", num_frames=9, size=(48, 80))
    cfg = _detector_cfg(mode)
    model = build_model(cfg)
    outputs = {}
    for pipeline in (False, True):
        settings = DemoSettings(mode=mode, batch_size=2, score_threshold=0.0, chunk=3, progress=False,
                                pipeline=pipeline)  # fmt: skip
        [summary] = run_video_demo(cfg, model, video, str(tmp_path / str(pipeline)), settings,
                                   class_names=["a", "b", "c"]).videos  # fmt: skip
        assert set(summary["seconds"]) >= {"decode", "preprocess", "model", "draw", "encode", "total"}
        with open(summary["jsonl"], "rb") as f:
            outputs[pipeline] = f.read(), _all_frames(summary["mp4"])
    (sequential_json, sequential_frames), (pipelined_json, pipelined_frames) = outputs[False], outputs[True]
    assert pipelined_json == sequential_json
    assert sum(len(r["boxes"]) for r in map(json.loads, pipelined_json.splitlines())) > 0  # boxes were drawn
    assert pipelined_frames.shape == (9, 48, 80, 3)
    np.testing.assert_array_equal(pipelined_frames, sequential_frames)


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_failing_frame_is_named_and_the_frames_before_it_are_kept(tmp_path, monkeypatch, pipeline):
    import hiera_det.demo.video as video_module

    video = write_video(tmp_path / "v.mp4", num_frames=9, size=(48, 80))
    cfg = _detector_cfg("frame")
    model = build_model(cfg)
    draw = video_module.draw_boxes
    drawn = []

    def draw_until_frame_5(frame, *args):  # frames are drawn in order, one call each
        drawn.append(1)
        if len(drawn) == 6:
            raise ValueError("cannot draw this one")
        return draw(frame, *args)

    monkeypatch.setattr(video_module, "draw_boxes", draw_until_frame_5)
    settings = DemoSettings(mode="frame", batch_size=2, score_threshold=0.0, progress=False, pipeline=pipeline)
    result = run_video_demo(cfg, model, video, str(tmp_path / "out"), settings)
    [failed] = result.failed
    assert "frame 5 " in failed["error"] and "cannot draw this one" in failed["error"]
    assert [r["frame_index"] for r in read_jsonl(tmp_path / "out" / "v.jsonl")] == [0, 1, 2, 3, 4, 5]
    assert frames_in(tmp_path / "out" / "v.mp4") == 5  # a playable file with every frame before it

    monkeypatch.setattr(video_module, "draw_boxes", draw)
    calls, forward = [], model.forward

    def fail_on_second_batch(inputs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: out of memory")
        return forward(inputs)

    monkeypatch.setattr(model, "forward", fail_on_second_batch)
    result = run_video_demo(cfg, model, video, str(tmp_path / "out2"), settings)
    [failed] = result.failed
    assert failed["error"].startswith("frames 2..3 (at ") and "the model" in failed["error"]
    assert [r["frame_index"] for r in read_jsonl(tmp_path / "out2" / "v.jsonl")] == [0, 1]
    assert frames_in(tmp_path / "out2" / "v.mp4") == 2
