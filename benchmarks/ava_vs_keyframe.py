#!/usr/bin/env python
"""Does the AVA action head use time? Train HieraActionDetector on clips and on the keyframe alone.

The bundled ava_shapes data (hiera_det.data.datasets.ava_shapes) has actions that differ only in motion, and
distractors that look like actors in any single frame, so the same network fed the keyframe alone (every
frame of its clip replaced by the keyframe: INPUT.AVA.KEYFRAME_ONLY) should stay near chance while the clip
model should not. Both runs use the same recipe (configs/video/ava_shapes.yaml: data, iterations, optimizer,
seed); both are scored by frame-mAP on ava_shapes_val with its proposals file, as the official AVA evaluator
scores it. Chance is the frame-mAP of uniformly random action scores on the same proposals (mean of 5 draws).

Writes benchmarks/results/ava_vs_keyframe.json.

    python benchmarks/ava_vs_keyframe.py                      # the config's schedule, on CPU
    python benchmarks/ava_vs_keyframe.py --device cuda        # the same on a GPU
    python benchmarks/ava_vs_keyframe.py --quick               # a short schedule; numbers are indicative
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.experiment import config_name, experiment_parser, start_experiment, train_arm, write_results  # noqa: E402

logger = logging.getLogger("ava_vs_keyframe")


def build_cfg(config_file: str, opts: list[str], device: str):
    from hiera_det.config import get_hiera_cfg, merge_config

    cfg = merge_config(get_hiera_cfg(), config_file, opts)
    cfg.MODEL.DEVICE = device
    if cfg.SEED < 0:
        cfg.SEED = 0
    return cfg


def train_and_evaluate(cfg, keyframe_only: bool, log_every: int) -> dict:
    import torch
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model

    from hiera_det.engine.loaders import build_test_loader, build_train_loader
    from hiera_det.video.ava_evaluation import AvaEvaluator

    cfg = cfg.clone()
    cfg.INPUT.AVA.KEYFRAME_ONLY = keyframe_only
    name = "keyframe" if keyframe_only else "clip"
    torch.manual_seed(cfg.SEED)
    model = build_model(cfg)
    train_seconds, losses = train_arm(cfg, model, build_train_loader(cfg), "loss_action", name, log_every)
    test_name = cfg.DATASETS.TEST[0]
    evaluator = AvaEvaluator(test_name, os.path.join(cfg.OUTPUT_DIR, name), distributed=False,
                             max_detections_per_keyframe=cfg.TEST.AVA.MAX_DETECTIONS_PER_KEYFRAME)
    metrics = inference_on_dataset(model, build_test_loader(cfg, test_name), evaluator)["ava"]
    tail = losses[-max(1, len(losses) // 10):]
    return {
        "frame_mAP": round(metrics.pop("frame-mAP@0.5IOU"), 2),
        "per_action_AP": {k[3:]: round(v, 2) for k, v in metrics.items()},
        "final_train_loss": round(sum(tail) / len(tail), 4),
        "train_seconds": round(train_seconds, 1),
        "iterations": cfg.SOLVER.MAX_ITER,
        "frames_seen": 1 if keyframe_only else cfg.MODEL.HIERA_VIDEO.NUM_FRAMES,
    }


def chance(cfg, draws: int = 5) -> float:
    """Frame-mAP of uniformly random action scores on the test proposals (mean over ``draws``)."""
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from hiera_det.data.ava import read_excluded_timestamps, read_label_map
    from hiera_det.video.ava_evaluation import detection_rows, frame_map

    test_name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(test_name)
    records = DatasetCatalog.get(test_name)
    label_map = read_label_map(meta.eval_label_map_file)
    excluded = read_excluded_timestamps(meta.excluded_timestamps_file) if meta.excluded_timestamps_file else ()
    rng = np.random.default_rng(0)
    values = []
    for _ in range(draws):
        predictions = [{"video_id": r["video_id"], "timestamp": r["timestamp"], "boxes": r["proposals"]["boxes"],
                        "scores": rng.random((len(r["proposals"]["boxes"]), cfg.MODEL.ACTION_HEAD.NUM_CLASSES))}
                       for r in records]
        result = frame_map(label_map, meta.annotation_file, detection_rows(predictions, label_map.ids),
                           excluded_timestamps=excluded,
                           max_detections_per_keyframe=cfg.TEST.AVA.MAX_DETECTIONS_PER_KEYFRAME)
        values.append(100 * result.mean_ap)
    return round(float(np.mean(values)), 2)


def main(argv=None) -> int:
    parser = experiment_parser(__doc__, "configs/video/ava_shapes.yaml", "benchmarks/results/ava_vs_keyframe.json",
                               quick_iters=100)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--layout", default="frames", choices=("frames", "videos"),
                        help="read the bundled data from its frame folders or (if generated with them) its mp4s")
    args = parser.parse_args(argv)
    opts = start_experiment(args, "ava_vs_keyframe")

    import torch
    from detectron2.data import MetadataCatalog

    from hiera_det.data.catalog import prepare_datasets
    from hiera_det.data.datasets import ava_shapes

    cfg = build_cfg(args.config_file, opts, args.device)
    prepare_datasets(cfg, [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
    if args.layout == "videos":  # the generated data's own folder, read through its mp4s instead of its frames
        root = os.path.dirname(os.path.dirname(MetadataCatalog.get(cfg.DATASETS.TEST[0]).annotation_file))
        ava_shapes.register_ava_shapes(root, prefix=cfg.DATASETS.TEST[0].rsplit("_", 1)[0], layout="videos")
    log_every = max(1, cfg.SOLVER.MAX_ITER // 10)

    results = {
        "benchmark": "ava_vs_keyframe",
        "dataset": {"train": cfg.DATASETS.TRAIN[0], "test": cfg.DATASETS.TEST[0], "layout": args.layout},
        "config": config_name(args.config_file),
        "overrides": opts,
        "quick": args.quick,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
                    "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"},
        "chance_frame_mAP": chance(cfg),
    }
    results["clip"] = train_and_evaluate(cfg, keyframe_only=False, log_every=log_every)
    results["keyframe_alone"] = train_and_evaluate(cfg, keyframe_only=True, log_every=log_every)
    results["frame_mAP_gain"] = round(results["clip"]["frame_mAP"] - results["keyframe_alone"]["frame_mAP"], 2)

    write_results(results, args.output, ("chance_frame_mAP", "clip", "keyframe_alone", "frame_mAP_gain"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
