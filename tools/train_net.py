#!/usr/bin/env python
"""Train or evaluate a Hiera model with Detectron2 (image detectors and, through hiera_det.video, video).

Detectron2's usual arguments (--config-file, --num-gpus, --num-machines, --machine-rank, --dist-url,
--resume, --eval-only, trailing KEY VALUE overrides) plus --config NAME, a packaged config (hiera_det/configs,
linked as configs/ in a checkout):

    python tools/train_net.py --config shapes/hiera_tiny_shapes.yaml
    python tools/train_net.py --config hiera_fpn.yaml --num-gpus 8
    python tools/train_net.py --config hiera_fpn.yaml --eval-only MODEL.WEIGHTS output/model_final.pth

Without CUDA it runs on the CPU (MODEL.DEVICE cpu, AMP off) and --num-gpus N starts N CPU processes that
talk through gloo. The bundled hiera_shapes data is generated on first use.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

import hiera_det.d2  # noqa: E402,F401  (registers backbones, meta-architectures and datasets)
from hiera_det.config import get_hiera_cfg, merge_config, validate_hiera_config  # noqa: E402
from hiera_det.data.catalog import prepare_datasets  # noqa: E402
from hiera_det.engine import Trainer  # noqa: E402
from hiera_det.engine.checkpointer import AtomicDetectionCheckpointer  # noqa: E402

logger = logging.getLogger("hiera_det.train_net")


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--config",
        default="",
        metavar="NAME",
        help="a packaged config by name (e.g. hiera_fpn.yaml, video/moving_shapes_cls.yaml), or a path; instead of --config-file",
    )
    return parser


def build_config(args):
    """The full config of a run, adjusted to the machine; returns (cfg, notes to log once logging is up)."""
    if args.config and args.config_file:
        raise ValueError("give either --config NAME or --config-file PATH, not both")
    cfg = get_hiera_cfg()
    merge_config(cfg, args.config or args.config_file, args.opts)
    notes = []
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu":
        notes.append(f"CUDA is not available: MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and torch.device(cfg.MODEL.DEVICE).type == "cpu":
        notes.append("SOLVER.AMP.ENABLED needs CUDA: training in float32 on the CPU")
        cfg.SOLVER.AMP.ENABLED = False
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(os.path.expanduser(weights)):
        raise FileNotFoundError(f"MODEL.WEIGHTS {weights!r} is not a file; give the path of a trained "
                                "detector checkpoint (.pth/.pkl), or '' to start from MODEL.HIERA.WEIGHTS "
                                "/ random init")
    validate_hiera_config(cfg)
    cfg.freeze()
    return cfg, notes


def main(args):
    cfg, notes = build_config(args)
    default_setup(cfg, args)
    for note in notes:
        logger.warning(note)
    if comm.get_local_rank() == 0:  # one process per machine generates the bundled data, before the others look
        prepare_datasets(cfg, [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
    comm.synchronize()

    if args.eval_only:
        if not cfg.MODEL.WEIGHTS and not args.resume:
            raise ValueError("--eval-only evaluates trained weights: set MODEL.WEIGHTS to a checkpoint, "
                             "or add --resume to use the last checkpoint in OUTPUT_DIR")
        model = Trainer.build_model(cfg)
        checkpointer = AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if args.resume and not checkpointer.has_checkpoint() and not cfg.MODEL.WEIGHTS:
            raise FileNotFoundError(f"--eval-only --resume: no last_checkpoint in {cfg.OUTPUT_DIR}; "
                                    "train first or set MODEL.WEIGHTS")
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
