"""The MLP's GELU fused into its GEMMs (``hiera_det.modeling.fused_mlp``) against cuBLAS and inductor, at
Hiera-B's MLP shapes: launch settings swept, times and errors against fp32. (GPU; ``--tiny`` checks the
script on the CPU through Triton's interpreter.)

Per MLP shape (rows, dim, hidden), bf16, one process; GPU time per call (``median_ms``: CUDA-event medians of
CUDA-graph replays, so that launch costs are left out):

* ``fc1``: cuBLAS ``linear`` alone (the floor the fused fc1 competes with);
* ``fc1+gelu``: compiled ``gelu(linear(x))`` (cuBLAS, then inductor's erf GELU pass) — what the model runs
  without the fused kernels;
* ``fc1+tanh``: cuBLASLt's tanh-GELU epilogue (the opt-in ``gelu_epilogue``);
* ``linear_gelu|FORM|(settings)``: the fused fc1 + GELU at every launch setting of ``LINEAR_GELU_SWEEP``, for
  each GELU form of ``FORMS`` (``fused_mlp.GELU_FORMS``, and ``none``: the same GEMM without activation, the
  floor of the epilogue's cost); session 8's first sweep also tried the weight pre-transposed: within 4%,
  so the model keeps it as stored;
* ``mlp_unfused``: the whole MLP compiled; ``mlp_linear_gelu``: the best ``linear_gelu`` of the shipped form
  plus cuBLAS fc2; ``mlp|FORM|(settings)``: the whole-MLP kernel at every setting of ``MLP_SWEEP``
  (``dim <= MLP_MAX_DIM``).

``--candidates`` instead times the candidate fc1 + GELU kernels of ``benchmarks.linear_gelu_candidates``
(persistent grids, pointer loads or TMA descriptors) at every setting of ``CANDIDATE_SWEEP`` against cuBLAS
``fc1`` and the shipped kernel, at the widths where ``linear_gelu`` competes (``CANDIDATE_SHAPES``).

    python -m benchmarks.fused_mlp_sweep --out fused_mlp_sweep.json [--candidates]
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import harness  # noqa: E402
from hiera_det.modeling import fused_mlp  # noqa: E402

# (rows, dim, hidden): Hiera-B 224 at batch 128 per stage; the video 16x224 batch-16 trunk has the same four
SHAPES = [(128 * 3136, 96, 384), (128 * 784, 192, 768), (128 * 196, 384, 1536), (128 * 49, 768, 3072)]
TINY_SHAPES = [(200, 96, 384), (72, 192, 768)]
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
# (session 8's sweep had five more settings, none the fastest at any width)
LINEAR_GELU_SWEEP = [
    (128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (64, 128, 32, 4, 4), (128, 64, 32, 4, 4), (64, 128, 64, 4, 3),
    (128, 128, 128, 8, 2), (128, 128, 64, 4, 4),
]  # fmt: skip
# (BLOCK_M, BLOCK_H, warps, stages)
MLP_SWEEP = [
    (64, 32, 4, 2), (128, 32, 8, 3), (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3), (64, 32, 4, 3),
]  # fmt: skip
FORMS = (*fused_mlp.GELU_FORMS, "none")
# stage 3 and 4 of Hiera-B 224 b128
CANDIDATE_SHAPES = SHAPES[2:]
# (kind, (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, programs per SM[, subtile, flatten, warp_specialize]))
CANDIDATE_SWEEP = [
    ("persistent", (128, 128, 64, 8, 3, 1)), ("persistent", (128, 128, 64, 4, 3, 1)),
    ("persistent", (128, 256, 64, 8, 3, 1)), ("persistent", (128, 128, 64, 8, 4, 2)),
    ("persistent", (128, 64, 64, 4, 4, 2)),
    ("tma", (128, 128, 64, 4, 3, 1, False, True, False)),
    ("tma", (128, 128, 64, 8, 3, 1, False, True, False)),
    ("tma", (128, 256, 64, 8, 3, 1, True, True, False)),
    ("tma", (128, 128, 64, 8, 4, 1, True, True, False)),
    ("tma", (128, 256, 64, 8, 4, 1, True, True, False)),
    ("tma", (128, 128, 64, 4, 4, 2, False, True, False)),
    ("tma", (128, 128, 64, 8, 3, 1, False, False, False)),
    ("tma", (128, 128, 64, 8, 3, 1, False, True, True)),
    ("tma", (128, 256, 64, 8, 3, 1, True, True, True)),
]  # fmt: skip


GRAPHED_CALLS = 10


def median_ms(fn, device: torch.device, repeats: int) -> float:
    """GPU time of one call: on CUDA, ``GRAPHED_CALLS`` calls captured in a CUDA graph and replayed, so that
    the host's launch cost (Triton's Python launcher takes about as long as a small GEMM) is not timed."""
    for _ in range(3):
        fn()
    if device.type != "cuda":
        return harness.summarize([harness.time_call(fn, device) for _ in range(repeats)])["median_ms"]
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # allocations of the first call on this stream happen outside the capture
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(GRAPHED_CALLS):
                fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    times = [harness.time_call(graph.replay, device) / GRAPHED_CALLS for _ in range(repeats)]
    return harness.summarize(times)["median_ms"]


def mlp_operands(rows: int, dim: int, hidden: int, device: torch.device, dtype: torch.dtype):
    """Seeded ``x, w1, b1, w2, b2`` of one MLP shape, weights scaled as trained layers are."""
    torch.manual_seed(0)
    x = torch.randn(rows, dim, device=device, dtype=dtype)
    w1 = (torch.randn(hidden, dim, device=device) * dim**-0.5).to(dtype)
    b1 = (torch.randn(hidden, device=device) * 0.5).to(dtype)
    w2 = (torch.randn(dim, hidden, device=device) * hidden**-0.5).to(dtype)
    b2 = (torch.randn(dim, device=device) * 0.5).to(dtype)
    return x, w1, b1, w2, b2


def recorder(row: dict, device: torch.device, repeats: int):
    """``record(name, fn, ref)``: ``row[name]`` = ``fn``'s GPU time and, unless ``ref`` is None, its largest
    error against ``ref``; a failing setting is recorded as an error and the sweep goes on."""

    def record(name, fn, ref=None):
        try:
            row[name] = {"ms": round(median_ms(fn, device, repeats), 4)}
            if ref is not None:  # the GEMM without its activation computes something else
                row[name]["max_abs_err_vs_fp32"] = float((fn().float() - ref).abs().max())
        except Exception as e:  # out of shared memory, spills to death, no compile: the others still run
            row[name] = {"error": harness.describe_error(e)[:300]}
        print(row["rows"], row["dim"], row["hidden"], name, row[name], flush=True)

    return record


def sweep_shape(rows: int, dim: int, hidden: int, device: torch.device, repeats: int, tiny: bool) -> dict:
    dtype = torch.float32 if tiny else torch.bfloat16  # the interpreter has no bf16 dot
    x, w1, b1, w2, b2 = mlp_operands(rows, dim, hidden, device, dtype)
    with torch.no_grad():
        ref_hidden = F.gelu(F.linear(x.float(), w1.float(), b1.float()))
        ref_out = F.linear(ref_hidden.to(dtype).float(), w2.float(), b2.float())
    row = {"rows": rows, "dim": dim, "hidden": hidden}
    record = recorder(row, device, repeats)

    with torch.no_grad():
        if not tiny:
            plain_fc1 = torch.compile(lambda: F.gelu(F.linear(x, w1, b1)), dynamic=False)
            plain_mlp = torch.compile(lambda: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2), dynamic=False)
            record(
                "fc1", lambda: F.linear(x, w1, b1), ref_hidden
            )  # error: of the pre-activation, not meaningful
            record("fc1+gelu", plain_fc1, ref_hidden)
            record("fc1+tanh", lambda: torch._addmm_activation(b1, x, w1.t(), use_gelu=True), ref_hidden)
            record("mlp_unfused", plain_mlp, ref_out)
        for form in FORMS:
            for config in LINEAR_GELU_SWEEP[:2] if tiny else LINEAR_GELU_SWEEP:
                record(f"linear_gelu|{form}|{config}",
                       lambda c=config, f=form: fused_mlp.launch_linear_gelu(x, w1, b1, c, f),
                       None if form == "none" else ref_hidden)  # fmt: skip
        best = _fastest(row, "linear_gelu", fused_mlp.GELU_FORM)
        if best:
            row["linear_gelu_best"] = best
            record("mlp_linear_gelu",
                   lambda: F.linear(fused_mlp.launch_linear_gelu(x, w1, b1, _settings(best)), w2, b2),
                   ref_out)  # fmt: skip
        if dim <= fused_mlp.MLP_MAX_DIM:
            for form in FORMS:
                for config in MLP_SWEEP[:2] if tiny else MLP_SWEEP:
                    record(f"mlp|{form}|{config}",
                           lambda c=config, f=form: fused_mlp.launch_mlp(x, w1, b1, w2, b2, c, f),
                           None if form == "none" else ref_out)  # fmt: skip
            best = _fastest(row, "mlp", fused_mlp.GELU_FORM)
            if best:
                row["mlp_best"] = best
    return row


def sweep_candidates(rows: int, dim: int, hidden: int, device: torch.device, repeats: int) -> dict:
    """cuBLAS fc1, the shipped fc1 + GELU and each candidate of ``CANDIDATE_SWEEP`` (rational GELU; the
    fastest again without activation), bf16, with errors against fp32."""
    from benchmarks import linear_gelu_candidates as candidates

    x, w1, b1, w2, b2 = mlp_operands(rows, dim, hidden, device, torch.bfloat16)
    ref = F.gelu(F.linear(x.float(), w1.float(), b1.float()))
    row = {"rows": rows, "dim": dim, "hidden": hidden}
    record = recorder(row, device, repeats)

    with torch.no_grad():
        record("fc1", lambda: F.linear(x, w1, b1))
        record("mlp_unfused", torch.compile(lambda: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)))
        shipped = fused_mlp.linear_gelu_config(rows, dim, hidden)
        for form in ("rational", "none"):
            launch = functools.partial(fused_mlp.launch_linear_gelu, x, w1, b1, shipped, form)
            record(f"linear_gelu|{form}|{shipped}", launch, None if form == "none" else ref)
        for kind, config in CANDIDATE_SWEEP:
            record(
                f"{kind}|rational|{config}",
                lambda k=kind, c=config: candidates.launch(k, x, w1, b1, c, "rational"),
                ref,
            )
        timed = {
            k: v["ms"] for k, v in row.items() if "|rational|" in k and "ms" in v and "linear_gelu" not in k
        }
        if timed:
            best = min(timed, key=timed.get)
            kind, config = best.split("|")[0], ast.literal_eval(best.split("|")[2])
            row["candidate_best"] = best
            record(f"{kind}|none|{config}", lambda: candidates.launch(kind, x, w1, b1, config, "none"))
            hidden = functools.partial(candidates.launch, kind, x, w1, b1, config, "rational")
            record("mlp_candidate_best", lambda: F.linear(hidden(), w2, b2))
    return row


def _fastest(row: dict, kernel: str, form: str) -> str | None:
    """The key of ``kernel``'s fastest launch setting with GELU ``form`` in a sweep row."""
    timed = {k: v["ms"] for k, v in row.items() if k.startswith(f"{kernel}|{form}|") and "ms" in v}
    return min(timed, key=timed.get) if timed else None


