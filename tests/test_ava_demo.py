"""tools/video_demo.py --mode actions (hiera_det.demo_actions): proposals file or person detector, JSONL + mp4."""

from __future__ import annotations

import json
import os

import pytest
import torch

import hiera_det.d2  # noqa: F401  (registers HieraActionDetector)
from hiera_det.data.datasets import ava_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = ava_shapes.ensure_ava_shapes_dataset(str(tmp_path_factory.mktemp("d") / "ava_shapes_tiny"), preset="tiny",
                                                write_videos=True)
    ava_shapes.register_ava_shapes(root, prefix="demo_avs")
    return root


def _cfg(*opts):
    from hiera_det.config import get_hiera_cfg, merge_config

    return merge_config(get_hiera_cfg(), "video/ava_shapes.yaml", list(opts))


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_actions_from_proposals(tiny, tmp_path):
    import subprocess
    import sys

    video = os.path.join(tiny, "videos_15min", "val0001.mp4")
    proposals = os.path.join(tiny, "annotations", "ava_detection_val_boxes_and_labels.csv")
    # the label map comes from the bundled tiny dataset's own registration name in the subprocess
    done = subprocess.run([
        sys.executable, os.path.join(ROOT, "tools", "video_demo.py"),
        "--config-file", "video/ava_shapes.yaml", "--input", video, "--output", str(tmp_path), "--mode", "actions",
        "--proposals", proposals, "--video-start-sec", "900", "--top-k", "3", "--allow-random-weights",
        "DATASETS.TEST", "('ava_shapes_tiny_val',)", "DATASETS.TRAIN", "('ava_shapes_tiny_train',)",
    ], capture_output=True, text=True, timeout=600, env={**os.environ, "DETECTRON2_DATASETS": os.path.dirname(tiny)})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = _lines(tmp_path / "val0001.jsonl")
    assert [line["timestamp"] for line in lines] == [901.0, 902.0] and [line["frame_index"] for line in lines] == [8, 16]
    person = lines[0]["persons"][0]
    assert len(person["box"]) == 4 and len(person["actions"]) == 3
    assert {a["name"] for a in person["actions"]} <= set(ava_shapes.ACTION_NAMES.values())
    ids_first, ids_second = ([p["person_id"] for p in line["persons"]] for line in lines)
    assert len(set(ids_first)) == len(ids_first) and set(ids_first) & set(ids_second)  # tracked across keyframes
    assert os.path.getsize(tmp_path / "val0001.mp4") > 0


def test_actions_with_person_detector_on_any_video(tiny, tmp_path):
    from detectron2.modeling import build_model

    from hiera_det.demo.actions import ActionDemo, ActionDemoSettings

    from hiera_det.data.video_io import VideoClipReader

    # an untrained shapes detector as the person detector, any score; its most frequent class stands for "person"
    cfg = _cfg("MODEL.ACTION_HEAD.PERSON_DETECTOR.CONFIG_FILE", "shapes/hiera_tiny_shapes.yaml",
               "MODEL.ACTION_HEAD.PERSON_DETECTOR.SCORE_THRESH", "0.0")
    torch.manual_seed(0)
    demo = ActionDemo(cfg, build_model(cfg), ActionDemoSettings(keyframe_interval=1.0, write_video=False), [])
    video = os.path.join(tiny, "videos_15min", "train0002.mp4")
    with VideoClipReader(video) as reader:
        frame = reader.get_frames([8])[0]
    classes = demo.detector.predictor(frame[:, :, ::-1].copy())["instances"].pred_classes
    demo.detector.class_id = int(classes.mode().values)
    summary = demo.run(video, str(tmp_path))
    lines = _lines(summary["jsonl"])
    assert [line["frame_index"] for line in lines] == [0, 8, 16]  # one keyframe a second at 8 fps, 24 frames
    assert summary["mp4"] is None and summary["persons"] > 0
    assert all(len(p["actions"]) == 5 and p["actions"][0]["name"] == f"action {p['actions'][0]['id']}"
               for line in lines for p in line["persons"])


def test_actions_needs_person_boxes(tiny):
    from detectron2.modeling import build_model

    from hiera_det.demo.actions import ActionDemo, ActionDemoSettings

    cfg = _cfg()
    with pytest.raises(ValueError, match="needs person boxes: pass --proposals"):
        ActionDemo(cfg, build_model(cfg), ActionDemoSettings(), [])


def test_keyframes_follow_the_container_clock_and_proposal_times_are_checked():
    from types import SimpleNamespace

    import numpy as np

    from hiera_det.data.ava import PersonBox
    from hiera_det.demo.actions import ActionDemo, ActionDemoSettings

    # variable frame rate: 10 frames in the first second, 2 in the next two; a keyframe every 0.5 s
    stamps = np.array([0.1 * k for k in range(10)] + [1.0 + 0.5 * k for k in range(5)])
    demo = SimpleNamespace(proposals=None, settings=ActionDemoSettings(keyframe_interval=0.5))
    keyframes = ActionDemo._keyframes(demo, "v", stamps)
    assert [(i, round(t, 3)) for i, t, _, _ in keyframes] == [(0, 0.0), (5, 0.5), (10, 1.0), (11, 1.5), (12, 2.0),
                                                              (13, 2.5), (14, 3.0)]
    person = PersonBox(box=(0.1, 0.1, 0.5, 0.5), score=0.9)
    proposals = SimpleNamespace(boxes={("v", "0901"): [person], ("v", "0902"): [person]})
    settings = ActionDemoSettings(proposals="p.csv", video_start_sec=0.0)
    with pytest.raises(ValueError, match=r"pass --video-start-sec 900"):
        ActionDemo._keyframes(SimpleNamespace(proposals=proposals, settings=settings), "v", stamps)
    settings.video_start_sec = 900.0
    found = ActionDemo._keyframes(SimpleNamespace(proposals=proposals, settings=settings), "v", stamps)
    assert [(i, t) for i, t, _, _ in found] == [(10, 901.0), (12, 902.0)]


def test_actions_mode_goes_on_after_a_bad_video_and_lists_it(tiny, tmp_path):
    from types import SimpleNamespace

    from detectron2.modeling import build_model

    from hiera_det.demo.actions import run_action_demo

    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a_broken.mp4").write_text("not a video")
    os.symlink(os.path.join(tiny, "videos_15min", "val0001.mp4"), folder / "val0001.mp4")
    proposals = os.path.join(tiny, "annotations", "ava_detection_val_boxes_and_labels.csv")
    cfg = _cfg()
    torch.manual_seed(0)
    args = SimpleNamespace(input=str(folder), output=str(tmp_path / "out"), top_k=2, keyframe_interval=1.0,
                           proposals=proposals, video_start_sec=900.0, no_video=True)
    result = run_action_demo(cfg, build_model(cfg).eval(), args)
    assert len(result.videos) == 1 and len(result.failed) == 1  # the tool exits 1 on any failure
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [v["video"] for v in summary["videos"]] == [str(folder / "val0001.mp4")]
    assert [f["video"] for f in summary["failed"]] == [str(folder / "a_broken.mp4")]
    assert len(_lines(tmp_path / "out" / "val0001.jsonl")) == 2
