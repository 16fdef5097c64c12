#!/usr/bin/env python
"""Export a Hiera model to ONNX and/or torch.export (.pt2), and check each file against eager PyTorch.

Targets: backbone (image trunk + FPN), mask_rcnn (the whole detector, Detectron2's TracingAdapter
conventions), video_trunk and video_classifier. Each export is compared with the eager model on real
photographs (scikit-image's public-domain pictures; video: pans across them) and the maximum differences are
printed. Combinations that cannot be exported are refused with the reason.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import hiera_det.d2  # noqa: E402,F401  (registers the Detectron2 parts)
from hiera_det.export import FORMATS, TARGETS  # noqa: E402

EPILOG = """\
inputs of the exported models (pixels are float 0-255 in INPUT.FORMAT channel order; normalisation is inside):
  backbone          images [B, 3, H, W]          -> p2 ... p6
  mask_rcnn         image [3, H, W]              -> boxes [N, 4], classes [N], masks [N, 1, 28, 28], scores [N]
  video_trunk       clips [B, 3, T, H, W]        -> stage1 ... stage4
  video_classifier  clips [B, 3, T, H, W]        -> logits [B, K], probabilities [B, K]

what is refused, and why: mask_rcnn with torch.export (Detectron2's RPN post-processing branches on tensor
values) and mask_rcnn with a dynamic batch or size (the traced graph keeps the traced image's size); sizes
that are not multiples of 32; a dynamic size traced where an output would be 1x1 or at the size the trunk
stores its position embedding for (torch.export would fix the size). See docs/features_and_export.md.

examples:
  python tools/export_model.py --config hiera_fpn.yaml --target backbone --size 1024 1024 \\
      --dynamic-batch --dynamic-size --output exported/ MODEL.WEIGHTS model_final.pth
  python tools/export_model.py --config hiera_fpn.yaml --target mask_rcnn --format onnx --size 1024 1024 \\
      --output exported/ MODEL.WEIGHTS model_final.pth
  python tools/export_model.py --config video/hiera_base_16x224_k400.yaml --target video_classifier \\
      --output exported/ MODEL.WEIGHTS k400_model.pth
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to a config file")
    parser.add_argument(
        "--config", default="", metavar="NAME", help="a config under configs/ by name, or a path"
    )
    parser.add_argument("--target", required=True, choices=TARGETS)
    parser.add_argument(
        "--format",
        nargs="+",
        choices=FORMATS,
        default=None,
        help="onnx and/or torch_export (default: every format the target allows)",
    )
    parser.add_argument("--output", required=True, help="folder for the exported files")
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=None,
        help="image / frame size, multiples of 32 (default: INPUT.LSJ.IMAGE_SIZE square for "
        "images, INPUT.VIDEO.TEST_CROP_SIZE square for video)",
    )
    parser.add_argument("--batch", type=int, default=1, help="example batch (2 or more for --dynamic-batch)")
    parser.add_argument("--dynamic-batch", action="store_true", help="let the batch size vary")
    parser.add_argument("--dynamic-size", action="store_true", help="let H and W vary (multiples of 32)")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with eager PyTorch")
    parser.add_argument(
        "--no-optimize",
        action="store_true",
        help="skip onnxscript's ONNX graph optimiser (faster export, larger graph)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept a Detectron2 model-zoo .pkl as MODEL.WEIGHTS (unpickling runs the file's "
        "code: only for files from a source you trust)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def build_model_and_config(args):
    from detectron2.modeling import build_model

    from hiera_det.config import get_hiera_cfg, merge_config
    from hiera_det.engine.checkpointer import load_model_weights

    if bool(args.config) == bool(args.config_file):
        raise ValueError("give one of --config NAME or --config-file PATH")
    cfg = get_hiera_cfg()
    merge_config(cfg, args.config or args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"  # exports are traced, and checked with onnxruntime, on the CPU
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        # an export of tensors left at initialization would be worthless: every model tensor must load
        load_model_weights(model, cfg.MODEL.WEIGHTS, allow_pickle=args.allow_pickle, require_complete=True)
    else:
        logging.warning(
            "MODEL.WEIGHTS is empty: exporting untrained weights (only MODEL.HIERA(_VIDEO).WEIGHTS, "
            "if set, are pretrained)"
        )
    return cfg, model


def default_size(args, cfg) -> tuple[int, int]:
    if args.size:
        return tuple(args.size)
    if args.target in ("video_trunk", "video_classifier"):
        side = cfg.INPUT.VIDEO.TEST_CROP_SIZE
        return side, side
    if cfg.INPUT.LSJ.ENABLED:
        return cfg.INPUT.LSJ.IMAGE_SIZE, cfg.INPUT.LSJ.IMAGE_SIZE
    raise ValueError(
        "this config has no fixed input size (INPUT.LSJ is off): give --size H W, multiples of 32"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from hiera_det.checkpoint import CheckpointError
    from hiera_det.export import ExportRefused, build_target, export_and_check, refusal

    try:
        cfg, model = build_model_and_config(args)
        batch = max(args.batch, 2) if args.dynamic_batch and args.target != "mask_rcnn" else args.batch
        target = build_target(args.target, cfg, model, default_size(args, cfg), batch)
    except (ExportRefused, CheckpointError, ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    formats = args.format
    if formats is None:
        formats = [f for f in FORMATS if refusal(target, f, args.dynamic_batch, args.dynamic_size) is None]
        for f in FORMATS:
            if f not in formats:
                print(f"not exporting {f}: {refusal(target, f, args.dynamic_batch, args.dynamic_size)}")
    try:
        results = export_and_check(
            target,
            cfg,
            formats,
            args.output,
            dynamic_batch=args.dynamic_batch,
            dynamic_size=args.dynamic_size,
            check=not args.no_check,
            optimize=not args.no_optimize,
        )
    except ExportRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    code = 0
    for result in results:
        if result.refused:
            print(f"refused {target.name} as {result.fmt}: {result.refused}", file=sys.stderr)
            code = max(code, 2)
            continue
        print(f"{target.name} -> {result.path} ({result.fmt}, {result.seconds:.0f} s)")
        for check in result.checks:
            print(f"  {str(check).replace(chr(10), chr(10) + '  ')}")
        if not result.ok:
            code = max(code, 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
