"""Where datasets live and how Detectron2 finds them: registration, bundled-data generation, checks.

Every dataset a config names goes through :func:`prepare_datasets` before training or evaluation: the bundled
ones (``hiera_shapes_*``, ``moving_shapes_*``, ``ava_shapes_*``) are generated on first use,
``kinetics*_{train,val,test}`` are registered from ``INPUT.VIDEO.DATASET_ROOT`` and ``ava*_{train,val}`` from
``INPUT.AVA.DATASET_ROOT``, and every one is checked to be registered and on disk, with an error that says how
to fix it. Registering a name that exists replaces it. Evaluators are chosen from the ``evaluator_type`` each
registration records (``coco``, ``video_classification``, ``ava``), as Detectron2 does.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Callable

from detectron2.data import DatasetCatalog, MetadataCatalog

from .datasets import kinetics, moving_shapes
from .datasets.coco import load_coco_json_checked
from .datasets.shapes_spec import SHAPES_CLASSES, SHAPES_DIRNAME, ShapesDatasetPaths, datasets_root

__all__ = [
    "check_dataset_available",
    "datasets_root",
    "prepare_datasets",
    "register_builtin_datasets",
    "register_coco_instances",
    "register_dataset",
    "register_keyframe_coco",
    "register_kinetics",
]

SHAPES_DATASETS = {"hiera_shapes_train": "train", "hiera_shapes_val": "val"}
_KINETICS = re.compile(r"^(kinetics\w*?)_(train|val|test)$")
_AVA_SHAPES = re.compile(r"^ava_shapes(?:_(tiny))?_(train|val)$")
_AVA = re.compile(r"^(ava\w*?)_(train|val)$")


def register_dataset(name: str, loader: Callable[[], list[dict]], **metadata) -> None:
    """Register (or replace) ``name`` with a lazy ``loader`` and its metadata."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_coco_instances(name: str, json_file: str, image_root: str, **metadata) -> None:
    """Detectron2's ``register_coco_instances``, loading through the checked COCO reader (clear errors,
    bad annotations dropped and counted)."""
    register_dataset(
        name,
        lambda: load_coco_json_checked(json_file, image_root, name),
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        **metadata,
    )


def register_kinetics(name: str, root: str, split: str, layout: str = "csv", separator: str = " ") -> None:
    """Register a Kinetics-style split (PySlowFast csv or class folders) for video classification.

    ``classes`` are set now when ``classes.txt`` or the class folders exist, else when the list is first
    loaded.
    """
    kinetics.split_location(root, split, layout)  # validates the layout now rather than at first use

    def load() -> list[dict]:
        records, classes = kinetics.load_kinetics_split(root, split, layout, separator)
        if not MetadataCatalog.get(name).get("classes", None):
            MetadataCatalog.get(name).set(classes=classes)
        return records

    classes = kinetics.classes_if_cheap(root, split, layout)
    register_dataset(name, load, evaluator_type=kinetics.EVALUATOR_TYPE, root=root, split=split, layout=layout,
                     **({"classes": classes} if classes else {}))


def register_keyframe_coco(name: str, json_file: str, video_root: str) -> None:
    """Register a clip-to-keyframe detection dataset (COCO json of keyframes), scored by COCOEvaluator."""

    def load() -> list[dict]:
        records, metadata = kinetics.load_keyframe_coco_json(json_file, video_root)
        meta = MetadataCatalog.get(name)
        meta.set(**{k: v for k, v in metadata.items() if not hasattr(meta, k)})
        return records

    register_dataset(name, load, json_file=json_file, image_root=video_root, evaluator_type="coco")


