"""Exact resume: every process's RNG states and the data stream's position, saved in the checkpoint.

The training data is a pure function of (seed, global batch index) (``hiera_det.data.samplers``), so the
checkpoint needs only the number of batches consumed and the seed for the data; the model side (drop path,
RPN and ROI sampling, dropout) draws from each process's global generators, whose states (Python, NumPy,
torch CPU, CUDA of the process's device) are saved per rank.

The checkpointer writes on the main process only, and fvcore returns before asking for the state on the
others, so the states cannot be gathered in ``state_dict``: ``RngSnapshotHook`` gathers them on every rank
just before ``PeriodicCheckpointer`` runs, at the same iterations. The saved state holds tensors, numbers and
lists only, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.samplers import ExactResumeTrainLoader

__all__ = [
    "ExactResumeState",
    "RngSnapshotHook",
    "capture_rng_state",
    "preserved_rng_state",
    "restore_rng_state",
    "seed_rng_state",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def capture_rng_state() -> dict:
    """This process's global RNG states as tensors and numbers."""
    version, python_state, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "torch": torch.random.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng_state(state: dict) -> list[str]:
    """Set this process's global RNGs from ``capture_rng_state()``'s output; returns notes on what could not
    be restored (a CUDA state on a machine without CUDA, or none saved for a CUDA run)."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.random.set_rng_state(state["torch"])
    cuda_here = torch.cuda.is_available() and torch.cuda.is_initialized()
    if state["cuda"] is not None and cuda_here:
        torch.cuda.set_rng_state(state["cuda"])
    elif state["cuda"] is not None:
        return ["the checkpoint holds a CUDA RNG state but this process does not use CUDA; it is ignored"]
    elif cuda_here:
        return ["the checkpoint was saved without CUDA: this process's CUDA generator keeps its fresh seed"]
    return []


def seed_rng_state(seed: int) -> None:
    """Seed this process's global RNGs (CUDA's too when in use) from one 64-bit ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed(seed)


@contextmanager
def preserved_rng_state():
    """Run the body without changing this process's global RNG states (evaluation, for one: its loader and
    any random op would otherwise shift the training streams, and a resumed run would diverge)."""
    saved = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(saved)


class ExactResumeState:
    """The checkpointable (``exact_resume``) holding the data position, the data seed and every rank's RNG
    states; loading it positions ``loader`` and restores this rank's generators."""

    def __init__(self, loader: ExactResumeTrainLoader):
        self.loader = loader
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self._snapshot: dict | None = None
        self.loaded = False

    def snapshot(self) -> None:
        """Gather every rank's RNG states now; a collective, so every rank must call it."""
        states = comm.all_gather(capture_rng_state())
        self._snapshot = {"batches_consumed": self.loader.batches_consumed, "rng": states}

    def state_dict(self) -> dict:
        snapshot = self._snapshot
        if snapshot is None or snapshot["batches_consumed"] != self.loader.batches_consumed:
            # A save outside RngSnapshotHook's iterations: only this process's states are at hand.
            rng = [None] * self.world_size
            rng[self.rank] = capture_rng_state()
            snapshot = {"batches_consumed": self.loader.batches_consumed, "rng": rng}
        return {
            "format": FORMAT_VERSION,
            "seed": self.loader.sampler.seed,
            "global_batch_size": self.loader.sampler.global_batch_size,
            "world_size": self.world_size,
            **snapshot,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != FORMAT_VERSION:
            raise ValueError(f"the checkpoint's exact_resume state has format {state.get('format')!r}; this "
                             f"hiera_det reads format {FORMAT_VERSION}. Resume with the hiera_det that wrote it, "
                             "or load the weights alone through MODEL.WEIGHTS without --resume")
        consumed, seed = int(state["batches_consumed"]), int(state["seed"])
        self.loader.sampler.seed = seed
        self.loader.start_batch = consumed
        saved_states = list(state["rng"])
        notes = []
        mine = saved_states[self.rank] if self.rank < len(saved_states) else None
        if mine is not None:
            notes += restore_rng_state(mine)
        else:
            seed_rng_state(int(np.random.SeedSequence((seed, self.rank, consumed)).generate_state(1, np.uint64)[0]))
        self.loaded = True
        if comm.is_main_process():
            self._log_resume(state, saved_states, consumed, seed, notes)

    def _log_resume(self, state: dict, saved_states: list, consumed: int, seed: int, notes: list[str]) -> None:
        saved_world, saved_batch = int(state["world_size"]), int(state["global_batch_size"])
        batch = self.loader.sampler.global_batch_size
        restored = [r for r in range(self.world_size) if r < len(saved_states) and saved_states[r] is not None]
        changes = []
        if saved_world != self.world_size:
            changes.append(f"it was saved by {saved_world} processes and resumes on {self.world_size}: each "
                           f"process now takes {batch // self.world_size} of the {batch} images of every global "
                           f"batch instead of {saved_batch // saved_world}")
        if saved_batch != batch:
            changes.append(f"SOLVER.IMS_PER_BATCH changed from {saved_batch} to {batch}, so the global batches "
                           "from here on differ from the uninterrupted run's")
        fresh = [r for r in range(self.world_size) if r not in restored]
        dropped = list(range(self.world_size, saved_world))
        if fresh:
            changes.append(f"ranks {fresh} have no saved RNG state and are seeded from (seed, rank, batch)")
        if dropped:
            changes.append(f"the saved RNG states of ranks {dropped} are dropped")
        if fresh or dropped:
            changes.append("so model-side randomness (drop path, RPN/ROI sampling) differs from the "
                           "uninterrupted run")
        summary = (f"Exact resume: the data stream continues at global batch {consumed} (seed {seed}, "
                   f"IMS_PER_BATCH {batch})")
        if changes or notes:
            logger.warning(summary + "; " + "; ".join(changes + notes) + ".")
        else:
            logger.info(summary + f"; the RNG states of all {self.world_size} processes are restored.")


class RngSnapshotHook(HookBase):
    """Gathers every rank's RNG states into ``state`` at the iterations ``PeriodicCheckpointer`` saves at
    (every ``period`` and the last); must run on every rank, before that checkpointer."""

    def __init__(self, state: ExactResumeState, period: int):
        self.state, self.period = state, period

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if (iteration + 1) % self.period == 0 or iteration >= self.trainer.max_iter - 1:
            self.state.snapshot()
