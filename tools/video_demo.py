#!/usr/bin/env python
"""Run a trained hiera_det model over videos; write JSON Lines and an annotated mp4 per video.

Modes (``--mode auto`` picks from ``MODEL.META_ARCHITECTURE``):
  frame     an image detector on every ``--frame-stride``-th frame, ``--batch-size`` frames per forward
  clip      HieraClipDetector: a clip of NUM_FRAMES x SAMPLING_RATE frames centered on each processed frame
            (edge frames repeated at the ends), detections for that keyframe
  classify  HieraVideoClassifier: top-k per clip of NUM_FRAMES x SAMPLING_RATE frames (``--clip-stride``
            apart) and for the whole video (clip scores averaged)
  actions   HieraActionDetector: AVA-style actions of each person at keyframes; persons from ``--proposals``
            (an AVA proposals CSV) or the config's MODEL.ACTION_HEAD.PERSON_DETECTOR (hiera_det/demo_actions.py)

Each video gives ``OUTPUT/<name>.jsonl``: detection modes one line per processed frame with
``frame_index``, ``timestamp`` (seconds, from the container, so variable frame rates are right),
``boxes`` (x0, y0, x1, y1 in source pixels), ``scores``, ``classes``, ``class_names``; classify one line per
clip and a last line with the video's top-k. ``OUTPUT/<name>.mp4`` is the annotated video (``--no-video``
skips it). Frames are streamed in chunks, so memory does not grow with the video's length.

Example:
  python tools/video_demo.py --config-file configs/video/moving_shapes_cls.yaml \\
      --input datasets/moving_shapes/videos/val --weights output/moving_shapes_cls/model_final.pth \\
      --output output/video_demo
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="config path, or a name under configs/")
    p.add_argument("--input", required=True, help="a video file, a folder of videos, or a folder of frames")
    p.add_argument("--output", required=True, help="folder for <video>.jsonl and <video>.mp4")
    p.add_argument("--weights", default="", help="model checkpoint (.pth); default: MODEL.WEIGHTS of the config")
    p.add_argument("--mode", default="auto", choices=("auto", "frame", "clip", "classify", "actions"))
    p.add_argument("--frame-stride", type=int, default=1, help="process every N-th frame")
    p.add_argument("--batch-size", type=int, default=4, help="frames (or clips) per forward pass")
    p.add_argument("--confidence-threshold", type=float, default=0.5)
    p.add_argument("--top-k", type=int, default=5, help="classes reported per clip (classify)")
    p.add_argument("--clip-stride", type=int, default=0,
                   help="classify: frames between clip starts (0 = one clip span, no overlap)")
    p.add_argument("--chunk", type=int, default=32, help="frames decoded per read (bounds memory)")
    p.add_argument("--no-video", action="store_true", help="write JSON Lines only")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="run without a checkpoint (for smoke tests; predictions are meaningless)")
    p.add_argument("--device", default="", help="cpu / cuda (default: cuda when available)")
    p.add_argument("--proposals", default="", help="actions: AVA proposals CSV (default: the config's person detector)")
    p.add_argument("--keyframe-interval", type=float, default=1.0, help="actions: seconds between keyframes")
    p.add_argument("--video-start-sec", type=float, default=0.0, help="actions: proposals' time of frame 0 (AVA: 900)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


def check_checkpoint(model, path: str) -> None:
    """Fail early, naming the problem, when a checkpoint does not belong to the configured model."""
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist; pass --weights with a trained model "
                                f"(e.g. output/<run>/model_final.pth)")
    if not path.endswith((".pth", ".pt")):
        return  # Detectron2's pickled formats are converted by its checkpointer
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {path!r} cannot be read ({e}); it is truncated or not a PyTorch file: "
                         f"re-download or re-train it") from e
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path!r} holds no state dict (expected {{'model': state_dict}})")
    expected = model.state_dict().keys()
    matched = len(expected & state.keys())
    if matched == 0:
        sample = ", ".join(sorted(state)[:3])
        raise ValueError(
            f"checkpoint {path!r} has no parameter of this model (its keys look like: {sample}); it was trained "
            f"with another config. Pass the config the checkpoint was trained with, or convert trunk weights "
            f"with tools/convert_checkpoint.py and set MODEL.HIERA_VIDEO.WEIGHTS / MODEL.HIERA.WEIGHTS"
        )
    if matched < len(expected):
        logging.getLogger("video_demo").warning(
            "checkpoint %s covers %d of %d model tensors; the rest keep their initial values", path, matched,
            len(expected))


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from detectron2.utils.logger import setup_logger

    import hiera_det  # noqa: F401  (registers the backbones and meta-architectures)
    from hiera_det.config import get_hiera_cfg, merge_config
    from hiera_det.data.video_io import VideoReadError
    from hiera_det.video.demo import DemoSettings, mode_for, run_video_demo

    setup_logger(name="hiera_det")
    logger = setup_logger(name="video_demo")
    cfg = merge_config(get_hiera_cfg(), args.config_file, args.opts)
    cfg.MODEL.DEVICE = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights = args.weights or cfg.MODEL.WEIGHTS
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    mode = mode_for(cfg.MODEL.META_ARCHITECTURE) if args.mode == "auto" else args.mode

    model = build_model(cfg).eval()
    if weights:
        check_checkpoint(model, weights)
        DetectionCheckpointer(model).load(weights)
    elif not args.allow_random_weights:
        print("error: no checkpoint: pass --weights (or set MODEL.WEIGHTS); --allow-random-weights runs an "
              "untrained model for smoke tests", file=sys.stderr)
        return 2
    settings = DemoSettings(
        mode=mode,
        frame_stride=args.frame_stride,
        batch_size=args.batch_size,
        score_threshold=args.confidence_threshold,
        top_k=args.top_k,
        clip_stride=args.clip_stride,
        chunk=args.chunk,
        write_video=not args.no_video,
    )

    def report(summary):
        logger.info("%s -> %s%s", summary["video"], summary["jsonl"],
                    f", {summary['mp4']}" if summary["mp4"] else "")

    if mode == "actions":  # AVA-style action detection, hiera_det/demo_actions.py
        from hiera_det.demo_actions import run_action_demo
        return run_action_demo(cfg, model, args, on_video=report)
    try:
        run_video_demo(cfg, model, args.input, args.output, settings, on_video=report)
    except VideoReadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
