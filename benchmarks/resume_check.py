"""Exact resume on GPUs, as ``tools/train_net.py`` runs it: ``same`` trains on 2 GPUs uninterrupted, and again
with one rank killed by SIGKILL after the first checkpoint and the run continued with ``--resume``, then compares
the data order (must be identical) and the windowed losses (within kernel nondeterminism: the spread of the two
runs before the kill is the yardstick); ``across`` resumes that 2-GPU checkpoint on 1 and on 4 GPUs and keeps
the message saying what changes (``--source``: another run's checkpoint instead, e.g. the 2-GPU loss-curve run of
``benchmarks.ddp``, with its own data order as the reference). Writes a json.

    python -m benchmarks.resume_check --mode same --data /tmp/coco_like --gpus 2,3 --out /tmp/resume_same.json
    python -m benchmarks.resume_check --mode across --data /tmp/coco_like --gpus 0,1,2,3 --out /tmp/resume_across.json

The model is ``maskrcnn_small`` of ``benchmarks.ddp``: the Mask R-CNN pipeline (COCO-like JPEGs, LSJ, polygon
masks) with a Hiera-T trunk at 512 px (``--smoke``: the tiny CPU one), global batch 4, every source of randomness
on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks.ddp import WINDOW, train_job

LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc")


def _job(name, gpus, args, iters, resume=False):
    extra = ["SOLVER.CHECKPOINT_PERIOD", str(args.period), "DATALOADER.LOG_DATA_ORDER", "True"]
    job = train_job(name, "maskrcnn_small", gpus, args, iters, args.global_batch // len(gpus), extra=extra)
    if resume:
        job.command.insert(2, "--resume")
    return job


def _run(job, timeout: float) -> tuple[int, str]:
    job.output_dir.mkdir(parents=True, exist_ok=True)
    with open(job.output_dir / "stdout.txt", "a") as log:
        result = subprocess.run(job.command, env=job.env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    return result.returncode, (job.output_dir / "stdout.txt").read_text(errors="replace")


def data_order(output_dir: Path, world_size: int | None = None) -> tuple[dict, list]:
    """({global batch: dataset indices in order}, batches logged twice with different content); by default
    over every rank's log in ``output_dir``."""
    if world_size is None:
        world_size = len(list(output_dir.glob("data_order.rank*.jsonl")))
    order, changed = {}, []
    for rank in range(world_size):
        seen = {}
        path = output_dir / f"data_order.rank{rank}.jsonl"
        for line in path.read_text().splitlines() if path.is_file() else []:
            record = json.loads(line)
            items = list(zip(record["positions"], record["indices"]))
            if record["iteration"] in seen and seen[record["iteration"]] != items:
                changed.append((rank, record["iteration"]))
            seen[record["iteration"]] = items
        for iteration, items in seen.items():
            order.setdefault(iteration, []).extend(items)
    return {k: [index for _, index in sorted(v)] for k, v in sorted(order.items())}, changed


def windowed_losses(output_dir: Path) -> dict:
    """{iteration: {loss: value}} of metrics.json; a window logged twice keeps its last entry."""
    losses = {}
    path = output_dir / "metrics.json"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "total_loss" in entry:
            losses[entry["iteration"]] = {k: round(entry[k], 5) for k in LOSS_KEYS if k in entry}
    return losses


