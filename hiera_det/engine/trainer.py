"""The Detectron2 trainer for Hiera detectors and (dispatching to ``hiera_det.video``) video models."""

from __future__ import annotations

import difflib
import logging
import os
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.image_io import CheckedDatasetMapper
from ..detection import build_detection_train_mapper
from .optimizer import build_optimizer

VIDEO_META_ARCHITECTURES = ("HieraVideoClassifier", "HieraClipDetector", "HieraActionDetector")

logger = logging.getLogger(__name__)


def checkpointer_class():
    """AtomicDetectionCheckpointer where hiera_det.engine.checkpointer exists, else DetectionCheckpointer."""
    try:
        from .checkpointer import AtomicDetectionCheckpointer
    except ImportError as e:
        if e.name != "hiera_det.engine.checkpointer":
            raise
        return DetectionCheckpointer
    return AtomicDetectionCheckpointer


def is_video_config(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE in VIDEO_META_ARCHITECTURES


def _video_builders():
    from ..video import builders

    return builders


def datasets_root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def check_dataset_available(name: str) -> None:
    """Raise a clear error when ``name`` is not registered or its files are not on disk."""
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"dataset {name!r} is not registered.{hint} Register it with "
                       "detectron2.data.datasets.register_coco_instances (before building the trainer), "
                       "or use a built-in one such as coco_2017_train / coco_2017_val or the bundled "
                       "hiera_shapes_train / hiera_shapes_val")
    meta = MetadataCatalog.get(name)
    json_file, image_root = meta.get("json_file", None), meta.get("image_root", None)
    missing = [p for p in (json_file, image_root) if p and not os.path.exists(p)]
    if not missing:
        return
    root = datasets_root()
    if name.startswith("coco_"):
        raise FileNotFoundError(
            f"dataset {name!r}: {', '.join(missing)} not found. Put COCO under $DETECTRON2_DATASETS/coco "
            f"(now {root!r}): coco/annotations/instances_{{train,val}}2017.json and the images in "
            "coco/train2017/ and coco/val2017/ (from https://cocodataset.org/#download), or set "
            "DETECTRON2_DATASETS to the folder that holds coco/"
        )
    if name.startswith("hiera_shapes"):
        raise FileNotFoundError(
            f"dataset {name!r}: {', '.join(missing)} not found. Generate the bundled data with "
            f"`python -c \"from hiera_det.data.shapes import ensure_shapes_dataset; "
            f"ensure_shapes_dataset('{os.path.join(root, 'hiera_shapes')}')\"` (tools/train_net.py and "
            "scripts/main.sh do this by themselves)"
        )
    raise FileNotFoundError(f"dataset {name!r}: {', '.join(missing)} not found; check the paths it was "
                            f"registered with (DETECTRON2_DATASETS is {root!r})")


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with the Hiera optimizer, large-scale jitter, COCO evaluation, AMP in fp16 or
    bf16 (``SOLVER.AMP.PRECISION``), CPU-capable DDP, and the video models' data and evaluation."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ fixes the AMP dtype to fp16, DDP to GPU device ids and the checkpointer
        # class, so this repeats its steps with those three chosen from the config.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        on_cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
        if cfg.SOLVER.AMP.ENABLED and (on_cpu or not torch.cuda.is_available()):
            raise ValueError(f"SOLVER.AMP.ENABLED needs a CUDA device, but MODEL.DEVICE is "
                             f"{cfg.MODEL.DEVICE!r} (CUDA available: {torch.cuda.is_available()}); set SOLVER.AMP.ENABLED False")

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(
            model, broadcast_buffers=False, device_ids=None if on_cpu else [comm.get_local_rank()]
        )
        if cfg.SOLVER.AMP.ENABLED:
            precision = getattr(torch, cfg.SOLVER.AMP.PRECISION)
            self._trainer = AMPTrainer(model, data_loader, optimizer, precision=precision)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = checkpointer_class()(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        if is_video_config(cfg):
            return _video_builders().build_train_loader(cfg)
        for name in cfg.DATASETS.TRAIN:
            check_dataset_available(name)
        return build_detection_train_loader(cfg, mapper=build_detection_train_mapper(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if is_video_config(cfg):
            return _video_builders().build_test_loader(cfg, dataset_name)
        check_dataset_available(dataset_name)
        mapper = CheckedDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if is_video_config(cfg):
            return _video_builders().build_evaluator(cfg, dataset_name, output_folder)
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)

    def train(self):
        """Train; returns the results of the last evaluation (the final one), or None if none ran."""
        super().train()
        return getattr(self, "_last_eval_results", None)
