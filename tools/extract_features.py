#!/usr/bin/env python
"""Extract Hiera features (and, with --classify, top-k classes) from images and videos into a folder.

Images get the Hugging Face Hiera processor's preprocessing (shorter side 256 bicubic, centre crop 224,
ImageNet normalisation); videos are cut into clips of NUM_FRAMES frames SAMPLING_RATE apart, one every
--clip-stride frames, read with decord. Features go to sharded safetensors with an index (file, clip and
clip times -> shard and row); a second run with the same arguments skips everything already written, and
inputs that cannot be read are skipped and listed in OUTPUT/failures.json. The exit status is 0 when every
input was read, 1 when some were skipped (the others' rows are written) and 2 for a problem with the command
line, weights or output folder.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hiera_det.modeling import ARCHITECTURES  # noqa: E402

EPILOG = """\
output folder:
  run.json, shard-NNNNN.safetensors (one tensor per output: stage1..stage4 [N, C, h, w], pooled [N, C],
  logits [N, K]), shard-NNNNN.json and index.json (rows: file, shard, row; for video also clip,
  start_frame, end_frame, start_time, end_time in seconds), failures.json, predictions.json (--classify).

examples:
  python tools/extract_features.py --model hiera_base_plus_224 --weights hiera_base_plus_224.pth \\
      --input photos/ --output feats/ --out-features stage3 stage4 --pooled
  python tools/extract_features.py --model hiera_base_16x224 --weights hiera_base_16x224.pth \\
      --input "videos/*.mp4" --output clips/ --num-frames 16 --sampling-rate 4 --clip-stride 32 --classify
"""


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--build takes KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, choices=list(ARCHITECTURES), metavar="NAME",
                        help=f"architecture: {', '.join(ARCHITECTURES)}")
    parser.add_argument("--weights", required=True,
                        help="checkpoint in any format hiera_det reads (official, Hugging Face, timm, SAM2)")
    parser.add_argument("--input", required=True, nargs="+", metavar="FOLDER|GLOB|FILE",
                        help="image or video files, folders (searched recursively) or quoted globs")
    parser.add_argument("--output", required=True, help="output folder (created; reused to resume)")
    parser.add_argument("--out-features", nargs="+", default=None, metavar="STAGE",
                        help="stages to save (default: stage1 stage2 stage3 stage4)")
    parser.add_argument("--pooled", action="store_true", help="also save the pooled embedding")
    parser.add_argument("--classify", action="store_true",
                        help="also save logits and print / save the top-k classes per input")
    parser.add_argument("--top-k", type=int, default=5, help="classes per input with --classify (default 5)")
    parser.add_argument("--stage-norms", action="store_true",
                        help="apply a Hugging Face HieraBackbone checkpoint's per-stage LayerNorms")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda if available)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast; features are saved as bfloat16")
    parser.add_argument("--bf16-weights", action="store_true",
                        help="weights and pixels in bfloat16, no autocast: faster than --bf16, slightly further "
                             "from fp32; features are saved as bfloat16")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="compile the trunk and replay it from CUDA graphs (CUDA only): the fastest for long "
                             "runs; the first batch compiles")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2, help="reading / preprocessing processes")
    parser.add_argument("--shard-rows", type=int, default=256, help="rows per safetensors shard")
    parser.add_argument("--crop-size", type=int, default=None, help="image / frame crop (default: the model's)")
    parser.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the model's, 16)")
    parser.add_argument("--sampling-rate", type=int, default=4, help="source frames between clip frames")
    parser.add_argument("--clip-stride", type=int, default=None,
                        help="source frames between clip starts (default: the clip span, clips tile the video)")
    parser.add_argument("--build", nargs="+", type=_override, default=[], metavar="KEY=VALUE",
                        help="build_hiera overrides, e.g. input_size=(448,448)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from hiera_det.checkpoint import CheckpointError
    from hiera_det.features import FeatureExtractor, InputError, RunMismatchError, extract_to_folder

    try:
        extractor = FeatureExtractor(
            args.model, args.weights, args.out_features, pooled=args.pooled,
            top_k=args.top_k if args.classify else 0, stage_norms=args.stage_norms, device=args.device,
            bf16=args.bf16, bf16_weights=args.bf16_weights, cuda_graphs=args.cuda_graphs, crop_size=args.crop_size,
            num_frames=args.num_frames, sampling_rate=args.sampling_rate, **dict(args.build),
        )
        summary = extract_to_folder(
            extractor, args.input, args.output, weights=args.weights, batch_size=args.batch_size,
            num_workers=args.num_workers, shard_rows=args.shard_rows, clip_stride=args.clip_stride,
            progress=not args.no_progress,
        )
    except (CheckpointError, InputError, RunMismatchError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TypeError as e:  # a --build key that build_hiera does not take
        if "unexpected keyword argument" not in str(e):
            raise
        print(f"error: --build: {e}; the keys are build_hiera's arguments (input_size, drop_path_rate, "
              "attention, window_spec, global_blocks, pos_embed, ...)", file=sys.stderr)  # fmt: skip
        return 2
    except OSError as e:  # --output not a folder, not writable
        print(f"error: --output {args.output}: {e.strerror or e}{f' ({e.filename})' if e.filename else ''}",
              file=sys.stderr)  # fmt: skip
        return 2

    print(f"{summary.written} rows written to {summary.output}, {summary.already_done} already there")
    if summary.failures:
        print(f"{len(summary.failures)} inputs skipped (listed in {os.path.join(args.output, 'failures.json')}):")
        for f in summary.failures:
            print(f"  {f.file}{'' if f.clip is None else f' clip {f.clip}'}: {f.reason}")
    if summary.predictions:
        saved = {file: [vars(p) for p in preds] for file, preds in summary.predictions.items()}
        with open(os.path.join(args.output, "predictions.json"), "w") as f:
            json.dump(saved, f, indent=1)
        for file, preds in summary.predictions.items():
            print(f"{file}: " + ", ".join(f"{p.name} ({p.probability:.3f})" for p in preds))
    return 1 if summary.failures else 0  # as tools/demo.py: the others' rows are written


if __name__ == "__main__":
    sys.exit(main())
