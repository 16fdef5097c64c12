#!/usr/bin/env python
"""How fast tools/video_demo.py runs a 720p video end to end, against the model alone (issue 16, target 2).

For each mode (``frame``: the Hiera-B Mask R-CNN of configs/hiera_fpn.yaml on every frame; ``clip``: the
Hiera-B 16x4 clip detector of configs/video/hiera_base_16x224_ava_keyframe.yaml on every frame as keyframe),
in one process on one device:

* ``model_only``: frames/s of the demo's own model call (``VideoDemo._detect_batch``: batch of uint8 inputs
  already on the device, forward, detections back on the host), after a warm-up;
* ``sequential`` and ``pipelined``: frames/s of the demo's library call (``run_video_demo``, what the command
  runs for each video once the model is built: decode, resize, model, JSON, drawing, mp4 encoding), with
  the seconds each stage took and, on a GPU, its utilisation sampled by nvidia-smi every 100 ms;
* ``original`` (``--original-tree``, a checkout of the code before the pipeline): the same call of that
  code, run in a subprocess (it is another version of the package) on ``--original-video``.

The models have random weights (no checkpoint offline): the box head's score threshold is 0, so each frame
has ``--detections`` boxes to draw, as a busy scene would. ``--sequential`` runs are the reference for the
outputs: the pipelined run's JSON Lines must be byte-identical to them (checked here, ``identical_jsonl``).

    python -m benchmarks.video_demo_speed --video /tmp/pan_720p.mp4 --out /tmp/vd_results --tag h100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {"frame": "configs/hiera_fpn.yaml", "clip": "configs/video/hiera_base_16x224_ava_keyframe.yaml"}
# tiny stand-ins for a dry run on a CPU (--smoke): same code paths, seconds instead of minutes
SMOKE_OPTS = ["MODEL.HIERA.STAGES", "[1, 1, 1, 1]", "MODEL.HIERA.EMBED_DIM", "16", "MODEL.FPN.OUT_CHANNELS", "16",
              "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"]  # fmt: skip


class GpuSampler:
    """``nvidia-smi`` utilisation samples every 100 ms while in the ``with`` block (none without a GPU)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.samples: list[int] = []

    def __enter__(self) -> GpuSampler:
        self._process = None
        if self.enabled:
            try:
                self._process = subprocess.Popen(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
            except OSError:
                self._process = None
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            out, _ = self._process.communicate()
            self.samples = [int(v) for v in out.split() if v.strip().isdigit()]

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        return {"mean_pct": round(sum(self.samples) / len(self.samples), 1), "samples": len(self.samples)}


def build(mode: str, device: str, detections: int, smoke: bool):
    import torch
    from detectron2.modeling import build_model

    import hiera_det.d2  # noqa: F401  (registers the meta-architectures)
    from hiera_det.config import get_hiera_cfg, merge_config

    opts = ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", "MODEL.HIERA.WEIGHTS", "",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", str(detections)]  # fmt: skip
    if smoke:
        opts += SMOKE_OPTS + (["MODEL.HIERA_VIDEO.NUM_FRAMES", "4"] if mode == "clip" else [])
    cfg = merge_config(get_hiera_cfg(), str(ROOT / CONFIGS[mode]) if (ROOT / CONFIGS[mode]).exists()
                       else CONFIGS[mode], opts)  # fmt: skip
    cfg.freeze()
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def settings_for(mode: str, batch_size: int, **extra):
    """``DemoSettings`` of this checkout, leaving out the fields an older checkout does not have."""
    from hiera_det.demo.video import DemoSettings

    names = {f.name for f in dataclasses.fields(DemoSettings)}
    values = dict(mode=mode, batch_size=batch_size, score_threshold=0.0, progress=False, **extra)
    return DemoSettings(**{k: v for k, v in values.items() if k in names})


def model_only(cfg, model, mode: str, video: str, batch_size: int, frames: int, warmup: int) -> dict:
    """Frames/s of the demo's model call on batches of the video already decoded, resized and on the device."""
    import numpy as np
    import torch

    from hiera_det.data.video_io import open_video
    from hiera_det.demo.video import FrameWindow, VideoDemo

    demo = VideoDemo(cfg, model, settings_for(mode, batch_size))
    device = model.device
    reader = open_video(video)
    window = FrameWindow(reader, prepare=demo._resize)
    batches = []
    for begin in range(0, min(reader.num_frames, 8 * batch_size), batch_size):
        indices = list(range(begin, min(begin + batch_size, reader.num_frames)))
        if mode == "frame":
            clips = [window.get_prepared([i]) for i in indices]
            inputs = [demo._model_input(c, pin=False)[:, 0].to(device) for c in clips]
        else:
            inputs = [demo._model_input(window.get_prepared(demo._keyframe_clip(i, reader.num_frames)), pin=False)
                      .to(device) for i in indices]  # fmt: skip
        batches.append(inputs)
    size = reader.size
    reader.close()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        for k in range(warmup):
            demo._detect_batch(batches[k % len(batches)], size, device)
        sync()
        done, k, start = 0, 0, time.perf_counter()
        while done < frames:
            found = demo._detect_batch(batches[k % len(batches)], size, device)
            done, k = done + len(found), k + 1
        sync()
        seconds = time.perf_counter() - start
    boxes = int(np.sum([len(f[1]) for f in found]))
    return {"frames": done, "seconds": round(seconds, 3), "frames_per_s": round(done / seconds, 3),
            "boxes_per_frame_last_batch": round(boxes / len(found), 1)}  # fmt: skip