def _register_shapes(root: Path) -> None:
    paths = ShapesDatasetPaths(root)
    for name, split in SHAPES_DATASETS.items():

        def load(name=name, split=split) -> list[dict]:
            json_file = paths.annotation_file(split)
            if not json_file.is_file():
                raise FileNotFoundError(
                    f"Dataset '{name}' is not generated: {json_file} does not exist. Run `python -m "
                    f"hiera_det.data.datasets.shapes --root {paths.root}` (tools/train_net.py and scripts/main.sh "
                    "do this by themselves), or point $DETECTRON2_DATASETS at the folder that holds hiera_shapes/"
                )
            return load_coco_json_checked(str(json_file), str(paths.image_dir(split)), name)

        # The class list is set before loading, so that evaluators and visualizers of a never-loaded
        # dataset map category ids and names right.
        register_dataset(
            name,
            load,
            json_file=str(paths.annotation_file(split)),
            image_root=str(paths.image_dir(split)),
            evaluator_type="coco",
            thing_classes=list(SHAPES_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
        )


def _register_moving_shapes(root: str) -> None:
    classes = list(moving_shapes.CLASSES)
    for split in moving_shapes.SPLITS:
        json_file = os.path.join(root, "annotations", f"keyframes_{split}.json")

        def load_cls(split=split) -> list[dict]:
            moving_shapes.require_complete(root)
            return kinetics.load_kinetics_csv(os.path.join(root, f"{split}.csv"), root, class_names=classes)[0]

        def load_kf(json_file=json_file) -> list[dict]:
            moving_shapes.require_complete(root)
            return kinetics.load_keyframe_coco_json(json_file, root)[0]

        register_dataset(f"moving_shapes_cls_{split}", load_cls, classes=classes,
                         evaluator_type=kinetics.EVALUATOR_TYPE, root=root, split=split)
        register_dataset(f"moving_shapes_kf_{split}", load_kf, thing_classes=classes,
                         thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(classes))},
                         evaluator_type="coco", json_file=json_file, image_root=root, split=split)


def register_builtin_datasets(root: str | os.PathLike | None = None) -> None:
    """Register the bundled datasets under the dataset root (default :func:`datasets_root`). Nothing is
    generated or read until a dataset is used."""
    root = Path(root) if root is not None else datasets_root()
    _register_shapes(root / SHAPES_DIRNAME)
    _register_moving_shapes(str((root / moving_shapes.DIRNAME).absolute()))


def _generate_bundled(name: str) -> None:
    if name in SHAPES_DATASETS:
        from .datasets.shapes import ensure_shapes_dataset

        # the registered annotation file is <root>/annotations/instances_<split>.json
        json_file = MetadataCatalog.get(name).get("json_file", None)
        ensure_shapes_dataset(Path(json_file).parent.parent if json_file else None)
    elif name.startswith("moving_shapes_"):
        meta = MetadataCatalog.get(name) if name in DatasetCatalog.list() else None
        registered = meta.get("root", None) if meta is not None else None
        if registered and moving_shapes.is_complete(registered):
            return
        root = moving_shapes.ensure_moving_shapes_dataset(moving_shapes.default_root())
        if registered != root:
            _register_moving_shapes(root)


def _prepare_ava_shapes(name: str, generate: bool) -> None:
    from .datasets import ava_shapes

    match = _AVA_SHAPES.match(name)
    preset, split = match.group(1) or "default", match.group(2)
    registered = MetadataCatalog.get(name).get("annotation_file", None) if name in DatasetCatalog.list() else None
    if registered and os.path.isfile(registered):
        return
    root = ava_shapes.default_root(preset)
    if generate:
        ava_shapes.ensure_ava_shapes_dataset(root, preset=preset)
    if os.path.isdir(root):
        ava_shapes.register_ava_shapes(root, prefix=name[: -len(split) - 1])


def _register_ava(cfg, name: str, split: str) -> None:
    from .ava import ava_split_files, register_ava

    a = cfg.INPUT.AVA
    root = a.DATASET_ROOT or str(datasets_root() / "ava")
    files = ava_split_files(
        root, split, version=a.VERSION, layout=a.LAYOUT, frame_rate=a.FRAME_RATE,
        video_start_sec=a.VIDEO_START_SEC, keyframe_range=tuple(a.KEYFRAME_RANGE),
        proposal_score_threshold=a.PROPOSAL_SCORE_THRESH,
    )  # fmt: skip
    needed = (files.annotation_file, files.label_map_file, files.frame_list_file or files.video_dir)
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"dataset {name!r}: {', '.join(missing)} not found. Put AVA in PySlowFast's layout "
                                f"under {root!r} (annotations/, frames/ + frame_lists/ or videos_15min/) or set "
                                "INPUT.AVA.DATASET_ROOT")
    register_ava(name, files)


