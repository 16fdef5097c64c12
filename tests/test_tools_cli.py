"""The command-line tools end to end, run as subprocesses: tools/demo.py, tools/video_demo.py and
tools/train_net.py --eval-only over bad inputs and checkpoints that hold Python objects.

The library behind them is tested in test_demo.py, test_video_demo.py and test_tools_weights.py; this file
imports nothing of the tools themselves, so it checks the command lines exactly as a user runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import hiera_det.d2  # noqa: E402,F401  (registers the meta-architectures this file builds in-process)
from hiera_det.config import get_hiera_cfg, merge_config  # noqa: E402
from hiera_det.data.datasets.shapes import SHAPES_CLASSES, render_scene  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "shapes/hiera_tiny_shapes.yaml"
# One block per stage and small test images keep a forward pass well under a second on two cores.
TINY_OPTS = ["MODEL.HIERA.STAGES", "[1,1,1,1]", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128",
             "INPUT.MAX_SIZE_TEST", "192"]  # fmt: skip


def run_tool(script: str, *args, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "tools" / script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=cwd)  # fmt: skip


class _RunsCodeWhenUnpickled:
    """Stands for whatever a malicious checkpoint would run: unpickling it creates the folder ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def save_with_code(path: Path, state: dict) -> Path:
    """A checkpoint whose weights fit, plus an object that runs code when unpickled; returns the marker
    folder that exists afterwards if anything unpickled the file."""
    marker = path.parent / f"{path.stem}_code_ran"
    torch.save({"model": state, "extra": _RunsCodeWhenUnpickled(marker)}, path)
    return marker


@pytest.fixture(scope="module")
def shapes_weights(tmp_path_factory) -> Path:
    """model_final.pth of the tiny shapes detector, random weights."""
    torch.manual_seed(0)
    cfg = merge_config(get_hiera_cfg(), CONFIG, TINY_OPTS)
    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(build_model(cfg), save_dir=str(folder)).save("model_final")
    return folder / "model_final.pth"


def test_demo_processes_every_image_and_names_each_failure(tmp_path, shapes_weights):
    """A 4 x 4000 image, which Detectron2's resize turns into 0 rows, and an unreadable file among
    ordinary images: every readable image is processed and each failure is named with its reason."""
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_thin.png"), np.full((4, 4000, 3), 200, np.uint8))
    (folder / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    images = []
    for index, (height, width) in enumerate([(150, 210), (181, 133)]):
        scene = render_scene(np.random.default_rng([5, index]), height, width)
        images.append(folder / f"c_shapes_{index}.jpg")
        cv2.imwrite(str(images[-1]), scene.image[:, :, ::-1])
    out = tmp_path / "out"
    # Trailing KEY VALUE overrides after the open-ended --input; threshold 0 so random weights still detect.
    done = run_tool("demo.py", "--config", CONFIG, "--input", folder, "--output", out,
                    "--confidence-threshold", "0", *TINY_OPTS, "MODEL.WEIGHTS", shapes_weights,
                    "TEST.DETECTIONS_PER_IMAGE", "3")  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]  # some input failed; the others' results are written
    assert "3 of 4 images processed" in done.stdout
    assert f"{folder / 'b_broken.png'}: Cannot read image" in done.stdout  # named, with the reason
    report = json.loads((out / "detections.json").read_text())
    assert [f["file"] for f in report["failed"]] == [str(folder / "b_broken.png")]
    assert "not an image" in report["failed"][0]["error"] and report["unprocessed"] == []
    assert [c["name"] for c in report["categories"]] == list(SHAPES_CLASSES)
    assert [im["file"] for im in report["images"]] == [str(folder / "a_thin.png"), *map(str, images)]
    for entry in report["images"]:
        source = cv2.imread(entry["file"])
        picture = cv2.imread(str(out / entry["output"]))
        assert picture.shape == source.shape == (entry["height"], entry["width"], 3)
        assert len(entry["instances"]) <= 3
    from pycocotools import mask as mask_utils

    for entry, path in zip(report["images"][1:], images):
        picture = cv2.imread(str(out / entry["output"]))
        assert not np.array_equal(picture, cv2.imread(str(path))), "nothing was drawn"
        assert 1 <= len(entry["instances"])
        for det in entry["instances"]:
            x, y, w, h = det["bbox"]
            assert w >= 0 and h >= 0 and -1 <= x <= entry["width"] and -1 <= y <= entry["height"]
            assert 0.0 <= det["score"] <= 1.0
            assert SHAPES_CLASSES[det["category_id"] - 1] == det["category"]
            rle = {"size": det["segmentation"]["size"], "counts": det["segmentation"]["counts"].encode()}
            assert mask_utils.decode(rle).shape == (entry["height"], entry["width"])


def _video_classifier(tmp_path: Path):
    """A tiny HieraVideoClassifier: its config file and its (random) model."""
    cfg = get_hiera_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "HieraVideoClassifier"
    h, m = cfg.MODEL.HIERA, cfg.MODEL.HIERA_VIDEO
    h.NAME, h.STAGES, h.EMBED_DIM = "hiera_base_16x224", [1, 1, 1, 1], 16
    m.NUM_FRAMES, m.SAMPLING_RATE, m.NUM_CLASSES = 4, 2, 3
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.VIDEO.TRAIN_CROP_SIZE = cfg.INPUT.VIDEO.TEST_CROP_SIZE = 32
    config_file = tmp_path / "tiny_video.yaml"
    config_file.write_text(cfg.dump())
    return config_file, build_model(cfg)