def warm_up(cfg, model, mode: str, batch_size: int, repeats: int, height: int = 720, width: int = 1280) -> None:
    """A few forwards on zero frames of the size the demo feeds (cuDNN and allocator warm, as model_only)."""
    import torch

    from hiera_det.demo.image import inference_resize

    h, w = inference_resize(height, width, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST).apply_image(
        __import__("numpy").zeros((height, width, 3), "uint8")).shape[:2]  # fmt: skip
    shape = (3, h, w) if mode == "frame" else (3, cfg.MODEL.HIERA_VIDEO.NUM_FRAMES, h, w)
    with torch.no_grad():
        for _ in range(repeats):
            model([{"image": torch.zeros(shape), "height": height, "width": width} for _ in range(batch_size)])


def end_to_end(cfg, model, mode: str, video: str, batch_size: int, out: str, on_gpu: bool, **extra) -> dict:
    """One run of the demo's library call over ``video``, timed from the outside."""
    from hiera_det.demo.video import run_video_demo

    settings = settings_for(mode, batch_size, **extra)
    with GpuSampler(on_gpu) as sampler:
        start = time.perf_counter()
        result = run_video_demo(cfg, model, video, out, settings)
        seconds = time.perf_counter() - start
    if result.failed:
        raise RuntimeError(f"the demo failed: {result.failed}")
    [summary] = result.videos
    row = {"frames": summary["frames"], "seconds": round(seconds, 3),
           "frames_per_s": round(summary["frames"] / seconds, 3), "gpu_utilisation": sampler.summary(),
           "detections": summary["detections"]}  # fmt: skip
    if "seconds" in summary:  # per-stage seconds (busy time of each stage; they overlap when pipelined)
        row["stage_seconds"] = summary["seconds"]
        row["stage_ms_per_frame"] = {k: round(1e3 * v / summary["frames"], 2) for k, v in summary["seconds"].items()}
    row["jsonl"] = summary["jsonl"]
    return row


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "load_average": [round(v, 2) for v in os.getloadavg()]}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_modes(args, variants: list[str], results: dict, save) -> None:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    for mode in args.modes.split(","):
        cfg, model = build(mode, device, args.detections, args.smoke)
        row = results.setdefault(mode, {"config": CONFIGS[mode]})
        if variants == ["original"]:  # that code has no model-only entry point: warm the model up instead
            warm_up(cfg, model, mode, args.batch_size, args.warmup)
        else:
            row["model_only"] = model_only(cfg, model, mode, args.video, args.batch_size, args.model_frames,
                                           args.warmup)  # fmt: skip
        save()
        jsonl = {}
        for variant in variants:
            with tempfile.TemporaryDirectory() as out:
                if variant == "original":
                    video = args.original_video or args.video
                    row[variant] = end_to_end(cfg, model, mode, video, args.batch_size, out, on_gpu)
                else:
                    row[variant] = end_to_end(cfg, model, mode, args.video, args.batch_size, out, on_gpu,
                                              pipeline=variant == "pipelined")  # fmt: skip
                with open(row[variant].pop("jsonl"), "rb") as f:
                    jsonl[variant] = f.read()
            if variant != "original":
                print(f"{mode} {variant}: {row[variant]['frames_per_s']} frames/s", flush=True)
            save()
        if "sequential" in jsonl and "pipelined" in jsonl:
            row["identical_jsonl"] = jsonl["sequential"] == jsonl["pipelined"]
        for variant in variants:
            if variant in row and "model_only" in row:
                row[variant]["vs_model_only"] = round(row[variant]["frames_per_s"] / row["model_only"]["frames_per_s"], 3)
        save()
        del model
        if on_gpu:
            torch.cuda.empty_cache()