def _register_by_name(cfg, name: str, generate: bool) -> None:
    if _AVA_SHAPES.match(name):
        _prepare_ava_shapes(name, generate)
        return
    if name in DatasetCatalog.list():
        return
    ava = _AVA.match(name)
    if ava:
        _register_ava(cfg, name, ava.group(2))
        return
    match = _KINETICS.match(name)
    if match is None:
        return
    v = cfg.INPUT.VIDEO
    root = v.DATASET_ROOT or str(datasets_root() / match.group(1))
    register_kinetics(name, root, match.group(2), layout=v.LAYOUT, separator=v.CSV_SEPARATOR)


def prepare_datasets(cfg, names, generate: bool = True) -> None:
    """Make every dataset in ``names`` usable or fail with the fix: register the ones known by name pattern
    (Kinetics), generate the bundled ones when ``generate`` (do that in one process per machine, before the
    others look), then check that each is registered and its files exist. The specs of
    ``DATASETS.CUSTOM`` are registered first."""
    from .custom import register_custom_datasets

    register_custom_datasets(cfg)
    for name in names:
        _register_by_name(cfg, name, generate)
        if generate:
            _generate_bundled(name)
        check_dataset_available(name)


def check_dataset_available(name: str) -> None:
    """Raise a clear error when ``name`` is not registered or its files are not on disk."""
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"dataset {name!r} is not registered.{hint} With tools/train_net.py, register your own "
                       "data without code: --dataset NAME=ANNOTATIONS.json:IMAGE_ROOT (COCO instances; see "
                       "--help for video lists, keyframes and unlabeled data). From Python: "
                       "hiera_det.data.catalog.register_coco_instances (or detectron2's), Kinetics-style lists "
                       "with register_kinetics; built in: coco_2017_train / coco_2017_val, the bundled "
                       "hiera_shapes_{train,val}, moving_shapes_{cls,kf}_{train,val}, and kinetics400_{train,"
                       "val,test} from INPUT.VIDEO.DATASET_ROOT, ava_shapes_{train,val} (generated) and ava_{train,val} "
                       "from INPUT.AVA.DATASET_ROOT (hiera_det.data.ava.register_ava for your own AVA-format data)")
    meta = MetadataCatalog.get(name)
    paths = [meta.get(key, None) for key in ("json_file", "image_root", "root")]
    missing = [p for p in paths if p and not os.path.exists(p)]
    if not missing:
        return
    root = datasets_root()
    if name.startswith("coco_"):
        raise FileNotFoundError(
            f"dataset {name!r}: {', '.join(missing)} not found. Put COCO under $DETECTRON2_DATASETS/coco "
            f"(now {str(root)!r}): coco/annotations/instances_{{train,val}}2017.json and the images in "
            "coco/train2017/ and coco/val2017/ (from https://cocodataset.org/#download), or set "
            "DETECTRON2_DATASETS to the folder that holds coco/"
        )
    if name in SHAPES_DATASETS or name.startswith(("moving_shapes_", "ava_shapes")):
        raise FileNotFoundError(f"dataset {name!r}: {', '.join(missing)} not found. The bundled data is "
                                "generated on first use by tools/train_net.py (or hiera_det.data.catalog."
                                "prepare_datasets(cfg, names)); check that $DETECTRON2_DATASETS is writable")
    relative = [p for p in missing if not os.path.isabs(p)]
    where = f" (relative paths are read from $DETECTRON2_DATASETS, now {str(root)!r})" if relative else ""
    raise FileNotFoundError(f"dataset {name!r}: {', '.join(missing)} not found; check the paths it was "
                            f"registered with{where}")
