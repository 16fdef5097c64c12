#!/usr/bin/env python
"""Train or evaluate a Hiera model with Detectron2 (image detectors and, through hiera_det.video, video).

Detectron2's usual arguments (--config-file, --num-gpus, --num-machines, --machine-rank, --dist-url,
--resume, --eval-only, trailing KEY VALUE overrides) plus --config NAME, a file under configs/:

    python tools/train_net.py --config shapes/hiera_tiny_shapes.yaml
    python tools/train_net.py --config hiera_fpn.yaml --num-gpus 8
    python tools/train_net.py --config hiera_fpn.yaml --eval-only MODEL.WEIGHTS output/model_final.pth

Without CUDA it runs on the CPU (MODEL.DEVICE cpu, AMP off) and --num-gpus N starts N CPU processes that
talk through gloo. The bundled hiera_shapes data is generated on first use.

Checkpoints are read with torch.load(weights_only=True): a file holding Python objects is refused with a
message saying how to re-save its weights, and a Detectron2 model-zoo .pkl loads only with --allow-pickle.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import hiera_det  # noqa: E402,F401  (registers backbones, meta-architectures and datasets)
from hiera_det.checkpoint import CheckpointError  # noqa: E402
from hiera_det.config import get_hiera_cfg, merge_config, validate_hiera_config  # noqa: E402
from hiera_det.engine import Trainer, is_video_config  # noqa: E402
from hiera_det.engine.checkpointer import AtomicDetectionCheckpointer, load_model_weights  # noqa: E402

logger = logging.getLogger("hiera_det.train_net")


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--config",
        default="",
        metavar="NAME",
        help="a config under configs/ by name (e.g. hiera_fpn.yaml), or a path; instead of --config-file",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept a Detectron2 model-zoo .pkl as MODEL.WEIGHTS (unpickling runs the file's code: only for "
        "files from a source you trust)",
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
    if not is_video_config(cfg):
        validate_hiera_config(cfg)
    cfg.freeze()
    return cfg, notes


def prepare_bundled_datasets(cfg) -> None:
    """Generate the bundled hiera_shapes data when a run uses it and it is not on disk yet."""
    names = [n for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST) if n.startswith("hiera_shapes")]
    if not names:
        return
    from hiera_det.data.shapes import ensure_shapes_dataset

    json_file = MetadataCatalog.get(names[0]).get("json_file", None)
    # the registered annotation file is <root>/annotations/instances_<split>.json
    ensure_shapes_dataset(Path(json_file).parent.parent if json_file else None)


def main(args):
    cfg, notes = build_config(args)
    default_setup(cfg, args)
    # default_setup logs detectron2 and fvcore to OUTPUT_DIR/log.txt; hiera_det's reports (weights loaded,
    # machine adjustments) belong there too.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="hiera_det")
    for note in notes:
        logger.warning(note)
    if comm.get_local_rank() == 0:
        prepare_bundled_datasets(cfg)
    comm.synchronize()

    if args.eval_only:
        if not cfg.MODEL.WEIGHTS and not args.resume:
            raise ValueError("--eval-only evaluates trained weights: set MODEL.WEIGHTS to a checkpoint, "
                             "or add --resume to use the last checkpoint in OUTPUT_DIR")
        model = Trainer.build_model(cfg)
        weights = cfg.MODEL.WEIGHTS
        if args.resume:
            checkpointer = AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
            if checkpointer.has_checkpoint():
                weights = checkpointer.get_checkpoint_file()
            elif not weights:
                raise FileNotFoundError(f"--eval-only --resume: no last_checkpoint in {cfg.OUTPUT_DIR}; "
                                        "train first or set MODEL.WEIGHTS")
        load_model_weights(model, weights, allow_pickle=args.allow_pickle)
        return Trainer.test(cfg, model)

    trainer = Trainer(cfg)
    trainer.checkpointer.allow_pickle = args.allow_pickle  # read by AtomicDetectionCheckpointer's loader
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except CheckpointError as e:  # a file the user named: the message says what to do, a traceback would not
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    invoke_main()
