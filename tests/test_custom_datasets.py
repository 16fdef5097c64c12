"""Own data without code: --dataset specs, the checks before training, the config fitted to the data."""

from __future__ import annotations

import copy
import json
import os

import pytest

pytest.importorskip("detectron2")

import hiera_det.d2  # noqa: E402,F401
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from hiera_det.config import get_hiera_cfg, merge_config  # noqa: E402
from hiera_det.data.catalog import prepare_datasets  # noqa: E402
from hiera_det.data.custom import (  # noqa: E402
    DatasetSpec,
    DatasetSpecError,
    check_datasets,
    fit_config_to_data,
)
from hiera_det.data.datasets.photos import CATEGORIES, write_photos_dataset  # noqa: E402


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    files = write_photos_dataset(str(root))
    return root, files


def _cfg(specs, train, test=(), opts=()):
    cfg = merge_config(get_hiera_cfg(), "hiera_fpn.yaml", list(opts))
    cfg.DATASETS.CUSTOM = list(specs)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(train), tuple(test)
    return cfg


def _photo_specs(photos, train_json=None):
    root, files = photos
    return [
        f"mine_train={train_json or files['train']}:{root / 'train'}",
        f"mine_val={files['val']}:{root / 'val'}",
    ]


def _edited(photos, tmp_path, edit):
    content = json.loads(open(photos[1]["train"]).read())
    edit(content)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(content))
    return str(path)


def test_spec_forms(tmp_path):
    assert DatasetSpec.parse("a=/x/ann.json:/x/images") == DatasetSpec(
        "a", "coco", "/x/ann.json", "/x/images"
    )
    assert DatasetSpec.parse("k=keyframes:/v/kf.json:/v").kind == "keyframes"
    assert DatasetSpec.parse("c=/v/train.csv") == DatasetSpec("c", "videos", "/v/train.csv")
    (tmp_path / "train" / "class_a").mkdir(parents=True)
    assert DatasetSpec.parse(f"f={tmp_path / 'train'}").kind == "videos"
    for bad in ("no_equals_sign", "a=/x/ann.txt:/x", "a="):
        with pytest.raises(DatasetSpecError, match="NAME=ANNOTATIONS.json:IMAGE_ROOT"):
            DatasetSpec.parse(bad)


def test_photos_register_check_and_fit_the_config(photos, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine (nothing runs on it here)
    cfg = _cfg(_photo_specs(photos), ["mine_train"], ["mine_val"])
    prepare_datasets(cfg, ["mine_train", "mine_val"])
    check_datasets(cfg)
    assert MetadataCatalog.get("mine_val").thing_classes == list(CATEGORIES)
    assert len(DatasetCatalog.get("mine_train")) == 4
    notes = fit_config_to_data(cfg, explicit_keys=set())
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(CATEGORIES)
    assert any("MODEL.ROI_HEADS.NUM_CLASSES 80 -> 7" in n for n in notes)
    # polygons stay polygons under large-scale jitter: the mask head cuts its targets from them on the GPU
    assert cfg.INPUT.MASK_FORMAT == "polygon" and cfg.MODEL.ROI_MASK_HEAD.GPU_TARGETS
    assert not any("polygons, cropped" in n for n in notes)
    # Detectron2's CPU targets would need the polygons cropped (shapely): bitmasks instead
    cfg = _cfg(
        _photo_specs(photos),
        ["mine_train"],
        opts=[
            "MODEL.ROI_MASK_HEAD.GPU_TARGETS",
            "False",
            "MODEL.ROI_MASK_HEAD.NAME",
            "MaskRCNNConvUpsampleHead",
        ],
    )
    notes = fit_config_to_data(cfg, explicit_keys=set())
    assert cfg.INPUT.MASK_FORMAT == "bitmask" and any("polygons, cropped" in n for n in notes)
    # so do they on the CPU, where Detectron2's targets are the faster ones
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _cfg(_photo_specs(photos), ["mine_train"])
    notes = fit_config_to_data(cfg, explicit_keys=set())
    assert cfg.INPUT.MASK_FORMAT == "bitmask" and any("polygons, cropped" in n for n in notes)


def test_user_class_count_that_disagrees_names_both(photos):
    cfg = _cfg(_photo_specs(photos), ["mine_train"], opts=["MODEL.ROI_HEADS.NUM_CLASSES", "5"])
    prepare_datasets(cfg, ["mine_train"])
    with pytest.raises(DatasetSpecError, match="NUM_CLASSES is 5 on the command line, but mine_train has 7"):
        fit_config_to_data(cfg, explicit_keys={"MODEL.ROI_HEADS.NUM_CLASSES"})


def test_rle_masks_switch_the_mask_format(photos, tmp_path):
    from pycocotools import mask as mask_utils

    def to_rle(content):
        sizes = {im["id"]: (im["height"], im["width"]) for im in content["images"]}
        for a in content["annotations"]:
            rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], *sizes[a["image_id"]]))
            a["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}

    cfg = _cfg(
        _photo_specs(photos, _edited(photos, tmp_path, to_rle)),
        ["mine_train"],
        opts=["INPUT.LSJ.ENABLED", "False"],
    )
    prepare_datasets(cfg, ["mine_train"])
    notes = fit_config_to_data(cfg, explicit_keys=set())
    assert cfg.INPUT.MASK_FORMAT == "bitmask" and any("are RLE" in n for n in notes)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["images"][0].update(width=999), r"chelsea.jpg is 451x300 but .* says 999x300"),
        (lambda c: c["images"][1].update(file_name="missing.jpg"), r"missing.jpg does not exist"),
        (lambda c: c["annotations"][0].update(category_id=42), r"annotation id 1 .* category_id 42"),
        (lambda c: c["annotations"][0].update(bbox=[400, 250, 200, 100]), r"annotation id 1 .* lies outside"),
        (lambda c: c["annotations"][1].update(bbox=[10, 10, 0, 5]), r"annotation id 2 .* empty box"),
        (lambda c: c.update(images=[], annotations=[]), r"lists no images \(an empty split\)"),
        (lambda c: c["categories"][0].update(name="dog"), r"mine_val has categories .* but mine_train has"),
    ],
)
def test_every_problem_is_named_before_training(photos, tmp_path, edit, message):
    cfg = _cfg(_photo_specs(photos, _edited(photos, tmp_path, edit)), ["mine_train"], ["mine_val"])
    with pytest.raises(DatasetSpecError, match=message):
        check_datasets(cfg)