def _rank_processes(launcher_pid: int) -> list[int]:
    """The launcher's worker processes in start order (= rank order), from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == launcher_pid and "spawn_main" in cmdline:
            children.append((int(fields[19]), int(entry.name)))
    return [pid for _, pid in sorted(children)]


def kill_rank_after_checkpoint(job, checkpoint: str, timeout: float) -> dict:
    """Start ``job``, SIGKILL its rank 1 once ``checkpoint`` is written and a few more batches ran; the other
    rank must stop by itself with the resume hint."""
    job.output_dir.mkdir(parents=True, exist_ok=True)
    log = open(job.output_dir / "stdout.txt", "w")
    process = subprocess.Popen(job.command, env=job.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    order_log = job.output_dir / "data_order.rank0.jsonl"
    target = int(checkpoint.split("_")[1].split(".")[0]) + 4
    while time.monotonic() < deadline and process.poll() is None:
        written = (job.output_dir / "last_checkpoint").is_file() and (job.output_dir / checkpoint).is_file()
        batches = len(order_log.read_text().splitlines()) if order_log.is_file() else 0
        if written and batches >= target:
            break
        time.sleep(0.2)
    result = {"killed_after_batches_logged": len(order_log.read_text().splitlines()) if order_log.is_file() else 0}
    ranks = _rank_processes(process.pid)
    if process.poll() is not None:
        result["error"] = f"training ended (exit {process.returncode}) before the kill"
        return result
    if len(ranks) >= 2:
        os.kill(ranks[1], signal.SIGKILL)
        result["killed"] = "rank 1"
    else:
        os.killpg(process.pid, signal.SIGKILL)
        result["killed"] = "the whole run (rank processes not found)"
    killed_at = time.monotonic()
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        result["hang"] = True
    log.close()
    text = (job.output_dir / "stdout.txt").read_text(errors="replace")
    result["others_stopped_after_s"] = round(time.monotonic() - killed_at, 1)
    result["exit_code"] = process.returncode
    result["resume_hint"] = next((line.strip() for line in text.splitlines() if "--resume" in line), None)
    if result["resume_hint"] is None:
        result["log_tail"] = text[-1500:]  # how the run ended instead
    return result


def check_same(args) -> dict:
    gpus = args.gpus[:2]
    timeout = args.timeout
    for name in ("resume_uninterrupted", "resume_killed"):  # Detectron2 appends to an earlier metrics.json
        shutil.rmtree(args.work / name, ignore_errors=True)
    reference = _job("resume_uninterrupted", gpus, args, args.iters)
    code, _ = _run(reference, timeout)
    if code:
        return {"status": "failed", "error": f"uninterrupted run exit {code}; see {reference.output_dir}/stdout.txt"}
    killed = _job("resume_killed", gpus, args, args.iters)
    checkpoint = f"model_{args.period - 1:07d}.pth"
    result = {"kill": kill_rank_after_checkpoint(killed, checkpoint, timeout)}
    code, log = _run(_job("resume_killed", gpus, args, args.iters, resume=True), timeout)
    starts = [line.split("Starting training from iteration")[1].strip() for line in log.splitlines()
              if "Starting training from iteration" in line]
    result["resumed_from"] = starts[-1] if len(starts) > 1 else None
    if code:
        return {**result, "status": "failed", "error": f"resumed run exit {code}: {log[-1500:]}"}
    expected, _ = data_order(reference.output_dir, 2)
    resumed, changed = data_order(killed.output_dir, 2)
    result["data_order"] = {"batches_compared": len(expected), "identical": resumed == expected,
                            "batches_logged_twice_that_changed": changed}
    ours, theirs = windowed_losses(killed.output_dir), windowed_losses(reference.output_dir)
    windows = sorted(set(ours) & set(theirs))
    diffs = {w: max(abs(ours[w][k] - theirs[w][k]) for k in theirs[w] if k in ours[w]) for w in windows}
    before = [d for w, d in diffs.items() if w < args.period]
    after = [d for w, d in diffs.items() if w >= args.period]
    result["losses"] = {"windows": {w: {"uninterrupted": theirs[w], "resumed": ours[w]} for w in windows},
                        "max_diff_before_kill": max(before, default=None),
                        "max_diff_after_resume": max(after, default=None)}
    # the first window is the same computation in both runs: its spread is the kernels' nondeterminism
    yardstick = max(before, default=0.0)
    result["losses"]["within_nondeterminism"] = bool(after) and max(after) <= max(3 * yardstick, 0.02)
    result["status"] = "ok"
    return result


def check_across(args) -> dict:
    source = args.source or args.work / "resume_killed"
    checkpoint = f"model_{args.period - 1:07d}.pth"
    if not (source / checkpoint).is_file():
        return {"status": "failed", "error": f"{source / checkpoint} missing: run --mode same first, or give "
                "--source a run that checkpointed every --period iterations"}
    expected, _ = data_order(source)  # the source ran on past its checkpoint
    result = {"status": "ok", "source": str(source), "checkpoint": checkpoint}
    for count in sorted({1, len(args.gpus)}):
        job = _job(f"resume_on_{count}gpu", args.gpus[:count], args, args.period + 4, resume=True)
        shutil.rmtree(job.output_dir, ignore_errors=True)
        job.output_dir.mkdir(parents=True)
        shutil.copy(source / checkpoint, job.output_dir)
        (job.output_dir / "last_checkpoint").write_text(checkpoint)
        code, log = _run(job, args.timeout)
        order, _ = data_order(job.output_dir, count)
        result[f"on_{count}"] = {
            "exit_code": code,
            "message": next((line.split("]: ", 1)[-1].strip() for line in log.splitlines() if "Exact resume" in line),
                            None),
            "same_global_batches": bool(order) and order == {k: expected[k] for k in order if k in expected},
            "batches_compared": len([k for k in order if k in expected]),
            "batches": sorted(order)[:1] + sorted(order)[-1:],
        }
        if code:
            result["status"] = "failed"
            result[f"on_{count}"]["error"] = log[-1500:]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("same", "across"), required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--gpus", default="0,1", help="GPU ids to use (same: the first two)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ddp_runs"))
    parser.add_argument("--source", type=Path, default=None,
                        help="across: the run whose checkpoint to resume (default: WORK/resume_killed of --mode same)")
    parser.add_argument("--iters", type=int, default=2 * WINDOW)
    parser.add_argument("--period", type=int, default=WINDOW, help="checkpoint period: the kill comes after the first")
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    args.gpus = [int(g) for g in args.gpus.split(",")]
    args.data, args.work = args.data.resolve(), args.work.resolve()
    args.source = args.source.resolve() if args.source else None
    job_args = SimpleNamespace(work=args.work, data=args.data, smoke=args.smoke, workers=args.workers)
    for key, value in vars(job_args).items():
        setattr(args, key, value)
    result = check_same(args) if args.mode == "same" else check_across(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result)[:3000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
