#!/usr/bin/env python
"""Which attention and compile variants close the gap to the 224-px and video targets? (GPU only.)

The H100 profile (benchmarks/results/SUMMARY.md) puts 2.3 ms of the 13.7 ms compiled Hiera-B 224 forward in
attention, most of it in the tiny mask-unit windows (16 queries over 16-64 keys: the fused kernels' 64x128
tiles are mostly padding), and 1.85 ms in the exact GELU after fc1, which inductor leaves as its own kernel.
This script measures, in one process, on one input, with the benchmark harness (warm-up, then interleaved
repeats timed with CUDA events):

* ``sdpa``: the shipped model (every window through ``scaled_dot_product_attention``);
* ``math<=N``: windows whose key count is at most N go through an explicit matmul / softmax / matmul,
  which inductor can fuse around cuBLAS batched GEMMs instead of launching a fused kernel per tiny window;
* the same under ``torch.compile(mode="max-autotune-no-cudagraphs")``, whose Triton GEMM templates can take
  the GELU into the fc1 epilogue (optional, minutes of compile time: ``--max-autotune``).

Cases: Hiera-B 224 batch 128 (stage features) and video Hiera-B 16x224 batch 16, bf16 autocast.
Writes a JSON record with the GPU name and versions.

    python -m benchmarks.attention_variants --out benchmarks/results/attention_variants.json [--max-autotune]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import types
from pathlib import Path

if __package__ in (None, ""):  # run as a file, python benchmarks/attention_variants.py: find the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import harness  # noqa: E402

CASES = {  # name: (model, input shape, batch, throughput unit)
    "hiera_b_224_b128": ("hiera_base_224", (3, 224, 224), 128, "im/s"),
    "hiera_b_16x224_video_b16": ("hiera_base_16x224", (3, 16, 224, 224), 16, "clips/s"),
}
DTYPE = "bf16"
WARMUP = 4  # calls before timing; the first one compiles


def with_math_attention(model, max_keys: int):
    """A copy of ``model`` (same weights) whose attention modules take the math path for short windows.
    Reaches into the model's attention class and its forward signature: the one place that does."""
    from hiera_det.modeling.hiera import PartitionedAttention

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, PartitionedAttention):
            module.forward = types.MethodType(math_forward(max_keys), module)
    return model


def math_forward(max_keys: int):
    def forward(self, x, layout, info, pool):
        N, L, _ = x.shape
        q, k, v = self.qkv(x).view(N, L, 3, self.heads, self.head_dim).unbind(2)
        if pool:
            q = layout.pool_q(q, info)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if k.shape[-2] <= max_keys:
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            out = attn.softmax(dim=-1).to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(N, -1, self.dim_out))

    return forward


def variants(model, thresholds: list[int], max_autotune: bool) -> list[tuple[str, torch.nn.Module, str]]:
    """(label, model, torch.compile mode): the shipped model first, the reference of the others."""
    found = [("sdpa", model, "default")]
    found += [(f"math<={n}", with_math_attention(model, n), "default") for n in thresholds]
    if max_autotune:
        found += [("sdpa+max-autotune", copy.deepcopy(model), "max-autotune-no-cudagraphs")]
    return found


def measure_case(case: str, device: torch.device, thresholds: list[int], max_autotune: bool, repeats: int):
    """One case's record: per variant, latency statistics, throughput, compile time and the largest
    difference of its last stage from the shipped model's, relative to the largest value."""
    from hiera_det.modeling import build_hiera

    name, shape, batch, unit = CASES[case]
    torch.manual_seed(0)
    model = build_hiera(name, num_classes=0, input_size=shape[1:]).to(device).eval()
    x = torch.randn(batch, *shape, device=device)
    calls, facts, reference = {}, {}, None
    for label, variant, mode in variants(model, thresholds, max_autotune):
        workload = harness.ForwardWorkload(variant, x)
        calls[label], facts[label] = harness.warm_up(workload, DTYPE, mode, device, WARMUP, with_flops=False)
        with torch.no_grad(), harness.autocast(DTYPE, device):
            final = workload.module_for(mode)(x)["stage4"].float()
        reference = final if reference is None else reference
        facts[label]["rel_max_diff_vs_sdpa"] = float((final - reference).abs().max() / reference.abs().max())
        if "compile_s" in facts[label]:
            facts[label]["compile_s"] = round(facts[label]["compile_s"], 1)
        print(f"{case} {label}: compiled in {facts[label].get('compile_s')} s, "
              f"rel. max diff {facts[label]['rel_max_diff_vs_sdpa']:.2e}", flush=True)  # fmt: skip
    timed = harness.time_interleaved(calls, device, repeats)
    results = {}
    for label, times in timed.times_ms.items():
        if label in timed.errors:
            results[label] = {"error": timed.errors[label]}
            continue
        stats = harness.summarize(times)
        ms = stats["median_ms"]
        results[label] = {
            **{k: round(stats[k], 3) for k in ("median_ms", "p10_ms", "p90_ms")},
            unit: round(batch * 1000 / ms, 1),
            "compile_s": facts[label].get("compile_s"),
            "rel_max_diff_vs_sdpa": facts[label]["rel_max_diff_vs_sdpa"],
        }
        print(f"{case:28s} {label:22s} {ms:8.3f} ms  {batch * 1000 / ms:9.1f} {unit}", flush=True)
    return {"batch": batch, "input": list(shape), "dtype": DTYPE, "results": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-autotune", action="store_true")
    parser.add_argument("--thresholds", default="16,64", help="math path for windows with at most N keys")
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}"
    )
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per variant, interleaved")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if not torch.cuda.is_available():
        sys.exit("attention_variants measures GPU kernels; run it on a CUDA machine")
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    record = {
        "benchmark": "attention_variants",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": sys.argv if argv is None else ["benchmarks/attention_variants.py", *argv],
        "cases": {},
    }
    torch._dynamo.config.cache_size_limit = 64
    thresholds = [int(n) for n in args.thresholds.split(",") if n]
    for case in cases:
        record["cases"][case] = measure_case(case, device, thresholds, args.max_autotune, args.repeats)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2))
        harness.release_memory(device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
