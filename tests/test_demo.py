"""tools/demo.py and hiera_det.visualization, with a tiny Hiera Mask R-CNN of random weights on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from hiera_det.data.shapes import SHAPES_CLASSES, render_scene
from hiera_det.visualization import class_color, draw_instances

REPO = Path(__file__).resolve().parents[1]
CONFIG = "shapes/hiera_tiny_shapes.yaml"
# One block per stage and small test images keep a forward pass well under a second on two cores.
TINY_OPTS = ["MODEL.HIERA.STAGES", "[1,1,1,1]", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128",
             "INPUT.MAX_SIZE_TEST", "192"]  # fmt: skip


def _load_demo():
    spec = importlib.util.spec_from_file_location("hiera_demo", REPO / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


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


def test_demo_writes_pictures_and_detections(tmp_path, weights, images):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    # Trailing KEY VALUE overrides after the open-ended --input; threshold 0 so random weights still detect.
    code = demo.main(["--config", CONFIG, "--input", *map(str, images), str(broken), "--output", str(out),
                      "--confidence-threshold", "0", *TINY_OPTS, "MODEL.WEIGHTS", str(weights),
                      "TEST.DETECTIONS_PER_IMAGE", "3"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "detections.json").read_text())
    assert [f["file"] for f in report["failed"]] == [str(broken)]
    assert "not an image" in report["failed"][0]["error"]
    assert [c["name"] for c in report["categories"]] == list(SHAPES_CLASSES)
    assert [im["file"] for im in report["images"]] == [str(p) for p in images]
    for entry, path in zip(report["images"], images):
        source = cv2.imread(str(path))
        picture = cv2.imread(str(out / entry["output"]))
        assert picture.shape == source.shape == (entry["height"], entry["width"], 3)
        assert not np.array_equal(picture, source), "nothing was drawn"
        assert 1 <= len(entry["instances"]) <= 3
        for det in entry["instances"]:
            x, y, w, h = det["bbox"]
            assert w >= 0 and h >= 0 and -1 <= x <= entry["width"] and -1 <= y <= entry["height"]
            assert 0.0 <= det["score"] <= 1.0
            assert SHAPES_CLASSES[det["category_id"] - 1] == det["category"]
            rle = {"size": det["segmentation"]["size"], "counts": det["segmentation"]["counts"].encode()}
            assert mask_utils.decode(rle).shape == (entry["height"], entry["width"])


def test_demo_fails_when_no_image_is_readable(tmp_path, weights):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"")
    code = demo.main(["--config", CONFIG, "--input", str(broken), "--output", str(tmp_path / "out"),
                      "--opts", *TINY_OPTS, "MODEL.WEIGHTS", str(weights)])  # fmt: skip
    assert code == 1
    assert json.loads((tmp_path / "out" / "detections.json").read_text())["images"] == []


@pytest.mark.parametrize(
    "weights_arg, message",
    [("", "MODEL.WEIGHTS is empty"), ("nowhere/model_final.pth", "is not a file")],
)
def test_demo_names_missing_weights(tmp_path, images, capsys, weights_arg, message):
    code = demo.main(["--config", CONFIG, "--input", str(images[0]), "--output", str(tmp_path),
                      *TINY_OPTS, "MODEL.WEIGHTS", weights_arg])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err


def test_demo_refuses_checkpoint_of_another_model(tmp_path, images, capsys):
    foreign = tmp_path / "backbone_only.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}}, foreign)
    code = demo.main(["--config", CONFIG, "--input", str(images[0]), "--output", str(tmp_path / "out"),
                      *TINY_OPTS, "MODEL.WEIGHTS", str(foreign)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "does not fit the model" in err
        and "parameters missing" in err
        and "config it was trained with" in err
    )


def test_demo_rejects_bad_config_and_threshold(tmp_path, images, weights, capsys):
    base = ["--input", str(images[0]), "--output", str(tmp_path), "MODEL.WEIGHTS", str(weights)]
    assert demo.main(["--config", "shapes/no_such.yaml", *base]) == 2
    assert "hiera_tiny_shapes.yaml" in capsys.readouterr().err  # suggests the close match
    assert demo.main(["--config", CONFIG, "--confidence-threshold", "1.5", *base]) == 2
    assert "--confidence-threshold" in capsys.readouterr().err
    assert demo.main(["--config", CONFIG, "--input", str(tmp_path / "*.nothing"), "--output", str(tmp_path),
                      "MODEL.WEIGHTS", str(weights), *TINY_OPTS]) == 2  # fmt: skip
    assert "no input images" in capsys.readouterr().err


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


# ---------------------------------------------------------------------------------------------------------
# hiera_det.visualization


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
