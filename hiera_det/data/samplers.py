"""A training data stream that is a pure function of (seed, global batch index), so a resumed run continues it.

Detectron2's training loader keeps its position in places a checkpoint cannot reach: an infinite shuffle
generator inside every DataLoader worker, aspect-ratio buckets filled in whatever order workers finish, and
per-worker RNG streams for the augmentations. Here instead:

* ``GlobalBatchSampler`` names the dataset indices of global batch ``k`` from ``(seed, k)`` alone. Epochs
  are seeded permutations; aspect-ratio grouping happens there, from the dataset dicts' ``width`` and
  ``height``, so every global batch is one orientation and nothing is buffered.
* Each process takes its slice of the global batch (positions ``rank * B .. (rank + 1) * B``), so the global
  sequence is the same for any number of processes that divides ``SOLVER.IMS_PER_BATCH``.
* ``SeededMapDataset`` seeds Python's ``random``, NumPy and torch's CPU generator from ``(seed, k,
  position)`` before each mapper call and restores them afterwards, so augmentations do not depend on which
  worker ran them, nor on the number of workers, and mapping in the main process (``NUM_WORKERS`` 0)
  leaves the model's random streams untouched.

Resuming therefore needs only the number of batches consumed (``ExactResumeTrainLoader.start_batch``) and
the seed; ``hiera_det.engine.resume`` saves both with the RNG states of the model side.
"""

from __future__ import annotations

import json
import logging
import os
import random
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from detectron2.data.common import DatasetFromList

logger = logging.getLogger(__name__)

__all__ = ["ExactResumeTrainLoader", "GlobalBatchSampler", "SampleKey", "SeededMapDataset", "sample_seed"]

# Domain tags keep the epoch permutations, the per-sample seeds and the fallback draws independent streams.
_EPOCH_STREAM, _SAMPLE_STREAM, _FALLBACK_STREAM = 0, 1, 2
_MAX_FALLBACKS = 32


class SampleKey(NamedTuple):
    """One item of the stream: global batch ``batch``, its ``position`` in that batch, dataset ``index``."""

    seed: int
    batch: int
    position: int
    index: int


def sample_seed(seed: int, batch: int, position: int) -> int:
    """The 64-bit seed of the augmentations of item ``position`` of global batch ``batch``."""
    return int(np.random.SeedSequence((seed, _SAMPLE_STREAM, batch, position)).generate_state(1, np.uint64)[0])