def _settings(key: str) -> tuple[int, ...]:
    return tuple(int(v) for v in key.rsplit("|", 1)[1].strip("()").split(","))


def best_configs(record: dict) -> tuple[dict, dict]:
    """The fastest launch setting per (dim, hidden) of a sweep record with the shipped GELU form, for
    ``linear_gelu`` (weights as stored, as the model holds them) and for ``mlp``."""
    linear_gelu, mlp = {}, {}
    for row in record["shapes"]:
        key = (row["dim"], row["hidden"])
        for kernel, table in (("linear_gelu", linear_gelu), ("mlp", mlp)):
            best = _fastest(row, kernel, fused_mlp.GELU_FORM)
            if best:
                table[key] = _settings(best)
    return linear_gelu, mlp


def fastest_routes(record: dict) -> dict:
    """Per (dim, hidden) of a sweep record, the fastest of the unfused MLP, the fused fc1 + GELU with cuBLAS's
    fc2, and the whole-MLP kernel at its best setting."""
    routes = {}
    for row in record["shapes"]:
        times = {"unfused": row.get("mlp_unfused", {}).get("ms"),
                 "linear_gelu": row.get("mlp_linear_gelu", {}).get("ms"),
                 "mlp": row.get(row.get("mlp_best", ""), {}).get("ms")}  # fmt: skip
        times = {k: v for k, v in times.items() if v is not None}
        if times:
            routes[(row["dim"], row["hidden"])] = min(times, key=times.get)
    return routes


