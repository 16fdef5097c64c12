"""Side-by-side pictures of ground truth and a detector's predictions on held-out images, from the COCO
files an evaluation leaves behind (the ground-truth json and ``coco_instances_results.json``).

Each row of the grid shows one image twice: its annotated objects on the left, the predictions scoring at
least ``--score-threshold`` on the right (boxes, masks, "class score%" labels, one colour per class). It
reads the detections Detectron2's ``COCOEvaluator`` saved, so it needs neither the model nor a second pass
over the images::

    python -m hiera_det.demo.gallery --dataset hiera_shapes_val \\
        --results output/shapes_main/inference/hiera_shapes_val/coco_instances_results.json \\
        --output output/shapes_main/gallery.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..data.image_io import ImageReadError, read_image
from .draw import draw_instances

__all__ = ["GalleryError", "gallery_panels", "render_gallery", "write_gallery"]

_TITLE_HEIGHT = 22
_GAP = 6
_BACKGROUND = 255


class GalleryError(ValueError):
    """The gallery's inputs do not fit together (unknown images, empty selection, unreadable files)."""


def _boxes_xyxy(annotations: Sequence[dict]) -> np.ndarray:
    boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def _masks(annotations: Sequence[dict], height: int, width: int) -> np.ndarray | None:
    """``[N, H, W]`` boolean masks from RLE or polygon segmentations; None if any instance has none."""
    if not annotations or any(not a.get("segmentation") for a in annotations):
        return None
    masks = []
    for a in annotations:
        segmentation = a["segmentation"]
        if isinstance(segmentation, list):  # polygons
            segmentation = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):  # uncompressed RLE
            segmentation = mask_utils.frPyObjects(segmentation, height, width)
        masks.append(mask_utils.decode(segmentation).astype(bool))
    return np.stack(masks)


def _draw(image: np.ndarray, annotations: Sequence[dict], class_index: dict[int, int], class_names,
          with_scores: bool, scale: int) -> np.ndarray:
    height, width = image.shape[:2]
    masks = _masks(annotations, height, width)
    if scale > 1:  # labels keep their size in pixels, so small images are enlarged to leave them room
        image = cv2.resize(image, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)
        if masks is not None:
            masks = masks.repeat(scale, axis=1).repeat(scale, axis=2)
    return draw_instances(
        image,
        _boxes_xyxy(annotations) * scale,
        [a["score"] for a in annotations] if with_scores else None,
        [class_index[a["category_id"]] for a in annotations],
        class_names,
        masks=masks,
    )


def _titled(picture: np.ndarray, title: str) -> np.ndarray:
    strip = np.full((_TITLE_HEIGHT, picture.shape[1], 3), _BACKGROUND, dtype=np.uint8)
    origin = (4, _TITLE_HEIGHT - 7)
    cv2.putText(strip, title, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, picture])


def gallery_panels(
    gt: dict,
    predictions: Sequence[dict],
    image_root: str | Path,
    image_ids: Sequence[int] | None = None,
    max_images: int = 8,
    score_threshold: float = 0.5,
    min_side: int = 0,
) -> list[np.ndarray]:
    """One ``[H, W', 3]`` RGB picture per image: ground truth and predictions side by side, titled.

    Args:
        gt: a COCO instances dict (``images``, ``annotations``, ``categories``).
        predictions: COCO results (``image_id``, ``category_id``, ``bbox`` XYWH, ``score``, optional RLE
            ``segmentation``), e.g. the ``coco_instances_results.json`` of Detectron2's ``COCOEvaluator``.
        image_root: folder the ``file_name`` of each image is relative to.
        image_ids: which images, in order; default the first ``max_images`` of ``gt`` by id.
        min_side: images whose shorter side is below this are enlarged by a whole factor towards it.
    """
    images = {im["id"]: im for im in gt["images"]}
    if image_ids is None:
        image_ids = sorted(images)[:max_images]
    unknown = [i for i in image_ids if i not in images]
    if unknown:
        raise GalleryError(f"image ids {unknown[:5]} are not in the ground truth, which has ids "
                           f"{min(images, default=None)}..{max(images, default=None)}")
    if not image_ids:
        raise GalleryError("no images to draw: the ground truth lists none, or image_ids is empty")
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    class_names = [c["name"] for c in categories]
    class_index = {c["id"]: i for i, c in enumerate(categories)}
    unknown_classes = {p["category_id"] for p in predictions} - set(class_index)
    if unknown_classes:
        raise GalleryError(f"predictions use category ids {sorted(unknown_classes)} that the ground truth "
                           f"does not define (it has {sorted(class_index)}); are they from another dataset?")
    truth, predicted = defaultdict(list), defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            truth[a["image_id"]].append(a)
    for p in predictions:
        if p["score"] >= score_threshold:
            predicted[p["image_id"]].append(p)

    panels = []
    for image_id in image_ids:
        info = images[image_id]
        image = read_image(str(Path(image_root) / info["file_name"]), format="RGB")
        kept = sorted(predicted[image_id], key=lambda p: p["score"])  # best drawn last, on top
        scale = max(1, round(min_side / min(image.shape[:2])))
        left = _titled(_draw(image, truth[image_id], class_index, class_names, False, scale),
                       f"{info['file_name']} truth ({len(truth[image_id])})")
        right = _titled(_draw(image, kept, class_index, class_names, True, scale),
                        f"predicted ({len(kept)}, score >= {score_threshold:g})")
        gap = np.full((left.shape[0], _GAP, 3), _BACKGROUND, dtype=np.uint8)
        panels.append(np.concatenate([left, gap, right], axis=1))
    return panels


