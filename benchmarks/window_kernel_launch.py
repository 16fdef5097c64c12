"""Why does the small-window attention kernel take 2.5x longer inside the compiled Hiera-B on an H100 than its
micro-benchmark predicts? (GPU only.)

Session 8's profile of the compiled Hiera-B 224 b128 on an H100: ``window_attention_kernel`` 1.53 ms for its 8
launches, where session 6 measured 0.455 ms on an H200 (same model, same triton_op) and 0.605 ms on an H100
(the custom-op version), and the micro-benchmark's four shapes add up to about 0.6 ms. (The answer: compiled
code passed the softmax scale as fp64; results/trunk_kernel.md, session 8.) This script, in one process:

1. times the kernel at Hiera-B's four small-window shapes launched three ways: from Python (``launch``),
   through the op (``torch.ops.hiera_det.window_attention``) and from ``torch.compile``d code (its inputs as
   views of one qkv tensor, as separate contiguous tensors, and split from qkv inside the compiled graph),
   each as CUDA-graph replays (no launch costs), with SDPA beside them;
2. profiles the compiled model and lists every launch of the kernel with its duration, grid, block,
   registers per thread and shared memory (from the profiler's trace), and the same for the micro launches,
   so that a different specialization or launch setting shows.

    python -m benchmarks.window_kernel_launch --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import fused_mlp_sweep, trunk_variants  # noqa: E402
from hiera_det.modeling.window_attention import launch, register_kernel, window_attention  # noqa: E402

TRACED_ARGS = ("grid", "block", "registers per thread", "shared memory", "dynamic shared memory")


def kernel_launches(fn, calls: int = 2, name: str = "window_attention") -> list[dict]:
    """Every launch of kernels whose name holds ``name`` during ``calls`` calls of ``fn``: duration and the
    launch facts the profiler's trace records."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.loads(Path(f.name).read_text())
    launches = []
    for event in trace.get("traceEvents", []):
        if event.get("cat") == "kernel" and name in event.get("name", ""):
            args = event.get("args", {})
            launches.append({"us": event.get("dur"), **{k: args.get(k) for k in TRACED_ARGS}})
    return launches[: len(launches) // calls] if calls else launches


def _from_qkv(qkv: torch.Tensor, pooled_len: int) -> torch.Tensor:
    """The model's way in: split (and pool) the qkv output inside the compiled graph."""
    q, k, v = qkv.unbind(2)
    if pooled_len:
        q = q.reshape(q.shape[0], q.shape[1] // pooled_len, pooled_len, *q.shape[2:]).amax(1)
    return window_attention(q, k, v)


def micro(repeats: int) -> list[dict]:
    device = torch.device("cuda")
    rows = []
    compiled = torch.compile(window_attention, fullgraph=True)
    compiled_from_qkv = torch.compile(_from_qkv, fullgraph=True)
    for windows, q_len, k_len, heads, d, pooled in trunk_variants.WINDOW_SHAPES:
        g = torch.Generator(device=device).manual_seed(0)
        qkv = torch.randn(windows, k_len, 3, heads, d, device=device, dtype=torch.bfloat16, generator=g)
        q, k, v = qkv.unbind(2)
        if pooled:
            q = q.reshape(windows, k_len // q_len, q_len, heads, d).amax(1)
        qc, kc, vc = (t.contiguous() for t in (q, k, v))
        calls = {
            "python_launch": lambda: launch(q, k, v),
            "op": lambda: torch.ops.hiera_det.window_attention(q, k, v),
            "compiled": lambda: compiled(q, k, v),
            # separate contiguous inputs: whether the views' offsets (k and v start 192 and 384 bytes into the
            # qkv buffer) are what the compiled launch handles worse
            "compiled_contiguous": lambda: compiled(qc, kc, vc),
            "compiled_fused_qkv": lambda: compiled_from_qkv(qkv, q_len if pooled else 0),
            "sdpa": lambda: F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            ),
        }
        row = {"shape": [windows, q_len, k_len, heads, d, pooled]}
        with torch.no_grad():
            for label, fn in calls.items():
                row[f"{label}_ms"] = round(fused_mlp_sweep.median_ms(fn, device, repeats), 4)
            row["python_launch_trace"] = kernel_launches(calls["python_launch"], 1)
            row["compiled_trace"] = kernel_launches(calls["compiled"], 1)
            row["compiled_contiguous_trace"] = kernel_launches(calls["compiled_contiguous"], 1)
        print(row, flush=True)
        rows.append(row)
    return rows


def in_model() -> dict:
    model, x = trunk_variants.build_case("hiera_b_224_b128", torch.device("cuda"))
    compiled = torch.compile(model)
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        for _ in range(3):
            compiled(x)
        eager_launches = kernel_launches(lambda: model(x))
        compiled_launches = kernel_launches(lambda: compiled(x))
    return {"eager": eager_launches, "compiled": compiled_launches,
            "eager_total_ms": sum(e["us"] for e in eager_launches) / 1000,
            "compiled_total_ms": sum(e["us"] for e in compiled_launches) / 1000}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--micro-only", action="store_true")
    args = parser.parse_args(argv)
    assert register_kernel(), "needs CUDA and Triton"
    record = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    record["micro"] = micro(args.repeats)
    args.out.write_text(json.dumps(record, indent=1))
    if args.micro_only:
        return 0
    record["in_model"] = in_model()
    print("in model:", {k: v for k, v in record["in_model"].items() if k.endswith("ms")}, flush=True)
    for label in ("eager", "compiled"):
        for e in record["in_model"][label]:
            print(label, e, flush=True)
    args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
