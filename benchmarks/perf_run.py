#!/usr/bin/env python
"""Issue 16's figures from one process on one GPU: the trunk targets, Mask R-CNN inference at batch 1 and
the training iteration, each beside its peers, inside one device call (about 7 minutes).

``tools/benchmark.py`` measures every subject of a run in the same compile modes, so the run is split in
four, all in this process on the same GPU (same host, same clocks):

1. ``<tag>_trunk``: Hiera-B 224 b128 (ours, timm), video 16x224 b16 (ours, official) and Hiera-B at 1024
   b8 in both layouts, bf16, eager and compiled. The windowed-layout target (at least the mask-unit layout's
   TFLOP/s) is the comparison window vs mask unit with a speedup of at least their FLOP ratio.
2. ``<tag>_cudagraphs``: our 224 and video trunks again under ``mode="reduce-overhead"`` (CUDA graphs);
   the peers' compiled figures are run 1's default mode (their CUDA-graph compiles do not fit the call).
3. ``<tag>_detector``: Mask R-CNN inference, one 1024 image (ours, window, ViTDet-B), and the training
   iteration eager (ours, ViTDet-B).
4. ``<tag>_train_compiled``: our training iteration with the trunk and FPN compiled (fused AdamW, as the
   trainer builds it on CUDA); ViTDet-B's compiled training is left out (200 s of compile).

Writes each run's ``.json`` / ``.md`` under ``--out`` and ``<tag>_gpu.json``: the GPU's nvidia-smi name,
clocks, power and temperature before and after every run.

    python benchmarks/perf_run.py --out DIR [--tag h100_run5] [--budget 440]
    ENTRY=benchmarks/perf_run.py bash benchmarks/gpu_run.sh --tag h100_run5    # on the device machine
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: find the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import run  # noqa: E402
from benchmarks.cases import Case, Comparison, default_cases  # noqa: E402

NVIDIA_SMI_FIELDS = (
    "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu"
)
# FLOPs of one Hiera-B call at 1024 (flop counter, run 3): mask-unit 6226.1 GFLOP, window 3867.6 GFLOP.
# Window TFLOP/s >= mask-unit TFLOP/s  <=>  window speedup over mask unit >= this ratio.
LAYOUT_FLOP_RATIO = 1.61


def subset(case: Case, names: list[str], **changes) -> Case:
    """``case`` with only the subjects ``names`` and the comparisons among them."""
    keep = set(names)
    changes.setdefault("comparisons", [c for c in case.comparisons if c.ours in keep and c.peer in keep])
    return dataclasses.replace(case, subjects=[s for s in case.subjects if s.name in keep], **changes)


def plan() -> list[tuple[str, list[Case], list[str], float]]:
    """(tag suffix, cases, tools/benchmark.py arguments, share of the budget) per run."""
    cases = {c.name: c for c in default_cases()}
    trunk_224 = subset(cases["hiera_b_224"], ["ours", "timm"])
    video = cases["hiera_b_16x224_video"]
    layouts = subset(
        cases["hiera_b_fpn_1024"],
        ["ours_mask_unit", "ours_window"],
        name="hiera_b_1024_layouts",
        title="Hiera-B trunk at 1024, batch 8: windowed against mask-unit layout",
        comparisons=[Comparison("ours_window", "ours_mask_unit", min_speedup=LAYOUT_FLOP_RATIO)],
        notes=f"Target: the windowed layout at no fewer TFLOP/s than the mask-unit layout, i.e. a speedup "
        f"of at least the FLOP ratio {LAYOUT_FLOP_RATIO} (6226 / 3868 GFLOP per call).",
    )
    infer = subset(cases["maskrcnn_infer_1024"], ["ours", "ours_window", "vitdet_b"])
    train = cases["maskrcnn_train_1024"]
    bf16 = ["--dtypes", "bf16"]
    # Shares of the budget from run 5 on an H100: the trunk part took 134 s without the two 1024 compiles
    # (about 70 s more), CUDA graphs 44 s, the detector part 31 s, the compiled training 119 s.
    return [
        ("trunk", [trunk_224, video, layouts], [*bf16, "--compile", "off,on"], 0.48),
        ("cudagraphs", [subset(trunk_224, ["ours"]), subset(video, ["ours"])],
         [*bf16, "--compile", "reduce-overhead"], 0.10),  # fmt: skip
        ("detector", [infer, train], [*bf16, "--compile", "off"], 0.08),
        ("train_compiled", [subset(train, ["ours"])], [*bf16, "--compile", "on"], 0.34),
    ]


def gpu_state() -> dict:
    """nvidia-smi's view of the GPU now (name, clocks, power, temperature), or why there is none."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={NVIDIA_SMI_FIELDS}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"nvidia-smi unavailable: {e}"}
    return dict(zip(NVIDIA_SMI_FIELDS.split(","), (v.strip() for v in out.splitlines()[0].split(","))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tag", default="perf_run")
    p.add_argument("--budget", type=float, default=440.0, help="seconds for all four runs (each gets at least its share)")
    p.add_argument("--smoke", action="store_true", help="every run tiny on the CPU (checks the driver)")
    args = p.parse_args(argv)
    start = time.monotonic()
    gpu = {"runs": {}}
    gpu_file = args.out / f"{args.tag}_gpu.json"
    args.out.mkdir(parents=True, exist_ok=True)
    runs = plan()
    for i, (suffix, cases, options, share) in enumerate(runs):
        left = args.budget - (time.monotonic() - start)
        tag = f"{args.tag}_{suffix}"
        before = gpu_state()
        # its share at least, and what earlier runs left unused beyond the later runs' shares
        budget = max(share * args.budget, left - sum(r[3] for r in runs[i + 1 :]) * args.budget, 1.0)
        argv_run = [*options, "--out", str(args.out), "--tag", tag, "--time-budget", f"{budget:.0f}"]
        if args.smoke:
            argv_run = ["--smoke", "--out", str(args.out), "--tag", tag]
        print(f"[perf_run] {tag}: {budget:.0f} s of {left:.0f} s left", flush=True)
        try:
            run.main(argv_run, cases=cases)
        except SystemExit as e:  # an interrupted run keeps what it wrote; the next one still runs
            print(f"[perf_run] {tag} stopped: exit {e.code}", flush=True)
        gpu["runs"][tag] = {"before": before, "after": gpu_state(), "budget_s": round(budget)}
        gpu_file.write_text(json.dumps(gpu, indent=2))
    print(f"[perf_run] done in {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
