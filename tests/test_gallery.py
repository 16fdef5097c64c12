"""hiera_det.demo.gallery: ground truth and predictions drawn side by side from COCO files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from hiera_det.demo import gallery

HEIGHT, WIDTH = 48, 64
GREY = 128


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def files(tmp_path):
    """A flat grey 48x64 image, one ground-truth square and one predicted square elsewhere."""
    cv2.imwrite(str(tmp_path / "a.png"), np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8))
    truth, predicted = np.zeros((2, HEIGHT, WIDTH), dtype=bool)
    truth[8:24, 6:22] = True
    predicted[20:40, 36:56] = True
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "height": HEIGHT, "width": WIDTH}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [6, 8, 16, 16], "area": 256,
                         "iscrowd": 0, "segmentation": _rle(truth)}],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
    }
    predictions = [
        {"image_id": 1, "category_id": 1, "bbox": [36, 20, 20, 20], "score": 0.9,
         "segmentation": _rle(predicted)},
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.1},  # under the threshold
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(predictions))
    return tmp_path


def _changed(half: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> bool:
    return bool(np.abs(half[y0:y1, x0:x1].astype(int) - GREY).max() > 20)


def test_gallery_draws_truth_left_and_predictions_right(files):
    out = gallery.write_gallery(files / "gt.json", files / "results.json", files, files / "g" / "gallery.png",
                                min_side=0)
    assert out.is_file()
    picture = cv2.imread(str(out))
    top = gallery._TITLE_HEIGHT
    left = picture[top : top + HEIGHT, :WIDTH]
    right = picture[top : top + HEIGHT, WIDTH + gallery._GAP : 2 * WIDTH + gallery._GAP]
    assert _changed(left, 8, 24, 6, 22)  # the ground-truth square
    assert not _changed(left, 41, 48, 40, 62)  # nothing drawn where only the prediction is
    assert _changed(right, 20, 40, 36, 56)  # the prediction
    assert not _changed(right, 10, 22, 8, 20)  # the ground truth is not on the prediction side
    assert not _changed(right, 1, 3, 1, 3)  # the low-scoring box is left out


def test_gallery_names_predictions_from_another_dataset(files):
    (files / "results.json").write_text(json.dumps([{"image_id": 1, "category_id": 9, "bbox": [0, 0, 4, 4],
                                                     "score": 0.9}]))
    with pytest.raises(gallery.GalleryError, match=r"category ids \[9\]"):
        gallery.write_gallery(files / "gt.json", files / "results.json", files, files / "out.png")


def test_gallery_enlarges_small_images(files):
    out = gallery.write_gallery(files / "gt.json", files / "results.json", files, files / "big.png",
                                min_side=96)
    picture = cv2.imread(str(out))
    assert picture.shape[:2] == (gallery._TITLE_HEIGHT + 2 * HEIGHT + gallery._GAP, 4 * WIDTH + gallery._GAP)
