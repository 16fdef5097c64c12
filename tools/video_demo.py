#!/usr/bin/env python
"""Run a trained hiera_det model over videos; write JSON Lines and an annotated mp4 per video.

Modes (``--mode auto`` picks from ``MODEL.META_ARCHITECTURE``):
  frame     an image detector on every ``--frame-stride``-th frame, ``--batch-size`` frames per forward
  clip      HieraClipDetector: a clip of NUM_FRAMES x SAMPLING_RATE frames centered on each processed frame
            (edge frames repeated at the ends), detections for that keyframe
  classify  HieraVideoClassifier: top-k per clip of NUM_FRAMES x SAMPLING_RATE frames (``--clip-stride``
            apart) and for the whole video (clip scores averaged)
  actions   HieraActionDetector: AVA-style actions of each person at keyframes; persons from ``--proposals``
            (an AVA proposals CSV) or the config's MODEL.ACTION_HEAD.PERSON_DETECTOR (hiera_det/demo/actions.py)

Each video gives ``OUTPUT/<name>.jsonl``: detection modes one line per processed frame with
``frame_index``, ``timestamp`` (seconds, from the container, so variable frame rates are right),
``boxes`` (x0, y0, x1, y1 in source pixels), ``scores``, ``classes``, ``class_names``; classify one line per
clip and a last line with the video's top-k. ``OUTPUT/<name>.mp4`` is the annotated video (``--no-video``
skips it). Frames are streamed in chunks, so memory does not grow with the video's length. In frame and
clip modes decoding, the model and drawing/encoding overlap (threads and bounded queues; ``--sequential``
runs them one after the other, with the same outputs); a frame that fails is named, and the frames
before it stay written.
``OUTPUT/summary.json`` lists the videos processed and those that failed, with the reason. A video that
fails does not stop the others; the exit status is then 1 (2 for a problem with the config or checkpoint).

Example:
  python tools/video_demo.py --config-file configs/video/moving_shapes_cls.yaml \\
      --input datasets/moving_shapes/videos/val --weights output/moving_shapes_cls/model_final.pth \\
      --output output/video_demo
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config-file",
        "--config",
        dest="config_file",
        required=True,
        help="config path, or a name under configs/",
    )
    p.add_argument("--input", required=True, help="a video file, a folder of videos, or a folder of frames")
    p.add_argument("--output", required=True, help="folder for <video>.jsonl and <video>.mp4")
    p.add_argument(
        "--weights", default="", help="model checkpoint (.pth); default: MODEL.WEIGHTS of the config"
    )
    p.add_argument("--mode", default="auto", choices=("auto", "frame", "clip", "classify", "actions"))
    p.add_argument("--frame-stride", type=int, default=1, help="process every N-th frame")
    p.add_argument("--batch-size", type=int, default=4, help="frames (or clips) per forward pass")
    p.add_argument("--confidence-threshold", type=float, default=0.5)
    p.add_argument("--top-k", type=int, default=5, help="classes reported per clip (classify)")
    p.add_argument(
        "--clip-stride",
        type=int,
        default=0,
        help="classify: frames between clip starts (0 = one clip span, no overlap)",
    )
    p.add_argument("--chunk", type=int, default=32, help="frames decoded per read (bounds memory)")
    p.add_argument("--no-video", action="store_true", help="write JSON Lines only")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="frame/clip: decode, run and write one after the other instead of overlapping them "
        "(same outputs, slower; for timing and debugging)",
    )
    p.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="run without a checkpoint (for smoke tests; predictions are meaningless)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept a Detectron2 model-zoo .pkl checkpoint (unpickling runs the file's code: "
        "only for files from a source you trust)",
    )
    p.add_argument("--device", default="", help="cpu / cuda (default: cuda when available)")
    p.add_argument(
        "--proposals", default="", help="actions: AVA proposals CSV (default: the config's person detector)"
    )
    p.add_argument("--keyframe-interval", type=float, default=1.0, help="actions: seconds between keyframes")
    p.add_argument(
        "--video-start-sec", type=float, default=0.0, help="actions: proposals' time of frame 0 (AVA: 900)"
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


# the numeric options and their lower bounds: a value below fails at once, before the model loads
MINIMUM = {"frame_stride": 1, "batch_size": 1, "top_k": 1, "clip_stride": 0, "chunk": 1}


def check_args(parser: argparse.ArgumentParser, args) -> None:
    for name, low in MINIMUM.items():
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if args.keyframe_interval <= 0:
        parser.error(f"--keyframe-interval must be positive (seconds), got {args.keyframe_interval}")
    if not 0.0 <= args.confidence_threshold <= 1.0:
        parser.error(f"--confidence-threshold must lie in [0, 1], got {args.confidence_threshold}")


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    from hiera_det.demo.image import interrupt_on_sigterm

    interrupt_on_sigterm()  # `kill` stops the run as Ctrl-C does: the mp4 is finished, summary.json written
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"interrupted: the videos finished so far are listed in {args.output}/summary.json; the one being "
              "processed keeps the frames written before the interruption", file=sys.stderr)  # fmt: skip
        return 130


def run(args) -> int:
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.logger import setup_logger

    import hiera_det.d2  # noqa: F401  (registers the backbones and meta-architectures)
    from hiera_det.checkpoint import CheckpointError
    from hiera_det.config import error_message, get_hiera_cfg, merge_config
    from hiera_det.data.video_io import VideoReadError
    from hiera_det.demo.image import DemoError, prepare_output_folder
    from hiera_det.demo.video import DemoSettings, list_videos, mode_for, run_video_demo
    from hiera_det.detection.fast_inference import use_cuda_graphs
    from hiera_det.engine.checkpointer import load_model_weights

    setup_logger(name="hiera_det")
    logger = setup_logger(name="video_demo")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"error: --device {args.device}, but this machine has no CUDA GPU; use --device cpu",
            file=sys.stderr,
        )
        return 2
    try:
        # a bad input or output path, or a config mistake, fails here, before the model loads
        prepare_output_folder(args.output, list_videos(args.input))
        cfg = merge_config(get_hiera_cfg(), args.config_file, args.opts)
    except (DemoError, VideoReadError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {error_message(e)}", file=sys.stderr)
        return 2
    cfg.MODEL.DEVICE = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights = args.weights or cfg.MODEL.WEIGHTS
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    mode = mode_for(cfg.MODEL.META_ARCHITECTURE) if args.mode == "auto" else args.mode

    model = build_model(cfg).eval()
    if weights:
        try:
            load_model_weights(model, weights, allow_pickle=args.allow_pickle, require_complete=True)
        except (CheckpointError, FileNotFoundError) as e:
            print(f"error: {e}\n(pass --weights with the checkpoint of this config's model, e.g. "
                  "output/<run>/model_final.pth)", file=sys.stderr)  # fmt: skip
            return 2
    elif not args.allow_random_weights:
        print(
            "error: no checkpoint: pass --weights (or set MODEL.WEIGHTS); --allow-random-weights runs an "
            "untrained model for smoke tests",
            file=sys.stderr,
        )
        return 2
    use_cuda_graphs(cfg, model)
    settings = DemoSettings(
        mode=mode,
        frame_stride=args.frame_stride,
        batch_size=args.batch_size,
        score_threshold=args.confidence_threshold,
        top_k=args.top_k,
        clip_stride=args.clip_stride,
        chunk=args.chunk,
        write_video=not args.no_video,
        pipeline=not args.sequential,
    )

    def report(summary):
        speed = f" ({summary['frames_per_s']} frames/s)" if "frames_per_s" in summary else ""
        logger.info(
            "%s -> %s%s%s",
            summary["video"],
            summary["jsonl"],
            f", {summary['mp4']}" if summary["mp4"] else "",
            speed,
        )

    try:
        if mode == "actions":  # AVA-style action detection, hiera_det/demo/actions.py
            from hiera_det.demo.actions import run_action_demo

            result = run_action_demo(cfg, model, args, on_video=report)
        else:
            result = run_video_demo(cfg, model, args.input, args.output, settings, on_video=report)
    except VideoReadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:  # the mode does not fit the config, a missing proposals file
        print(f"error: {error_message(e)}", file=sys.stderr)
        return 2
    if result.failed:
        total = len(result.failed) + len(result.videos)
        print(f"{len(result.failed)} of {total} videos could not be processed (the others' outputs are in "
              f"{args.output}):", *(f"  {f['video']}: {f['error']}" for f in result.failed),
              sep="\n", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
