"""Which inference kernels close the gap to the trunk targets? Times, profiles and FLOPs, with the peers in
the same process. (GPU only.)

The trunk targets of issue 16 (H100, bf16, compiled): Hiera-B 224 batch 128 at 12,000 im/s and video
Hiera-B 16x224 batch 16 at 1,000 clips/s. The profile (results/trunk_h100.md) put the gap in the small
mask-unit attention windows (16-64 keys, padded to 64x128 tiles by the fused kernels) and in the erf GELU
after fc1, a separate pass over the 4x-wide hidden tensor. For each case this script, in one process on one
input:

* times our variants and the peer, compiled, interleaved, with CUDA events after warm-up;
* profiles some of them: GPU kernel time per category (GEMM, attention, inductor's pointwise/norm kernels,
  convolution, copies) and the top kernels;
* counts the model's FLOPs once (eager, ``torch.utils.flop_counter``) for TFLOP/s;
* checks each of our variants' last stage against the ``shipped`` one;
* times each variant also back to back (``harness.time_back_to_back``: the steady state of an inference
  loop, where the host's dispatch of a call overlaps the GPU's work on the one before); the per-call median,
  from an idle GPU, stays the figure the targets are judged on.

Variants: ``shipped`` = the model as session 5 shipped it (SDPA for every attention, ``Conv3d`` for the video
patch embedding); ``kernel`` = with the small-window Triton kernel (``hiera_det.modeling.window_attention``);
``default`` = the model's defaults now (the kernel, video's patch convolution as a 2-D convolution over
frames, the MLP's GELU inside its GEMMs, ``hiera_det.modeling.fused_mlp``, in its rational form, and the patch
embedding as one GEMM); ``s7`` = session 7's defaults (no fused MLP); ``s8`` = session 8's (libdevice ``erf``
in the fused MLP, the patch embedding on cuDNN); ``fc1only`` = the fused fc1 + GELU at every width;
``+tanh`` = fc1 with cuBLASLt's tanh-GELU epilogue (``gelu_epilogue=True``, opt-in, no fused MLP);
``+frozen`` = inductor's freezing; ``+ro`` = compiled with ``mode="reduce-overhead"`` (CUDA graphs);
``+graph`` = compiled in the default mode and captured in one CUDA graph by hand (``harness.GRAPH_MODE``: no
per-call checks); ``+erf`` = libdevice's ``erf`` in the fused MLP; ``s10`` = sessions 9-10's defaults, without
the residual add + LayerNorm kernel (``hiera_det.modeling.residual_norm``); ``+realize`` = inductor stores
every reused pointwise result with two or more reads (``REALIZE``);
``+conv`` = the patch embedding on cuDNN (``patches_as_gemm=False``); ``+bf16w`` = weights and input in
bf16 and no autocast (``model.to(torch.bfloat16)``, as bf16 inference is often deployed: no per-call weight
casts, and LayerNorm writes bf16 where autocast has it write fp32); ``timm`` / ``official`` = the peers
(``+bf16w`` likewise).
Session 5's variants (``fast``, ``gelu``, ``fast-sdpa``, ``fast16``: ``trunk_kernels.py``) stay runnable
by name; their fused fc1 is now the shipped kernel.

Besides the cases: ``window_attention_micro`` times the kernel (over its launch settings) against SDPA at
the four small-window shapes of Hiera-B 224 b128, with its error against fp32; ``fc1_micro`` the GELU epilogue
against compiled ``gelu(linear(x))``; ``gelu_deviation`` how far bf16 with the erf GELU and with the tanh
epilogue land from the fp32 erf model (per-stage max abs and cosine, classifier top-1 agreement).

    python -m benchmarks.trunk_variants --out benchmarks/results/trunk_variants.json [--budget 300]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a file, python benchmarks/trunk_variants.py: find the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import harness  # noqa: E402

# name: (architecture, attention layout, input shape, batch, throughput unit, variants in the order run)
CASES = {
    "hiera_b_224_b128": ("hiera_base_224", "mask_unit", (3, 224, 224), 128, "im/s",
                         ["shipped", "timm", "default", "default+ro", "default+tanh", "default+tanh+ro"]),
    "hiera_b_16x224_video_b16": ("hiera_base_16x224", "mask_unit", (3, 16, 224, 224), 16, "clips/s",
                                 ["shipped", "official", "default", "default+ro", "kernel", "default+tanh",
                                  "default+tanh+ro"]),
    "window_1024_b8": ("hiera_base_224", "window", (3, 1024, 1024), 8, "im/s", ["shipped", "default"]),
    "mask_unit_1024_b8": ("hiera_base_224", "mask_unit", (3, 1024, 1024), 8, "im/s", ["shipped", "default"]),
}  # fmt: skip
# label: (how the model is made from the case's model, torch.compile mode). Ours: a copy with the inference
# kernels set (``Hiera.set_inference_kernels``, and ``video_as_frames`` for the video patch convolution) or
# session 5's ``with_fast_kernels`` options; peers: a benchmarks.peers builder.
# the model as shipped before session 6
SESSION5 = dict(
    window_kernel=False, video_as_frames=False, fused_mlp=False, patches_as_gemm=False, residual_norm=False
)
# session 7's defaults: the kernel and the frame convolution, no fused MLP
SESSION7 = dict(fused_mlp=False, patches_as_gemm=False, residual_norm=False)
# session 8's: the fused MLP with libdevice's erf, the patch embedding on cuDNN
SESSION8 = dict(gelu_form="erf", patches_as_gemm=False, residual_norm=False)
# sessions 9-10's: the defaults without the residual add + LayerNorm kernel (hiera_det.modeling.residual_norm)
SESSION10 = dict(residual_norm=False)
REALIZE = dict(realize_reads_threshold=1)
VARIANTS = {
    "shipped": (SESSION5, "default"),
    "kernel": (dict(window_kernel=True, video_as_frames=False, fused_mlp=False), "default"),
    "s7": (SESSION7, "default"),
    "s7+ro": (SESSION7, "reduce-overhead"),
    # the fused fc1 + erf GELU at every stage (no whole-MLP kernel): what the whole-MLP kernel adds
    "fc1only+ro": (dict(fast=dict(fused_gelu=True)), "reduce-overhead"),
    "shipped+ro": (SESSION5, "reduce-overhead"),
    "default": ({}, "default"),
    "default+ro": ({}, "reduce-overhead"),
    "default+tanh": (dict(gelu_epilogue=True, fused_mlp=False), "default"),
    "default+tanh+ro": (dict(gelu_epilogue=True, fused_mlp=False), "reduce-overhead"),
    # inductor's freezing: parameters become constants, so autocast's per-call casts of every weight and bias
    # to bf16 (about 170 small kernels per Hiera-B 224 call) are folded once at compile time; same values
    "default+frozen+ro": (dict(inductor=dict(freezing=True)), "reduce-overhead"),
    "fast": (dict(SESSION5, fast=dict(fused_gelu=True, pack_keys=128, pack_kernel="flex")), "default"),
    "fast-sdpa": (dict(SESSION5, fast=dict(fused_gelu=True, pack_keys=128, pack_kernel="sdpa")), "default"),
    "fast16": (dict(SESSION5, fast=dict(fused_gelu=True, pack_keys=128, pack_up_to=16, pack_kernel="flex")),
               "default"),
    "gelu": (dict(SESSION5, fast=dict(fused_gelu=True)), "default"),
    "timm": (dict(peer="timm"), "default"),
    "official": (dict(peer="official"), "default"),
    "s8+ro": (SESSION8, "reduce-overhead"),
    "s8+bf16w+ro": (dict(SESSION8, weights="bf16"), "reduce-overhead"),
    "default+erf+ro": (dict(gelu_form="erf"), "reduce-overhead"),
    "default+conv+ro": (dict(patches_as_gemm=False), "reduce-overhead"),
    "default+bf16w": (dict(weights="bf16"), "default"),
    "default+bf16w+ro": (dict(weights="bf16"), "reduce-overhead"),
    # the default-mode compiled model replayed from one CUDA graph (harness.GRAPH_MODE:
    # hiera_det.inference.CudaGraphRunner), without reduce-overhead's per-call checks; the peer likewise
    "default+graph": ({}, "graph"),
    "default+bf16w+graph": (dict(weights="bf16"), "graph"),
    "timm+graph": (dict(peer="timm"), "graph"),
    "timm+bf16w+graph": (dict(peer="timm", weights="bf16"), "graph"),
    # sessions 9-10's defaults, before the residual add + LayerNorm kernel shipped (session 11)
    "s10": (SESSION10, "default"),
    "s10+ro": (SESSION10, "reduce-overhead"),
    "s10+bf16w+ro": (dict(SESSION10, weights="bf16"), "reduce-overhead"),
    "s10+graph": (SESSION10, "graph"),
    "s10+bf16w+graph": (dict(SESSION10, weights="bf16"), "graph"),
    # session 11: inductor stores every pointwise result with two or more users and two or more reads (its
    # default: from five reads on), on sessions 9-10's defaults: the residual stream stored by inductor's own
    # choice rather than by the residual add + LayerNorm kernel
    "s10+realize": (dict(SESSION10, inductor=REALIZE), "default"),
    "s10+realize+bf16w+graph": (dict(SESSION10, inductor=REALIZE, weights="bf16"), "graph"),
    "timm+bf16w": (dict(peer="timm", weights="bf16"), "default"),
    "official+bf16w": (dict(peer="official", weights="bf16"), "default"),
}  # fmt: skip
PROFILED = ("shipped", "s7", "default", "default+tanh", "default+bf16w", "default+ro", "default+bf16w+ro", "s10",
            "s10+ro", "s10+bf16w+ro")  # fmt: skip
WEIGHT_DTYPES = {"bf16": torch.bfloat16}
TOP_KERNELS = 50  # enough to name every pointwise / LayerNorm kernel of Hiera-B that takes 1% of the time
DTYPE = "bf16"
WARMUP = 3
# fc1 of Hiera-B 224 at batch 128, per stage: (tokens, dim, hidden)
FC1_SHAPES = [(128 * 3136, 96, 384), (128 * 784, 192, 768), (128 * 196, 384, 1536), (128 * 49, 768, 3072)]
# the small windows of Hiera-B 224 at batch 128: (windows, queries, keys, heads, head dim, queries pooled)
WINDOW_SHAPES = [(6272, 64, 64, 1, 96, False), (6272, 16, 64, 2, 96, True), (6272, 16, 16, 2, 96, False),
                 (6272, 4, 16, 4, 96, True)]  # fmt: skip
LAUNCH_SWEEP = [(p, w) for p in (1, 2, 4, 8) for w in (2, 4)]  # (windows x heads per program, warps)


def kernel_category(name: str) -> str:
    """A GPU kernel's role, from its name."""
    n = name.lower()
    if "window_attention" in n:
        return "attention (small-window kernel)"
    if "linear_gelu" in n or n.startswith("mlp_kernel"):
        return "fc1+gelu / mlp (fused)"
    if "add_layer_norm" in n:
        return "residual add + norm (Triton)"
    if n.startswith("triton_tem") or any(s in n for s in ("flash", "fmha", "attention", "sdpa", "flex")):
        return "attention"  # inductor's templated kernels here are FlexAttention's
    if n.startswith("triton_"):  # before "conv": inductor names fused kernels after every op they hold
        return "pointwise/norm (inductor)"
    if any(s in n for s in ("conv", "fprop", "implicit")):  # cuDNN runs convolutions on cutlass kernels
        return "conv"
    if any(s in n for s in ("gemm", "nvjet", "sm90_xmma", "cutlass", "cublas", "splitk")):
        return "gemm"
    if "copy" in n or "elementwise" in n or "memcpy" in n or "memset" in n:
        return "copy/elementwise (aten)"
    return "other"