def test_several_problems_are_all_listed(photos, tmp_path):
    def two_problems(content):
        content["images"][0]["width"] = 10
        content["annotations"][2]["category_id"] = 99

    cfg = _cfg(_photo_specs(photos, _edited(photos, tmp_path, two_problems)), ["mine_train"])
    with pytest.raises(DatasetSpecError, match="3 problem") as info:  # the width also puts a box outside
        check_datasets(cfg)
    assert "chelsea.jpg" in str(info.value) and "category_id 99" in str(info.value)


def test_missing_annotation_file_and_image_folder(photos, tmp_path):
    root, files = photos
    cfg = _cfg(
        [f"a={tmp_path / 'nope.json'}:{root / 'train'}", f"b={files['train']}:{tmp_path / 'no_images'}"],
        ["a", "b"],
    )
    with pytest.raises(DatasetSpecError) as info:
        check_datasets(cfg)
    assert "nope.json: the annotation file does not exist" in str(info.value)
    assert "no_images does not exist" in str(info.value)


def test_video_classification_folders_set_the_class_count(tmp_path):
    for cls in ("walk", "run", "jump"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "train" / cls / "a.mp4").write_bytes(b"")
    cfg = merge_config(get_hiera_cfg(), "video/moving_shapes_cls.yaml")
    cfg.DATASETS.CUSTOM = [f"clips_train={tmp_path / 'train'}"]
    cfg.DATASETS.TRAIN = ("clips_train",)
    prepare_datasets(cfg, ["clips_train"])
    fit_config_to_data(cfg, explicit_keys=set())
    assert cfg.MODEL.HIERA_VIDEO.NUM_CLASSES == 3


