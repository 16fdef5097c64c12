"""Bad and unusual images and annotation files: handled correctly, or a clear error naming the file and the
fix."""

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("detectron2")

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data import detection_utils as d2_utils  # noqa: E402
from detectron2.data.build import filter_images_with_only_crowd_annotations  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

from hiera_det.data.datasets.coco import (  # noqa: E402
    AnnotationFileError,
    load_coco_json_checked,
    sanitize_coco_dicts,
)
from hiera_det.data.image_io import (  # noqa: E402
    ImageReadError,
    ImageSizeMismatchError,
    check_image_size,
    read_image,
)


def _rgb(h=12, w=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, image, **kwargs):
    image.save(path, **kwargs)
    return str(path)


# ----------------------------------------------------------------------------------------------- image files


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        (lambda p: p.write_bytes(b"<html><body>404 Not Found</body></html>"), "HTML"),
        (lambda p: p.write_bytes(b"\x00\x01garbage" * 10), "not an image"),
    ],
    ids=["missing", "zero_byte", "html_named_jpg", "garbage_named_jpg"],
)
def test_unreadable_image_names_file_reason_and_fix(tmp_path, make, reason):
    path = tmp_path / "img.jpg"
    make(path)
    with pytest.raises(ImageReadError) as info:
        read_image(str(path))
    message = str(info.value)
    assert str(path) in message and reason in message and "Fix:" in message
    assert info.value.path == str(path)


@pytest.mark.parametrize("ext, fraction", [("jpg", 0.5), ("png", 0.5), ("png", 0.9), ("jpg", 0.05)])
def test_truncated_image_is_reported(tmp_path, ext, fraction):
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buffer, format="JPEG" if ext == "jpg" else "PNG")
    data = buffer.getvalue()
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ImageReadError, match="truncated or corrupt|not an image") as info:
        read_image(str(path))
    assert str(path) in str(info.value)


def test_image_read_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(ImageReadError("a.jpg", "broken", "replace it")))
    assert (error.path, error.reason, error.fix) == ("a.jpg", "broken", "replace it")


def test_ordinary_images_match_detectron2(tmp_path):
    rgb = _rgb()
    for name, kwargs in (("a.png", {}), ("b.jpg", {"quality": 95})):
        path = _save(tmp_path / name, Image.fromarray(rgb), **kwargs)
        for fmt in ("BGR", "RGB", "L"):
            np.testing.assert_array_equal(read_image(path, fmt), d2_utils.read_image(path, fmt))
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.png"), "RGB"), rgb)
    with pytest.raises(ValueError, match="BGR"):
        read_image(str(tmp_path / "a.png"), "HSV")


def test_grayscale_palette_and_bilevel_become_three_channels(tmp_path):
    gray = _rgb()[:, :, 0]
    out = read_image(_save(tmp_path / "g.png", Image.fromarray(gray)), "RGB")
    assert out.shape == (12, 20, 3) and all((out[:, :, c] == gray).all() for c in range(3))

    palette = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    expected = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(read_image(_save(tmp_path / "p.png", palette), "RGB"), expected)

    bilevel = Image.fromarray(gray > 128)
    out = read_image(_save(tmp_path / "b.png", bilevel), "BGR")
    assert out.shape == (12, 20, 3) and set(np.unique(out)) <= {0, 255}


