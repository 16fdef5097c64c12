"""Training and evaluation data loaders and evaluators for every hiera_det model, chosen by what the data is.

The dataset's ``evaluator_type`` and the trunk's modality pick the pipeline, so no meta-architecture is
named here (training batches always come from ``hiera_det.data.samplers``, which a resume can continue):

* ``coco`` + image trunk: Detectron2's detection mapper (large-scale jitter when ``INPUT.LSJ.ENABLED``),
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

import os

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from ..config import is_video_config
from ..data.catalog import prepare_datasets
from ..data.ava import EVALUATOR_TYPE as AVA
from ..data.ava_mapper import AvaClipMapper
from ..data.datasets.kinetics import EVALUATOR_TYPE as VIDEO_CLASSIFICATION
from ..data.unlabeled import UNLABELED, MAEInputMapper
from ..data.image_mapper import CheckedDatasetMapper, build_detection_train_mapper
from ..data.samplers import ExactResumeTrainLoader, GlobalBatchSampler
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


def _every_record(cfg, names, mapper, pin_memory: bool = False) -> ExactResumeTrainLoader:
    """The resumable training loader over every record of ``names`` (none filtered as empty), ungrouped."""
    dicts = get_detection_dataset_dicts(names, filter_empty=False)
    return _exact_resume_loader(cfg, dicts, mapper, grouping=False, pin_memory=pin_memory)


def build_train_loader(cfg) -> ExactResumeTrainLoader:
    """Infinite training loader of this process's batches (lists of dicts) for ``DATASETS.TRAIN``: a pure
    function of (``SEED``, global batch index), see ``hiera_det.data.samplers``."""
    names = list(cfg.DATASETS.TRAIN)
    prepare_datasets(cfg, names, generate=False)
    kind = evaluator_type(names)
    if cfg.MODEL.META_ARCHITECTURE == "HieraMAE":
        return _every_record(cfg, names, MAEInputMapper(cfg, is_train=True))
    if kind == UNLABELED:
        raise ValueError(f"datasets {names} are unlabeled: they train MODEL.META_ARCHITECTURE 'HieraMAE' only "
                         f"(configs/mae/), not {cfg.MODEL.META_ARCHITECTURE}")
    if kind == AVA:
        _check_num_classes(cfg, names)
        return _every_record(cfg, names, AvaClipMapper(cfg, is_train=True))
    if kind == VIDEO_CLASSIFICATION:
        _check_num_classes(cfg, names)
        # a batch of 16x224 clips is 18 MiB: pinned, it goes to the GPU without blocking the host (see
        # HieraVideoClassifier.preprocess), and the copy into pinned memory runs in the loader's own thread.
        # (Pinning turns the tuples in a dict into lists: "view" and "num_views", unread in training.)
        pin = torch.device(cfg.MODEL.DEVICE).type == "cuda"
        return _every_record(cfg, names, VideoClassificationMapper(cfg, is_train=True), pin_memory=pin)
    dicts = get_detection_dataset_dicts(
        names,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    mapper = KeyframeClipMapper(cfg, is_train=True) if is_video_config(cfg) else build_detection_train_mapper(cfg)
    return _exact_resume_loader(cfg, dicts, mapper, grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING)


def _exact_resume_loader(cfg, dicts: list[dict], mapper, grouping: bool,
                         pin_memory: bool = False) -> ExactResumeTrainLoader:
    # Every process must draw the same global batches: a random seed (SEED < 0) is rank 0's.
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    landscape = _landscape_flags(dicts, cfg.DATASETS.TRAIN) if grouping else None
    sampler_name = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler_name == "TrainingSampler":
        repeat_factors = None
    elif sampler_name == "RepeatFactorTrainingSampler":
        repeat_factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dicts, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
        ).tolist()
    else:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN {sampler_name!r} is not supported by hiera_det's resumable "
                         "training loader; use TrainingSampler or RepeatFactorTrainingSampler")
    sampler = GlobalBatchSampler(
        len(dicts), cfg.SOLVER.IMS_PER_BATCH, seed, landscape=landscape, repeat_factors=repeat_factors
    )
    rank = comm.get_rank()
    order_log = os.path.join(cfg.OUTPUT_DIR, f"data_order.rank{rank}.jsonl") if cfg.DATALOADER.LOG_DATA_ORDER else None
    return ExactResumeTrainLoader(
        dicts,
        mapper,
        sampler,
        rank=rank,
        world_size=comm.get_world_size(),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=pin_memory,
        order_log=order_log,
    )


def _landscape_flags(dicts: list[dict], names) -> list[bool]:
    missing = [d.get("file_name", i) for i, d in enumerate(dicts) if "width" not in d or "height" not in d]
    if missing:
        raise ValueError(f"DATALOADER.ASPECT_RATIO_GROUPING needs each record's width and height, but "
                         f"{len(missing)} records of {list(names)} lack them (first: {missing[0]}); add them to "
                         "the annotations or set DATALOADER.ASPECT_RATIO_GROUPING False")
    return [d["width"] > d["height"] for d in dicts]


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