def _write_video(path: Path, num_frames: int = 9, size=(40, 56)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size[::-1])
    for i in range(num_frames):
        frame = np.full((*size, 3), 30, np.uint8)
        cv2.rectangle(frame, (4 + 4 * i, 10), (20 + 4 * i, 30), (0, 200, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def test_video_demo_goes_on_after_a_bad_video(tmp_path):
    pytest.importorskip("decord")
    config_file, model = _video_classifier(tmp_path)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a_corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
    _write_video(videos / "b_good.mp4")
    out = tmp_path / "out"
    done = run_tool("video_demo.py", "--config", config_file, "--input", videos, "--output", out,
                    "--weights", tmp_path / "model.pth")  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]  # one video failed
    assert f"{videos / 'a_corrupt.mp4'}: cannot read video" in done.stderr  # named, with the reason
    lines = [json.loads(line) for line in (out / "b_good.jsonl").read_text().splitlines()]
    assert lines[-1]["num_clips"] >= 1 and len(lines[-1]["top_k"]) == 3
    assert (out / "b_good.mp4").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert [v["video"] for v in summary["videos"]] == [str(videos / "b_good.mp4")]
    assert [f["video"] for f in summary["failed"]] == [str(videos / "a_corrupt.mp4")]
    assert "a_corrupt.mp4" in summary["failed"][0]["error"]


def test_video_demo_refuses_a_checkpoint_that_runs_code(tmp_path):
    config_file, model = _video_classifier(tmp_path)
    weights = tmp_path / "model_with_code.pth"
    marker = save_with_code(weights, model.state_dict())
    _write_video(tmp_path / "clip.mp4")
    done = run_tool("video_demo.py", "--config-file", config_file, "--input", tmp_path / "clip.mp4",
                    "--output", tmp_path / "out", "--weights", weights)  # fmt: skip
    assert not marker.exists(), "the checkpoint was unpickled: its code ran"
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"checkpoint {weights} holds Python objects" in done.stderr and "python -c" in done.stderr
    assert not (tmp_path / "out" / "clip.jsonl").exists()


def test_train_net_eval_only_refuses_a_checkpoint_that_runs_code(tmp_path, shapes_weights):
    weights = tmp_path / "model_with_code.pth"
    marker = save_with_code(weights, torch.load(shapes_weights, weights_only=True)["model"])
    done = run_tool("train_net.py", "--config", CONFIG, "--eval-only", *TINY_OPTS, "MODEL.WEIGHTS", weights,
                    "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
                    "OUTPUT_DIR", tmp_path / "out")  # fmt: skip
    assert not marker.exists(), "the checkpoint was unpickled: its code ran"
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"checkpoint {weights} holds Python objects" in done.stderr and "python -c" in done.stderr


def test_video_demo_checks_its_options_and_output_before_the_model_loads(tmp_path):
    config_file, _ = _video_classifier(tmp_path)
    videos = tmp_path / "videos"
    videos.mkdir()
    original = _write_video(videos / "clip.mp4").read_bytes()
    # writing into the input folder would replace clip.mp4 with the annotated clip.mp4
    done = run_tool("video_demo.py", "--config", config_file, "--input", videos, "--output", videos,
                    "--allow-random-weights")  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "is the folder the inputs are in" in done.stderr and (videos / "clip.mp4").read_bytes() == original
    done = run_tool("video_demo.py", "--config", config_file, "--input", videos, "--output", tmp_path / "out",
                    "--frame-stride", "0")  # fmt: skip
    assert done.returncode == 2 and "--frame-stride must be at least 1" in done.stderr
    done = run_tool("video_demo.py", "--config", config_file, "--input", videos, "--output", tmp_path / "out",
                    "--allow-random-weights", "MODEL.FOO", "3")  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "Non-existent key: MODEL.FOO" in done.stderr


def test_train_net_names_setup_mistakes_without_a_traceback(tmp_path):
    done = run_tool("train_net.py", "--config", CONFIG, "OUTPUT_DIR", tmp_path, "SOLVER.MAX_ITR", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "error: reading the config: Non-existent key: SOLVER.MAX_ITR" in done.stderr
    assert "Did you mean: SOLVER.MAX_ITER?" in done.stderr
    # an option after the overrides is read as a key: say where options go
    done = run_tool("train_net.py", "--config", CONFIG, "OUTPUT_DIR", tmp_path, "--dataset", "a=b.json:c")
    assert done.returncode == 2 and "--dataset came after the KEY VALUE overrides" in done.stderr
    assert "put options before the overrides" in done.stderr
    (tmp_path / "a_file").write_text("")
    done = run_tool("train_net.py", "--config", CONFIG, "OUTPUT_DIR", tmp_path / "a_file")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "setting up OUTPUT_DIR" in done.stderr and "Not a directory" in done.stderr


def test_train_net_reads_a_data_worker_s_unreadable_file_error():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_net_tool", ROOT / "tools" / "train_net.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    wrapped = RuntimeError(
        "Caught VideoReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        "  File \"x.py\", line 1, in f\nhiera_det.data.video_io.VideoReadError: cannot read video 'a.mp4': empty\n"
    )
    assert tool.read_error_reason(wrapped) == "cannot read video 'a.mp4': empty"
    assert tool.read_error_reason(RuntimeError("CUDA out of memory")) is None
