"""Training losses written to the event storage without a host sync every step: kept on the device and copied
to the host, and gathered across processes, once per period.

Detectron2's ``SimpleTrainer._write_metrics`` runs between backward and the optimizer step of every iteration:
``.item()`` on each loss makes the host wait for the device to finish backward, and ``comm.gather`` (a CPU
collective) makes every process wait for the slowest one before it may launch its optimizer step. Deferring
both to every ``SOLVER.LOSS_SYNC_PERIOD`` iterations writes the same per-iteration values (each with its own
iteration number, so the 20-iteration medians in ``metrics.json`` are unchanged); a non-finite loss is then
reported at the next flush, which comes before any checkpoint or evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

__all__ = ["DeferredLossMetrics", "PendingLosses", "flush_schedule", "reduce_across_processes"]


@dataclass
class PendingLosses:
    """One iteration's losses, still on the device."""

    iteration: int
    prefix: str
    names: list[str]
    values: list[torch.Tensor]
    data_time: float


def reduce_across_processes(per_process: list[dict[str, float]]) -> tuple[float, dict[str, float]]:
    """Detectron2's reduction of one iteration's metrics gathered from every process: the slowest data time,
    and each loss averaged over the processes."""
    data_time = float(np.max([m["data_time"] for m in per_process]))
    names = [k for k in per_process[0] if k != "data_time"]
    return data_time, {k: float(np.mean([m[k] for m in per_process])) for k in names}


def flush_schedule(max_iter: int, periods: list[int]) -> Callable[[int], bool]:
    """``flush_due`` for ``DeferredLossMetrics``: after every iteration that ends one of ``periods`` (those
    above 0) and after the last."""
    periods = [p for p in periods if p > 0]
    return lambda iteration: iteration >= max_iter - 1 or any((iteration + 1) % p == 0 for p in periods)


class DeferredLossMetrics:
    """Mixin before Detectron2's ``SimpleTrainer`` or ``AMPTrainer``: its ``_write_metrics`` holds each
    iteration's detached losses and writes them when ``flush_due(iteration)`` says so (the owner sets it; with
    ``flush_due`` None every iteration is written at once, as Detectron2 does)."""

    flush_due: Callable[[int], bool] | None = None

    def _write_metrics(self, loss_dict, data_time: float, prefix: str = "", iter: int | None = None) -> None:  # noqa: A002
        iteration = self.iter if iter is None else iter
        pending = self.__dict__.setdefault("_pending_losses", [])
        pending.append(PendingLosses(iteration, prefix, list(loss_dict),
                                     [v.detach().reshape(()) for v in loss_dict.values()], data_time))
        if self.flush_due is None or self.flush_due(iteration):
            self.flush_losses()

    def flush_losses(self) -> None:
        """Copy the held losses to the host in one transfer, gather them once, and write them per iteration.
        Every process must call it at the same iterations (it is a collective)."""
        pending: list[PendingLosses] = self.__dict__.get("_pending_losses", [])
        if not pending:
            return
        self._pending_losses = []
        flat = torch.stack([v.float() for p in pending for v in p.values]).cpu().tolist()
        records, start = [], 0
        for p in pending:
            values = flat[start:start + len(p.names)]
            start += len(p.names)
            records.append((p.iteration, p.prefix, {**dict(zip(p.names, values)), "data_time": p.data_time}))
        storage = get_event_storage()
        for iteration, _, metrics in records:
            storage.put_scalar("rank_data_time", metrics["data_time"], cur_iter=iteration)
        gathered = comm.gather(records)
        if not comm.is_main_process():
            return
        for index, (iteration, prefix, _) in enumerate(records):
            data_time, losses = reduce_across_processes([process[index][2] for process in gathered])
            storage.put_scalar("data_time", data_time, cur_iter=iteration)
            total = sum(losses.values())
            if not np.isfinite(total):
                raise FloatingPointError(f"Loss became infinite or NaN at iteration={iteration}!\nloss_dict = {losses}")
            storage.put_scalar(f"{prefix}total_loss", total, cur_iter=iteration)
            if len(losses) > 1:
                storage.put_scalars(cur_iter=iteration, **losses)
