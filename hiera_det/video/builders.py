"""Data loaders and evaluators for the video meta-architectures.

``hiera_det.engine.trainer.Trainer`` calls these when ``MODEL.META_ARCHITECTURE`` is ``HieraVideoClassifier``
or ``HieraClipDetector``:

* classifier: ``VideoClassificationMapper`` clips, one test item per (temporal, spatial) view, and
  ``VideoClassificationEvaluator`` (views averaged per video);
* clip detector: ``KeyframeClipMapper`` clips centered on annotated keyframes, and ``COCOEvaluator`` on the
  keyframe boxes.

Datasets named ``moving_shapes_*`` are generated on first use; ``kinetics*_{train,val,test}`` are registered
from ``INPUT.VIDEO.DATASET_ROOT`` (csv or class folders) when not registered already.
"""

from __future__ import annotations

import logging
import os
import re

from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator

from .evaluation import VideoClassificationEvaluator

logger = logging.getLogger(__name__)

CLASSIFIER = "HieraVideoClassifier"
CLIP_DETECTOR = "HieraClipDetector"
ACTION_DETECTOR = "HieraActionDetector"
_KINETICS = re.compile(r"^(kinetics\w*?)_(train|val|test)$")


def _datasets_root() -> str:
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def prepare_dataset(cfg, name: str) -> None:
    """Make ``name`` usable: generate the bundled moving-shapes data, register Kinetics-style lists."""
    if name.startswith("moving_shapes_"):
        from hiera_det.data import moving_shapes

        registered = None
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            registered = meta.get("root", None) or meta.get("image_root", None)
        if registered and moving_shapes.is_complete(registered):
            return
        root = moving_shapes.ensure_moving_shapes_dataset(os.path.join(_datasets_root(), "moving_shapes"))
        if registered != root:
            moving_shapes.register_moving_shapes_datasets(root)
        return
    if name in DatasetCatalog.list():
        return
    match = _KINETICS.match(name)
    if match is None:
        raise KeyError(
            f"dataset {name!r} is not registered. Video datasets: moving_shapes_cls_{{train,val}} and "
            f"moving_shapes_kf_{{train,val}} (generated on first use), kinetics400_{{train,val,test}} (csv or "
            f"class folders under INPUT.VIDEO.DATASET_ROOT), or register your own with "
            f"hiera_det.data.kinetics.register_kinetics(name, root, split)"
        )
    from hiera_det.data.kinetics import register_kinetics

    v = cfg.INPUT.VIDEO
    root = v.DATASET_ROOT or os.path.join(_datasets_root(), match.group(1))
    register_kinetics(name, root, match.group(2), layout=v.LAYOUT, separator=v.CSV_SEPARATOR)


def _check_num_classes(cfg, names) -> None:
    for name in names:
        classes = MetadataCatalog.get(name).get("classes", None)
        if classes is not None and len(classes) != cfg.MODEL.HIERA_VIDEO.NUM_CLASSES:
            raise ValueError(
                f"dataset {name!r} has {len(classes)} classes but MODEL.HIERA_VIDEO.NUM_CLASSES is "
                f"{cfg.MODEL.HIERA_VIDEO.NUM_CLASSES}; set it to {len(classes)}"
            )


def _meta_arch(cfg) -> str:
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in (CLASSIFIER, CLIP_DETECTOR, ACTION_DETECTOR):
        raise ValueError(
            f"hiera_det.video.builders serves {CLASSIFIER} and {CLIP_DETECTOR}, not MODEL.META_ARCHITECTURE={arch!r}"
        )
    return arch


def build_train_loader(cfg):
    """Infinite training loader of batches (lists of dicts) for the configured video meta-architecture."""
    from hiera_det.data.video_mapper import KeyframeClipMapper, VideoClassificationMapper

    arch = _meta_arch(cfg)
    if arch == ACTION_DETECTOR:
        from .ava_builders import build_ava_train_loader

        return build_ava_train_loader(cfg)
    for name in cfg.DATASETS.TRAIN:
        prepare_dataset(cfg, name)
    if arch == CLASSIFIER:
        _check_num_classes(cfg, cfg.DATASETS.TRAIN)
        dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        return build_detection_train_loader(
            dataset=dicts,
            mapper=VideoClassificationMapper(cfg, is_train=True),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=False,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )
    return build_detection_train_loader(cfg, mapper=KeyframeClipMapper(cfg, is_train=True))


def build_test_loader(cfg, dataset_name: str):
    """Evaluation loader: every test view of every video (classifier), or every keyframe (detector)."""
    from hiera_det.data.video_mapper import KeyframeClipMapper, VideoClassificationMapper, expand_test_views

    arch = _meta_arch(cfg)
    if arch == ACTION_DETECTOR:
        from .ava_builders import build_ava_test_loader

        return build_ava_test_loader(cfg, dataset_name)
    prepare_dataset(cfg, dataset_name)
    if arch == CLASSIFIER:
        _check_num_classes(cfg, [dataset_name])
        v = cfg.INPUT.VIDEO
        views = expand_test_views(DatasetCatalog.get(dataset_name), v.NUM_TEMPORAL_VIEWS, v.NUM_SPATIAL_VIEWS)
        return build_detection_test_loader(
            dataset=views,
            mapper=VideoClassificationMapper(cfg, is_train=False),
            batch_size=v.TEST_BATCH_SIZE,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )
    return build_detection_test_loader(cfg, dataset_name, mapper=KeyframeClipMapper(cfg, is_train=False))


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """``VideoClassificationEvaluator`` (classifier) or a box ``COCOEvaluator`` on keyframes (detector)."""
    arch = _meta_arch(cfg)
    if arch == ACTION_DETECTOR:
        from .ava_builders import build_ava_evaluator

        return build_ava_evaluator(cfg, dataset_name, output_folder)
    prepare_dataset(cfg, dataset_name)
    if arch == CLASSIFIER:
        return VideoClassificationEvaluator(dataset_name, output_dir=output_folder)
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    return COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)
