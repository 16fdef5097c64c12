"""COCO-format annotations that load with clear errors and reach the model clean.

Detectron2's ``load_coco_json`` stops at the first unknown category id with a ``KeyError``, reports a broken
file as pycocotools' bare ``JSONDecodeError`` or ``KeyError: 'images'``, and passes boxes with negative size
or lying outside the image straight to training, where they surface later as NaN losses or assertion errors
far from their cause. :func:`load_coco_json_checked` names the file and what is wrong with it, and
:func:`sanitize_coco_dicts` repairs or drops bad annotations, reporting what it did in one log line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from typing import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

__all__ = [
    "AnnotationFileError",
    "load_coco_json_checked",
    "sanitize_coco_dicts",
]

logger = logging.getLogger(__name__)

# Reasons an annotation is dropped, in the order they are checked and reported.
_DROP_REASONS = {
    "no_bbox": "no bbox",
    "malformed_bbox": "bbox not 4 finite numbers",
    "unknown_category": "unknown category id",
    "negative_size": "negative width/height",
    "zero_area": "zero area",
    "outside_image": "fully outside the image",
}
_SUPPORTED_BOX_MODES = (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)


class AnnotationFileError(ValueError):
    """An annotation file that is missing, unreadable or not in COCO instances format."""

    def __init__(self, path: str, problem: str, fix: str):
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"Annotation file {self.path}: {problem}. Fix: {fix}.")

    def __reduce__(self):
        return type(self), (self.path, self.problem, self.fix)


def sanitize_coco_dicts(
    dataset_dicts: list[dict],
    dataset_name: str,
    valid_category_ids: Iterable[int] | None = None,
    *,
    filter_empty: bool = False,
) -> list[dict]:
    """Clip, drop and count bad annotations in Detectron2 dataset dicts; the input is not modified.

    * boxes partly outside the image are clipped to it (needs the dict's ``width``/``height``);
    * boxes fully outside, of zero area, with negative width/height, or not 4 finite numbers are dropped;
    * annotations whose ``category_id`` is not in ``valid_category_ids`` are dropped (no check when None);
    * images left without annotations are kept (evaluation needs them; Detectron2's training loader drops
      them itself when ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is on), or dropped with ``filter_empty=True``,
      using Detectron2's rule: an image needs at least one non-crowd annotation.

    Logs one line with the count for each reason, at WARNING level when anything was dropped.
    Boxes must be in ``BoxMode.XYWH_ABS`` (what ``load_coco_json`` produces) or ``XYXY_ABS``.
    """
    valid = None if valid_category_ids is None else set(valid_category_ids)
    dropped: Counter = Counter()
    examples: dict[str, str] = {}
    clipped = images_without_annotations = total = 0
    result = []
    for record in dataset_dicts:
        annotations = []
        for index, annotation in enumerate(record.get("annotations", [])):
            total += 1
            reason, cleaned = _check_annotation(annotation, record, valid)
            if reason is not None:
                dropped[reason] += 1
                examples.setdefault(reason, f"{record.get('file_name', '?')} annotation #{index}")
                continue
            clipped += cleaned is not annotation
            annotations.append(cleaned)
        if not any(a.get("iscrowd", 0) == 0 for a in annotations):
            images_without_annotations += 1
            if filter_empty:
                continue
        result.append({**record, "annotations": annotations} if "annotations" in record else dict(record))

    kept = total - sum(dropped.values())
    parts = [f"{kept} of {total} annotations kept", f"{clipped} clipped to the image"]
    parts += [f"{dropped[key]} dropped: {text}" for key, text in _DROP_REASONS.items() if dropped[key]]
    empty_fate = "dropped" if filter_empty else "kept"
    parts.append(f"{images_without_annotations} images without non-crowd annotations ({empty_fate})")
    line = f"Dataset '{dataset_name}': {len(result)} of {len(dataset_dicts)} images; " + ", ".join(parts)
    if dropped:
        line += "; first of each: " + ", ".join(f"{_DROP_REASONS[k]} at {v}" for k, v in examples.items())
    logger.log(logging.WARNING if dropped else logging.INFO, line)
    return result


def load_coco_json_checked(
    json_file: str, image_root: str, dataset_name: str, extra_annotation_keys: list[str] | None = None
) -> list[dict]:
    """``detectron2.data.datasets.load_coco_json`` with clear errors, followed by :func:`sanitize_coco_dicts`.

    Sets the same metadata as Detectron2 (``thing_classes``, ``thing_dataset_id_to_contiguous_id``). An
    annotation whose ``category_id`` is missing from the file's ``categories`` is dropped and counted instead
    of aborting the whole load.

    Raises:
        AnnotationFileError: the file is missing, empty, unreadable, not JSON, or not COCO instances format.
    """
    _check_file(json_file)
    try:
        dicts = load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys)
    except KeyError as e:
        if "Encountered category_id" not in str(e):
            raise _diagnose(json_file, e) from e
        # Detectron2 records the metadata before it meets the unknown id; reload with raw ids and let
        # sanitize_coco_dicts drop the unknown ones.
        id_map = MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id
        raw = load_coco_json(json_file, image_root, None, extra_annotation_keys)
        dicts = sanitize_coco_dicts(raw, dataset_name, valid_category_ids=id_map)
        for record in dicts:
            record["annotations"] = [
                {**a, "category_id": id_map[a["category_id"]]} for a in record["annotations"]
            ]
        return dicts
    except (ValueError, TypeError, AssertionError, AttributeError, IndexError, OSError) as e:
        raise _diagnose(json_file, e) from e
    num_classes = len(MetadataCatalog.get(dataset_name).thing_classes)
    return sanitize_coco_dicts(dicts, dataset_name, valid_category_ids=range(num_classes))


def _check_annotation(annotation: dict, record: dict, valid: set | None) -> tuple[str | None, dict]:
    """Return (drop reason or None, annotation with its box clipped to the image when needed)."""
    bbox = annotation.get("bbox")
    if bbox is None:
        return "no_bbox", annotation
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        return "malformed_bbox", annotation
    if valid is not None and annotation.get("category_id") not in valid:
        return "unknown_category", annotation
    mode = annotation.get("bbox_mode", BoxMode.XYWH_ABS)
    if mode not in _SUPPORTED_BOX_MODES:
        raise ValueError(
            f"sanitize_coco_dicts: bbox_mode {BoxMode(mode).name} in {record.get('file_name', '?')} is not "
            f"supported; convert boxes to XYWH_ABS or XYXY_ABS first"
        )
    x0, y0 = bbox[0], bbox[1]
    x1, y1 = (x0 + bbox[2], y0 + bbox[3]) if mode == BoxMode.XYWH_ABS else (bbox[2], bbox[3])
    if x1 < x0 or y1 < y0:
        return "negative_size", annotation
    if x1 == x0 or y1 == y0:
        return "zero_area", annotation
    width, height = record.get("width"), record.get("height")
    if width is None or height is None:
        return None, annotation
    cx0, cy0 = min(max(x0, 0), width), min(max(y0, 0), height)
    cx1, cy1 = min(max(x1, 0), width), min(max(y1, 0), height)
    if cx1 <= cx0 or cy1 <= cy0:
        return "outside_image", annotation
    if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        return None, annotation
    clipped = [cx0, cy0, cx1 - cx0, cy1 - cy0] if mode == BoxMode.XYWH_ABS else [cx0, cy0, cx1, cy1]
    return None, {**annotation, "bbox": clipped}


def _check_file(json_file: str) -> None:
    fix_path = "check the path (Detectron2 datasets live under $DETECTRON2_DATASETS, default ./datasets)"
    if not PathManager.exists(json_file):
        raise AnnotationFileError(json_file, "the file does not exist", fix_path)
    if PathManager.isdir(json_file):
        raise AnnotationFileError(json_file, "the path is a directory", "point it at the .json file inside")
    try:
        with PathManager.open(json_file, "rb") as f:
            first = f.read(1)
    except PermissionError:
        raise AnnotationFileError(
            json_file, "permission denied", "make the file readable by this user"
        ) from None
    if not first:
        raise AnnotationFileError(json_file, "the file is empty (0 bytes)", "re-download or regenerate it")


def _diagnose(json_file: str, error: Exception) -> AnnotationFileError:
    """Explain why Detectron2 / pycocotools could not load ``json_file`` (called only after a failure)."""
    regenerate = "re-download or regenerate the file"
    if isinstance(error, json.JSONDecodeError):
        size = os.path.getsize(json_file) if os.path.isfile(json_file) else "?"
        return AnnotationFileError(
            json_file,
            f"not valid JSON at line {error.lineno} column {error.colno} ({error.msg}; the file has {size} "
            "bytes, a cut-off download ends this way)",
            regenerate,
        )
    if isinstance(error, UnicodeDecodeError):
        return AnnotationFileError(json_file, "not UTF-8 text (a binary file?)", regenerate)
    try:
        with PathManager.open(json_file, "r") as f:
            content = json.load(f)
    except (ValueError, OSError) as e:
        return AnnotationFileError(json_file, f"cannot be parsed ({e})", regenerate)
    problem = _coco_structure_problem(content)
    if problem is None:
        problem = f"Detectron2's COCO loader failed: {type(error).__name__}: {error}"
    return AnnotationFileError(
        json_file, problem, "write it in COCO instances format (https://cocodataset.org/#format-data)"
    )


def _coco_structure_problem(content) -> str | None:
    if not isinstance(content, dict):
        return f"the top level is a JSON {type(content).__name__}, COCO needs an object"
    missing = [key for key in ("images", "annotations", "categories") if key not in content]
    if missing:
        return f"missing top-level key(s) {missing} (found {sorted(content)[:10]})"
    for key in ("images", "annotations", "categories"):
        if not isinstance(content[key], list):
            return f"'{key}' must be a list, found {type(content[key]).__name__}"
    if not content["categories"]:
        return "'categories' is empty; a detection dataset needs at least one category"
    for key, required in (
        ("images", ("id", "file_name", "height", "width")),
        ("annotations", ("id", "image_id", "category_id")),
        ("categories", ("id", "name")),
    ):
        for index, entry in enumerate(content[key]):
            absent = [r for r in required if not isinstance(entry, dict) or r not in entry]
            if absent:
                return f"{key}[{index}] lacks {absent}"
    ids = [a["id"] for a in content["annotations"]]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i, c in Counter(ids).items() if c > 1)
        return f"annotation ids are not unique (id {duplicate} repeats)"
    if any(a.get("ignore", 0) for a in content["annotations"]):
        return (
            "uses the 'ignore' flag, which Detectron2 does not support (mark such objects iscrowd=1 instead)"
        )
    return None
