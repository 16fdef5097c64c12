"""Exact resume: the training stream is a pure function of (seed, global batch), and a run killed with
SIGKILL and resumed sees the same batches and reaches bit-identical weights on the CPU; checkpoints move
between process counts with a message saying what changes; a killed rank stops the others.

The training runs use tools/train_net.py on six small hiera_shapes images of mixed aspect ratio with a tiny
Hiera, with every source of randomness on: random flips and sizes, drop path, RPN and ROI sampling.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

from hiera_det.data.samplers import GlobalBatchSampler, _RankBatches  # noqa: E402
from train_net_runs import (  # noqa: E402
    losses,
    shapes_with_one_annotation_each,
    short_schedule,
    train,
    train_net_command,
    train_net_env,
)

MAX_ITER = 30
# Detectron2 writes metrics.json every 20 iterations with each loss as the median of its last 20 values; the
# entry at the last iteration covers iterations 10..29, which a run resumed at iteration <= 10 has all seen.
COMPARED_WINDOW_START = MAX_ITER - 20
_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.MASK_ON", "False",
    "MODEL.HIERA.STAGES", "[1,1,1,1]",
    "MODEL.HIERA.INPUT_SIZE", "[64,64]",
    "MODEL.HIERA.DROP_PATH_RATE", "0.3",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "INPUT.MIN_SIZE_TRAIN", "(48,56,64)",
    "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.RANDOM_FLIP", "horizontal",
    *short_schedule(MAX_ITER),
    "DATALOADER.LOG_DATA_ORDER", "True",
    "DATASETS.TEST", "()",
    "SEED", "3",
]  # fmt: skip


# ------------------------------------------------------------------------------------------ the sampler


def test_global_batches_are_a_pure_function_of_seed_and_index():
    landscape = [True, False, True, True, False, False, True, False, True, True, False]
    make = lambda seed=7: GlobalBatchSampler(len(landscape), 4, seed, landscape=landscape)  # noqa: E731
    sampler = make()
    batches = [sampler.global_batch(k) for k in range(12)]
    assert all(len(b) == 4 for b in batches)
    # seeking straight to a batch (a resume) gives what the full walk gave, in any order of queries
    fresh = make()
    assert [fresh.global_batch(k) for k in (9, 3, 11, 0)] == [batches[k] for k in (9, 3, 11, 0)]
    assert make(seed=8).global_batch(0) != batches[0] or make(seed=8).global_batch(1) != batches[1]

    per_epoch = len(sampler.epoch_batches(0))
    assert per_epoch == 2  # 6 landscape -> 1 batch + 2 left, 5 others -> 1 batch + 1 left; 3 left < 4
    for epoch in range(3):
        batches_of_epoch = sampler.epoch_batches(epoch)
        seen = [i for b in batches_of_epoch for i in b]
        assert len(seen) == len(set(seen)), "an epoch must not repeat an item"
        assert all(len({landscape[i] for i in b}) == 1 for b in batches_of_epoch), "one orientation per batch"


def test_small_datasets_and_repeat_factors_still_fill_every_batch():
    tiny = GlobalBatchSampler(3, 8, seed=0)
    assert all(len(tiny.global_batch(k)) == 8 and set(tiny.global_batch(k)) == {0, 1, 2} for k in range(4))
    mixed = GlobalBatchSampler(2, 2, seed=0, landscape=[True, False])  # never one orientation per batch
    assert sorted(mixed.global_batch(5)) == [0, 1]
    repeated = GlobalBatchSampler(4, 2, seed=1, repeat_factors=[3.0, 1.0, 1.0, 0.0])
    counts = np.bincount([i for k in range(300) for i in repeated.global_batch(k)], minlength=4)
    assert counts[3] == 0 and counts[0] > 2.5 * counts[1]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_every_rank_takes_its_slice_of_the_same_global_batch(world_size):
    sampler = GlobalBatchSampler(10, 4, seed=5)
    streams = [iter(_RankBatches(sampler, start=3, rank=r, world_size=world_size)) for r in range(world_size)]
    for k in range(3, 9):
        keys = [key for stream in streams for key in next(stream)]
        assert [key.index for key in keys] == sampler.global_batch(k)
        assert [(key.batch, key.position) for key in keys] == [(k, p) for p in range(4)]


# ------------------------------------------------------------------------------------- the training loader


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """Six hiera_shapes images of 64-96 px, one annotation each."""
    return shapes_with_one_annotation_each(tmp_path_factory.mktemp("datasets"), 6, 64, 96)


def _cfg(output_dir, *opts):
    from hiera_det.config import get_hiera_cfg, merge_config

    cfg = merge_config(get_hiera_cfg(), "shapes/hiera_tiny_shapes.yaml", _OPTS + list(opts))
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def _take_batches(cfg, count, start=0):
    from hiera_det.engine import loaders

    loader = loaders.build_train_loader(cfg)
    loader.start_batch = start
    stream = iter(loader)
    batches = [next(stream) for _ in range(count)]
    stream.close()  # ends the workers
    return batches


def test_loader_output_is_independent_of_workers_and_leaves_global_rngs_alone(datasets_root, tmp_path):
    from hiera_det.data import catalog

    catalog.register_builtin_datasets(datasets_root)
    try:
        cfg = _cfg(tmp_path / "a", "DATALOADER.LOG_DATA_ORDER", "False")
        torch.manual_seed(123)
        before = torch.random.get_rng_state(), np.random.get_state()[1].copy()
        in_process = _take_batches(cfg, 6)
        assert torch.equal(before[0], torch.random.get_rng_state()), "mapping must not move torch's generator"
        assert np.array_equal(before[1], np.random.get_state()[1]), "mapping must not move numpy's generator"
        cfg.DATALOADER.NUM_WORKERS = 2
        in_workers = _take_batches(cfg, 6)
        resumed = _take_batches(cfg, 2, start=4)
    finally:
        catalog.register_builtin_datasets()

    def signature(batch):
        return [(d["file_name"], d["image"].shape, d["image"].float().sum().item(),
                 d["instances"].gt_boxes.tensor.tolist()) for d in batch]  # fmt: skip

    assert [signature(b) for b in in_process] == [signature(b) for b in in_workers]
    assert all(torch.equal(a["image"], b["image"]) for x, y in zip(in_process, in_workers) for a, b in zip(x, y))
    assert [signature(b) for b in resumed] == [signature(b) for b in in_process[4:]]
    sizes = {d["image"].shape[1:] for b in in_process for d in b}
    flips = {tuple(d["instances"].gt_boxes.tensor[0].tolist()) for b in in_process for d in b}
    assert len(sizes) > 1 and len(flips) > 1, "the test needs random sizes to mean anything"


# ------------------------------------------------------------------------------------------- train_net runs


def _data_order(output_dir, world_size=1):
    """{iteration: dataset indices of the global batch}, from every rank's log; a batch logged twice (before
    a kill and again after the resume) must be the same both times."""
    by_rank = []
    for rank in range(world_size):
        seen = {}
        for line in (output_dir / f"data_order.rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            items = list(zip(record["positions"], record["indices"], record["file_names"]))
            if record["iteration"] in seen:
                assert seen[record["iteration"]] == items, f"iteration {record['iteration']} changed"
            else:
                seen[record["iteration"]] = items
                by_rank.append((rank, record["iteration"], items))
    order = {}
    for _, iteration, items in sorted(by_rank):
        order.setdefault(iteration, []).extend(items)
    return {iteration: [index for _, index, _ in sorted(items)] for iteration, items in order.items()}


def _final_weights(output_dir):
    return torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def _wait_for_checkpoint(process, tag, timeout=300):
    deadline = time.monotonic() + timeout
    while not (tag.is_file() and tag.read_text().strip()):
        assert process.poll() is None, "training exited before writing its first checkpoint"
        assert time.monotonic() < deadline, f"no checkpoint within {timeout} s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(datasets_root, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "out"
    train(datasets_root, output_dir, _OPTS)
    return output_dir


def test_sigkill_then_resume_sees_the_same_batches_and_matches_bit_for_bit(datasets_root, uninterrupted, tmp_path):
    """The interrupted run loads with two DataLoader workers, the uninterrupted one in the main process."""
    output_dir = tmp_path / "out"
    tag = output_dir / "last_checkpoint"
    process = subprocess.Popen(
        train_net_command(output_dir, _OPTS + ["DATALOADER.NUM_WORKERS", "2"]),
        env=train_net_env(datasets_root),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_checkpoint(process, tag)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    assert not (output_dir / "model_final.pth").exists(), "the run finished before it could be killed"
    checkpoint_name = tag.read_text().strip()
    checkpoint = torch.load(output_dir / checkpoint_name, map_location="cpu", weights_only=True)
    killed_at = checkpoint["iteration"]
    assert checkpoint_name == f"model_{killed_at:07d}.pth"
    assert killed_at < COMPARED_WINDOW_START, f"killed too late (checkpoint of iteration {killed_at})"
    state = checkpoint["exact_resume"]
    assert state["batches_consumed"] == killed_at + 1 and state["world_size"] == 1 and state["seed"] == 3

    log = train(datasets_root, output_dir, _OPTS + ["DATALOADER.NUM_WORKERS", "2"], resume=True)
    assert f"Starting training from iteration {killed_at + 1}" in log
    assert f"data stream continues at global batch {killed_at + 1}" in log and "RNG states of all 1" in log

    reference_order = _data_order(uninterrupted)
    assert sorted(reference_order) == list(range(MAX_ITER))
    assert _data_order(output_dir) == reference_order
    assert losses(output_dir, MAX_ITER - 1) == losses(uninterrupted, MAX_ITER - 1)
    resumed, reference = _final_weights(output_dir), _final_weights(uninterrupted)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[key], reference[key]) for key in reference), "weights must match bit for bit"


# ------------------------------------------------------------------------------ several processes (gloo)

_MULTI = ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "4",
          "SOLVER.STEPS", "(10,)"]  # fmt: skip


@pytest.fixture(scope="module")
def two_processes(datasets_root, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("two_processes") / "out"
    train(datasets_root, output_dir, _OPTS + _MULTI, num_gpus=2, timeout=600)
    return output_dir


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 4])
def test_checkpoint_of_two_processes_resumes_on_another_count_with_the_same_global_batches(
    datasets_root, two_processes, tmp_path, world_size
):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    shutil.copy(two_processes / "model_0000003.pth", output_dir)
    (output_dir / "last_checkpoint").write_text("model_0000003.pth")
    log = train(datasets_root, output_dir, _OPTS + _MULTI, num_gpus=world_size, resume=True, timeout=600)
    assert "Starting training from iteration 4" in log
    assert f"saved by 2 processes and resumes on {world_size}" in log
    per_process = 4 // world_size
    assert f"each process now takes {per_process} of the 4 images of every global batch instead of 2" in log
    expected_rng_note = "ranks [2, 3] have no saved RNG state" if world_size == 4 else "ranks [1] are dropped"
    assert expected_rng_note in log
    reference = _data_order(two_processes, world_size=2)
    assert _data_order(output_dir, world_size=world_size) == {k: reference[k] for k in range(4, 12)}


def _rank_processes(launcher_pid):
    """PIDs of the launcher's worker processes in start order (= rank order), from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == launcher_pid and "spawn_main" in cmdline:
            children.append((int(fields[19]), int(entry.name)))  # (start time, pid)
    return [pid for _, pid in sorted(children)]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the rank processes through /proc")