def test_saved_config_keeps_the_specs(photos, tmp_path):
    cfg = _cfg(_photo_specs(photos), ["mine_train"], ["mine_val"])
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.dump())
    reloaded = merge_config(get_hiera_cfg(), str(saved))
    assert list(reloaded.DATASETS.CUSTOM) == list(cfg.DATASETS.CUSTOM)
    for name in ("mine_train", "mine_val"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    prepare_datasets(copy.deepcopy(reloaded), ["mine_val"])
    assert len(DatasetCatalog.get("mine_val")) == 4


def test_weights_names_are_accepted_by_the_run_config(photos):
    from hiera_det.engine.run_config import build_run_config

    cfg, _ = build_run_config(
        "hiera_fpn.yaml",
        ["MODEL.HIERA.WEIGHTS", "hiera_base_224.mae_in1k", "MODEL.WEIGHTS", "hiera_base_224.mae_in1k"],
    )
    assert (
        cfg.MODEL.WEIGHTS == "hiera://hiera_base_224.mae_in1k"
    )  # resolved by the path handler, offline-checked
    with pytest.raises(ValueError, match="video weights"):
        build_run_config("hiera_fpn.yaml", ["MODEL.HIERA.WEIGHTS", "hiera_base_16x224.mae_k400"])


def test_own_data_path_end_to_end(photos, tmp_path):
    """The README's "Fine-tune on your own data" commands on the photographs, at a tiny size: train with
    --dataset, evaluate from the saved config with --eval-only, run the demo with the dataset's class names.
    """
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    root, files = photos
    out = tmp_path / "run"
    tiny = [
        "MODEL.HIERA.NAME",
        "hiera_tiny_224",
        "MODEL.HIERA.STAGES",
        "[1, 1, 1, 1]",
        "MODEL.HIERA.EMBED_DIM",
        "32",
        "MODEL.FPN.OUT_CHANNELS",
        "32",
        "INPUT.LSJ.IMAGE_SIZE",
        "128",
        "INPUT.MIN_SIZE_TEST",
        "128",
        "INPUT.MAX_SIZE_TEST",
        "128",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.STEPS",
        "()",
        "SOLVER.WARMUP_ITERS",
        "1",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        "TEST.EVAL_PERIOD",
        "0",
        "DATALOADER.NUM_WORKERS",
        "0",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "16",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN",
        "32",
        "MODEL.ROI_BOX_HEAD.CONV_DIM",
        "16",
        "MODEL.ROI_BOX_HEAD.FC_DIM",
        "32",
        "MODEL.ROI_MASK_HEAD.CONV_DIM",
        "16",
        "OUTPUT_DIR",
        str(out),
    ]
    datasets = [
        "--dataset",
        f"photos_train={files['train']}:{root / 'train'}",
        "--dataset",
        f"photos_val={files['val']}:{root / 'val'}",
    ]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "2"}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    train = subprocess.run(
        [
            sys.executable,
            str(repo / "tools/train_net.py"),
            "--config",
            "hiera_fpn.yaml",
            *datasets,
            *tiny,
            "DATASETS.TRAIN",
            "('photos_train',)",
            "DATASETS.TEST",
            "('photos_val',)",
        ],
        **run,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "MODEL.ROI_HEADS.NUM_CLASSES 80 -> 7" in train.stderr + train.stdout
    assert (out / "model_final.pth").is_file() and "photos_train=" in (out / "config.yaml").read_text()
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    assert any("bbox/AP" in m for m in metrics)

    evaluate = subprocess.run(
        [
            sys.executable,
            str(repo / "tools/train_net.py"),
            "--config-file",
            str(out / "config.yaml"),
            "--eval-only",
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
            "OUTPUT_DIR",
            str(tmp_path / "eval"),
        ],
        **run,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "Evaluation results for bbox" in evaluate.stdout + evaluate.stderr

    demo = subprocess.run(
        [
            sys.executable,
            str(repo / "tools/demo.py"),
            "--config-file",
            str(out / "config.yaml"),
            "--input",
            str(root / "val"),
            "--output",
            str(tmp_path / "vis"),
            "--confidence-threshold",
            "0",
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
        ],
        **run,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    detections = json.loads((tmp_path / "vis" / "detections.json").read_text())
    names = {d["category"] for image in detections["images"] for d in image["instances"]}
    assert names and names <= set(CATEGORIES)
    assert len(list((tmp_path / "vis").glob("*.jpg"))) + len(list((tmp_path / "vis").glob("*.png"))) == 4


def test_the_run_config_keeps_dataset_paths_absolute_and_names_unique(photos, monkeypatch):
    from hiera_det.engine.run_config import build_run_config

    root, files = photos
    monkeypatch.chdir(root)
    relative = f"rel_train={os.path.relpath(files['train'], root)}:train"
    opts = ["DATASETS.TRAIN", "('rel_train',)", "DATASETS.TEST", "()"]
    cfg, _ = build_run_config("hiera_fpn.yaml", opts, [relative])
    # the saved config.yaml then reads the same files from any working directory
    assert list(cfg.DATASETS.CUSTOM) == [f"rel_train={files['train']}:{root / 'train'}"]
    assert DatasetSpec.parse(cfg.DATASETS.CUSTOM[0]).text() == cfg.DATASETS.CUSTOM[0]
    for spec in ("u=images:/x/imgs", "v=videos:/x/list.txt", "c=/x/train.csv", "k=keyframes:/x/kf.json:/x/v"):
        assert DatasetSpec.parse(spec).text() == spec
    with pytest.raises(DatasetSpecError, match="names rel_train more than once"):
        build_run_config("hiera_fpn.yaml", opts, [relative, relative])


def test_a_json_without_categories_is_one_problem_and_a_split_in_train_and_test_is_checked_once(photos, tmp_path):
    def drop_categories(content):
        content["categories"] = []

    specs = [f"nocat={_edited(photos, tmp_path, drop_categories)}:{photos[0] / 'train'}"]
    with pytest.raises(DatasetSpecError) as info:
        check_datasets(_cfg(specs, ["nocat"], ["nocat"]))
    message = str(info.value)
    assert message.startswith("1 problem(s)") and "lists no categories" in message


def test_video_lists_set_the_class_count_and_every_problem_is_named_before_training(tmp_path):
    (tmp_path / "clips").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "clips" / f"{name}.mp4").write_bytes(b"not empty")
    (tmp_path / "clips" / "empty.mp4").write_bytes(b"")
    (tmp_path / "train.csv").write_text("clips/a.mp4 0\nclips/b.mp4 2\nclips/c.mp4 1\n")
    (tmp_path / "val.csv").write_text(
        "clips/a.mp4 0\nclips/no_label.mp4\nclips/b.mp4 x\nclips/c.mp4 7\nclips/empty.mp4 1\nclips/gone.mp4 2\n"
    )
    cfg = merge_config(get_hiera_cfg(), "video/moving_shapes_cls.yaml")
    cfg.DATASETS.CUSTOM = [f"list_train={tmp_path / 'train.csv'}", f"list_val={tmp_path / 'val.csv'}"]
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("list_train",), ("list_val",)
    prepare_datasets(cfg, ["list_train", "list_val"])
    fit_config_to_data(cfg, explicit_keys=set())
    assert cfg.MODEL.HIERA_VIDEO.NUM_CLASSES == 3  # labels 0-2, no class names: the count comes from the list
    with pytest.raises(DatasetSpecError) as info:
        check_datasets(cfg)
    message = str(info.value)
    assert message.startswith("5 problem(s)")
    for expected in ("val.csv:2: expected `path label`", "val.csv:3: label 'x' is not an integer",
                     "val.csv:4: label 7 is outside [0, 3)", "empty.mp4 is empty (0 bytes)", "gone.mp4 does not exist"):
        assert expected in message, expected


def test_keyframe_datasets_are_checked_against_their_videos_before_training(tmp_path):
    import cv2
    import numpy as np

    pytest.importorskip("decord")
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (64, 48))
    for t in range(16):
        writer.write(np.full((48, 64, 3), 10 * t, np.uint8))
    writer.release()
    image = dict(height=48, width=64, frame_index=8, video_file="clip.mp4")
    images = [dict(image, id=1), dict(image, id=2, frame_index=400), dict(image, id=3, width=128),
              dict(image, id=4, video_file="gone.mp4")]
    annotations = [dict(id=i, image_id=i, category_id=1, bbox=[4, 4, 10, 10], area=100, iscrowd=0) for i in range(1, 5)]
    json_file = tmp_path / "kf.json"
    json_file.write_text(json.dumps(dict(images=images, annotations=annotations, categories=[dict(id=1, name="a")])))
    cfg = merge_config(get_hiera_cfg(), "video/moving_shapes_keyframe.yaml")
    cfg.DATASETS.CUSTOM = [f"kf_train=keyframes:{json_file}:{tmp_path}"]
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("kf_train",), ()
    with pytest.raises(DatasetSpecError) as info:
        check_datasets(cfg)
    message = str(info.value)
    assert message.startswith("3 problem(s)")
    assert "image id 2 (clip.mp4): frame_index 400 is outside the video's 16 frames" in message
    assert "image id 3 (clip.mp4): the json says 128x48 but the frames are 64x48" in message
    assert "gone.mp4 does not exist (1 keyframes" in message
