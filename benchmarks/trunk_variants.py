#!/usr/bin/env python
"""Which inference kernels close the gap to the trunk targets? Times, profiles and FLOPs. (GPU only.)

The trunk targets of issue 16 (H100, bf16, compiled): Hiera-B 224 batch 128 at 12,000 im/s, video
Hiera-B 16x224 batch 16 at 1,000 clips/s, and the windowed (abs-win) layout at 1024 running at no fewer
TFLOP/s than the mask-unit layout. The earlier profile (results/SUMMARY.md) put the gap in the small
attention windows (16-64 keys, padded to 64x128 tiles) and in the erf GELU after fc1, a separate pass over
the 4x-wide hidden tensor. For each case this script, in one process on one input:

* times the shipped model and the variants below, compiled, interleaved, with CUDA events;
* profiles the shipped model and the ``fast`` variant: GPU kernel time per category (GEMM, attention,
  the fused fc1 + GELU, inductor's pointwise/norm kernels, convolution, copies) and the top kernels;
* counts the model's FLOPs once (eager, ``torch.utils.flop_counter``) for TFLOP/s;
* checks each variant's last stage against the shipped model's.

Variants (``trunk_kernels.with_fast_kernels``): ``fast`` = fc1 + erf GELU in one Triton kernel and windows
of at most 64 keys packed 128 keys to a FlexAttention sequence; ``fast-sdpa`` = the same with the packs
through ``scaled_dot_product_attention`` and a block-diagonal mask; ``fast16`` = packing only windows of at most
16 keys; ``gelu`` = the fused fc1 + GELU alone;
``+ro`` = compiled with ``mode="reduce-overhead"`` (CUDA graphs). A micro-benchmark times the fused fc1 +
GELU against ``linear`` then ``gelu`` (compiled) at the four fc1 shapes of Hiera-B 224 batch 128.

    python -m benchmarks.trunk_variants --out benchmarks/results/trunk_variants.json [--budget 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a file, python benchmarks/trunk_variants.py: find the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.trunk_kernels import with_fast_kernels  # noqa: E402

# name: (architecture, attention layout, input shape, batch, throughput unit, variants in the order run)
CASES = {
    "hiera_b_224_b128": ("hiera_base_224", "mask_unit", (3, 224, 224), 128, "im/s",
                         ["shipped", "fast", "gelu", "fast-sdpa", "fast16"]),
    "window_1024_b8": ("hiera_base_224", "window", (3, 1024, 1024), 8, "im/s", ["shipped", "fast"]),
    "hiera_b_16x224_video_b16": ("hiera_base_16x224", "mask_unit", (3, 16, 224, 224), 16, "clips/s",
                                 ["shipped", "fast", "fast+ro"]),
    "mask_unit_1024_b8": ("hiera_base_224", "mask_unit", (3, 1024, 1024), 8, "im/s", ["shipped", "fast"]),
}  # fmt: skip
VARIANTS = {  # label: (with_fast_kernels arguments, torch.compile mode)
    "shipped": ({}, "default"),
    "fast": (dict(fused_gelu=True, pack_keys=128, pack_kernel="flex"), "default"),
    "fast-sdpa": (dict(fused_gelu=True, pack_keys=128, pack_kernel="sdpa"), "default"),
    "fast16": (dict(fused_gelu=True, pack_keys=128, pack_up_to=16, pack_kernel="flex"), "default"),
    "gelu": (dict(fused_gelu=True), "default"),
    "fast+ro": (dict(fused_gelu=True, pack_keys=128, pack_kernel="flex"), "reduce-overhead"),
}
PROFILED = ("shipped", "fast")
DTYPE = "bf16"
WARMUP = 3
# fc1 of Hiera-B 224 at batch 128, per stage: (tokens, dim, hidden)
FC1_SHAPES = [(128 * 3136, 96, 384), (128 * 784, 192, 768), (128 * 196, 384, 1536), (128 * 49, 768, 3072)]


def kernel_category(name: str) -> str:
    """A GPU kernel's role, from its name."""
    n = name.lower()
    if "fc1_gelu" in n:
        return "fc1+gelu (fused)"
    if any(s in n for s in ("flash", "fmha", "attention", "sdpa", "flex")):
        return "attention"
    if any(s in n for s in ("conv", "fprop", "implicit")):  # cuDNN runs convolutions on cutlass kernels
        return "conv"
    if any(s in n for s in ("gemm", "nvjet", "sm90_xmma", "cutlass", "cublas", "splitk")):
        return "gemm"
    if n.startswith("triton_tem"):
        return "attention"  # inductor's templated kernels here are FlexAttention's
    if n.startswith("triton_"):
        return "pointwise/norm (inductor)"
    if "copy" in n or "elementwise" in n or "memcpy" in n or "memset" in n:
        return "copy/elementwise (aten)"
    return "other"