def test_killing_one_rank_stops_the_others_with_a_message_and_resume_continues(
    datasets_root, two_processes, tmp_path
):
    output_dir = tmp_path / "out"
    process = subprocess.Popen(
        train_net_command(output_dir, _OPTS + _MULTI, num_gpus=2),
        env=train_net_env(datasets_root),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for_checkpoint(process, output_dir / "last_checkpoint")
        ranks = _rank_processes(process.pid)
        assert len(ranks) == 2, f"expected two rank processes, found {ranks}"
        os.kill(ranks[1], signal.SIGKILL)
        output, _ = process.communicate(timeout=120)  # a hang fails here
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    assert process.returncode != 0
    assert "process 1 terminated with signal SIGKILL" in output
    assert "rank 0" in output and "--resume" in output, output[-3000:]
    assert not (output_dir / "model_final.pth").exists(), "the run finished before the rank was killed"

    resumed_at = torch.load(output_dir / (output_dir / "last_checkpoint").read_text().strip(),
                            map_location="cpu", weights_only=True)["iteration"] + 1  # fmt: skip
    log = train(datasets_root, output_dir, _OPTS + _MULTI, num_gpus=2, resume=True, timeout=600)
    assert f"Starting training from iteration {resumed_at}" in log
    assert _data_order(output_dir, world_size=2) == _data_order(two_processes, world_size=2)
    resumed, reference = _final_weights(output_dir), _final_weights(two_processes)
    assert all(torch.equal(resumed[key], reference[key]) for key in reference), "weights must match bit for bit"