class GlobalBatchSampler:
    """Dataset indices of global batch ``k``, a pure function of ``(seed, k)``.

    Epoch ``e`` is a permutation seeded by ``(seed, e)`` (repeated as often as needed to fill one batch when
    the dataset is smaller than a batch). With ``repeat_factors`` (Detectron2's repeat-factor sampling),
    index ``i`` appears ``floor(r_i)`` times plus once more with probability ``frac(r_i)``, drawn per epoch.
    With ``aspect_ratios`` (True for a landscape image), the permutation fills two buckets, landscape and the
    rest, and a batch is emitted whenever a bucket is full, as Detectron2's grouping does; the leftovers of
    both buckets at the end of the epoch form mixed batches, so no epoch is empty.
    """

    def __init__(
        self,
        num_items: int,
        global_batch_size: int,
        seed: int,
        *,
        landscape: Sequence[bool] | None = None,
        repeat_factors: Sequence[float] | None = None,
    ):
        if num_items <= 0:
            raise ValueError("the training dataset is empty: check DATASETS.TRAIN and its annotation files")
        if global_batch_size <= 0:
            raise ValueError(f"SOLVER.IMS_PER_BATCH must be positive, got {global_batch_size}")
        for name, values in (("landscape", landscape), ("repeat_factors", repeat_factors)):
            if values is not None and len(values) != num_items:
                raise ValueError(f"{name} has {len(values)} entries for {num_items} dataset items")
        self.num_items = num_items
        self.global_batch_size = global_batch_size
        self._landscape = None if landscape is None else np.asarray(landscape, dtype=bool)
        self._repeat_factors = None if repeat_factors is None else np.asarray(repeat_factors, dtype=np.float64)
        self.seed = seed

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, seed: int) -> None:
        self._seed = int(seed)
        # First batch index of every epoch measured so far (a resume far into training walks the epochs once,
        # since with repeat factors their lengths differ), and the last epoch's batches.
        self._epoch_starts: list[int] = [0]
        self._cached: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch``, in order."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng((self.seed, _EPOCH_STREAM, epoch))
        order: list[int] = []
        while len(order) < self.global_batch_size:
            order.extend(self._one_pass(rng).tolist())
        batches = self._group(order)
        self._cached = (epoch, batches)
        return batches

    def _one_pass(self, rng: np.random.Generator) -> np.ndarray:
        if self._repeat_factors is None:
            return rng.permutation(self.num_items)
        whole = np.floor(self._repeat_factors)
        counts = whole + (rng.random(self.num_items) < self._repeat_factors - whole)
        indices = np.repeat(np.arange(self.num_items), counts.astype(np.int64))
        return indices[rng.permutation(len(indices))]

    def _group(self, order: list[int]) -> list[list[int]]:
        size = self.global_batch_size
        if self._landscape is None:
            return [order[i : i + size] for i in range(0, len(order) - size + 1, size)]
        # (position in the epoch, index) pairs, so that the leftovers of both buckets merge in epoch order
        buckets: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
        batches = []
        for position, index in enumerate(order):
            bucket = buckets[0] if self._landscape[index] else buckets[1]
            bucket.append((position, index))
            if len(bucket) == size:
                batches.append([i for _, i in bucket])
                bucket.clear()
        leftovers = [i for _, i in sorted(buckets[0] + buckets[1])]
        batches.extend(leftovers[i : i + size] for i in range(0, len(leftovers) - size + 1, size))
        return batches

    def global_batch(self, k: int) -> list[int]:
        """Dataset indices of global batch ``k`` (``global_batch_size`` of them)."""
        if k < 0:
            raise ValueError(f"batch index must be >= 0, got {k}")
        epoch = self._epoch_of(k)
        return self.epoch_batches(epoch)[k - self._epoch_starts[epoch]]

    def _epoch_of(self, k: int) -> int:
        epoch = max(0, np.searchsorted(self._epoch_starts, k, side="right") - 1)
        while epoch == len(self._epoch_starts) - 1:
            end = self._epoch_starts[epoch] + len(self.epoch_batches(epoch))
            self._epoch_starts.append(end)
            if k < end:
                break
            epoch += 1
        return int(epoch)


class _RankBatches:
    """This process's slice of every global batch from ``start`` on, as lists of ``SampleKey`` (the
    DataLoader's ``batch_sampler``; it runs in the main process)."""

    def __init__(self, sampler: GlobalBatchSampler, start: int, rank: int, world_size: int):
        self.sampler, self.start = sampler, start
        self.per_rank = sampler.global_batch_size // world_size
        self.first = rank * self.per_rank

    def __iter__(self) -> Iterator[list[SampleKey]]:
        k = self.start
        while True:
            indices = self.sampler.global_batch(k)
            positions = range(self.first, self.first + self.per_rank)
            yield [SampleKey(self.sampler.seed, k, p, indices[p]) for p in positions]
            k += 1


@contextmanager
def _seeded_global_rngs(seed: int):
    """Seed Python's ``random``, NumPy's global generator and torch's CPU generator, restoring all three on
    exit (CUDA generators are left alone: mappers do not use them, and seeding them would initialise CUDA)."""
    saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])


