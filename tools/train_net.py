#!/usr/bin/env python
"""Train or evaluate a Hiera model with Detectron2: image detectors, video classifiers and clip detectors.

Detectron2's usual arguments (--config-file, --num-gpus, --num-machines, --machine-rank, --dist-url,
--resume, --eval-only, trailing KEY VALUE overrides) plus --config NAME, a packaged config (hiera_det/configs,
linked as configs/ in a checkout):

    python tools/train_net.py --config shapes/hiera_tiny_shapes.yaml
    python tools/train_net.py --config hiera_fpn.yaml --num-gpus 8
    python tools/train_net.py --config hiera_fpn.yaml --eval-only MODEL.WEIGHTS output/model_final.pth

Without CUDA it runs on the CPU (MODEL.DEVICE cpu, AMP off) and --num-gpus N starts N CPU processes that
talk through gloo. The bundled data is generated on first use. Your own data needs no code:

    python tools/train_net.py --config hiera_fpn.yaml --dataset mine_train=train.json:images/ \
        --dataset mine_val=val.json:images/ DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)"

(the class count and mask format come from the data; everything is checked before training starts).

Checkpoints are read with torch.load(weights_only=True): a file holding Python objects is refused with a
message saying how to re-save its weights, and a Detectron2 model-zoo .pkl loads only with --allow-pickle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import hiera_det.d2  # noqa: E402,F401  (registers backbones, meta-architectures and datasets)
from hiera_det.checkpoint import CheckpointError  # noqa: E402
from hiera_det.config import error_message  # noqa: E402
from hiera_det.data.catalog import prepare_datasets  # noqa: E402
from hiera_det.data.custom import DatasetSpecError, check_datasets  # noqa: E402
from hiera_det.data.image_io import ImageReadError  # noqa: E402
from hiera_det.data.video_io import VideoReadError  # noqa: E402
from hiera_det.detection.fast_inference import use_cuda_graphs  # noqa: E402
from hiera_det.engine import Trainer  # noqa: E402
from hiera_det.engine.trainer import StoppedOnRequest  # noqa: E402
from hiera_det.engine.checkpointer import AtomicDetectionCheckpointer, load_model_weights  # noqa: E402
from hiera_det.engine.run_config import build_run_config  # noqa: E402

logger = logging.getLogger("hiera_det.train_net")


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--config",
        default="",
        metavar="NAME",
        help="a packaged config by name (e.g. hiera_fpn.yaml, video/moving_shapes_cls.yaml) or a path; instead "
        "of --config-file",
    )
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="register your own data, repeatable: NAME=ANNOTATIONS.json:IMAGE_ROOT (COCO instances), "
        "NAME=keyframes:ANNOTATIONS.json:VIDEO_ROOT, NAME=LIST.csv or NAME=CLASS_FOLDERS (video "
        "classification), NAME=images:FOLDER or NAME=videos:LIST (unlabeled, MAE pre-training); then name "
        "it in DATASETS.TRAIN / DATASETS.TEST. Kept in the saved config.yaml",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept a Detectron2 model-zoo .pkl as MODEL.WEIGHTS (unpickling runs the file's code: only for "
        "files from a source you trust)",
    )
    return parser


class SetupError(Exception):
    """A run that cannot start: a config, dataset, path or weights problem, before any training step. The
    message says what to change; ``HIERA_DET_TRACEBACK=1`` shows the traceback too."""


@contextlib.contextmanager
def setting_up(step: str):
    """Turn the errors a user's config, paths or data cause while ``step`` runs into ``SetupError``."""
    try:
        yield
    except (KeyError, ValueError, OSError) as e:
        if os.environ.get("HIERA_DET_TRACEBACK"):
            raise
        text = error_message(e)
        if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
            text = f"{text}: {e.filename}"
        raise SetupError(f"{step}: {text}") from e


def build_config(args):
    """The full config of a run and the notes to log once logging is up."""
    if args.config and args.config_file:
        raise ValueError("give either --config NAME or --config-file PATH, not both")
    return build_run_config(args.config or args.config_file, args.opts, args.dataset)


