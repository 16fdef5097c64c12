"""Your own datasets without code: ``--dataset NAME=SPEC`` specs, kept in ``DATASETS.CUSTOM``, registered,
checked before training, and the config fitted to them (class count, mask format).

Specs (the form is told by the path):

* ``NAME=ANNOTATIONS.json:IMAGE_ROOT``: COCO instances (boxes, polygon or RLE masks);
* ``NAME=keyframes:ANNOTATIONS.json:VIDEO_ROOT``: clip-to-keyframe detection (COCO json whose images carry
  ``video_file`` or ``frame_dir`` and ``frame_index``);
* ``NAME=LIST.csv`` (PySlowFast ``path label`` lines, paths relative to the csv's folder, classes from a
  ``classes.txt`` beside it) or ``NAME=FOLDER`` (one sub-folder of videos per class): video classification;
* ``NAME=images:FOLDER`` (every image under it) or ``NAME=videos:LIST`` (one video per line): unlabeled data
  for MAE pre-training (``hiera_det.data.unlabeled``).

The specs are stored in the run's config, so ``--eval-only`` and ``--resume`` with the saved ``config.yaml``
find the datasets again.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections import Counter
from dataclasses import dataclass

from detectron2.data import MetadataCatalog

from ..config import uses_gpu_mask_targets
from . import catalog
from .datasets import kinetics
from .datasets.kinetics import EVALUATOR_TYPE as VIDEO_CLASSIFICATION
from .unlabeled import check_unlabeled, register_unlabeled

UNLABELED_KINDS = {"images:": "unlabeled_images", "videos:": "unlabeled_videos"}



class DatasetSpecError(ValueError):
    """A ``--dataset`` spec, or the data it names, that cannot be used; the message lists every problem."""


@dataclass(frozen=True)
class DatasetSpec:
    """One parsed ``NAME=SPEC``."""

    name: str
    kind: str  # coco | keyframes | videos | unlabeled_images | unlabeled_videos
    path: str  # the annotation json, the csv, or the class-folder root
    root: str = ""  # images or videos the json's file names are relative to

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        usage = ("write NAME=ANNOTATIONS.json:IMAGE_ROOT (COCO instances), NAME=keyframes:ANNOTATIONS.json:"
                 "VIDEO_ROOT, NAME=LIST.csv or NAME=CLASS_FOLDERS (video classification), NAME=images:FOLDER "
                 "or NAME=videos:LIST (unlabeled, MAE pre-training)")
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise DatasetSpecError(f"dataset spec {text!r} has no NAME=...; {usage}")
        for prefix, unlabeled in UNLABELED_KINDS.items():
            if rest.startswith(prefix):
                return cls(name, unlabeled, os.path.abspath(os.path.expanduser(rest[len(prefix):])))
        kind = "keyframes" if rest.startswith("keyframes:") else None
        if kind:
            rest = rest[len("keyframes:"):]
        if rest.endswith(".csv") or (os.path.isdir(os.path.expanduser(rest)) and kind is None):
            return cls(name, "videos", os.path.abspath(os.path.expanduser(rest)))
        json_file, sep, root = rest.rpartition(":")
        if not sep or not json_file.endswith(".json"):
            raise DatasetSpecError(f"dataset spec {text!r}: cannot tell the annotation file from the image "
                                   f"folder; {usage}")
        return cls(name, kind or "coco", os.path.abspath(os.path.expanduser(json_file)),
                   os.path.abspath(os.path.expanduser(root)))

    def text(self) -> str:
        """The spec as ``NAME=SPEC`` with absolute paths: what a saved config keeps, so that it reads the same
        data from any working directory."""
        if self.kind in UNLABELED_KINDS.values():
            return f"{self.name}={self.kind.removeprefix('unlabeled_')}:{self.path}"
        if self.kind == "videos":
            return f"{self.name}={self.path}"
        prefix = "keyframes:" if self.kind == "keyframes" else ""
        return f"{self.name}={prefix}{self.path}:{self.root}"

    def register(self) -> None:
        if self.kind in UNLABELED_KINDS.values():
            register_unlabeled(self.name, self.kind.removeprefix("unlabeled_"), self.path)
        elif self.kind == "videos":
            layout = "csv" if self.path.endswith(".csv") else "folders"
            root = os.path.dirname(self.path)
            split = os.path.splitext(os.path.basename(self.path))[0]
            catalog.register_kinetics(self.name, root, split, layout=layout)
        elif self.kind == "keyframes":
            catalog.register_keyframe_coco(self.name, self.path, self.root)
        else:
            catalog.register_coco_instances(self.name, self.path, self.root, **_coco_classes(self.path))


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise DatasetSpecError(f"{path}: the annotation file does not exist; check the path in --dataset")
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (ValueError, OSError) as e:
        raise DatasetSpecError(f"{path}: not a readable JSON file ({e}); re-export it in COCO format") from e
    if not isinstance(content, dict) or not all(isinstance(content.get(k), list)
                                                for k in ("images", "annotations", "categories")):
        raise DatasetSpecError(f"{path}: not COCO instances format (needs the lists images, annotations and "
                               "categories; https://cocodataset.org/#format-data)")
    return content


def _coco_classes(json_file: str) -> dict:
    """Class names and the id map of a COCO json, known at registration so the config can be fitted."""
    if not os.path.isfile(json_file):
        return {}  # check_datasets names the missing file
    return copy.deepcopy(dict(_json_summary(json_file, os.stat(json_file).st_mtime_ns)[0]))


@functools.lru_cache(maxsize=32)
def _json_summary(json_file: str, mtime_ns: int) -> tuple[tuple, str | None]:
    """What registration and config fitting need from a COCO json (read once per file version, since a
    COCO-sized file takes seconds to parse): the class metadata and the mask format."""
    content = _read_json(json_file)
    categories = sorted(content["categories"], key=lambda c: c["id"])
    classes = (("thing_classes", [c["name"] for c in categories]),
               ("thing_dataset_id_to_contiguous_id", {c["id"]: i for i, c in enumerate(categories)}))
    kinds = {"rle" if isinstance(a.get("segmentation"), dict) else "polygon"
             for a in content["annotations"] if a.get("segmentation")}
    mask_format = None if not kinds else "bitmask" if "rle" in kinds else "polygon"
    return classes, mask_format


def add_dataset_specs(cfg, datasets) -> None:
    """Add ``NAME=SPEC`` strings (``--dataset``) to ``cfg.DATASETS.CUSTOM``, with absolute paths so that a
    saved config.yaml reads the same files from any directory; a spec replaces a kept one of the same name,
    and a name given twice is refused."""
    specs = [DatasetSpec.parse(d) for d in datasets]
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DatasetSpecError(f"--dataset names {', '.join(twice)} more than once; give each dataset one name")
    kept = [t for t in cfg.DATASETS.CUSTOM if DatasetSpec.parse(t).name not in names]
    cfg.DATASETS.CUSTOM = kept + [s.text() for s in specs]


def register_custom_datasets(cfg) -> list[DatasetSpec]:
    """Register every spec of ``cfg.DATASETS.CUSTOM`` (in each process that reads the data)."""
    specs = [DatasetSpec.parse(text) for text in cfg.DATASETS.CUSTOM]
    for spec in specs:
        spec.register()
    return specs


# ---------------------------------------------------------------------------------------------------------
# Checks before training


def _image_size(path: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(274, 1)
    except OSError:
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def check_coco_file(json_file: str, image_root: str, name: str, limit: int = 20) -> list[str]:
    """Every problem of one COCO-format split, each naming the file and, for annotations, the record."""
    from tqdm import tqdm

    problems: list[str] = []
    try:
        content = _read_json(json_file)
    except DatasetSpecError as e:
        return [str(e)]
    if not os.path.isdir(image_root):
        return [f"{name}: the image folder {image_root} does not exist; check the path after the ':' in --dataset"]
    images, annotations, categories = content["images"], content["annotations"], content["categories"]
    if not images:
        problems.append(f"{name}: {json_file} lists no images (an empty split)")
    if not annotations:
        problems.append(f"{name}: {json_file} has no annotations (an empty split)")
    category_ids = [c.get("id") for c in categories]
    if not categories:
        problems.append(f"{name}: {json_file} lists no categories; COCO needs \"categories\": [{{\"id\": 1, "
                        f"\"name\": ...}}, ...] naming the classes its annotations use")  # fmt: skip
    duplicates = [i for i, n in Counter(category_ids).items() if n > 1]
    if duplicates:
        problems.append(f"{name}: {json_file} repeats category ids {duplicates}")
    by_id = {im.get("id"): im for im in images}
    for image in tqdm(images, desc=f"checking {name} images", unit="img", leave=False,
                      disable=len(images) < 1000):
        path = os.path.join(image_root, str(image.get("file_name", "")))
        size = _image_size(path) if os.path.isfile(path) else None
        if not os.path.isfile(path):
            problems.append(f"{name}: image id {image.get('id')} file {path} does not exist")
        elif size is None:
            problems.append(f"{name}: image id {image.get('id')} file {path} is not a readable image")
        elif (image.get("width"), image.get("height")) != size:
            problems.append(f"{name}: image id {image.get('id')} {path} is {size[0]}x{size[1]} but {json_file} says "
                            f"{image.get('width')}x{image.get('height')}; fix width/height in the json")
    for annotation in annotations:
        where = f"{name}: {json_file} annotation id {annotation.get('id')} (image id {annotation.get('image_id')})"
        if categories and annotation.get("category_id") not in category_ids:
            problems.append(f"{where} has category_id {annotation.get('category_id')}, which is not among the "
                            f"categories {sorted(category_ids)}")
        image = by_id.get(annotation.get("image_id"))
        if image is None:
            problems.append(f"{where} belongs to no listed image")
            continue
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            problems.append(f"{where} has no [x, y, width, height] bbox")
            continue
        x, y, w, h = bbox
        width, height = image.get("width", 0), image.get("height", 0)
        if w <= 0 or h <= 0:
            problems.append(f"{where} has an empty box {bbox}")
        elif x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
            problems.append(f"{where} box {bbox} lies outside the {width}x{height} image")
    if len(problems) > limit:
        problems = problems[:limit] + [f"{name}: ... and {len(problems) - limit} more problems in {json_file}"]
    return problems


def mask_format_of(json_file: str) -> str | None:
    """``polygon`` or ``bitmask`` (RLE masks), from the annotations' segmentations; None without masks."""
    return _json_summary(json_file, os.stat(json_file).st_mtime_ns)[1]


