"""What the two-arm training experiments (video_vs_frame, ava_vs_keyframe) share: their command line and start."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def experiment_parser(doc: str, config: str, output: str, quick_iters: int) -> argparse.ArgumentParser:
    """``--config-file``, ``--quick`` / ``--quick-iters``, ``--output``, ``--threads`` and trailing overrides."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=str(ROOT / config))
    parser.add_argument("--quick", action="store_true", help="a short schedule (--quick-iters iterations)")
    parser.add_argument("--quick-iters", type=int, default=quick_iters)
    parser.add_argument("--output", default=str(ROOT / output))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def start_experiment(args, name: str) -> list[str]:
    """Threads and logging for experiment ``name``; returns the config overrides, ``--quick`` applied."""
    import torch
    from detectron2.utils.logger import setup_logger

    import hiera_det.d2  # noqa: F401  (registers the models and datasets)

    torch.set_num_threads(args.threads)
    setup_logger(name=name)
    setup_logger(name="hiera_det")
    return list(args.opts) + (["SOLVER.MAX_ITER", str(args.quick_iters)] if args.quick else [])


def config_name(path: str) -> str:
    """A config path relative to the repository when it is inside it."""
    return os.path.relpath(path, ROOT) if path.startswith(str(ROOT)) else path


def write_results(results: dict, output: str, summary_keys: tuple[str, ...]) -> None:
    """Write ``results`` to ``output`` atomically and print the summary keys."""
    import json

    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, output)
    print(json.dumps({k: results[k] for k in summary_keys}, indent=2))
    print(f"written to {output}")


def train_arm(cfg, model, loader, loss_key: str, arm: str, log_every: int) -> tuple[float, list[float]]:
    """Train ``model`` for ``SOLVER.MAX_ITER`` batches of ``loader`` with the config's optimizer and schedule,
    logging the mean ``loss_key`` every ``log_every`` iterations; returns the training seconds and losses."""
    import logging
    import time

    from detectron2.solver import build_lr_scheduler

    from hiera_det.engine.optimizer import build_optimizer

    logger = logging.getLogger(arm)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    model.train()
    start = time.perf_counter()
    losses = []
    for iteration, batch in zip(range(cfg.SOLVER.MAX_ITER), loader):
        loss = model(batch)[loss_key]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if (iteration + 1) % log_every == 0:
            recent = losses[-log_every:]
            logger.info("%s iter %d/%d loss %.4f (%.1f s)", arm, iteration + 1, cfg.SOLVER.MAX_ITER,
                        sum(recent) / len(recent), time.perf_counter() - start)
    return time.perf_counter() - start, losses
