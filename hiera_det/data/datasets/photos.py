"""A tiny COCO-format dataset of real photographs, for trying the own-data path end to end without downloads.

The four photographs ship with scikit-image (``skimage.data``: astronaut, chelsea, coffee and rocket; public
domain or CC0 by scikit-image's data notes). The boxes and polygon masks below were drawn by hand on them.
``train`` holds the four photographs; ``val`` holds their mirror images, so that evaluation runs on pixels
the model has not seen, although on the same objects: a check that the pipeline works, not a benchmark.

    python -m hiera_det.data.datasets.photos --root datasets/hiera_photos

writes ``{train,val}/*.jpg`` and ``annotations/instances_{train,val}.json``, the layout that
``--dataset NAME=ANNOTATIONS.json:IMAGE_ROOT`` takes.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

CATEGORIES = ("person", "cat", "cup", "saucer", "spoon", "helmet", "rocket")

# photograph -> [(category, polygon [x0, y0, x1, y1, ...] in pixels)]
POLYGONS: dict[str, list[tuple[str, list[float]]]] = {
    "chelsea": [
        ("cat", [5, 40, 40, 0, 380, 0, 420, 30, 400, 130, 380, 240, 300, 299, 0, 299]),
    ],
    "coffee": [
        ("saucer", [80, 160, 120, 110, 175, 90, 410, 100, 460, 140, 480, 220, 460, 300, 420, 350, 350, 385,
                    250, 385, 150, 355, 95, 300, 75, 230]),
        ("cup", [175, 85, 200, 35, 260, 18, 330, 18, 390, 35, 410, 80, 405, 150, 390, 200, 350, 240, 300, 260,
                 250, 262, 230, 300, 205, 305, 195, 270, 200, 235, 185, 180]),
        ("spoon", [320, 270, 330, 245, 360, 240, 380, 200, 395, 120, 410, 70, 425, 75, 415, 150, 395, 230,
                   400, 290, 380, 320, 345, 325, 330, 310]),
    ],
    "astronaut": [
        ("person", [20, 511, 25, 300, 60, 250, 110, 200, 130, 170, 155, 120, 160, 50, 200, 20, 260, 20, 295, 55,
                    300, 120, 290, 150, 300, 180, 310, 200, 345, 240, 360, 300, 355, 360, 300, 420, 290, 511]),
        ("helmet", [280, 440, 310, 385, 370, 350, 430, 345, 480, 370, 505, 420, 511, 511, 280, 511]),
        ("rocket", [355, 220, 380, 100, 390, 60, 400, 10, 430, 0, 440, 40, 445, 100, 450, 180, 470, 270,
                    370, 280]),
    ],
    "rocket": [
        ("rocket", [305, 405, 308, 180, 312, 140, 322, 127, 333, 145, 336, 180, 335, 405]),
    ],
}


def _mirror(polygon: list[float], width: int) -> list[float]:
    return [width - 1 - v if i % 2 == 0 else v for i, v in enumerate(polygon)]


def _annotation(polygon: list[float], annotation_id: int, image_id: int, category_id: int) -> dict:
    from pycocotools import mask as mask_utils

    xs, ys = polygon[0::2], polygon[1::2]
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
        "segmentation": [list(map(float, polygon))],
        "area": float(mask_utils.area(mask_utils.frPyObjects([polygon], 10_000, 10_000))[0]),
        "iscrowd": 0,
    }


def write_photos_dataset(root: str) -> dict[str, str]:
    """Write the dataset under ``root``; returns ``{split: annotation file}``."""
    import cv2
    from skimage import data

    files = {}
    for split in ("train", "val"):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for image_id, (photo, objects) in enumerate(POLYGONS.items(), start=1):
            rgb = getattr(data, photo)()
            if split == "val":
                rgb = np.ascontiguousarray(rgb[:, ::-1])
            height, width = rgb.shape[:2]
            cv2.imwrite(os.path.join(root, split, f"{photo}.jpg"), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append({"id": image_id, "file_name": f"{photo}.jpg", "width": width, "height": height})
            for category, polygon in objects:
                polygon = _mirror(polygon, width) if split == "val" else polygon
                annotations.append(_annotation(polygon, len(annotations) + 1, image_id,
                                               CATEGORIES.index(category) + 1))
        content = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CATEGORIES)],
        }
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        files[split] = os.path.join(root, "annotations", f"instances_{split}.json")
        with open(files[split], "w", encoding="utf-8") as f:
            json.dump(content, f)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hiera_det.data.datasets.photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="datasets/hiera_photos", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    for split, path in write_photos_dataset(args.root).items():
        print(f"{split}: --dataset photos_{split}={path}:{os.path.join(args.root, split)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
