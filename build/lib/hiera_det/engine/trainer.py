"""The Detectron2 trainer for every hiera_det model: image detectors, video classifiers and clip detectors."""

from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from . import loaders
from .checkpointer import AtomicDetectionCheckpointer
from .optimizer import build_optimizer

logger = logging.getLogger(__name__)


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
        self.checkpointer = AtomicDetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return loaders.build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return loaders.build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return loaders.build_evaluator(cfg, dataset_name, output_folder)

    def train(self):
        """Train; returns the results of the last evaluation (the final one), or None if none ran."""
        super().train()
        return getattr(self, "_last_eval_results", None)
