"""The Detectron2 trainer for every hiera_det model: image detectors, video classifiers and clip detectors."""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref

import torch
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.samplers import ExactResumeTrainLoader
from ..detection.fast_inference import inference_autocast
from . import loaders
from .checkpointer import AtomicDetectionCheckpointer
from .loss_metrics import DeferredLossMetrics, flush_schedule
from .optimizer import build_optimizer
from .resume import ExactResumeState, RngSnapshotHook, preserved_rng_state

logger = logging.getLogger(__name__)

WRITER_PERIOD = 20  # DefaultTrainer's PeriodicWriter period


class _DeferredLossSimpleTrainer(DeferredLossMetrics, SimpleTrainer):
    pass


class _DeferredLossAMPTrainer(DeferredLossMetrics, AMPTrainer):
    pass


class StoppedOnRequest(KeyboardInterrupt):
    """Training stopped at an iteration boundary after Ctrl-C, with a checkpoint saved there; ``checkpoint``
    is its path."""

    def __init__(self, checkpoint: str):
        super().__init__(checkpoint)
        self.checkpoint = checkpoint


class _StopOnRequestHook(HookBase):
    """Saves a checkpoint and ends training after the iteration during which Ctrl-C came (the last hook, so
    the step, its metrics and the other hooks are complete, and the checkpoint is the one a periodic save
    would write at that iteration: ``--resume`` continues exactly from it)."""

    def after_step(self) -> None:
        trainer = self.trainer
        if not trainer.stop_requested:
            return
        trainer._trainer.flush_losses()  # a non-finite deferred loss stops here, before anything is saved
        if trainer.exact_resume is not None:
            trainer.exact_resume.snapshot()
        name = f"model_{trainer.iter:07d}"
        trainer.checkpointer.save(name, iteration=trainer.iter)
        raise StoppedOnRequest(os.path.join(trainer.cfg.OUTPUT_DIR, name + ".pth"))


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with the Hiera optimizer, large-scale jitter, COCO evaluation, AMP in fp16 or
    bf16 (``SOLVER.AMP.PRECISION``), CPU-capable DDP, the video models' data and evaluation, and exact
    resume: checkpoints hold the data stream's position and every process's RNG states
    (``hiera_det.engine.resume``), so ``--resume`` continues as if the run had never stopped."""

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
        if cfg.SOLVER.COMPILE_BACKBONE:
            compile_backbone(model)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(
            model, broadcast_buffers=False, device_ids=None if on_cpu else [comm.get_local_rank()]
        )
        if cfg.SOLVER.AMP.ENABLED:
            precision = getattr(torch, cfg.SOLVER.AMP.PRECISION)
            self._trainer = _DeferredLossAMPTrainer(model, data_loader, optimizer, precision=precision)
        else:
            self._trainer = _DeferredLossSimpleTrainer(model, data_loader, optimizer)
        if cfg.SOLVER.LOSS_SYNC_PERIOD < 1:
            raise ValueError(f"SOLVER.LOSS_SYNC_PERIOD is {cfg.SOLVER.LOSS_SYNC_PERIOD}; it must be at least 1 "
                             "(1 = copy and gather the losses every iteration, as Detectron2 does)")
        if cfg.SOLVER.LOSS_SYNC_PERIOD > 1:
            # the writer, checkpoints, evaluation and the end see every loss; a non-finite one stops training
            # before anything is saved
            self._trainer.flush_due = flush_schedule(cfg.SOLVER.MAX_ITER, [
                cfg.SOLVER.LOSS_SYNC_PERIOD, WRITER_PERIOD, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD])

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.exact_resume = None
        if isinstance(data_loader, ExactResumeTrainLoader):
            self.exact_resume = ExactResumeState(data_loader)
        else:
            logger.warning("build_train_loader returned a %s, not an ExactResumeTrainLoader: checkpoints will "
                           "not hold the data position or the RNG states, so --resume is not exact",
                           type(data_loader).__name__)
        extra = {"exact_resume": self.exact_resume} if self.exact_resume is not None else {}
        self.checkpointer = AtomicDetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), **extra
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.stop_requested = False
        self.register_hooks(self.build_hooks() + [_StopOnRequestHook()])

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        state = self.exact_resume
        if state is None or state.loaded or self.start_iter == 0:
            return
        # A checkpoint from before exact resume: continue the data stream where the iteration count says.
        state.loader.start_batch = self.start_iter
        logger.warning("The checkpoint in %s has no exact_resume state (saved by an older hiera_det): the data "
                       "stream continues at global batch %d, but the RNG states start fresh, so the run differs "
                       "from an uninterrupted one", self.cfg.OUTPUT_DIR, self.start_iter)

    def build_hooks(self):
        """Detectron2's hooks, with ``RngSnapshotHook`` on every rank just before the checkpointer (or, on
        ranks without one, before evaluation), and on CUDA every rank's peak memory in the metrics."""
        ret = super().build_hooks()
        if self.exact_resume is not None:
            first = next(i for i, h in enumerate(ret) if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook)))
            ret.insert(first, RngSnapshotHook(self.exact_resume, self.cfg.SOLVER.CHECKPOINT_PERIOD))
        if torch.device(self.cfg.MODEL.DEVICE).type == "cuda":
            writer = next((i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret))
            ret.insert(writer, PeakMemoryHook(period=WRITER_PERIOD))
        return ret

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

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's evaluation under ``TEST.PRECISION``, leaving the training RNG streams as they were (a
        resumed run would otherwise diverge from one that evaluated in between)."""
        with preserved_rng_state(), inference_autocast(cfg):
            return super().test(cfg, model, evaluators)

    def train(self):
        """Train; returns the results of the last evaluation (the final one), or None if none ran.

        In a run of several processes, a process that stops because another one died (a failed collective,
        or the launcher's SIGTERM) says so, names the checkpoint to resume from, and exits."""
        distributed = comm.get_world_size() > 1
        main_thread = threading.current_thread() is threading.main_thread()
        handle_sigterm = distributed and main_thread
        previous = signal.signal(signal.SIGTERM, self._stop_on_sigterm) if handle_sigterm else None
        # one process: the first Ctrl-C stops after the current iteration with a checkpoint (several processes
        # would have to agree on the iteration, so there Ctrl-C stops at once, as in Detectron2)
        handle_sigint = not distributed and main_thread
        previous_int = signal.signal(signal.SIGINT, self._stop_on_sigint) if handle_sigint else None
        try:
            super().train()
        except Exception as error:
            if distributed:
                logger.error("rank %d stopped at iteration %d: %s: %s. In a run of %d processes this usually "
                             "means another process died first (out of memory, killed); see its log. %s",
                             comm.get_rank(), self.iter, type(error).__name__, str(error).splitlines()[0] if str(error) else "",
                             comm.get_world_size(), self._resume_hint())
            raise
        finally:
            if handle_sigterm:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            if handle_sigint:
                signal.signal(signal.SIGINT, previous_int)
        return getattr(self, "_last_eval_results", None)

    def _stop_on_sigint(self, signum, frame):
        if self.stop_requested:  # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.stop_requested = True
        logger.warning("Ctrl-C at iteration %d: stopping after this iteration with a checkpoint (press Ctrl-C "
                       "again to stop at once, without one)", self.iter)

    def _stop_on_sigterm(self, signum, frame):
        logger.error("rank %d received SIGTERM at iteration %d (the launcher stops every process when one fails, "
                     "or the job was cancelled). %s", comm.get_rank(), self.iter, self._resume_hint())
        raise SystemExit(128 + signum)

    def _resume_hint(self) -> str:
        if self.checkpointer.has_checkpoint():
            return (f"The last checkpoint is {self.checkpointer.get_checkpoint_file()}: rerun the same command "
                    "with --resume to continue from it.")
        return "No checkpoint was saved yet: rerun without --resume."


def compile_backbone(model) -> None:
    """``torch.compile`` of ``model.backbone`` (trunk + FPN) with static shapes, in place, so that parameter
    names, and the checkpoints written, stay those of the eager model. The proposal and RoI heads stay eager:
    their shapes depend on the data."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        raise ValueError(f"SOLVER.COMPILE_BACKBONE needs a model with a .backbone module; "
                         f"{type(model).__name__} has none: set SOLVER.COMPILE_BACKBONE False")
    backbone.compile(dynamic=False)


class PeakMemoryHook(HookBase):
    """Puts every rank's ``torch.cuda.max_memory_allocated`` (MiB) into the metrics as
    ``peak_mem_mib/rank<R>`` every ``period`` iterations and at the last one (Detectron2 logs rank 0's only)."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if (iteration + 1) % self.period and iteration < self.trainer.max_iter - 1:
            return
        peaks = comm.all_gather(torch.cuda.max_memory_allocated() / 2**20)
        if comm.is_main_process():
            for rank, peak in enumerate(peaks):
                self.trainer.storage.put_scalar(f"peak_mem_mib/rank{rank}", peak, smoothing_hint=False)