def render_gallery(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Stacks panels of any sizes into one RGB grid, top to bottom, left-aligned on white."""
    if not panels:
        raise GalleryError("no panels to put in the gallery")
    width = max(p.shape[1] for p in panels)
    rows = []
    for panel in panels:
        row = np.full((panel.shape[0] + _GAP, width, 3), _BACKGROUND, dtype=np.uint8)
        row[: panel.shape[0], : panel.shape[1]] = panel
        rows.append(row)
    return np.concatenate(rows)


def write_gallery(
    gt_json: str | Path,
    results_json: str | Path,
    image_root: str | Path,
    output: str | Path,
    max_images: int = 8,
    score_threshold: float = 0.5,
    min_side: int = 256,
) -> Path:
    """Draws the first ``max_images`` images of ``gt_json`` with ground truth and predictions into the PNG
    ``output``; returns its path."""
    files = {"ground truth": Path(gt_json), "results": Path(results_json)}
    missing = [f"{what} {path}" for what, path in files.items() if not path.is_file()]
    if missing:
        raise GalleryError(f"{' and '.join(missing)} not found; run the evaluation first "
                           "(tools/train_net.py writes inference/<dataset>/coco_instances_results.json)")
    gt = json.loads(files["ground truth"].read_text())
    predictions = json.loads(files["results"].read_text())
    picture = render_gallery(
        gallery_panels(gt, predictions, image_root, max_images=max_images, score_threshold=score_threshold,
                       min_side=min_side)
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(output), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {output}; check that the name ends in .png or .jpg and the folder is "
                      "writable")
    return output


def _dataset_files(name: str) -> tuple[str, str]:
    import hiera_det.d2  # noqa: F401  (registers the bundled datasets)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        raise GalleryError(f"dataset {name!r} is not registered; give --gt-json and --image-root instead")
    meta = MetadataCatalog.get(name)
    if not meta.get("json_file", None) or not meta.get("image_root", None):
        raise GalleryError(f"dataset {name!r} has no json_file / image_root in its metadata; give --gt-json "
                           "and --image-root instead")
    return meta.json_file, meta.image_root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hiera_det.demo.gallery", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--results", required=True, help="COCO results json (coco_instances_results.json)")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--dataset", help="registered dataset the results are for, e.g. hiera_shapes_val")
    parser.add_argument("--gt-json", help="COCO ground truth json (instead of --dataset)")
    parser.add_argument("--image-root", help="folder of the images (instead of --dataset)")
    parser.add_argument("--max-images", type=int, default=8)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--min-side", type=int, default=256,
                        help="enlarge smaller images by a whole factor towards this shorter side (px)")
    args = parser.parse_args(argv)
    try:
        if args.dataset:
            gt_json, image_root = _dataset_files(args.dataset)
        elif args.gt_json and args.image_root:
            gt_json, image_root = args.gt_json, args.image_root
        else:
            raise GalleryError("give --dataset NAME, or both --gt-json and --image-root")
        output = write_gallery(gt_json, args.results, image_root, args.output, args.max_images,
                               args.score_threshold, args.min_side)
    except (GalleryError, ImageReadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"gallery: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
