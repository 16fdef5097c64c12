"""Helpers of the tests that run tools/train_net.py in subprocesses on a few small hiera_shapes images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")


def short_schedule(max_iter: int) -> list[str]:
    """The schedule of these runs: batch 2, a checkpoint every 5 iterations, no DataLoader workers."""
    return ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", "(25,)",
            "SOLVER.WARMUP_ITERS", "5", "SOLVER.CHECKPOINT_PERIOD", "5", "SOLVER.BASE_LR", "0.001",
            "DATALOADER.NUM_WORKERS", "0"]


def shapes_with_one_annotation_each(root: Path, num_train: int, min_size: int, max_size: int) -> Path:
    """``root/hiera_shapes`` with ``num_train`` training images, each keeping only its first annotation (so
    every image yields the same number of sampled proposals); returns ``root``."""
    from hiera_det.data.datasets.shapes import generate_shapes_dataset

    paths = generate_shapes_dataset(root / "hiera_shapes", num_train=num_train, num_val=1, min_size=min_size,
                                    max_size=max_size)
    annotation_file = paths.annotation_file("train")
    content = json.loads(annotation_file.read_text())
    first = {}
    for annotation in content["annotations"]:
        first.setdefault(annotation["image_id"], annotation)
    content["annotations"] = list(first.values())
    annotation_file.write_text(json.dumps(content))
    return root


def train_net_command(output_dir: Path, opts: list[str], *, num_gpus: int = 1, resume: bool = False) -> list[str]:
    command = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config", "shapes/hiera_tiny_shapes.yaml"]
    command += ["--num-gpus", str(num_gpus)] + (["--resume"] if resume else [])
    return command + list(opts) + ["OUTPUT_DIR", str(output_dir)]


def train_net_env(datasets_root: Path) -> dict:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {"DETECTRON2_DATASETS": str(datasets_root), "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    return {**os.environ, **env}


def train(datasets_root: Path, output_dir: Path, opts: list[str], *, timeout: float = 420, **kwargs) -> str:
    """Run train_net to the end (failing the test with its output otherwise); returns stdout + stderr."""
    result = subprocess.run(
        train_net_command(output_dir, opts, **kwargs),
        env=train_net_env(datasets_root),
        cwd=output_dir.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"training failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def losses(output_dir: Path, iteration: int) -> dict:
    """The losses metrics.json records at ``iteration`` (the last entry for it)."""
    entries = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines() if line]
    matching = [e for e in entries if e.get("iteration") == iteration]
    assert matching, f"no metrics.json entry for iteration {iteration} in {output_dir}"
    return {k: matching[-1][k] for k in LOSS_KEYS}
