"""hiera_det.demo.image (the library behind tools/demo.py) and hiera_det.demo.draw, with a tiny Hiera
Mask R-CNN of random weights on the CPU. The command line itself runs in test_tools_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import transforms as T

from hiera_det.checkpoint import CheckpointError
from hiera_det.data.datasets.shapes import SHAPES_CLASSES, render_scene
from hiera_det.demo import image as demo
from hiera_det.demo.draw import class_color, draw_instances, draw_text_lines

CONFIG = "shapes/hiera_tiny_shapes.yaml"
# One block per stage and small test images keep a forward pass well under a second on two cores.
TINY_OPTS = ["MODEL.HIERA.STAGES", "[1,1,1,1]", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128",
             "INPUT.MAX_SIZE_TEST", "192"]  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """model_final.pth of the tiny shapes detector, random weights."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from hiera_det.config import get_hiera_cfg, merge_config

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = merge_config(get_hiera_cfg(), CONFIG, TINY_OPTS)
    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(build_model(cfg), save_dir=str(folder)).save("model_final")
    return folder / "model_final.pth"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index, (height, width) in enumerate([(150, 210), (181, 133)]):
        scene = render_scene(np.random.default_rng([5, index]), height, width)
        paths.append(folder / f"shapes_{index}.jpg")
        cv2.imwrite(str(paths[-1]), scene.image[:, :, ::-1])
    return paths


def tiny_config(weights, threshold=0.0, *opts):
    return demo.demo_config(CONFIG, [*TINY_OPTS, "MODEL.WEIGHTS", str(weights), *opts], threshold)


def test_an_image_that_fails_to_run_is_named_and_the_others_go_on(tmp_path, weights, images, monkeypatch):
    thin = tmp_path / "thin.png"
    cv2.imwrite(str(thin), np.full((4000, 4, 3), 90, np.uint8))  # resizes to 1 pixel wide, not 0
    real_call = demo.ImagePredictor.__call__

    def fails_on_the_first(self, image_bgr):
        if image_bgr.shape[:2] == (150, 210):
            raise RuntimeError("out of memory (simulated)")
        return real_call(self, image_bgr)

    monkeypatch.setattr(demo.ImagePredictor, "__call__", fails_on_the_first)
    paths = [str(images[0]), str(thin), str(images[1])]
    summary = demo.run_image_demo(
        tiny_config(weights, 0.0, "TEST.DETECTIONS_PER_IMAGE", "2"),
        paths,
        tmp_path / "out",
        config_name=CONFIG,
        with_masks=False,
        progress=False,
    )
    assert summary["failed"] == [{"file": str(images[0]), "error": "RuntimeError: out of memory (simulated)"}]
    assert [im["file"] for im in summary["images"]] == paths[1:]
    assert all("segmentation" not in det for im in summary["images"] for det in im["instances"])
    assert json.loads((tmp_path / "out" / "detections.json").read_text()) == summary
    assert summary["config"] == CONFIG and summary["confidence_threshold"] == 0.0
    assert cv2.imread(str(tmp_path / "out" / "thin.png")).shape == (4000, 4, 3)


def test_an_interrupted_run_keeps_what_it_did(tmp_path, weights, images, monkeypatch):
    real_call = demo.ImagePredictor.__call__
    seen = []

    def interrupted_at_the_second(self, image_bgr):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real_call(self, image_bgr)

    monkeypatch.setattr(demo.ImagePredictor, "__call__", interrupted_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        demo.run_image_demo(tiny_config(weights), [str(p) for p in images], tmp_path, progress=False)
    written = json.loads((tmp_path / "detections.json").read_text())
    assert [im["file"] for im in written["images"]] == [str(images[0])]
    assert written["unprocessed"] == [str(images[1])]


@pytest.mark.parametrize("height, width", [(4, 4000), (4000, 4), (1, 1), (150, 210), (800, 600)])
def test_inference_resize_keeps_a_pixel_per_side(height, width):
    resize = demo.inference_resize(height, width, 128, 192)
    assert resize.new_h >= 1 and resize.new_w >= 1
    expected = T.ResizeShortestEdge.get_output_shape(height, width, 128, 192)
    assert (resize.new_h, resize.new_w) == tuple(max(s, 1) for s in expected)  # Detectron2's size otherwise
    out = resize.apply_image(np.zeros((height, width, 3), np.uint8))
    assert out.shape[:2] == (resize.new_h, resize.new_w)
    assert isinstance(demo.inference_resize(height, width, 0, 192), T.NoOpTransform)


@pytest.mark.parametrize(
    "weights_arg, message",
    [("", "MODEL.WEIGHTS is empty"), ("nowhere/model_final.pth", "is not a file")],
)
def test_demo_config_names_missing_weights(weights_arg, message):
    with pytest.raises(demo.DemoError, match=message):
        demo.demo_config(CONFIG, [*TINY_OPTS, "MODEL.WEIGHTS", weights_arg], 0.5)


def test_demo_config_rejects_bad_config_and_threshold(weights):
    opts = ["MODEL.WEIGHTS", str(weights)]
    with pytest.raises(demo.DemoError, match="hiera_tiny_shapes.yaml"):  # suggests the close match
        demo.demo_config("shapes/no_such.yaml", opts, 0.5)
    with pytest.raises(demo.DemoError, match="--confidence-threshold"):
        demo.demo_config(CONFIG, opts, 1.5)
    cfg = tiny_config(weights, 0.25)
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == cfg.MODEL.RETINANET.SCORE_THRESH_TEST == 0.25
    assert cfg.MODEL.HIERA.WEIGHTS == "" and cfg.is_frozen()


def test_predictor_refuses_a_checkpoint_of_another_model(tmp_path):
    foreign = tmp_path / "backbone_only.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}}, foreign)
    with pytest.raises(CheckpointError, match="does not fit the model.*config it was trained with"):
        demo.ImagePredictor(tiny_config(foreign))


def test_split_trailing_opts_and_input_expansion(tmp_path, monkeypatch):
    keys = {"MODEL", "INPUT", "OUTPUT_DIR"}
    argv = ["--input", "a.png", "b.png", "MODEL.WEIGHTS", "w.pth", "OUTPUT_DIR", "o"]
    assert demo.split_trailing_opts(argv, keys) == (argv[:3], argv[3:])
    assert demo.split_trailing_opts(["--opts", "MODEL.X", "1"], keys) == (["--opts", "MODEL.X", "1"], [])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "MODEL.png").write_bytes(b"")  # an existing file stays an input, whatever its name
    argv = ["--input", "MODEL.png", "MODEL.DEVICE", "cpu"]
    assert demo.split_trailing_opts(argv, keys) == (argv[:2], argv[2:])

    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    found, notes = demo.expand_inputs([str(tmp_path), str(tmp_path / "*.png"), str(tmp_path / "sub")])
    assert found == [str(tmp_path / "MODEL.png"), str(tmp_path / "a.JPG"), str(tmp_path / "b.png")]
    assert len(notes) == 1 and "has no images" in notes[0]
    nothing = str(tmp_path / "*.nothing")
    assert demo.expand_inputs([nothing]) == ([], [f"pattern {nothing!r} matches no file"])