class SeededMapDataset(torch.utils.data.Dataset):
    """Maps ``SampleKey`` -> ``(key, mapper(dataset_dicts[key.index]))`` with the global RNGs seeded from the
    key (see the module docstring).

    A mapper may return None for an item it cannot use (an unreadable training video); another index is then
    drawn from the key's own stream, so the replacement is as reproducible as the rest. After
    ``_MAX_FALLBACKS`` failures in a row the error names the last items tried.
    """

    def __init__(self, dataset_dicts: list[dict], mapper: Callable[[dict], dict | None]):
        self._dicts = DatasetFromList(dataset_dicts, copy=False, serialize=True)
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self._dicts)

    def __getitem__(self, key: SampleKey):
        seed = sample_seed(key.seed, key.batch, key.position)
        index, failed = key.index, []
        fallback = None
        for _ in range(_MAX_FALLBACKS + 1):
            with _seeded_global_rngs(seed):
                mapped = self.mapper(self._dicts[index])
            if mapped is not None:
                return key, mapped
            failed.append(self._dicts[index].get("file_name", f"item {index}"))
            if fallback is None:
                fallback = np.random.default_rng((key.seed, _FALLBACK_STREAM, key.batch, key.position))
            index = int(fallback.integers(len(self._dicts)))
            seed = int(fallback.integers(2**63))
        raise RuntimeError(f"the training mapper rejected {len(failed)} items in a row for position {key.position} "
                           f"of batch {key.batch} (last: {failed[-3:]}); check that the dataset's files are "
                           "readable (see the warnings above)")


def _keep_list(batch):
    return batch


class ExactResumeTrainLoader:
    """This process's training batches (lists of mapped dicts): the ``k``-th batch it yields is its slice of
    global batch ``start_batch + k``.

    ``start_batch`` and ``sampler.seed`` may be changed until iteration starts (a resume sets them);
    ``batches_consumed`` counts the batches handed out so far, from 0. With ``order_log`` set, every batch
    handed out appends one JSON line ``{"iteration", "positions", "indices", "file_names"}`` to that file:
    what a resumed run saw can then be compared with an uninterrupted one.
    """

    def __init__(
        self,
        dataset_dicts: list[dict],
        mapper: Callable[[dict], dict | None],
        sampler: GlobalBatchSampler,
        *,
        rank: int,
        world_size: int,
        num_workers: int,
        pin_memory: bool = False,
        order_log: str | None = None,
    ):
        if sampler.global_batch_size % world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH ({sampler.global_batch_size}) must be divisible by the number "
                             f"of processes ({world_size}); every process takes an equal slice of each batch")
        self.dataset = SeededMapDataset(dataset_dicts, mapper)
        self.sampler = sampler
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.order_log = order_log
        self.start_batch = 0
        self.batches_consumed = 0

    @property
    def batch_size(self) -> int:
        """Items per batch of this process."""
        return self.sampler.global_batch_size // self.world_size

    def __iter__(self) -> Iterator[list[dict]]:
        batches = _RankBatches(self.sampler, self.start_batch, self.rank, self.world_size)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=_keep_list,
            pin_memory=self.pin_memory,
            # Creating the iterator draws a base seed; an own generator keeps it off the global one.
            generator=torch.Generator().manual_seed(self.sampler.seed),
        )
        log = None
        if self.order_log:
            os.makedirs(os.path.dirname(os.path.abspath(self.order_log)), exist_ok=True)
            log = open(self.order_log, "a")
        expected = self.start_batch
        self.batches_consumed = self.start_batch
        try:
            for batch in loader:
                keys = [key for key, _ in batch]
                if any(key.batch != expected for key in keys):
                    raise RuntimeError(f"the loader returned batch {keys[0].batch} where {expected} was due")
                mapped = [item for _, item in batch]
                if log is not None:
                    log.write(json.dumps(_order_record(expected, keys, mapped)) + "\n")
                    log.flush()
                self.batches_consumed = expected + 1
                yield mapped
                expected += 1
        finally:
            if log is not None:
                log.close()


def _order_record(batch: int, keys: list[SampleKey], mapped: list[dict]) -> dict:
    return {
        "iteration": batch,
        "positions": [key.position for key in keys],
        "indices": [key.index for key in keys],
        "file_names": [item.get("file_name") for item in mapped],
    }