def test_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.dstack([_rgb(), np.zeros((12, 20), np.uint8)])  # fully transparent
    out = read_image(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")), "RGB")
    np.testing.assert_array_equal(out, rgba[:, :, :3])

    palette = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.info["transparency"] = 0
    out = read_image(_save(tmp_path / "pt.png", palette, transparency=0), "RGB")
    assert out.shape == (12, 20, 3)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = read_image(_save(tmp_path / "c.jpg", cmyk, quality=100), "RGB")
    assert out.shape == (8, 16, 3)
    assert out[..., 0].min() > 240 and out[..., 1:].max() < 15


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    path = _save(tmp_path / "g16.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    out = read_image(path, "RGB")
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out.max() == 255 and (out == 255).mean() < 0.01  # Detectron2 would make ~99% of it white
    assert (d2_utils.read_image(path, "RGB") == 255).mean() > 0.9


def test_sixteen_bit_rgb_png_keeps_its_range(tmp_path):
    import cv2

    values = np.linspace(0, 65535, 8 * 8 * 3).reshape(8, 8, 3).astype(np.uint16)
    path = str(tmp_path / "rgb16.png")
    cv2.imwrite(path, values[:, :, ::-1])  # OpenCV writes BGR
    out = read_image(path, "RGB").astype(int)
    assert np.abs(out - values / 257.0).max() <= 1.0


def test_float_image_is_refused_with_fix(tmp_path):
    path = _save(tmp_path / "f.tiff", Image.fromarray(np.full((4, 4), 0.5, np.float32), "F"))
    with pytest.raises(ImageReadError, match="no defined 8-bit range"):
        read_image(path)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_detectron2(tmp_path, orientation):
    image = Image.fromarray(_rgb(6, 10))
    exif = Image.Exif()
    exif[274] = orientation
    path = _save(tmp_path / "e.png", image, exif=exif)
    out = read_image(path, "RGB")
    np.testing.assert_array_equal(out, d2_utils.read_image(path, "RGB"))
    assert out.shape[:2] == ((10, 6) if orientation >= 5 else (6, 10))


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (257, 3)])
def test_tiny_and_elongated_images(tmp_path, size):
    h, w = size
    out = read_image(_save(tmp_path / "x.png", Image.fromarray(_rgb(h, w))), "BGR")
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


def test_size_mismatch_names_file_and_both_sizes():
    image = np.zeros((30, 40, 3), np.uint8)
    with pytest.raises(ImageSizeMismatchError) as info:
        check_image_size({"file_name": "imgs/a.jpg", "width": 64, "height": 48}, image)
    message = str(info.value)
    assert "imgs/a.jpg" in message and "40x30" in message and "64x48" in message
    assert isinstance(info.value, d2_utils.SizeMismatchError)
    with pytest.raises(ImageSizeMismatchError, match="EXIF"):
        check_image_size({"file_name": "b.jpg", "width": 30, "height": 40}, image)
    record = {"file_name": "c.jpg"}
    check_image_size(record, image)
    assert (record["width"], record["height"]) == (40, 30)


# ----------------------------------------------------------------------------------------------- annotations


def _record(annotations, width=100, height=80, name="img.jpg"):
    return {"file_name": name, "width": width, "height": height, "image_id": 1, "annotations": annotations}


def _ann(bbox, category_id=0, mode=BoxMode.XYWH_ABS, **extra):
    return {"bbox": bbox, "bbox_mode": mode, "category_id": category_id, "iscrowd": 0, **extra}