def run_original(args, results: dict, save) -> None:
    """The original code's end-to-end runs, in a subprocess that imports the package from that checkout."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "original.json")
        own = {str(ROOT), str(ROOT) + "/"}
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in own]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(args.original_tree)] + paths))
        command = [sys.executable, os.path.abspath(__file__), "--original-only", "--out-json", out,
                   "--video", os.path.abspath(args.video),
                   "--original-video", os.path.abspath(args.original_video or args.video),
                   "--modes", args.modes, "--batch-size", str(args.batch_size), "--detections", str(args.detections),
                   "--model-frames", str(args.model_frames), "--warmup", str(args.warmup)]  # fmt: skip
        command += ["--device", args.device] if args.device else []
        command += ["--smoke"] if args.smoke else []
        done = subprocess.run(command, env=env, cwd=os.path.abspath(args.original_tree), timeout=args.original_timeout)
        if done.returncode != 0 or not os.path.exists(out):
            results["original_error"] = f"exit status {done.returncode}"
            return
        with open(out) as f:
            for mode, row in json.load(f).items():
                results.setdefault(mode, {})["original"] = row["original"]
                if "model_only" in results[mode]:
                    ratio = row["original"]["frames_per_s"] / results[mode]["model_only"]["frames_per_s"]
                    results[mode]["original"]["vs_model_only"] = round(ratio, 3)
    save()


def markdown(results: dict) -> str:
    lines = [f"# Video demo end to end ({results['machine'].get('gpu', 'CPU')}, {results['video']['name']})", "",
             "| mode | variant | frames/s | / model-only | GPU util % | ms per frame: decode / preprocess / model / "
             "draw / encode (busy time per stage) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for mode in ("frame", "clip"):
        if mode not in results:
            continue
        row = results[mode]
        if "model_only" in row:
            lines.append(f"| {mode} | model only | {row['model_only']['frames_per_s']} | 1.0 | | |")
        for variant in ("original", "sequential", "pipelined"):
            if variant not in row:
                continue
            r = row[variant]
            util = (r.get("gpu_utilisation") or {}).get("mean_pct", "")
            ms = r.get("stage_ms_per_frame", {})
            split = " / ".join(str(ms.get(k, "-")) for k in ("decode", "preprocess", "model", "draw", "encode"))
            lines.append(f"| {mode} | {variant} | {r['frames_per_s']} | {r.get('vs_model_only', '')} | {util} | "
                         f"{split if ms else 'n/a (original code)'} |")  # fmt: skip
        if "identical_jsonl" in row:
            lines.append(f"| {mode} | pipelined JSON Lines == sequential | {row['identical_jsonl']} | | | |")
    lines += ["", "```", json.dumps({k: results[k] for k in ("machine", "video", "settings")}, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, help="the 720p test video (benchmarks/video_source.py writes one)")
    p.add_argument("--out", default="benchmarks/results", help="folder for <tag>.json and <tag>.md")
    p.add_argument("--tag", default="video_demo")
    p.add_argument("--modes", default="frame,clip")
    p.add_argument("--variants", default="sequential,pipelined")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--detections", type=int, default=20, help="boxes per frame (TEST.DETECTIONS_PER_IMAGE)")
    p.add_argument("--model-frames", type=int, default=96, help="frames timed for the model-only rate")
    p.add_argument("--warmup", type=int, default=3, help="model-only batches run before timing")
    p.add_argument("--device", default="")
    p.add_argument("--smoke", action="store_true", help="tiny models: a dry run of the script on a CPU")
    p.add_argument("--original-tree", default="", help="a checkout of the code before the pipeline")
    p.add_argument("--original-video", default="", help="video of the original runs (default --video)")
    p.add_argument("--original-timeout", type=float, default=120)
    p.add_argument("--original-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out-json", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if importlib_missing("hiera_det"):
        sys.path.insert(0, str(ROOT))

    import hashlib

    with open(args.video, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    results: dict = {"machine": machine(), "video": {"name": os.path.basename(args.video), "sha256": digest},
                     "settings": {"batch_size": args.batch_size, "detections_per_frame": args.detections,
                                  "model_frames": args.model_frames, "smoke": args.smoke}}  # fmt: skip
    if args.original_only:
        def save_json():
            with open(args.out_json, "w") as f:
                json.dump({k: v for k, v in results.items() if k in ("frame", "clip")}, f)

        run_modes(args, ["original"], results, save_json)
        return 0
    os.makedirs(args.out, exist_ok=True)

    def save():
        with open(os.path.join(args.out, args.tag + ".json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(args.out, args.tag + ".md"), "w") as f:
            f.write(markdown(results))

    run_modes(args, args.variants.split(","), results, save)
    if args.original_tree:
        run_original(args, results, save)
    results["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    save()
    print(markdown(results))
    return 0


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


if __name__ == "__main__":
    sys.exit(main())
