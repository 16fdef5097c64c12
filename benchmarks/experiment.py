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
