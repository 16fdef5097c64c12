#!/usr/bin/env python
"""Convert a Hiera checkpoint in any supported format into a Detectron2-loadable .pth file.

The input is read with ``hiera_det.checkpoint.load_checkpoint`` into ``build_hiera(MODEL, num_classes=0,
attention=ATTENTION)``; the trunk's weights are written as ``{"model": {PREFIX + key: tensor},
"__author__": "hiera_det", "matching_heuristics": False}``. The default prefix is where the Hiera trunk sits
in hiera_det's FPN detectors (``backbone.bottom_up.trunk.``), so ``MODEL.WEIGHTS`` can name the output.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hiera_det.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from hiera_det.checkpoint.formats import FORMAT_HELP  # noqa: E402
from hiera_det.modeling import ARCHITECTURES, build_hiera  # noqa: E402

DEFAULT_PREFIX = "backbone.bottom_up.trunk."

EPILOG = f"""\
{textwrap.fill("supported inputs: " + FORMAT_HELP + ".", width=105)}

position embeddings: an absolute embedding (official, Hugging Face, timm) is resampled bicubically to the
model's token grid (video: spatial bicubic, temporal linear). With --attention window the model uses SAM2's
absolute-win embedding: an absolute checkpoint then becomes the background embedding at the checkpoint's own
grid, [1, C, h, w], with a zero window embedding, which reproduces the absolute embedding exactly at the
checkpoint's input size and interpolates it (as SAM2 does) at other sizes. A SAM2 checkpoint needs
--attention window.

example:
  python tools/convert_checkpoint.py --model hiera_base_224 \\
      --input hiera_base_224.pth --output hiera_base_224_d2.pth
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="checkpoint file or directory in any supported format")
    parser.add_argument("--output", required=True, help="the .pth file to write")
    parser.add_argument("--model", required=True, choices=list(ARCHITECTURES), metavar="NAME",
                        help=f"architecture to build: {', '.join(ARCHITECTURES)}")
    parser.add_argument("--attention", default="mask_unit", choices=["mask_unit", "window"],
                        help="mask_unit (the paper's layout, default) or window (HieraDet / SAM2)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help=f"prefix for every key in the output (default {DEFAULT_PREFIX})")
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> str:
    """Do the conversion; returns the load report as text."""
    model = build_hiera(args.model, num_classes=0, attention=args.attention)
    default_bkg = tuple(model.pos_embed.shape[2:]) if args.attention == "window" else None
    # strict: a converted file must not carry silently initialized tensors
    report = load_checkpoint(model, args.input, strict=True)
    state = {args.prefix + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so that an interrupted run never leaves a truncated file.
    fd, tmp = tempfile.mkstemp(dir=output.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"model": state, "__author__": "hiera_det", "matching_heuristics": False}, tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    text = str(report)
    if default_bkg is not None and tuple(model.pos_embed.shape[2:]) != default_bkg:
        bkg = tuple(model.pos_embed.shape[2:])
        text += (
            f"\nnote: the background position embedding is {bkg[0]}x{bkg[1]}, not the preset "
            f"{default_bkg[0]}x{default_bkg[1]}: build the trunk with pos_embed_bkg_size={bkg} so that "
            f"Detectron2's checkpointer (which skips tensors of another shape) loads it, or load the file "
            f"with hiera_det.checkpoint.load_checkpoint"
        )
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        text = convert(args)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(text)
    print(f"wrote {args.output} ({args.model}, attention={args.attention}, keys prefixed {args.prefix!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
