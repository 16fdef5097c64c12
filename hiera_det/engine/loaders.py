"""Training and evaluation data loaders and evaluators for every hiera_det model, chosen by what the data is.

The dataset's ``evaluator_type`` and the trunk's modality pick the pipeline, so no meta-architecture is
named here:

* ``coco`` + image trunk: Detectron2's detection loaders (large-scale jitter when ``INPUT.LSJ.ENABLED``),
  ``COCOEvaluator``;
* ``coco`` + video trunk: clips centered on annotated keyframes (``KeyframeClipMapper``), ``COCOEvaluator``
  on the keyframe boxes;
* ``video_classification``: ``VideoClassificationMapper`` clips, one test item per (temporal, spatial) view,
  ``VideoClassificationEvaluator`` (views averaged per video);
* ``ava``: clips centered on keyframes with the person boxes (``AvaClipMapper``: jittered ground truth in
  training, proposals in testing), frame-mAP as the official AVA evaluator computes it (``AvaEvaluator``);
* ``unlabeled`` (``images:FOLDER`` / ``videos:LIST``), or any dataset under ``META_ARCHITECTURE: HieraMAE``:
  ``MAEInputMapper`` crops or clips for MAE pre-training (labels ignored); no evaluator.
"""

from __future__ import annotations

from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator

from ..config import is_video_config
from ..data.catalog import prepare_datasets
from ..data.ava import EVALUATOR_TYPE as AVA
from ..data.ava_mapper import AvaClipMapper
from ..data.datasets.kinetics import EVALUATOR_TYPE as VIDEO_CLASSIFICATION
from ..data.unlabeled import UNLABELED, MAEInputMapper
from ..data.image_mapper import CheckedDatasetMapper, build_detection_train_mapper
from ..data.video_mapper import KeyframeClipMapper, VideoClassificationMapper, expand_test_views
from ..video.ava_evaluation import AvaEvaluator
from ..video.evaluation import VideoClassificationEvaluator


def evaluator_type(names) -> str:
    """The one ``evaluator_type`` that all of ``names`` share (mixing kinds in one list is an error)."""
    kinds = {MetadataCatalog.get(n).get("evaluator_type", "coco") for n in names}
    if len(kinds) != 1:
        raise ValueError(f"datasets {list(names)} mix evaluator types {sorted(kinds)}; train or test on one kind")
    return kinds.pop()


def _check_num_classes(cfg, names) -> None:
    for name in names:
        actions = MetadataCatalog.get(name).get("num_actions", None)
        if actions is not None and actions > cfg.MODEL.ACTION_HEAD.NUM_CLASSES:
            raise ValueError(f"dataset {name!r} has action ids up to {actions} but MODEL.ACTION_HEAD.NUM_CLASSES is "
                             f"{cfg.MODEL.ACTION_HEAD.NUM_CLASSES}; set it to {actions}")
        classes = MetadataCatalog.get(name).get("classes", None)
        if classes is not None and len(classes) != cfg.MODEL.HIERA_VIDEO.NUM_CLASSES:
            raise ValueError(f"dataset {name!r} has {len(classes)} classes but MODEL.HIERA_VIDEO.NUM_CLASSES is "
                             f"{cfg.MODEL.HIERA_VIDEO.NUM_CLASSES}; set it to {len(classes)}")


def _loader_of_every_record(cfg, names, mapper):
    """A training loader over every record of ``names`` (none filtered as empty), without aspect grouping."""
    return build_detection_train_loader(
        dataset=get_detection_dataset_dicts(names, filter_empty=False),
        mapper=mapper,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_train_loader(cfg):
    """Infinite training loader of batches (lists of dicts) for ``DATASETS.TRAIN``."""
    names = list(cfg.DATASETS.TRAIN)
    prepare_datasets(cfg, names, generate=False)
    kind = evaluator_type(names)
    if cfg.MODEL.META_ARCHITECTURE == "HieraMAE":
        return _loader_of_every_record(cfg, names, MAEInputMapper(cfg, is_train=True))
    if kind == UNLABELED:
        raise ValueError(f"datasets {names} are unlabeled: they train MODEL.META_ARCHITECTURE 'HieraMAE' only "
                         f"(configs/mae/), not {cfg.MODEL.META_ARCHITECTURE}")
    if kind == AVA:
        _check_num_classes(cfg, names)
        return build_detection_train_loader(cfg, mapper=AvaClipMapper(cfg, is_train=True))
    if kind == VIDEO_CLASSIFICATION:
        _check_num_classes(cfg, names)
        return _loader_of_every_record(cfg, names, VideoClassificationMapper(cfg, is_train=True))
    if is_video_config(cfg):
        return build_detection_train_loader(cfg, mapper=KeyframeClipMapper(cfg, is_train=True))
    return build_detection_train_loader(cfg, mapper=build_detection_train_mapper(cfg))


def build_test_loader(cfg, dataset_name: str):
    """Evaluation loader: every image, every keyframe, or every test view of every video."""
    prepare_datasets(cfg, [dataset_name], generate=False)
    if evaluator_type([dataset_name]) == AVA:
        _check_num_classes(cfg, [dataset_name])
        return build_detection_test_loader(cfg, dataset_name, mapper=AvaClipMapper(cfg, is_train=False))
    if evaluator_type([dataset_name]) == VIDEO_CLASSIFICATION:
        _check_num_classes(cfg, [dataset_name])
        v = cfg.INPUT.VIDEO
        views = expand_test_views(DatasetCatalog.get(dataset_name), v.NUM_TEMPORAL_VIEWS, v.NUM_SPATIAL_VIEWS)
        return build_detection_test_loader(
            dataset=views,
            mapper=VideoClassificationMapper(cfg, is_train=False),
            batch_size=v.TEST_BATCH_SIZE,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )
    mapper = KeyframeClipMapper(cfg, is_train=False) if is_video_config(cfg) else CheckedDatasetMapper(cfg, False)
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)


def build_evaluator(cfg, dataset_name: str, output_folder: str):
    """The evaluator for the dataset's ``evaluator_type``."""
    kind = evaluator_type([dataset_name])
    if kind == VIDEO_CLASSIFICATION:
        return VideoClassificationEvaluator(dataset_name, output_dir=output_folder)
    if kind == AVA:
        t = cfg.TEST.AVA
        return AvaEvaluator(dataset_name, output_folder, max_detections_per_keyframe=t.MAX_DETECTIONS_PER_KEYFRAME,
                            ignore_keyframes_without_groundtruth=t.IGNORE_KEYFRAMES_WITHOUT_GROUNDTRUTH)
    if kind == "coco":
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)
    if kind == UNLABELED:
        raise ValueError(f"dataset {dataset_name!r} is unlabeled, so there is nothing to evaluate on it; set "
                         f"DATASETS.TEST to () for MAE pre-training")
    raise ValueError(f"dataset {dataset_name!r} has evaluator_type {kind!r}, which hiera_det has no evaluator "
                     f"for; known: coco, {VIDEO_CLASSIFICATION}, {AVA}")
