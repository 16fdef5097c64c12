"""Data loaders, dataset registration and the evaluator for ``HieraActionDetector`` (AVA-format data).

Datasets named in ``DATASETS.TRAIN`` / ``TEST`` are made usable on first use:

* ``ava_shapes_{train,val}`` / ``ava_shapes_tiny_{train,val}``: the bundled generated data
  (``hiera_det.data.datasets.ava_shapes``), generated under ``$DETECTRON2_DATASETS`` when missing;
* any other ``<name>_{train,val}`` that starts with ``ava`` and is not registered yet: PySlowFast's AVA layout
  under ``INPUT.AVA.DATASET_ROOT`` (default ``$DETECTRON2_DATASETS/ava``), read per ``INPUT.AVA.*``;
* anything already registered (``hiera_det.data.ava.register_ava``) is used as it is.
"""

from __future__ import annotations

import logging
import os
import re

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader

logger = logging.getLogger(__name__)

_BUNDLED = re.compile(r"^ava_shapes(?:_(tiny))?_(train|val)$")
_AVA = re.compile(r"^(ava\w*?)_(train|val)$")


def _datasets_root() -> str:
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def prepare_ava_dataset(cfg, name: str) -> None:
    """Register (and for the bundled data, generate) ``name`` unless it is registered already."""
    bundled = _BUNDLED.match(name)
    if bundled:
        from hiera_det.data.datasets import ava_shapes

        preset = bundled.group(1) or "default"
        registered = MetadataCatalog.get(name).get("annotation_file", None) if name in DatasetCatalog.list() else None
        if registered and os.path.isfile(registered):
            return
        root = ava_shapes.ensure_ava_shapes_dataset(preset=preset)
        ava_shapes.register_ava_shapes(root, prefix=name[: -len(bundled.group(2)) - 1])
        return
    if name in DatasetCatalog.list():
        return
    match = _AVA.match(name)
    if match is None:
        raise KeyError(
            f"dataset {name!r} is not registered. AVA-format datasets: ava_shapes_{{train,val}} and "
            f"ava_shapes_tiny_{{train,val}} (generated on first use), ava_{{train,val}} (PySlowFast's AVA folder under "
            f"INPUT.AVA.DATASET_ROOT), or register your own with hiera_det.data.ava.register_ava(name, AvaSplit(...))"
        )
    from hiera_det.data.ava import ava_split_files, register_ava

    a = cfg.INPUT.AVA
    root = a.DATASET_ROOT or os.path.join(_datasets_root(), "ava")
    split = ava_split_files(
        root, match.group(2), version=a.VERSION, layout=a.LAYOUT, frame_rate=a.FRAME_RATE,
        video_start_sec=a.VIDEO_START_SEC, keyframe_range=tuple(a.KEYFRAME_RANGE),
        proposal_score_threshold=a.PROPOSAL_SCORE_THRESH,
    )
    missing = [p for p in (split.annotation_file, split.label_map_file, split.frame_list_file or split.video_dir) if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"dataset {name!r}: {', '.join(missing)} not found. Put AVA in PySlowFast's layout under {root!r} "
            "(annotations/, frames/ + frame_lists/ or videos_15min/) or set INPUT.AVA.DATASET_ROOT"
        )
    register_ava(name, split)


def _check_classes(cfg, name: str) -> None:
    num = MetadataCatalog.get(name).get("num_actions", None)
    if num is not None and num > cfg.MODEL.ACTION_HEAD.NUM_CLASSES:
        raise ValueError(
            f"dataset {name!r} has action ids up to {num} but MODEL.ACTION_HEAD.NUM_CLASSES is "
            f"{cfg.MODEL.ACTION_HEAD.NUM_CLASSES}; set it to {num}"
        )


def build_ava_train_loader(cfg, mapper=None):
    """Infinite loader of training clips with jittered ground-truth boxes (``AvaClipMapper``)."""
    from hiera_det.data.ava_mapper import AvaClipMapper

    for name in cfg.DATASETS.TRAIN:
        prepare_ava_dataset(cfg, name)
        _check_classes(cfg, name)
    return build_detection_train_loader(cfg, mapper=mapper or AvaClipMapper(cfg, is_train=True))


def build_ava_test_loader(cfg, dataset_name: str, mapper=None):
    """Every test keyframe with its proposals."""
    from hiera_det.data.ava_mapper import AvaClipMapper

    prepare_ava_dataset(cfg, dataset_name)
    _check_classes(cfg, dataset_name)
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper or AvaClipMapper(cfg, is_train=False))


def build_ava_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    from .ava_evaluation import AvaEvaluator

    prepare_ava_dataset(cfg, dataset_name)
    t = cfg.TEST.AVA
    return AvaEvaluator(
        dataset_name, output_folder,
        max_detections_per_keyframe=t.MAX_DETECTIONS_PER_KEYFRAME,
        ignore_keyframes_without_groundtruth=t.IGNORE_KEYFRAMES_WITHOUT_GROUNDTRUTH,
    )