def use_best_configs(record: dict) -> dict:
    """Make ``fused_mlp`` take a sweep's fastest path and launch settings at the swept widths (the tables it
    ships were written from such a sweep); returns them."""
    linear_gelu, mlp = best_configs(record)
    routes = fastest_routes(record)
    shipped = fused_mlp.linear_gelu_config, fused_mlp.mlp_config, fused_mlp.route
    fused_mlp.linear_gelu_config = lambda r, d, h: linear_gelu.get((d, h)) or shipped[0](r, d, h)
    fused_mlp.mlp_config = lambda r, d, h: mlp.get((d, h)) or shipped[1](r, d, h)
    fused_mlp.route = lambda d, h: routes.get((d, h)) or shipped[2](d, h)
    return {name: {str(k): v for k, v in table.items()}
            for name, table in (("linear_gelu", linear_gelu), ("mlp", mlp), ("route", routes))}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--tiny", action="store_true", help="tiny shapes, fp32, CPU through TRITON_INTERPRET=1"
    )
    parser.add_argument(
        "--candidates", action="store_true", help="time benchmarks.linear_gelu_candidates instead (GPU)"
    )
    args = parser.parse_args(argv)
    if args.candidates:
        if not torch.cuda.is_available():
            raise SystemExit("fused_mlp_sweep --candidates times GPU kernels; run it on a CUDA machine")
        device = torch.device("cuda")
        record = {"benchmark": "fused_mlp_sweep --candidates", "torch": torch.__version__,
                  "device": torch.cuda.get_device_name(), "shapes": []}  # fmt: skip
        for shape in CANDIDATE_SHAPES:
            record["shapes"].append(sweep_candidates(*shape, device, args.repeats))
            args.out.write_text(json.dumps(record, indent=1))
        return 0
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        device, shapes, repeats = torch.device("cpu"), TINY_SHAPES, 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("fused_mlp_sweep needs a CUDA GPU (or --tiny for the CPU check)")
        device, shapes, repeats = torch.device("cuda"), SHAPES, args.repeats
    record = {"benchmark": "fused_mlp_sweep", "torch": torch.__version__, "started": time.ctime(),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "shapes": []}  # fmt: skip
    for shape in shapes:
        record["shapes"].append(sweep_shape(*shape, device, repeats, args.tiny))
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