def profile(call, device: torch.device, calls: int = 3) -> dict:
    """Kernel time per call by category, and the ``TOP_KERNELS`` kernels with the most time. On the GPU the
    kernels are CUDA kernels; on the CPU (tests) they are the aten operators, by self time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    on_gpu = device.type == "cuda"
    with torch_profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            call()
        harness.synchronize(device)
    per_kernel = defaultdict(lambda: [0.0, 0])
    spans = []
    for e in prof.events():
        if on_gpu and e.device_type != DeviceType.CUDA:
            continue
        us = (getattr(e, "device_time", None) or e.cuda_time) if on_gpu else e.self_cpu_time_total
        per_kernel[e.name][0] += us / 1000 / calls
        per_kernel[e.name][1] += 1
        if on_gpu:
            spans.append((e.time_range.start, e.time_range.end, e.name))
    by_category = defaultdict(float)
    for name, (ms, _) in per_kernel.items():
        by_category[kernel_category(name)] += ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:TOP_KERNELS]
    record = {
        "gpu_ms_per_call": round(sum(by_category.values()), 3),
        "by_category_ms": {k: round(v, 3) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": name[:120], "ms_per_call": round(ms, 4), "launches_per_call": n // calls}
            for name, (ms, n) in top
        ],
    }
    if spans:
        record["timeline"] = timeline(sorted(spans), calls)
    return record


def timeline(spans: list, calls: int) -> dict:
    """Where a call's wall time goes between its kernels: ``spans`` are (start_us, end_us, name) of
    ``calls`` identical calls in order. For the last call: the span from its first kernel's start to its last
    kernel's end, the time kernels ran, the idle gaps between them (summed by the kernel that waits), the
    number of kernels, and the largest gaps."""
    per_call = len(spans) // calls
    last = spans[len(spans) - per_call :]  # the tail: a first call with extra kernels would shift the rest
    busy = sum(end - start for start, end, _ in last)
    gaps, waits = [], defaultdict(float)
    for (_, prev_end, prev), (start, _, name) in zip(last, last[1:]):
        gap = max(start - prev_end, 0.0)
        gaps.append((gap, prev, name))
        waits[kernel_category(name)] += gap
    return {
        "kernels_per_call": per_call,
        "even_split": len(spans) == per_call * calls,  # False: the calls launched different kernel counts
        "span_ms": round((last[-1][1] - last[0][0]) / 1000, 3),
        "busy_ms": round(busy / 1000, 3),
        "gaps_ms": round(sum(g for g, _, _ in gaps) / 1000, 3),
        "gaps_ms_by_next_category": {
            k: round(v / 1000, 3) for k, v in sorted(waits.items(), key=lambda kv: -kv[1])
        },
        "largest_gaps": [
            {"us": round(g, 1), "after": prev[:80], "before": name[:80]}
            for g, prev, name in sorted(gaps, key=lambda t: -t[0])[:15]
        ],
    }


def build_case(case: str, device: torch.device):
    from hiera_det.modeling import build_hiera

    name, attention, shape, batch, unit, _ = CASES[case]
    torch.manual_seed(0)
    model = build_hiera(name, num_classes=0, input_size=shape[1:], attention=attention).to(device).eval()
    x = torch.randn(batch, *shape, device=device)
    return model, x


def make_variant(model, case: str, label: str, device: torch.device) -> torch.nn.Module:
    """The module a variant times: a copy of our case model with its kernels set, or a peer."""

    options, _ = VARIANTS[label]
    weights = WEIGHT_DTYPES.get(options.get("weights"), torch.float32)
    if "peer" in options:
        from benchmarks.peers import official_trunk, timm_trunk

        build = {"timm": timm_trunk, "official": official_trunk(video=True)}[options["peer"]]
        torch.manual_seed(0)
        return build(CASES[case][2][1:], False).to(device, weights).eval()
    options = dict(options)
    for key in ("inductor", "weights"):  # measure_case applies these
        options.pop(key, None)
    fast = options.pop("fast", None)
    variant = copy.deepcopy(model)
    variant.patch_embed.video_as_frames = options.pop("video_as_frames", True)
    variant.set_inference_kernels(**options)
    if fast:
        from benchmarks.trunk_kernels import with_fast_kernels

        variant = with_fast_kernels(variant, **fast)
    return variant.to(weights)


def run_dtype(label: str) -> str:
    """The harness dtype a variant runs under: autocast to ``DTYPE``, or none for bf16 weights."""
    return "fp32" if "weights" in VARIANTS[label][0] else DTYPE  # "fp32": the harness's name for no autocast


def measure_case(case: str, device: torch.device, repeats: int, deadline: float, labels=None) -> dict:
    """One case's record: per variant the latency, throughput, TFLOP/s (ours), compile time and, for ours,
    the largest difference of its last stage from the first of ours run and from the fp32 model's (relative
    to the largest value); profiles of the ``PROFILED`` variants."""
    _, attention, shape, batch, unit, case_labels = CASES[case]
    model, x = build_case(case, device)
    with torch.no_grad():
        fp32_final = model(x)["stage4"].float()
    record = {"batch": batch, "input": list(shape), "attention": attention, "dtype": DTYPE, "results": {}}
    try:
        # with the custom kernels off: the FLOP counter sees inside aten's ops only, and would leave out the
        # attention and MLP arithmetic the kernels do
        plain = copy.deepcopy(model).set_inference_kernels(window_kernel=False, fused_mlp=False)
        record["flops"] = harness.count_flops(harness.ForwardWorkload(plain, x).step(DTYPE, None))
        del plain
    except Exception as e:  # FLOPs are context; a failing count must not end the case
        record["flops_error"] = harness.describe_error(e)
    calls, facts, reference, profiles = {}, {}, None, {}
    for label in labels or case_labels:
        if time.monotonic() > deadline and calls:
            record["results"][label] = {"skipped": "time budget spent"}
            continue
        mode, options = VARIANTS[label][1], VARIANTS[label][0]
        is_peer = "peer" in options
        dtype = run_dtype(label)
        inputs = x.to(WEIGHT_DTYPES.get(options.get("weights"), x.dtype))
        try:
            variant = make_variant(model, case, label, device)
            workload = harness.ForwardWorkload(variant, inputs, options.get("inductor"))
            calls[label], facts[label] = harness.warm_up(
                workload, dtype, mode, device, WARMUP, with_flops=False
            )
            if not is_peer:
                with torch.no_grad(), harness.autocast(dtype, device):
                    final = workload.module_for(mode)(inputs)["stage4"].float()
        except Exception as e:  # a variant that fails to build, compile or run is recorded, the others go on
            record["results"][label] = {"error": harness.describe_error(e)}
            calls.pop(label, None)
            harness.release_memory(device)
            print(f"{case} {label}: FAILED {record['results'][label]['error']}", flush=True)
            continue
        if not is_peer:
            reference = final if reference is None else reference
            diff = (final - reference).abs().max() / reference.abs().max()
            facts[label]["rel_max_diff_vs_shipped"] = float(diff)
            diff = (final - fp32_final).abs().max() / fp32_final.abs().max()
            facts[label]["rel_max_diff_vs_fp32"] = float(diff)
        if label in PROFILED:
            profiles[label] = profile(calls[label], device)
        diff = facts[label].get("rel_max_diff_vs_shipped", float("nan"))
        compile_s = facts[label].get("compile_s", 0)
        print(f"{case} {label}: compiled in {compile_s:.1f} s, rel. max diff {diff:.2e}", flush=True)
    timed = harness.time_interleaved(calls, device, repeats)
    back_to_back = {}
    for label in calls:
        if label not in timed.errors:  # after the interleaved rounds: ``repeats`` calls, three times
            back_to_back[label] = min(
                harness.time_back_to_back(calls[label], device, repeats) for _ in range(3)
            )
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
            "back_to_back_ms": round(back_to_back[label], 3),
            f"back_to_back_{unit}": round(batch * 1000 / back_to_back[label], 1),
        }
        if "rel_max_diff_vs_shipped" in facts[label]:
            entry["rel_max_diff_vs_shipped"] = facts[label]["rel_max_diff_vs_shipped"]
            entry["rel_max_diff_vs_fp32"] = facts[label]["rel_max_diff_vs_fp32"]
            if "flops" in record:
                entry["tflops"] = round(record["flops"] / ms / 1e9, 1)
        record["results"][label] = entry
        print(f"{case:26s} {label:12s} {ms:8.3f} ms  {batch * 1000 / ms:9.1f} {unit}  "
              f"{entry.get('tflops', 0):6.1f} TFLOP/s", flush=True)  # fmt: skip
    record["profiles"] = profiles
    return record


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    for _ in range(3):
        fn()
    return harness.summarize([harness.time_call(fn, device) for _ in range(repeats)])["median_ms"]


def window_attention_micro(device: torch.device, repeats: int = 30) -> dict:
    """The small-window kernel at each launch setting against SDPA (as the model calls it: 4-D views of
    the qkv output), bf16, at Hiera-B 224 b128's small-window shapes; the error of each against attention in
    fp32, and the kernel's effective bandwidth (bytes read and written / time)."""
    from hiera_det.modeling.window_attention import launch, launch_config

    rows = []
    for windows, q_len, k_len, heads, d, pooled in WINDOW_SHAPES:
        g = torch.Generator(device=device).manual_seed(0)
        qkv = torch.randn(windows, k_len, 3, heads, d, device=device, dtype=torch.bfloat16, generator=g)
        q, k, v = qkv.unbind(2)
        if pooled:  # as layout.pool_q gives it: a contiguous max over the pooled positions
            q = q.reshape(windows, k_len // q_len, q_len, heads, d).amax(1)

        def sdpa(q=q, k=k, v=v):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

        with torch.no_grad():
            ref = sdpa(*(t.float() for t in (q, k, v))).transpose(1, 2)
            moved = (2 * q.numel() + 2 * k.numel()) * 2  # bf16 bytes: q read and O written, k and v read
            fp32_kernel = launch(*(t.float() for t in (q, k, v)))
            row = {"windows": windows, "q_len": q_len, "k_len": k_len, "heads": heads, "head_dim": d,
                   "sdpa_ms": round(_median_ms(sdpa, device, repeats), 4),
                   "sdpa_max_abs_err_vs_fp32": float((sdpa().transpose(1, 2).float() - ref).abs().max()),
                   "kernel_fp32_max_abs_err_vs_sdpa_fp32": float((fp32_kernel - ref).abs().max()),
                   "default_launch": list(launch_config(max(16, q_len), max(16, k_len))),
                   "kernel_ms": {}}  # fmt: skip
            for per_program, warps in LAUNCH_SWEEP:
                fn = lambda: launch(q, k, v, per_program, warps)  # noqa: E731
                row["kernel_ms"][f"{per_program}x{warps}w"] = round(_median_ms(fn, device, repeats), 4)
            row["kernel_max_abs_err_vs_fp32"] = float((launch(q, k, v).float() - ref).abs().max())
            best = min(row["kernel_ms"], key=row["kernel_ms"].get)
            row["best"] = best
            row["best_gb_per_s"] = round(moved / row["kernel_ms"][best] / 1e6, 1)
        rows.append(row)
        print("window attention", row, flush=True)
    return {"rows": rows}


def fc1_micro(device: torch.device, repeats: int = 20) -> dict:
    """fc1 with cuBLASLt's tanh-GELU epilogue (``torch._addmm_activation``) against compiled
    ``gelu(linear(x))`` (erf), bf16, at Hiera-B 224 b128's fc1 shapes; each one's error against fp32 erf."""
    plain = torch.compile(lambda x, w, b: F.gelu(F.linear(x, w, b)), dynamic=False)
    rows = []
    for tokens, dim, hidden in FC1_SHAPES:
        x = torch.randn(tokens, dim, device=device, dtype=torch.bfloat16)
        w = torch.randn(hidden, dim, device=device, dtype=torch.bfloat16) * dim**-0.5
        b = torch.randn(hidden, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            ref = F.gelu(F.linear(x.float(), w.float(), b.float()))
            row = {"tokens": tokens, "dim": dim, "hidden": hidden}
            for label, fn in (("tanh_epilogue", lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True)),
                              ("linear+erf_gelu", lambda: plain(x, w, b))):  # fmt: skip
                row[f"{label}_ms"] = round(_median_ms(fn, device, repeats), 4)
                row[f"{label}_max_abs_err_vs_fp32_erf"] = float((fn().float() - ref).abs().max())
        rows.append(row)
        print("fc1", row, flush=True)
    return {"rows": rows}


def smooth_images(batch: int, size: int, device: torch.device) -> torch.Tensor:
    """Random images with natural-image-like structure: smooth colour fields plus edges and mild noise,
    normalized like ImageNet inputs (random noise would make every logit equally unsure)."""
    g = torch.Generator().manual_seed(0)
    coarse = F.interpolate(torch.randn(batch, 3, 7, 7, generator=g), size=(size, size), mode="bicubic")
    cells = torch.rand(batch, 1, 14, 14, generator=g)
    edges = F.interpolate(cells, size=(size, size), mode="nearest") > 0.6
    return (coarse + edges.float() * torch.randn(batch, 3, 1, 1, generator=g) + 0.1 * torch.randn(
        batch, 3, size, size, generator=g)).to(device)  # fmt: skip


def gelu_deviation(device: torch.device, batch: int = 128) -> dict:
    """How far bf16 inference lands from the fp32 erf model, with the erf GELU and with the tanh epilogue
    (both with the small-window kernel): per stage the max abs difference and the cosine similarity
    against fp32, and the share of images whose classifier top-1 matches fp32's. Random weights (the head
    re-initialized at std 0.02 so that logits spread), smooth random images."""
    from hiera_det.modeling import build_hiera

    torch.manual_seed(0)
    model = build_hiera("hiera_base_224").to(device).eval()
    torch.nn.init.trunc_normal_(model.head.projection.weight, std=0.02)
    x = smooth_images(batch, 224, device)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # a true fp32 reference
        model.set_inference_kernels(window_kernel=False, gelu_epilogue=False)
        ref = model(x, return_logits=True)
        out = {}
        for label, epilogue in (("bf16_erf", False), ("bf16_tanh_epilogue", True)):
            model.set_inference_kernels(window_kernel=True, gelu_epilogue=epilogue)
            with harness.autocast("bf16", device):
                y = model(x, return_logits=True)
            row = {}
            for name, r in ref.items():
                a, b = y[name].float().flatten(1), r.flatten(1)
                row[name] = {"max_abs": float((a - b).abs().max()), "ref_max_abs": float(b.abs().max()),
                             "cosine_min": float(F.cosine_similarity(a, b, dim=1).min())}  # fmt: skip
            row["top1_agreement"] = float((y["logits"].argmax(1) == ref["logits"].argmax(1)).float().mean())
            out[label] = row
            print("gelu deviation", label, row, flush=True)
    return out


def run_record(benchmark: str, argv, device: torch.device) -> dict:
    """The head of a run's record: what ran, on which GPU, with which torch and Triton; ``cases`` empty."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "benchmark": benchmark,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else f"{device.type} (smoke)",
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "command": sys.argv if argv is None else [f"benchmarks/{benchmark}.py", *argv],
        "cases": {},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--cases", default="hiera_b_224_b128,hiera_b_16x224_video_b16",
        help=f"comma-separated subset of {', '.join(CASES)}",
    )  # fmt: skip
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated variants for every case (default: " "each case's own list)",
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per variant, interleaved")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds; later variants are skipped")
    parser.add_argument(
        "--no-micro", action="store_true", help="skip the micro-benchmarks and the deviation study"
    )
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [c for c in cases if c not in CASES] + [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(
            f"unknown case or variant {', '.join(unknown)}; cases: {', '.join(CASES)}; variants: "
            f"{', '.join(VARIANTS)}"
        )
    if not torch.cuda.is_available():
        sys.exit("trunk_variants measures GPU kernels; run it on a CUDA machine")
    deadline = time.monotonic() + args.budget
    device = torch.device("cuda")
    record = run_record("trunk_variants", argv, device)
    torch._dynamo.config.cache_size_limit = 64

    def write():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2))

    if not args.no_micro:
        for name, study in (("window_attention_micro", window_attention_micro), ("fc1_micro", fc1_micro),
                            ("gelu_deviation", gelu_deviation)):  # fmt: skip
            try:
                record[name] = study(device)
            except Exception as e:  # one failing study must not cost the others
                record[name] = {"error": harness.describe_error(e)}
                print(name, "FAILED", record[name]["error"], flush=True)
            write()
            harness.release_memory(device)
    for case in cases:
        if time.monotonic() > deadline:
            record["cases"][case] = {"skipped": "time budget spent"}
            continue
        record["cases"][case] = measure_case(case, device, args.repeats, deadline, variants or None)
        write()
        torch._dynamo.reset()
        harness.release_memory(device)
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