# ---------------------------------------------------------------------------------------------------------
# hiera_det.demo.draw


def test_draw_instances_draws_boxes_masks_and_class_colours():
    image = np.full((80, 100, 3), 255, dtype=np.uint8)
    masks = np.zeros((2, 80, 100), dtype=bool)
    masks[0, 10:30, 10:40] = True
    masks[1, 50:70, 60:90] = True
    picture = draw_instances(
        image, np.array([[10, 10, 40, 30], [60, 50, 90, 70]]), np.array([0.9, 0.4]), np.array([1, 1]),
        list(SHAPES_CLASSES), masks=masks,
    )  # fmt: skip
    assert picture.shape == image.shape and picture.dtype == np.uint8
    inside_a, inside_b = picture[20, 25].astype(int), picture[60, 75].astype(int)
    assert (picture[75:, :5] == 255).all(), "pixels far from any instance must stay untouched"
    assert np.abs(inside_a - 255).sum() > 30, "mask not painted"
    assert np.abs(inside_a - inside_b).sum() < 10, "the same class must get the same colour"
    assert not np.allclose(class_color(1), class_color(2))


def test_draw_instances_accepts_tensors_and_no_instances():
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    empty = draw_instances(image, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), None)
    np.testing.assert_array_equal(empty, image)
    drawn = draw_instances(image, torch.tensor([[2.0, 2.0, 20.0, 20.0]]), None, torch.tensor([12]), None)
    assert drawn.any()


def test_draw_instances_rejects_mismatched_inputs():
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8 RGB image"):
        draw_instances(image.astype(np.float32), np.zeros((0, 4)), None, np.zeros(0), None)
    with pytest.raises(ValueError, match="1 boxes but 2 classes"):
        draw_instances(image, np.zeros((1, 4)), None, np.zeros(2), None)
    with pytest.raises(ValueError, match="masks must be"):
        draw_instances(image, np.zeros((1, 4)), None, np.zeros(1), None, masks=np.zeros((1, 16, 16), bool))


def test_draw_text_lines_writes_on_a_copy():
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    drawn = draw_text_lines(image, ["cube 0.91", "video: cube 0.88"])
    assert drawn.shape == image.shape and not image.any()
    assert drawn[:40].any() and not drawn[50:].any()  # two lines at the top, nothing below


def test_the_output_folder_is_checked_before_anything_is_written(tmp_path):
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    cv2.imwrite(str(photo), np.zeros((8, 8, 3), np.uint8))
    # the demo names its pictures after the inputs: photo.png would be overwritten
    for same in (photo.parent, tmp_path / "in" / ".." / "in"):
        with pytest.raises(demo.DemoError, match="is the folder the inputs are in"):
            demo.prepare_output_folder(same, [str(photo)])
    (tmp_path / "a_file").write_text("")
    with pytest.raises(demo.DemoError, match="is a file; give a folder"):
        demo.prepare_output_folder(tmp_path / "a_file", [str(photo)])
    with pytest.raises(demo.DemoError, match="cannot create the --output folder"):
        demo.prepare_output_folder(tmp_path / "a_file" / "sub", [str(photo)])
    assert demo.prepare_output_folder(tmp_path / "out" / "deep", [str(photo)]).is_dir()