def check_ava_evaluation_data(cfg) -> None:
    """Read the AVA test sets' keyframes now, not after training: a keyframe without frames stops AVA
    evaluation (``hiera_det.data.ava``), and reading the CSVs takes seconds."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from hiera_det.data.ava import EVALUATOR_TYPE

    for name in cfg.DATASETS.TEST:
        if MetadataCatalog.get(name).get("evaluator_type", None) == EVALUATOR_TYPE:
            DatasetCatalog.get(name)


def main(args):
    with setting_up("reading the config"):
        cfg, notes = build_config(args)
    with setting_up(f"setting up OUTPUT_DIR {cfg.OUTPUT_DIR!r}"):
        default_setup(cfg, args)
    # default_setup logs detectron2 and fvcore to OUTPUT_DIR/log.txt; hiera_det's reports (weights loaded,
    # machine adjustments) belong there too.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="hiera_det")
    for note in notes:
        logger.warning(note)
    # one process per machine generates the bundled data, before the others look
    if comm.get_local_rank() == 0:
        with setting_up("checking the datasets"):
            prepare_datasets(cfg, [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
            check_datasets(cfg)
            check_ava_evaluation_data(cfg)
    comm.synchronize()

    if args.eval_only:
        with setting_up("loading the weights to evaluate"):
            if not cfg.MODEL.WEIGHTS and not args.resume:
                raise ValueError(
                    "--eval-only evaluates trained weights: set MODEL.WEIGHTS to a checkpoint, "
                    "or add --resume to use the last checkpoint in OUTPUT_DIR"
                )
            model = Trainer.build_model(cfg)
            weights = cfg.MODEL.WEIGHTS
            if args.resume:
                checkpointer = AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
                if checkpointer.has_checkpoint():
                    weights = checkpointer.get_checkpoint_file()
                elif not weights:
                    raise FileNotFoundError(
                        f"--eval-only --resume: no last_checkpoint in {cfg.OUTPUT_DIR}; "
                        "train first or set MODEL.WEIGHTS"
                    )
            load_model_weights(model, weights, allow_pickle=args.allow_pickle, require_complete=True)
        use_cuda_graphs(cfg, model)
        return Trainer.test(cfg, model)

    with setting_up("building the trainer (model, optimizer, data)"):
        trainer = Trainer(cfg)
    trainer.checkpointer.allow_pickle = args.allow_pickle  # read by AtomicDetectionCheckpointer's loader
    with setting_up("loading the weights" + (" to resume" if args.resume else "")):
        trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(args):
    """``main`` in one launched process, with the process group destroyed before the process exits: a gloo
    group still alive at exit can abort the process (``terminate called without an active exception``)
    after its work is done."""
    try:
        return main(args)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def invoke_main() -> None:
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            run,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except StoppedOnRequest as e:
        print(f"stopped on Ctrl-C; saved {e.checkpoint}: rerun the same command with --resume to continue",
              file=sys.stderr)  # fmt: skip
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted; the checkpoints written so far are kept (--resume continues from the last one)",
              file=sys.stderr)  # fmt: skip
        sys.exit(130)
    except (CheckpointError, DatasetSpecError, SetupError) as e:  # the message says what to change
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (ImageReadError, VideoReadError, RuntimeError) as e:  # an input file found unreadable mid-run
        reason = read_error_reason(e)
        if reason is None:
            raise
        print(f"error: {reason}\n(the run stopped there; the checkpoints it wrote are kept: fix or remove the "
              "file, then --resume, or --eval-only with MODEL.WEIGHTS)", file=sys.stderr)  # fmt: skip
        sys.exit(1)


def read_error_reason(error: BaseException) -> str | None:
    """What an unreadable image or video error says, or None for any other error. A DataLoader worker
    re-raises its error with the worker's traceback as the message text (as a ``RuntimeError`` where the
    error's class cannot be rebuilt from one string): the last line of that text is the error itself."""
    found = re.search(r"^(?:\S+\.)?(?:ImageReadError|VideoReadError): (.+)$", str(error), flags=re.MULTILINE)
    if found:
        return found.group(1)
    return str(error) if isinstance(error, (ImageReadError, VideoReadError)) else None


if __name__ == "__main__":
    invoke_main()
