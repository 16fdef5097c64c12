#!/usr/bin/env python
"""Run a trained detector on images: writes a picture per image (boxes, masks, labels) and detections.json.

    python tools/demo.py --config shapes/hiera_tiny_shapes.yaml --input datasets/hiera_shapes/val \\
        --output output/demo MODEL.WEIGHTS output/shapes/model_final.pth

``--input`` takes files, glob patterns ("photos/*.jpg") and folders (their images, not recursive).
``--config`` names a file under configs/; ``--config-file`` takes any path. Config overrides go after
``--opts`` or at the end of the command line (``KEY VALUE`` pairs). Every image that can be processed is;
each one that cannot is named with the reason, on the console and in detections.json (``failed``). The exit
status is 0 when every image was processed, 1 when some were not (the others' results are written) and 2
for a problem with the command line, config or checkpoint. The format of detections.json is described in
hiera_det/demo/image.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2.utils.logger import setup_logger  # noqa: E402

import hiera_det.d2  # noqa: E402,F401  (registers the Hiera backbones and the bundled datasets)
from hiera_det.checkpoint import CheckpointError  # noqa: E402
from hiera_det.config import get_hiera_cfg  # noqa: E402
from hiera_det.demo.image import (  # noqa: E402
    DemoError,
    demo_config,
    expand_inputs,
    interrupt_on_sigterm,
    prepare_output_folder,
    run_image_demo,
    split_trailing_opts,
)

logger = logging.getLogger("hiera_det.demo")


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Detect objects in images with a trained Detectron2 / hiera_det model.",
        epilog="Trailing KEY VALUE pairs (e.g. MODEL.WEIGHTS model_final.pth) override the config.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-file", default="", metavar="FILE", help="path to a config file")
    source.add_argument(
        "--config", default="", metavar="NAME", help="a packaged config by name, e.g. hiera_fpn.yaml"
    )
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files, glob patterns or folders (quote globs)"
    )
    parser.add_argument("--output", required=True, help="folder for the pictures and detections.json")
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="minimum score of a kept detection (0..1)"
    )
    parser.add_argument(
        "--no-json-masks", action="store_true", help="leave the RLE masks out of detections.json"
    )
    parser.add_argument(
        "--dataset", action="append", default=[], metavar="NAME=SPEC",
        help="register your own dataset as tools/train_net.py --dataset does (the class names of "
        "DATASETS.TEST[0] label the pictures); a config.yaml saved by training already has it",
    )  # fmt: skip
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="accept a Detectron2 model-zoo .pkl as MODEL.WEIGHTS (unpickling runs the file's code: only "
        "for files from a source you trust)",
    )  # fmt: skip
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def run(args, opts: list[str]) -> int:
    config = args.config or args.config_file
    paths, notes = expand_inputs(args.input)
    for note in notes:
        logger.warning(note)
    if not paths:
        raise DemoError(f"no input images found in {args.input}; give image files, glob patterns or folders")
    prepare_output_folder(args.output, paths)  # before the model loads: a bad --output fails at once
    cfg = demo_config(config, opts, args.confidence_threshold, args.dataset)
    summary = run_image_demo(cfg, paths, args.output, config_name=config, with_masks=not args.no_json_masks,
                             allow_pickle=args.allow_pickle)  # fmt: skip
    images, failed = summary["images"], summary["failed"]
    print(f"{len(images)} of {len(paths)} images processed; pictures and detections.json in {args.output}")
    if failed:
        print(f"{len(failed)} images could not be processed:",
              *(f"  {f['file']}: {f['error']}" for f in failed), sep="\n")  # fmt: skip
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head, trailing = split_trailing_opts(argv, set(get_hiera_cfg().keys()))
    args = argument_parser().parse_args(head)
    setup_logger(name="fvcore")
    setup_logger(name="hiera_det")
    interrupt_on_sigterm()  # `kill` stops the run as Ctrl-C does: detections.json is written
    try:
        return run(args, list(args.opts) + trailing)
    except (DemoError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: detections.json in {args.output} lists the images done so far and those left "
              "(unprocessed)", file=sys.stderr)  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())