def check_datasets(cfg) -> None:
    """Check every custom dataset that the run names; raise ``DatasetSpecError`` listing all problems."""
    specs = {s.name: s for s in (DatasetSpec.parse(t) for t in cfg.DATASETS.CUSTOM)}
    # a split named in both TRAIN and TEST is checked (and its problems listed) once
    used = [specs[n] for n in dict.fromkeys((*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)) if n in specs]
    problems: list[str] = []
    num_classes = cfg.MODEL.HIERA_VIDEO.NUM_CLASSES
    for spec in used:
        if spec.kind == "videos" and not os.path.exists(spec.path):
            problems.append(f"{spec.name}: {spec.path} does not exist")
        elif spec.kind == "videos" and spec.path.endswith(".csv"):
            found = kinetics.check_video_list(spec.path, os.path.dirname(spec.path), num_classes)
            problems += [f"{spec.name}: {p}" for p in found]
        elif spec.kind == "videos":
            problems += [f"{spec.name}: {p}" for p in kinetics.check_class_folders(spec.path, num_classes)]
        elif spec.kind == "keyframes":
            problems += [f"{spec.name}: {p}" for p in kinetics.check_keyframe_json(spec.path, spec.root)]
        elif spec.kind == "coco":
            problems += check_coco_file(spec.path, spec.root, spec.name)
        elif spec.kind in UNLABELED_KINDS.values():
            problems += check_unlabeled(spec.kind.removeprefix("unlabeled_"), spec.path, spec.name)
    coco = [s for s in used if s.kind == "coco" and os.path.isfile(s.path)]
    if coco:
        first = _coco_classes(coco[0].path)["thing_classes"]
        for spec in coco[1:]:
            other = _coco_classes(spec.path)["thing_classes"]
            if other != first:
                problems.append(f"{spec.name} has categories {other} but {coco[0].name} has {first}; train and "
                                "test splits must share one category list (same ids, names and order)")
    if problems:
        raise DatasetSpecError(f"{len(problems)} problem(s) in the datasets of this run:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------------------------------------------------
# Fitting the config to the data


def fit_config_to_data(cfg, explicit_keys: set[str]) -> list[str]:
    """Set the class count (and, for COCO masks, ``INPUT.MASK_FORMAT``) from the training data unless the
    user set the key on the command line; a user value that disagrees is an error naming both. Returns notes
    for the log. ``cfg`` must be mutable and its datasets registered."""
    notes: list[str] = []
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        return notes
    metas = [MetadataCatalog.get(n) for n in names]
    specs = {s.name: s for s in (DatasetSpec.parse(t) for t in cfg.DATASETS.CUSTOM)}
    if all(m.get("evaluator_type", None) == VIDEO_CLASSIFICATION for m in metas):
        keys, classes = ["MODEL.HIERA_VIDEO.NUM_CLASSES"], metas[0].get("classes", None)
        first = specs.get(names[0])
        if not classes and first is not None and first.kind == "videos" and first.path.endswith(".csv"):
            # a list without class names: its labels still give the count
            count = kinetics.csv_class_count(first.path)
            classes = [str(i) for i in range(count)] if count else None
    else:
        classes = metas[0].get("thing_classes", None)
        keys = ["MODEL.RETINANET.NUM_CLASSES"] if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE else \
            ["MODEL.ROI_HEADS.NUM_CLASSES"]
    if classes:
        for key in keys:
            node, leaf = _node(cfg, key)
            if node[leaf] == len(classes):
                continue
            if key in explicit_keys:
                raise DatasetSpecError(f"{key} is {node[leaf]} on the command line, but {names[0]} has "
                                       f"{len(classes)} classes ({', '.join(map(str, classes[:10]))}"
                                       f"{', ...' if len(classes) > 10 else ''}); drop the override or fix the data")
            notes.append(f"{key} {node[leaf]} -> {len(classes)}, the class count of {names[0]}")
            node[leaf] = len(classes)
    jsons = [specs[n].path for n in names if n in specs and specs[n].kind == "coco" and os.path.isfile(specs[n].path)]
    formats = {mask_format_of(j) for j in jsons} - {None}
    if formats and cfg.MODEL.MASK_ON:
        # RLE masks need bitmasks; so do polygons under cropping augmentations (cropping a polygon needs
        # shapely, which Detectron2 does not install, and large-scale jitter crops every image), unless the
        # mask head cuts its targets on the GPU (the loader then does not crop polygons)
        cropping = cfg.INPUT.LSJ.ENABLED or cfg.INPUT.CROP.ENABLED
        uncropped = uses_gpu_mask_targets(cfg)
        reason = "RLE" if "bitmask" in formats else \
            "polygons, cropped by the augmentations" if cropping and not uncropped else None
        wanted = "bitmask" if reason else "polygon"
        if cfg.INPUT.MASK_FORMAT != wanted and reason:
            if "INPUT.MASK_FORMAT" in explicit_keys:
                raise DatasetSpecError(f"INPUT.MASK_FORMAT is {cfg.INPUT.MASK_FORMAT} on the command line, but the "
                                       f"masks of {names[0]} are {reason}, which need bitmask; drop the override")
            notes.append(f"INPUT.MASK_FORMAT {cfg.INPUT.MASK_FORMAT} -> bitmask: the training masks are {reason}")
            cfg.INPUT.MASK_FORMAT = wanted
    return notes


def _node(cfg, key: str):
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    return node, leaf