def profile(call, device: torch.device, calls: int = 3) -> dict:
    """Kernel time per call by category, and the 25 kernels with the most time. On the GPU the kernels are
    CUDA kernels; on the CPU (tests) they are the aten operators, by self time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    on_gpu = device.type == "cuda"
    with torch_profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            call()
        harness.synchronize(device)
    per_kernel = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if on_gpu and e.device_type != DeviceType.CUDA:
            continue
        us = (getattr(e, "device_time", None) or e.cuda_time) if on_gpu else e.self_cpu_time_total
        per_kernel[e.name][0] += us / 1000 / calls
        per_kernel[e.name][1] += 1
    by_category = defaultdict(float)
    for name, (ms, _) in per_kernel.items():
        by_category[kernel_category(name)] += ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:25]
    return {
        "gpu_ms_per_call": round(sum(by_category.values()), 3),
        "by_category_ms": {k: round(v, 3) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": name[:120], "ms_per_call": round(ms, 4), "launches_per_call": n // calls}
            for name, (ms, n) in top
        ],
    }


def build_case(case: str, device: torch.device):
    from hiera_det.modeling import build_hiera

    name, attention, shape, batch, unit, _ = CASES[case]
    torch.manual_seed(0)
    model = build_hiera(name, num_classes=0, input_size=shape[1:], attention=attention).to(device).eval()
    x = torch.randn(batch, *shape, device=device)
    return model, x


def measure_case(case: str, device: torch.device, repeats: int, deadline: float, labels=None) -> dict:
    """One case's record: per variant the latency, throughput, TFLOP/s, compile time and the largest
    difference of its last stage from the shipped model's (relative to the largest value); profiles."""
    _, attention, shape, batch, unit, case_labels = CASES[case]
    model, x = build_case(case, device)
    record = {"batch": batch, "input": list(shape), "attention": attention, "dtype": DTYPE, "results": {}}
    try:
        record["flops"] = harness.count_flops(harness.ForwardWorkload(model, x).step(DTYPE, None))
    except Exception as e:  # FLOPs are context; a failing count must not end the case
        record["flops_error"] = harness.describe_error(e)
    calls, facts, reference, profiles = {}, {}, None, {}
    for label in labels or case_labels:
        if time.monotonic() > deadline and calls:
            record["results"][label] = {"skipped": "time budget spent"}
            continue
        options, mode = VARIANTS[label]
        variant = with_fast_kernels(model, **options) if options else model
        workload = harness.ForwardWorkload(variant, x)
        try:
            calls[label], facts[label] = harness.warm_up(
                workload, DTYPE, mode, device, WARMUP, with_flops=False
            )
            with torch.no_grad(), harness.autocast(DTYPE, device):
                final = workload.module_for(mode)(x)["stage4"].float()
        except Exception as e:  # a variant that fails to compile or run is recorded, the others go on
            record["results"][label] = {"error": harness.describe_error(e)}
            calls.pop(label, None)
            harness.release_memory(device)
            print(f"{case} {label}: FAILED {record['results'][label]['error']}", flush=True)
            continue
        reference = final if reference is None else reference
        diff = (final - reference).abs().max() / reference.abs().max()
        facts[label]["rel_max_diff_vs_shipped"] = float(diff)
        if label in PROFILED:
            profiles[label] = profile(calls[label], device)
        print(f"{case} {label}: compiled in {facts[label].get('compile_s', 0):.1f} s, "
              f"rel. max diff {facts[label]['rel_max_diff_vs_shipped']:.2e}", flush=True)  # fmt: skip
    timed = harness.time_interleaved(calls, device, repeats)
    for label, times in timed.times_ms.items():
        if label in timed.errors or not times:
            record["results"][label] = {"error": timed.errors.get(label, "no timed call")}
            continue
        stats = harness.summarize(times)
        ms = stats["median_ms"]
        entry = {
            **{k: round(stats[k], 3) for k in ("median_ms", "p10_ms", "p90_ms")},
            unit: round(batch * 1000 / ms, 1),
            "compile_s": round(facts[label].get("compile_s", 0.0), 1),
            "peak_mem_mib": round(facts[label].get("peak_mem_bytes", 0) / 2**20),
            "rel_max_diff_vs_shipped": facts[label]["rel_max_diff_vs_shipped"],
        }
        if "flops" in record:
            entry["tflops"] = round(record["flops"] / ms / 1e9, 1)
        record["results"][label] = entry
        print(f"{case:26s} {label:10s} {ms:8.3f} ms  {batch * 1000 / ms:9.1f} {unit}  "
              f"{entry.get('tflops', 0):6.1f} TFLOP/s", flush=True)  # fmt: skip
    record["profiles"] = profiles
    return record


