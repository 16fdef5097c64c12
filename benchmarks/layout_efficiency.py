"""Can the windowed layout reach the mask-unit layout's TFLOP/s? Issue 16's last open target, decided from one
run: Hiera-B at 1024, batch 8, both layouts, with the FLOPs and the GPU time each split into attention and
everything else.

Both layouts run the same blocks: the same GEMMs, MLPs, LayerNorms and residual adds over the same tokens
(``rest``). They differ in their attention: the mask-unit layout's stages 3-4 attend globally (long sequences,
which cuDNN runs near its peak), the window layout's mostly inside 14x14 and 7x7 windows. So the two
TFLOP/s are FLOP-weighted harmonic means of two rates each, the same ``rest`` rate ``e_r`` and each layout's
attention rate::

    TFLOP/s = (F_rest + F_attn) / (F_rest / e_r + t_attn)

The window layout has far fewer attention FLOPs (that is all its 38% saving), so its mean leans towards
``e_r``. Setting the two equal gives the ``rest`` rate the target needs, for the window layout's attention as
measured, at the mask unit's attention rate, and at zero time. This script measures every term and prints
that rate beside what the GPU reaches: the ``rest`` rate today, cuBLAS's rate on the trunk's own GEMM shapes
with nothing else (no LayerNorm, residual, GELU or layout copy), and the dense matmul ceiling.

* FLOPs: ``torch.utils.flop_counter`` on the model with its custom kernels off (on the meta device, so the
  count is the model's, not a device's); attention is what SDPA counts, the rest is the GEMMs and the patch
  convolution.
* Time: each layout compiled in the default mode and replayed from one CUDA graph
  (``hiera_det.inference.CudaGraphRunner``), bf16 autocast, CUDA-event medians of interleaved calls; the GPU
  time per call split by ``trunk_variants.kernel_category`` (attention = cuDNN / flash SDPA and the
  small-window kernel).
* cuBLAS alone: every ``nn.Linear`` call of the window model (its shapes and counts recorded on the meta
  device), timed back to back in bf16 with ``F.linear``.

    python -m benchmarks.layout_efficiency --out benchmarks/results/layout_efficiency.json
    python -m benchmarks.layout_efficiency --smoke --out /tmp/le.json   # CPU, Hiera-T at 64: the plumbing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a file: find the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import harness, trunk_variants  # noqa: E402

LAYOUTS = ("window", "mask_unit")
ATTENTION_OPS = ("scaled_dot_product", "bmm")  # SDPA, and its math decomposition on devices without a kernel
ATTENTION_CATEGORIES = ("attention", "attention (small-window kernel)")
DTYPE = "bf16"


def build(attention: str, arch: str, size: int, device) -> torch.nn.Module:
    from hiera_det.modeling import build_hiera

    torch.manual_seed(0)
    model = build_hiera(arch, num_classes=0, input_size=(size, size), attention=attention)
    return model.to(device).eval()


def flop_split(attention: str, arch: str, size: int, batch: int) -> dict:
    """The model's FLOPs per call (custom kernels off, meta device): attention, the rest, and per op."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build(attention, arch, size, "meta").set_inference_kernels(
            window_kernel=False, fused_mlp=False
        )
        x = torch.empty(batch, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    attn = sum(n for op, n in by_op.items() if any(s in op for s in ATTENTION_OPS))
    return {"attention": attn, "rest": sum(by_op.values()) - attn, "by_op": by_op}


def linear_calls(attention: str, arch: str, size: int, batch: int) -> Counter:
    """``(rows, in_features, out_features)`` of every ``nn.Linear`` call in one forward, with counts."""
    calls = Counter()

    def record(module, args):
        x = args[0]
        calls[(x.numel() // module.in_features, module.in_features, module.out_features)] += 1

    with torch.device("meta"):
        model = build(attention, arch, size, "meta").set_inference_kernels(
            window_kernel=False, fused_mlp=False
        )
        x = torch.empty(batch, 3, size, size)
    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return calls


def cublas_linear_ms(calls: Counter, device, repeats: int) -> dict:
    """Each linear shape timed alone in bf16 through ``F.linear`` (bias included), back to back; the sum over
    the forward's calls, and the FLOPs they do."""
    per_shape, total_ms, flops = [], 0.0, 0
    for (rows, k, n), count in sorted(calls.items()):
        x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            F.linear(x, w, b)
        ms = harness.time_back_to_back(lambda: F.linear(x, w, b), device, repeats)
        shape_flops = 2 * rows * k * n
        per_shape.append(
            {"rows": rows, "in": k, "out": n, "calls": count, "ms": round(ms, 4),
             "tflops": round(shape_flops / (ms * 1e-3) / 1e12, 1)}
        )  # fmt: skip
        total_ms += ms * count
        flops += shape_flops * count
        del x, w, b
    return {"ms": round(total_ms, 3), "flops": flops, "tflops": flops / (total_ms * 1e-3) / 1e12,
            "shapes": per_shape}  # fmt: skip


def required_rest_rate(window: dict, mask_unit: dict, window_attention_ms: float) -> float | None:
    """The rate (TFLOP/s) both layouts' non-attention work must reach for the window layout's TFLOP/s to equal
    the mask unit's, the window layout's attention taking ``window_attention_ms``; None where no rate is
    enough.

    F_w / (R_w / e + t_w) >= F_m / (R_m / e + t_m)  <=>  (F_w t_m - F_m t_w) e >= F_m R_w - F_w R_m."""
    fw, rw = window["flops"]["attention"] + window["flops"]["rest"], window["flops"]["rest"]
    fm, rm = mask_unit["flops"]["attention"] + mask_unit["flops"]["rest"], mask_unit["flops"]["rest"]
    tw, tm = window_attention_ms * 1e-3, mask_unit["attention_ms"] * 1e-3
    gain = fw * tm - fm * tw
    need = fm * rw - fw * rm
    if need <= 0:
        return 0.0
    return need / gain / 1e12 if gain > 0 else None


def tflops(flops: int, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def analyse(record: dict) -> dict:
    """The efficiencies and the rates the target needs (see the module docstring)."""
    w, m = record["layouts"]["window"], record["layouts"]["mask_unit"]
    for lay in (w, m):
        lay["tflops"] = tflops(lay["flops"]["attention"] + lay["flops"]["rest"], lay["median_ms"])
        lay["attention_tflops"] = tflops(lay["flops"]["attention"], lay["attention_ms"])
        lay["rest_tflops"] = tflops(lay["flops"]["rest"], lay["rest_ms"])
    at_mask_unit_rate = w["flops"]["attention"] / (m["attention_tflops"] * 1e12) * 1e3
    return {
        "ratio": w["tflops"] / m["tflops"],
        "rest_tflops_today": {"window": w["rest_tflops"], "mask_unit": m["rest_tflops"]},
        "required_rest_tflops": {
            "window attention as measured": required_rest_rate(w, m, w["attention_ms"]),
            "window attention at the mask unit's attention rate": required_rest_rate(w, m, at_mask_unit_rate),
            "window attention free": required_rest_rate(w, m, 0.0),
        },
    }


def measure(args, device) -> dict:
    arch, size, batch = args.arch, args.size, args.batch
    record = trunk_variants.run_record("layout_efficiency", args.argv, device)
    record.update(arch=arch, size=size, batch=batch, dtype=DTYPE, layouts={})
    x = torch.randn(batch, 3, size, size, device=device)
    calls, workloads = {}, {}
    for attention in LAYOUTS:
        lay = record["layouts"][attention] = {"flops": flop_split(attention, arch, size, batch)}
        workloads[attention] = harness.ForwardWorkload(build(attention, arch, size, device), x)
        mode = harness.GRAPH_MODE if device.type == "cuda" else None
        t0 = time.monotonic()
        calls[attention] = workloads[attention].step(DTYPE, mode)
        for _ in range(3):
            calls[attention]()
        harness.synchronize(device)
        lay["warm_up_s"] = round(time.monotonic() - t0, 1)
    timed = harness.time_interleaved(calls, device, args.repeats)
    for attention in LAYOUTS:
        lay = record["layouts"][attention]
        stats = harness.summarize(timed.times_ms[attention])
        lay.update(median_ms=stats["median_ms"], p10_ms=stats["p10_ms"], p90_ms=stats["p90_ms"])
        prof = trunk_variants.profile(calls[attention], device)
        lay["profile"] = prof
        gpu_ms = prof["gpu_ms_per_call"]
        attn_ms = sum(prof["by_category_ms"].get(c, 0.0) for c in ATTENTION_CATEGORIES)
        # the wall time beyond the kernels (launch gaps) is charged to the rest, as it would be to any kernel
        lay.update(gpu_ms=gpu_ms, attention_ms=attn_ms, rest_ms=lay["median_ms"] - attn_ms)
    record["analysis"] = analyse(record)
    if device.type == "cuda":
        record["cublas_linears_window"] = cublas_linear_ms(
            linear_calls("window", arch, size, batch), device, 20
        )
        record["matmul_ceiling"] = harness.matmul_ceiling(device, 8192, torch.bfloat16)
    return record


def markdown(record: dict) -> str:
    a = record["analysis"]
    lines = [
        f"# Layout efficiency: {record['arch']} at {record['size']}, batch {record['batch']}, {record['gpu']}",
        "",
        "| layout | ms per call (p10-p90) | TFLOP/s | attention: TFLOP, ms, TFLOP/s | rest: TFLOP, ms, TFLOP/s |",
        "|---|---|---|---|---|",
    ]
    for name in LAYOUTS:
        lay = record["layouts"][name]
        f = lay["flops"]
        lines.append(
            f"| {name} | {lay['median_ms']:.2f} ({lay['p10_ms']:.2f}-{lay['p90_ms']:.2f}) | {lay['tflops']:.1f} | "
            f"{f['attention'] / 1e12:.3f}, {lay['attention_ms']:.2f}, {lay['attention_tflops']:.1f} | "
            f"{f['rest'] / 1e12:.3f}, {lay['rest_ms']:.2f}, {lay['rest_tflops']:.1f} |"
        )
    lines += ["", f"Window against mask unit: **{a['ratio']:.2f}x** the TFLOP/s.", "",
              "The rest's rate (TFLOP/s, both layouts) that would give the window layout the mask unit's TFLOP/s:", ""]  # fmt: skip
    for case, rate in a["required_rest_tflops"].items():
        lines.append(f"- {case}: {'no rate is enough' if rate is None else f'{rate:.0f}'}")
    today = a["rest_tflops_today"]
    lines.append(f"- today: window {today['window']:.0f}, mask unit {today['mask_unit']:.0f}")
    if "cublas_linears_window" in record:
        c = record["cublas_linears_window"]
        lines.append(
            f"- the window model's linear layers alone on cuBLAS (nothing else): {c['tflops']:.0f} "
            f"({c['ms']:.2f} ms for {c['flops'] / 1e12:.3f} TFLOP)"
        )
    if "matmul_ceiling" in record:
        mc = record["matmul_ceiling"]
        lines.append(f"- a {mc['size']}^3 bf16 matmul: {mc['tflops']:.0f}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="the JSON record; a .md beside it")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per layout, interleaved")
    parser.add_argument("--smoke", action="store_true", help="CPU, Hiera-T at 64, batch 2: the plumbing only")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.smoke:
        args.arch, args.size, args.batch, args.repeats = "hiera_tiny_224", 64, 2, 2
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            sys.exit(
                "layout_efficiency measures GPU kernels; run it on a CUDA machine (or --smoke on the CPU)"
            )
        args.arch, args.size, args.batch = "hiera_base_224", 1024, 8
        device = torch.device("cuda")
    record = measure(args, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    text = markdown(record)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
