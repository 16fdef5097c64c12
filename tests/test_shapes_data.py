"""The bundled hiera_shapes dataset: generation, annotation validity, occlusion semantics, registration."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from hiera_det.data.datasets import shapes
from hiera_det.data.datasets.shapes import (
    MIN_VISIBLE_FRACTION,
    SHAPES_CLASSES,
    SceneRules,
    draw_shape_mask,
    ensure_shapes_dataset,
    find_shapes_dataset_problem,
    generate_shapes_dataset,
    render_scene,
    visible_masks,
)

REPO = Path(__file__).resolve().parents[1]
# Small but not tiny: sides 96..160 keep generation fast and still leave most sides off multiples of 32.
TINY = dict(num_train=10, num_val=4, min_size=96, max_size=160)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets") / "hiera_shapes"
    generate_shapes_dataset(root, seed=3, **TINY)
    return root


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


# ---------------------------------------------------------------------------------------------------------
# Generation


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path, tiny_dataset):
    again = tmp_path / "again"
    generate_shapes_dataset(again, seed=3, **TINY)
    assert _tree_digest(again) == _tree_digest(tiny_dataset)
    other = tmp_path / "other"
    generate_shapes_dataset(other, seed=4, **TINY)
    assert _load(other, "train")["annotations"] != _load(tiny_dataset, "train")["annotations"]


def test_layout_and_image_sizes(tiny_dataset):
    for split, count in (("train", TINY["num_train"]), ("val", TINY["num_val"])):
        coco = _load(tiny_dataset, split)
        assert len(coco["images"]) == count
        assert [c["name"] for c in coco["categories"]] == list(SHAPES_CLASSES)
        assert [c["id"] for c in coco["categories"]] == list(range(1, len(SHAPES_CLASSES) + 1))
        for image in coco["images"]:
            pixels = cv2.imread(str(tiny_dataset / split / image["file_name"]), cv2.IMREAD_UNCHANGED)
            assert pixels.shape == (image["height"], image["width"], 3)
            assert TINY["min_size"] <= image["height"] <= TINY["max_size"]
            assert TINY["min_size"] <= image["width"] <= TINY["max_size"]
    sides = [s for im in _load(tiny_dataset, "train")["images"] for s in (im["height"], im["width"])]
    assert len(set(sides)) > 5, "image sizes should vary"
    assert any(s % 32 for s in sides), "some sides should not be multiples of 32"


def test_annotations_describe_the_visible_mask(tiny_dataset):
    for split in ("train", "val"):
        coco = _load(tiny_dataset, split)
        images = {im["id"]: im for im in coco["images"]}
        ids = [a["id"] for a in coco["annotations"]]
        assert len(set(ids)) == len(ids)
        assert {a["image_id"] for a in coco["annotations"]} == set(images), "every image has objects"
        masks_per_image: dict[int, list[np.ndarray]] = {}
        for ann in coco["annotations"]:
            image = images[ann["image_id"]]
            assert ann["iscrowd"] == 0
            assert 1 <= ann["category_id"] <= len(SHAPES_CLASSES)
            rle = ann["segmentation"]
            assert rle["size"] == [image["height"], image["width"]]
            mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
            assert ann["area"] == mask.sum() > 0
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert [x, y, w, h] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
            masks_per_image.setdefault(ann["image_id"], []).append(mask)
        for masks in masks_per_image.values():
            # Visible parts never overlap: each pixel shows at most one object.
            assert (np.sum(masks, axis=0) <= 1).all()


def test_object_scales_cover_coco_small_medium_large():
    areas = []
    for index in range(40):
        scene = render_scene(np.random.default_rng([0, 9, index]), 256, 256)
        areas += [int(m.sum()) for m in scene.masks]
    areas = np.array(areas)
    assert (areas < 32**2).mean() > 0.2
    assert ((areas >= 32**2) & (areas < 96**2)).mean() > 0.2
    assert (areas >= 96**2).mean() > 0.03


# ---------------------------------------------------------------------------------------------------------
# Occlusion


def _square(x0, y0, x1, y1, shape=(20, 20)):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_visible_masks_subtract_later_masks():
    bottom, middle, top = _square(0, 0, 10, 10), _square(5, 5, 15, 15), _square(8, 0, 20, 8)
    visible = visible_masks([bottom, middle, top])
    np.testing.assert_array_equal(visible[2], top)
    np.testing.assert_array_equal(visible[1], middle & ~top)
    np.testing.assert_array_equal(visible[0], bottom & ~middle & ~top)
    hidden = visible_masks([_square(4, 4, 8, 8), _square(0, 0, 12, 12)])
    assert not hidden[0].any() and hidden[1].sum() == 144


def test_scenes_keep_every_object_recognisable():
    for index in range(25):
        scene = render_scene(np.random.default_rng([1, index]), 128, 144)
        assert scene.num_hidden == 0
        for full, visible in zip(scene.full_masks, scene.masks):
            assert not (visible & ~full).any()
            assert visible.sum() >= MIN_VISIBLE_FRACTION * full.sum()
        np.testing.assert_array_equal(np.stack(scene.masks), np.stack(visible_masks(scene.full_masks)))


def test_fully_hidden_shapes_are_dropped():
    # Without the visibility limit, crowded scenes bury some shapes completely; those must not be annotated.
    hidden = 0
    for index in range(40):
        scene = render_scene(
            np.random.default_rng([2, index]), 96, 96, SceneRules(max_instances=8, min_visible_fraction=0.0)
        )
        hidden += scene.num_hidden
        assert all(m.any() for m in scene.masks)
        assert len(scene.masks) == len(scene.full_masks) == len(scene.category_ids)
    assert hidden > 0, "no scene buried a shape; the test no longer exercises the drop"


def test_shape_masks_are_distinct_and_rings_have_holes():
    masks = {k: draw_shape_mask(k, (50.0, 50.0), 30.0, 0.3, 100, 100) for k in SHAPES_CLASSES}
    assert not masks["ring"][50, 50] and masks["circle"][50, 50]
    for a in SHAPES_CLASSES:
        for b in SHAPES_CLASSES:
            if a < b:
                assert (masks[a] != masks[b]).sum() > 50, f"{a} and {b} look alike"
    with pytest.raises(ValueError, match="Unknown shape kind 'oval'"):
        draw_shape_mask("oval", (5.0, 5.0), 3.0, 0.0, 10, 10)


# ---------------------------------------------------------------------------------------------------------
# ensure / atomic writes / command line


def test_ensure_generates_once_and_repairs_incomplete(tmp_path):
    root = tmp_path / "hiera_shapes"
    small = dict(num_train=2, num_val=1, min_size=64, max_size=80)
    assert "does not exist" in find_shapes_dataset_problem(root)
    ensure_shapes_dataset(root, **small)
    assert find_shapes_dataset_problem(root) is None
    marker_time = (root / "GENERATED.json").stat().st_mtime_ns
    ensure_shapes_dataset(root, **small)
    assert (root / "GENERATED.json").stat().st_mtime_ns == marker_time, "a complete copy was regenerated"

    (root / "train" / "000001.png").unlink()
    assert "missing" in find_shapes_dataset_problem(root)
    ensure_shapes_dataset(root, **small)
    assert find_shapes_dataset_problem(root) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hiera_shapes"], "temporary directories left behind"


def test_interrupted_generation_leaves_no_dataset(tmp_path, monkeypatch):
    root = tmp_path / "hiera_shapes"
    real_write_split = shapes._write_split

    def write_then_fail(paths, split, *args):
        real_write_split(paths, split, *args)
        if split == "val":
            raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "_write_split", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes_dataset(root, num_train=2, num_val=1, min_size=64, max_size=80)
    assert list(tmp_path.iterdir()) == []


def test_generation_refuses_foreign_directory_and_bad_arguments(tmp_path):
    root = tmp_path / "hiera_shapes"
    root.mkdir()
    (root / "my_notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="my_notes.txt"):
        generate_shapes_dataset(root, num_train=1, num_val=1, min_size=64, max_size=64)
    assert (root / "my_notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hiera_shapes"]
    with pytest.raises(ValueError, match="min_size=300, max_size=200"):
        generate_shapes_dataset(tmp_path / "x", min_size=300, max_size=200)
    with pytest.raises(ValueError, match="num_train=0"):
        generate_shapes_dataset(tmp_path / "x", num_train=0)


def test_command_line_module(tmp_path):
    root = tmp_path / "hiera_shapes"
    args = [sys.executable, "-m", "hiera_det.data.datasets.shapes", "--root", str(root), "--num-train", "2",
            "--num-val", "1", "--min-size", "64", "--max-size", "72"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (
        "found in sys.modules" not in done.stderr
    )  # the generator must not be imported by `import hiera_det`
    assert find_shapes_dataset_problem(root) is None


def test_command_line_keeps_complete_copy_and_rejects_bad_sizes(tmp_path, capsys):
    root = tmp_path / "hiera_shapes"
    assert shapes.main(["--root", str(root), "--num-train", "1", "--num-val", "1", "--min-size", "64",
                        "--max-size", "64"]) == 0  # fmt: skip
    assert shapes.main(["--root", str(root)]) == 0
    assert "already holds a complete" in capsys.readouterr().out
    assert shapes.main(["--root", str(tmp_path / "bad"), "--min-size", "50"]) == 2
    assert "64 <= min_size" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Detectron2 registration


@pytest.fixture
def catalogs():
    from detectron2.data import DatasetCatalog

    from hiera_det.data import catalog

    yield catalog, DatasetCatalog
    catalog.register_builtin_datasets()  # back to $DETECTRON2_DATASETS for the other tests


def test_registration_loads_records(tiny_dataset, catalogs):
    from detectron2.data import MetadataCatalog
    from detectron2.structures import BoxMode

    hiera_catalog, catalog = catalogs
    hiera_catalog.register_builtin_datasets(tiny_dataset.parent)
    hiera_catalog.register_builtin_datasets(tiny_dataset.parent)  # registering again replaces
    for name, split in hiera_catalog.SHAPES_DATASETS.items():
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(SHAPES_CLASSES) and meta.evaluator_type == "coco"
        records = catalog.get(name)
        coco = _load(tiny_dataset, split)
        assert len(records) == len(coco["images"])
        assert sum(len(r["annotations"]) for r in records) == len(coco["annotations"])
        for record in records:
            assert Path(record["file_name"]).is_file()
            for ann in record["annotations"]:
                assert ann["bbox_mode"] == BoxMode.XYWH_ABS
                assert 0 <= ann["category_id"] < len(SHAPES_CLASSES)
        assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(len(SHAPES_CLASSES))}


def test_records_become_bitmask_instances(tiny_dataset, catalogs):
    from detectron2.data import detection_utils

    hiera_catalog, catalog = catalogs
    hiera_catalog.register_builtin_datasets(tiny_dataset.parent)
    record = catalog.get("hiera_shapes_val")[0]
    instances = detection_utils.annotations_to_instances(
        record["annotations"], (record["height"], record["width"]), mask_format="bitmask"
    )
    masks = instances.gt_masks.tensor.numpy()
    boxes = instances.gt_boxes.tensor.numpy()
    for mask, box in zip(masks, boxes):
        ys, xs = np.nonzero(mask)
        np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_ground_truth_scores_perfect_coco_ap(tiny_dataset):
    """The json is valid COCO-eval input: its annotations, submitted as detections, score AP 100 with the
    benchmark's scorer (benchmarks/shapes_ap.py), and a class left out scores 0."""
    from benchmarks.shapes_ap import coco_ap

    gt_json = tiny_dataset / "annotations" / "instances_train.json"
    annotations = json.loads(gt_json.read_text())["annotations"]
    detections = [{k: a[k] for k in ("image_id", "category_id", "bbox", "segmentation")} | {"score": 1.0}
                  for a in annotations if a["category_id"] != 1]  # fmt: skip
    present = {SHAPES_CLASSES[a["category_id"] - 1] for a in annotations}
    assert "circle" in present and len(present) >= 5
    for iou_type, drop in (("bbox", "segmentation"), ("segm", "bbox")):
        scores = coco_ap(gt_json, [{k: v for k, v in d.items() if k != drop} for d in detections],
                                   iou_type)  # fmt: skip
        assert scores["per_class"]["circle"] == 0.0
        for name in present - {"circle"}:
            assert scores["per_class"][name] == pytest.approx(100.0), (iou_type, name)
        assert scores["AP"] == pytest.approx(100.0 * (len(present) - 1) / len(present))


