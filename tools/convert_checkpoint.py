#!/usr/bin/env python
"""Convert a Hiera checkpoint in any supported format into a Detectron2-loadable .pth file.

The input is read with ``hiera_det.checkpoint.load_checkpoint`` into ``build_hiera(MODEL, num_classes=0,
attention=ATTENTION)``; the trunk's weights are written as ``{"model": {PREFIX + key: tensor},
"__author__": "hiera_det", "matching_heuristics": False}``. The default prefix is where the Hiera trunk sits
in hiera_det's FPN detectors (``backbone.bottom_up.trunk.``), so ``MODEL.WEIGHTS`` can name the output.
The work is ``hiera_det.engine.checkpointer.convert_for_detectron2``.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hiera_det.checkpoint import CheckpointError  # noqa: E402
from hiera_det.checkpoint.formats import FORMAT_HELP  # noqa: E402
from hiera_det.engine.checkpointer import DETECTRON2_TRUNK_PREFIX, convert_for_detectron2  # noqa: E402
from hiera_det.modeling import ARCHITECTURES  # noqa: E402

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
    parser.add_argument("--prefix", default=DETECTRON2_TRUNK_PREFIX,
                        help=f"prefix for every key in the output (default {DETECTRON2_TRUNK_PREFIX})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        text = convert_for_detectron2(args.input, args.output, args.model, attention=args.attention,
                                      prefix=args.prefix)  # fmt: skip
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(text)
    print(f"wrote {args.output} ({args.model}, attention={args.attention}, keys prefixed {args.prefix!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