def test_sanitize_clips_drops_and_logs_counts(caplog):
    records = [
        _record(
            [
                _ann([10, 10, 20, 20]),  # fine
                _ann([-5, 70, 20, 20]),  # partly outside: clipped to [0, 70, 15, 10]
                _ann([200, 10, 20, 20]),  # fully outside
                _ann([10, 10, 0, 5]),  # zero area
                _ann([10, 10, -4, 5]),  # negative width
                _ann([10, 10, 5, 5], category_id=7),  # unknown category
                _ann([10, 10, float("nan"), 5]),  # malformed
                {"category_id": 0, "iscrowd": 0},  # no bbox
                _ann([90, 70, 130, 110], mode=BoxMode.XYXY_ABS),  # XYXY partly outside -> [90, 70, 100, 80]
            ]
        ),
        _record([], name="empty.jpg"),
        _record([_ann([500, 500, 5, 5])], name="all_bad.jpg"),
    ]
    original = json.dumps(records)
    with caplog.at_level(logging.INFO, logger="hiera_det.data.datasets.coco"):
        out = sanitize_coco_dicts(records, "toy", valid_category_ids=[0, 1])
    assert json.dumps(records) == original, "the input must not be modified"
    assert len(out) == 3  # empty images are kept by default (evaluation needs them)
    boxes = [a["bbox"] for a in out[0]["annotations"]]
    assert boxes == [[10, 10, 20, 20], [0, 70, 15, 10], [90, 70, 100, 80]]
    assert out[2]["annotations"] == []

    lines = [r for r in caplog.records if r.name == "hiera_det.data.datasets.coco"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    message = lines[0].getMessage()
    for expected in (
        "'toy'",
        "3 of 10 annotations kept",
        "2 clipped to the image",
        "1 dropped: no bbox",
        "1 dropped: bbox not 4 finite numbers",
        "1 dropped: unknown category id",
        "1 dropped: negative width/height",
        "1 dropped: zero area",
        "2 dropped: fully outside the image",
        "2 images without non-crowd annotations (kept)",
        "fully outside the image at img.jpg annotation #2",
    ):
        assert expected in message, (expected, message)


def test_sanitize_filter_empty_follows_detectron2_rule(caplog):
    crowd_only = _record([_ann([1, 1, 5, 5], iscrowd=1)], name="crowd.jpg")
    records = [_record([_ann([1, 1, 5, 5])]), _record([], name="e.jpg"), crowd_only]
    with caplog.at_level(logging.INFO, logger="hiera_det.data.datasets.coco"):
        out = sanitize_coco_dicts(records, "toy", filter_empty=True)
    assert [r["file_name"] for r in out] == ["img.jpg"]
    assert [r["file_name"] for r in filter_images_with_only_crowd_annotations(records)] == ["img.jpg"]
    assert "2 images without non-crowd annotations (dropped)" in caplog.records[-1].getMessage()
    assert caplog.records[-1].levelno == logging.INFO  # nothing was wrong with any annotation


def _coco(annotations=None, categories=None, images=None):
    return {
        "images": images
        if images is not None
        else [{"id": 1, "file_name": "a.jpg", "height": 80, "width": 100}],
        "annotations": annotations
        if annotations is not None
        else [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10], "iscrowd": 0, "area": 100}],
        "categories": categories
        if categories is not None
        else [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
    }


def _fresh_name(request):
    name = f"robustness_{request.node.name}"
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    return name


def test_load_checked_maps_ids_and_sets_metadata(tmp_path, request):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_coco()))
    name = _fresh_name(request)
    dicts = load_coco_json_checked(str(path), str(tmp_path), name)
    assert dicts[0]["annotations"][0]["category_id"] == 0
    assert dicts[0]["file_name"] == str(tmp_path / "a.jpg")
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["cat", "dog"] and meta.thing_dataset_id_to_contiguous_id == {3: 0, 9: 1}


def test_load_checked_drops_unknown_category_ids(tmp_path, request, caplog):
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 2, 10, 10], "iscrowd": 0, "area": 100},
        {"id": 2, "image_id": 1, "category_id": 42, "bbox": [1, 2, 10, 10], "iscrowd": 0, "area": 100},
    ]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_coco(annotations)))
    with caplog.at_level(logging.INFO, logger="hiera_det.data.datasets.coco"):
        dicts = load_coco_json_checked(str(path), str(tmp_path), _fresh_name(request))
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [1]
    assert "1 dropped: unknown category id" in caplog.records[-1].getMessage()


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "does not exist"),
        ("", "empty (0 bytes)"),
        ('{"images": [', "not valid JSON at line 1"),
        ("[1, 2]", "top level is a JSON list"),
        (json.dumps({"images": [], "annotations": []}), "missing top-level key(s) ['categories']"),
        (json.dumps(_coco(categories=[])), "'categories' is empty"),
        (json.dumps(_coco(images=[{"id": 1, "file_name": "a.jpg"}])), "images[0] lacks ['height', 'width']"),
    ],
    ids=["missing", "empty", "cut_off", "list", "no_categories_key", "no_categories", "image_without_size"],
)
def test_bad_annotation_file_names_path_and_problem(tmp_path, request, content, problem):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AnnotationFileError) as info:
        load_coco_json_checked(str(path), str(tmp_path), _fresh_name(request))
    message = str(info.value)
    assert str(path) in message and problem in message and "Fix:" in message, message