def test_missing_dataset_names_the_fix(tmp_path, catalogs):
    hiera_catalog, catalog = catalogs
    hiera_catalog.register_builtin_datasets(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"python -m hiera_det.data.datasets.shapes --root .*hiera_shapes"):
        catalog.get("hiera_shapes_train")


def test_worker_pool_writes_the_same_files_as_one_process(tmp_path, monkeypatch):
    settings = dict(seed=5, num_train=shapes._POOL_FROM, num_val=1, min_size=64, max_size=72)
    pooled = generate_shapes_dataset(tmp_path / "pooled", **settings).root
    monkeypatch.setattr(shapes, "_POOL_FROM", 10**9)
    serial = generate_shapes_dataset(tmp_path / "serial", **settings).root
    assert _tree_digest(pooled) == _tree_digest(serial)


def test_scene_rules_are_obeyed_and_recorded(tmp_path):
    rules = SceneRules(max_instances=2, min_visible_fraction=0.8, min_radius=12.0)
    root = generate_shapes_dataset(tmp_path / "rules", seed=1, num_train=12, num_val=2, min_size=96,
                                   max_size=128, rules=rules).root
    per_image = Counter(a["image_id"] for a in _load(root, "train")["annotations"])
    assert per_image and max(per_image.values()) <= 2
    marker = json.loads((root / shapes.SHAPES_MARKER).read_text())
    assert marker["scene_rules"] == {"max_instances": 2, "min_visible_fraction": 0.8, "min_radius": 12.0}
    with pytest.raises(ValueError, match="min_radius"):
        generate_shapes_dataset(tmp_path / "bad", num_train=1, num_val=1, rules=SceneRules(min_radius=0.5))
    assert not (tmp_path / "bad").exists()
