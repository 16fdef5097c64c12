"""Deferred loss metrics: the same per-iteration values as Detectron2's every-step writing, one host copy and
one gather per flush, non-finite losses still stop training (with their own iteration), and the reduction
across processes is Detectron2's (mean loss, slowest data time)."""

import socket

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.engine import SimpleTrainer  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from hiera_det.engine import loss_metrics  # noqa: E402
from hiera_det.engine.loss_metrics import DeferredLossMetrics, flush_schedule  # noqa: E402


class TwoLosses(torch.nn.Module):
    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.calls, self.nan_at = 0, nan_at

    def forward(self, x):
        y = self.linear(x)
        loss_b = y.abs().mean()
        if self.calls == self.nan_at:
            loss_b = loss_b * float("nan")
        self.calls += 1
        return {"loss_a": (y**2).mean(), "loss_b": loss_b}


class Deferred(DeferredLossMetrics, SimpleTrainer):
    pass


def _batches():
    generator = torch.Generator().manual_seed(0)
    while True:
        yield torch.randn(8, 4, generator=generator)


def _train(trainer_class, iterations, **model_args):
    torch.manual_seed(0)
    model = TwoLosses(**model_args)
    trainer = trainer_class(model, _batches(), torch.optim.SGD(model.parameters(), lr=0.1))
    if trainer_class is Deferred:
        trainer.flush_due = flush_schedule(iterations, [20])
    trainer.train(0, iterations)
    return trainer


def _losses(storage):
    return {name: storage.history(name).values() for name in ("total_loss", "loss_a", "loss_b")}


def test_deferred_losses_equal_detectron2s_per_iteration_values_with_one_gather_per_flush(monkeypatch):
    reference = _losses(_train(SimpleTrainer, 45).storage)
    gathers = []
    real_gather = loss_metrics.comm.gather
    monkeypatch.setattr(loss_metrics.comm, "gather", lambda data, **kw: gathers.append(len(data)) or real_gather(data, **kw))
    deferred = _train(Deferred, 45)
    assert _losses(deferred.storage) == reference
    assert [i for _, i in reference["total_loss"]] == list(range(45))
    assert gathers == [20, 20, 5]  # after iterations 19, 39 and the last (44)
    assert len(deferred.storage.history("data_time").values()) == 45


def test_a_non_finite_loss_stops_training_at_the_flush_naming_its_iteration():
    with pytest.raises(FloatingPointError, match="iteration=7!"):
        _train(Deferred, 45, nan_at=7)
    with pytest.raises(FloatingPointError, match="iteration=7!"):
        _train(SimpleTrainer, 45, nan_at=7)


def test_flush_schedule_ends_every_period_and_the_run():
    due = flush_schedule(50, [20, 0, 15])
    assert [i for i in range(50) if due(i)] == [14, 19, 29, 39, 44, 49]


def _two_process_worker(rank, port, result):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    trainer = Deferred.__new__(Deferred)
    trainer.flush_due = lambda iteration: False  # held until the explicit flush
    with EventStorage(0) as storage:
        for iteration in range(3):
            trainer.iter = iteration
            losses = {"loss_a": torch.tensor(float(rank + iteration)), "loss_b": torch.tensor(10.0 * rank)}
            trainer._write_metrics(losses, data_time=0.1 * (rank + 1))
        trainer.flush_losses()
        if rank == 0:
            result.update({name: storage.history(name).values() for name in ("loss_a", "total_loss", "data_time")})
    dist.destroy_process_group()


def test_two_processes_write_the_mean_loss_and_the_slowest_data_time():
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    result = manager.dict()
    mp.spawn(_two_process_worker, args=(port, result), nprocs=2)
    assert result["loss_a"] == [(0.5, 0), (1.5, 1), (2.5, 2)]
    assert result["total_loss"] == [(5.5, 0), (6.5, 1), (7.5, 2)]
    assert result["data_time"] == [(0.2, 0), (0.2, 1), (0.2, 2)]