def test_duplicate_annotation_ids_are_named(tmp_path, request):
    ann = {"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10], "iscrowd": 0, "area": 100}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_coco([ann, dict(ann)])))
    with pytest.raises(AnnotationFileError, match="id 5 repeats"):
        load_coco_json_checked(str(path), str(tmp_path), _fresh_name(request))


# ----------------------------------------------------------------------------------------------- the mapper


def _mapper_cfg(lsj=False):
    from hiera_det.config import get_hiera_cfg

    cfg = get_hiera_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (48,)
    cfg.INPUT.MAX_SIZE_TRAIN = 80
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.LSJ.ENABLED = lsj
    cfg.INPUT.LSJ.IMAGE_SIZE = 64
    return cfg


def test_detection_mapper_reads_through_checked_reader(tmp_path, caplog):
    from detectron2.data import DatasetMapper

    from hiera_det.data.image_mapper import build_detection_train_mapper

    cfg = _mapper_cfg()
    mapper = build_detection_train_mapper(cfg)
    good = _save(tmp_path / "ok.png", Image.fromarray(_rgb(30, 40)))
    record = {"file_name": good, "width": 40, "height": 30, "image_id": 1,
              "annotations": [_ann([5, 5, 10, 10])]}
    ours, d2 = mapper(dict(record)), DatasetMapper(cfg, is_train=True)(dict(record))
    assert torch_equal(ours["image"], d2["image"])
    assert torch_equal(ours["instances"].gt_boxes.tensor, d2["instances"].gt_boxes.tensor)

    (tmp_path / "cut.png").write_bytes(open(good, "rb").read()[:100])
    with caplog.at_level(logging.WARNING):
        assert mapper({**record, "file_name": str(tmp_path / "cut.png")}) is None  # training draws another image
    assert "truncated or corrupt" in caplog.text and str(tmp_path / "cut.png") in caplog.text
    with pytest.raises(ImageSizeMismatchError, match="ok.png is 40x30 .* says 41x30"):
        mapper({**record, "width": 41})


def torch_equal(a, b):
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def test_training_skips_an_unreadable_image_and_names_it_evaluation_refuses_it(tmp_path, caplog):
    from hiera_det.data.image_mapper import CheckedDatasetMapper
    from hiera_det.data.samplers import SampleKey, SeededMapDataset

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(_rgb(32, 48)).save(good)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing else
    dicts = [{"file_name": str(p), "height": 32, "width": 48, "image_id": i} for i, p in enumerate([bad, good])]
    train = CheckedDatasetMapper(is_train=True, augmentations=[], image_format="RGB")
    with caplog.at_level(logging.WARNING):
        assert train(dicts[0]) is None
        key, mapped = SeededMapDataset(dicts, train)[SampleKey(seed=0, batch=0, position=0, index=0)]
    assert mapped["file_name"] == str(good) and tuple(mapped["image"].shape) == (3, 32, 48)
    skips = [r.getMessage() for r in caplog.records if "skipping unreadable training image" in r.getMessage()]
    assert len(skips) == 2 and all(str(bad) in m and "Fix:" in m for m in skips)
    with pytest.raises(ImageReadError, match="bad.png"):
        CheckedDatasetMapper(is_train=False, augmentations=[], image_format="RGB")(dicts[0])
