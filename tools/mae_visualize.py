#!/usr/bin/env python
"""Save pictures of a MAE model's work: masked input | reconstruction | original, one PNG per image or clip.

Example:
  python tools/mae_visualize.py --config-file output/mae/shapes_tiny/config.yaml \\
      --weights output/mae/shapes_tiny/model_final.pth --input photos/ --output output/mae_pictures

``--input`` takes image or video files and folders of them (``--num`` of each folder, sorted). Videos show
the middle frame of those the decoder predicts. A file that cannot be read is named with the reason; the
others are still written (exit status 1 then).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config-file",
        "--config",
        dest="config_file",
        required=True,
        help="config path (the run's config.yaml), or a name under configs/",
    )
    p.add_argument(
        "--weights", default="", help="model checkpoint (.pth); default: MODEL.WEIGHTS of the config"
    )
    p.add_argument("--input", nargs="+", required=True, help="image or video files, or folders of them")
    p.add_argument("--output", required=True, help="folder for the PNG pictures")
    p.add_argument("--num", type=int, default=8, help="files taken from each folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the random mask")
    p.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="draw an untrained model's reconstructions (for smoke tests; they show noise)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return p


def list_inputs(inputs: list[str], num: int) -> list[str]:
    from hiera_det.data.unlabeled import IMAGE_EXTENSIONS

    paths = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(
                n for n in os.listdir(item) if n.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            )
            paths += [os.path.join(item, n) for n in names[:num]]
        else:
            paths.append(item)
    return paths


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    import hiera_det.d2  # noqa: F401
    from detectron2.modeling import build_model

    from hiera_det.checkpoint import CheckpointError
    from hiera_det.config import error_message
    from hiera_det.engine.checkpointer import load_model_weights
    from hiera_det.engine.run_config import build_run_config
    from hiera_det.pretraining import save_reconstructions

    try:
        cfg, _ = build_run_config(args.config_file, args.opts)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {error_message(e)}", file=sys.stderr)
        return 2
    if cfg.MODEL.META_ARCHITECTURE != "HieraMAE":
        print(
            f"error: {args.config_file} configures {cfg.MODEL.META_ARCHITECTURE}, not a HieraMAE model "
            f"(configs/mae/)",
            file=sys.stderr,
        )
        return 2
    weights = args.weights or cfg.MODEL.WEIGHTS
    if not weights and not args.allow_random_weights:
        print(
            "error: no checkpoint: pass --weights (the pre-training run's model_final.pth) or set "
            "MODEL.WEIGHTS; --allow-random-weights draws an untrained model's reconstructions",
            file=sys.stderr,
        )
        return 2
    model = build_model(cfg)
    if weights:
        try:
            load_model_weights(model, weights, require_complete=True)
        except (CheckpointError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    paths = list_inputs(args.input, args.num)
    if not paths:
        print(f"error: no images or videos in {args.input}", file=sys.stderr)
        return 2
    written, failed = save_reconstructions(cfg, model, paths, args.output, seed=args.seed)
    print(f"wrote {len(written)} pictures to {args.output}")
    for path, reason in failed.items():
        print(f"could not read {path}: {reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