def fc1_micro(device: torch.device, repeats: int = 20) -> dict:
    """The fused fc1 + GELU against compiled ``gelu(linear(x))``, bf16, at Hiera-B 224 b128's fc1 shapes."""
    from benchmarks.trunk_kernels import linear_gelu, linear_gelu_reference

    plain = torch.compile(linear_gelu_reference, dynamic=False)
    rows = []
    for tokens, dim, hidden in FC1_SHAPES:
        x = torch.randn(tokens, dim, device=device, dtype=torch.bfloat16)
        w = torch.randn(hidden, dim, device=device, dtype=torch.bfloat16) * dim**-0.5
        b = torch.randn(hidden, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            ref = linear_gelu_reference(x.float(), w.float(), b.float())
            row = {"tokens": tokens, "dim": dim, "hidden": hidden}
            for label, fn in (("fused", linear_gelu), ("linear+gelu", plain)):
                for _ in range(3):
                    y = fn(x, w, b)
                times = [harness.time_call(lambda: fn(x, w, b), device) for _ in range(repeats)]
                row[f"{label}_ms"] = round(harness.summarize(times)["median_ms"], 4)
                row[f"{label}_max_abs_err_vs_fp32"] = float((y.float() - ref).abs().max())
        rows.append(row)
        print("fc1", row, flush=True)
    return {"rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}"
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per variant, interleaved")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds; later variants are skipped")
    parser.add_argument("--no-micro", action="store_true", help="skip the fc1 + GELU micro-benchmark")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if not torch.cuda.is_available():
        sys.exit("trunk_variants measures GPU kernels; run it on a CUDA machine")
    deadline = time.monotonic() + args.budget
    device = torch.device("cuda")
    record = {
        "benchmark": "trunk_variants",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": sys.argv if argv is None else ["benchmarks/trunk_variants.py", *argv],
        "cases": {},
    }
    torch._dynamo.config.cache_size_limit = 64

    def write():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2))

    if not args.no_micro:
        record["fc1_gelu_micro"] = fc1_micro(device)
        write()
    for case in cases:
        if time.monotonic() > deadline:
            record["cases"][case] = {"skipped": "time budget spent"}
            continue
        record["cases"][case] = measure_case(case, device, args.repeats, deadline)
        write()
        torch._dynamo.reset()
        harness.release_memory(device)
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
