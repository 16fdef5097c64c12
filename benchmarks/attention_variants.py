#!/usr/bin/env python
"""Which attention and compile variants close the gap to the 224-px and video targets? (GPU only.)

The H100 profile (benchmarks/results/SUMMARY.md) puts 2.3 ms of the 13.7 ms compiled Hiera-B 224 forward in
attention, most of it in the tiny mask-unit windows (16 queries over 16-64 keys: the fused kernels' 64x128
tiles are mostly padding), and 1.85 ms in the exact GELU after fc1, which inductor leaves as its own kernel.
This script measures, in one process, on one input, interleaved, after warm-up, with CUDA events:

* ``sdpa``: the shipped model (every window through ``scaled_dot_product_attention``);
* ``math<=N``: windows whose key count is at most N go through an explicit matmul / softmax / matmul,
  which inductor can fuse around cuBLAS batched GEMMs instead of launching a fused kernel per tiny window;
* the same under ``torch.compile(mode="max-autotune-no-cudagraphs")``, whose Triton GEMM templates can take
  the GELU into the fc1 epilogue (optional, minutes of compile time: ``--max-autotune``).

Cases: Hiera-B 224 batch 128 (stage features) and video Hiera-B 16x224 batch 16, bf16 autocast.
Writes a JSON record with the GPU name and versions.

    python benchmarks/attention_variants.py --out benchmarks/results/attention_variants.json [--max-autotune]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hiera_det.modeling import build_hiera  # noqa: E402
from hiera_det.modeling import hiera as hiera_module  # noqa: E402

def with_math_attention(model, max_keys: int):
    """A copy of ``model`` (same weights) whose attention modules take the math path for short windows."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, hiera_module.MaskUnitAttention):
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


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-autotune", action="store_true")
    parser.add_argument("--thresholds", default="16,64", help="math path for windows with at most N keys")
    parser.add_argument("--cases", default="hiera_b_224_b128,hiera_b_16x224_video_b16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("attention_variants.py measures GPU kernels; run it on a CUDA machine")
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device("cuda")
    record = {
        "benchmark": "attention_variants",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": sys.argv,
        "cases": {},
    }

    cases = {
        "hiera_b_224_b128": ("hiera_base_224", (3, 224, 224), 128, "im/s"),
        "hiera_b_16x224_video_b16": ("hiera_base_16x224", (3, 16, 224, 224), 16, "clips/s"),
    }
    torch._dynamo.config.cache_size_limit = 64
    thresholds = [int(n) for n in args.thresholds.split(",") if n]

    for case in args.cases.split(","):
        name, shape, batch, unit = cases[case]
        torch.manual_seed(0)
        model = build_hiera(name, num_classes=0).to(dev).eval()
        x = torch.randn(batch, *shape, device=dev)
        compiled, compile_s = {}, {}
        reference = None
        errors = {}
        variants = [("sdpa", model, "default")]
        variants += [(f"math<={n}", with_math_attention(model, n), "default") for n in thresholds]
        if args.max_autotune:
            variants += [("sdpa+max-autotune", copy.deepcopy(model), "max-autotune-no-cudagraphs")]
        for label, variant, mode in variants:
            fn = torch.compile(variant, mode=mode, dynamic=False)
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
                out = fn(x)
                torch.cuda.synchronize()
                for _ in range(3):
                    fn(x)
                torch.cuda.synchronize()
            compile_s[label] = round(time.perf_counter() - t0, 1)
            final = out["stage4"].float()
            if reference is None:
                reference = final
            errors[label] = float((final - reference).abs().max() / reference.abs().max())
            compiled[label] = fn
            print(f"{case} {label}: compiled in {compile_s[label]} s, rel. max diff {errors[label]:.2e}", flush=True)
        times = {label: [] for label in compiled}
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            for _ in range(args.rounds):
                for label, fn in compiled.items():  # interleaved rounds
                    times[label] += timed(lambda: fn(x), args.repeats)
        result = {}
        for label, t in times.items():
            ms = statistics.median(t)
            result[label] = {
                "median_ms": round(ms, 3),
                "p10_ms": round(sorted(t)[len(t) // 10], 3),
                "p90_ms": round(sorted(t)[len(t) * 9 // 10], 3),
                unit: round(batch * 1000 / ms, 1),
                "compile_s": compile_s[label],
                "rel_max_diff_vs_sdpa": errors[label],
            }
            print(f"{case:28s} {label:22s} {ms:8.3f} ms  {batch * 1000 / ms:9.1f} {unit}", flush=True)
        record["cases"][case] = {"batch": batch, "input": list(shape), "dtype": "bf16", "results": result}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2))
        del compiled, variants, model, x
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
