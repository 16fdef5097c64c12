#!/usr/bin/env python
"""Does the video model use motion? Train the clip classifier and a single-frame baseline on moving shapes.

Moving shapes (hiera_det.data.datasets.moving_shapes) has six classes that differ only in how one object moves,
among static distractors of the same look, so one frame cannot tell them apart: a single-frame model should
stay near chance (16.7%) while the clip model should not. Both runs use the same recipe
(configs/video/moving_shapes_cls.yaml: shallow video Hiera, same data, iterations, optimizer and seed); the
baseline sees the clip's middle frame only, repeated to the 2-frame minimum of video Hiera (its temporal
patch is 2 frames), so it has exactly one frame of information.

Writes held-out (moving_shapes_cls_val) top-1 / top-5 of both to benchmarks/results/video_vs_frame.json.

    python benchmarks/video_vs_frame.py            # the full recipe (SOLVER.MAX_ITER of the config)
    python benchmarks/video_vs_frame.py --quick    # a few minutes on 2 CPU cores; numbers are indicative
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a file, python benchmarks/video_vs_frame.py: find the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.experiment import config_name, experiment_parser, start_experiment, train_arm, write_results  # noqa: E402


class SingleFrame:
    """Wraps a clip mapper: keeps the middle frame and repeats it ``frames`` times."""

    def __init__(self, mapper, frames: int = 2):
        self.mapper = mapper
        self.frames = frames

    def __call__(self, dataset_dict):
        out = self.mapper(dataset_dict)
        if out is None:
            return None
        clip = out["clip"]
        middle = clip.shape[1] // 2
        out["clip"] = clip[:, middle : middle + 1].repeat(1, self.frames, 1, 1)
        return out


def build_cfg(config_file: str, opts: list[str]):
    from hiera_det.config import get_hiera_cfg, merge_config

    cfg = merge_config(get_hiera_cfg(), config_file, opts)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def train_and_evaluate(cfg, single_frame: bool, log_every: int) -> dict:
    import torch
    from detectron2.data import DatasetCatalog, build_detection_test_loader, build_detection_train_loader
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model

    from hiera_det.data.video_mapper import VideoClassificationMapper, expand_test_views
    from hiera_det.data.catalog import prepare_datasets
    from hiera_det.video.evaluation import VideoClassificationEvaluator

    logger = logging.getLogger("video_vs_frame")
    torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
    train_name, test_name = cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0]
    prepare_datasets(cfg, [train_name, test_name])

    train_mapper = VideoClassificationMapper(cfg, is_train=True)
    test_mapper = VideoClassificationMapper(cfg, is_train=False)
    model_cfg = cfg.clone()
    if single_frame:
        train_mapper, test_mapper = SingleFrame(train_mapper), SingleFrame(test_mapper)
        model_cfg.MODEL.HIERA_VIDEO.NUM_FRAMES = 2
    model = build_model(model_cfg)
    loader = build_detection_train_loader(
        dataset=DatasetCatalog.get(train_name),
        mapper=train_mapper,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    arm = "single-frame" if single_frame else "video"
    train_seconds, losses = train_arm(cfg, model, loader, "loss_cls", arm, log_every)

    v = cfg.INPUT.VIDEO
    views = expand_test_views(DatasetCatalog.get(test_name), v.NUM_TEMPORAL_VIEWS, v.NUM_SPATIAL_VIEWS)
    test_loader = build_detection_test_loader(
        dataset=views, mapper=test_mapper, batch_size=v.TEST_BATCH_SIZE, num_workers=cfg.DATALOADER.NUM_WORKERS
    )
    evaluator = VideoClassificationEvaluator(test_name, distributed=False)
    metrics = inference_on_dataset(model, test_loader, evaluator)["video_classification"]
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        **{k: round(float(val), 2) for k, val in metrics.items()},
        "final_train_loss": round(sum(tail) / len(tail), 4),
        "train_seconds": round(train_seconds, 1),
        "iterations": cfg.SOLVER.MAX_ITER,
        "input_frames": 1 if single_frame else cfg.MODEL.HIERA_VIDEO.NUM_FRAMES,
    }


def main(argv=None) -> int:
    parser = experiment_parser(__doc__, "configs/video/moving_shapes_cls.yaml",
                               "benchmarks/results/video_vs_frame.json", quick_iters=120)
    args = parser.parse_args(argv)
    opts = start_experiment(args, "video_vs_frame")

    import torch

    cfg = build_cfg(args.config_file, opts)
    if cfg.SEED < 0:
        cfg.SEED = 0
    log_every = max(1, cfg.SOLVER.MAX_ITER // 10)

    results = {
        "benchmark": "video_vs_frame",
        "dataset": {"train": cfg.DATASETS.TRAIN[0], "test": cfg.DATASETS.TEST[0], "num_classes": 6,
                    "chance_top1": round(100 / 6, 2)},
        "config": config_name(args.config_file),
        "overrides": opts,
        "quick": args.quick,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
    }
    results["video"] = train_and_evaluate(cfg, single_frame=False, log_every=log_every)
    results["single_frame"] = train_and_evaluate(cfg, single_frame=True, log_every=log_every)
    results["top1_gain"] = round(results["video"]["top1"] - results["single_frame"]["top1"], 2)

    write_results(results, args.output, ("video", "single_frame", "top1_gain"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
