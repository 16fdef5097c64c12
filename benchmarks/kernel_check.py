"""The inference kernels checked in one device call, peers in the same process: the trunk targets for
session 5's model against today's default (compiled, and with CUDA graphs), Mask R-CNN with the small-window
kernel on and off, the windowed against the mask-unit layout at 1024 in TFLOP/s, and the kernel's GPU tests.

In order, within ``--budget`` seconds (work not started in time is recorded as skipped):

1. ``pytest -m gpu`` of the kernels' tests (``TEST_FILES``) in a subprocess, its output saved as
   ``<tag>_pytest_gpu.txt``;
2. ``trunk_variants`` cases (``PLAN``): Hiera-B 224 b128 and video Hiera-B 16x224 b16, each variant and its
   peer timed interleaved in one process (``shipped`` = session 5's model, ``+ro`` = CUDA graphs);
3. ``detector_speed.kernel_on_off``: one 1024 image through our Mask R-CNN, kernel on and off, eager
   and with the backbone compiled (each mode only while ``LAYOUTS_S`` seconds are left for 4);
4. Hiera-B at 1024 b8 in the windowed and the mask-unit layout, compiled: TFLOP/s of each.

Writes ``<tag>.json`` and ``<tag>.md`` under ``--out`` after every step.

    python -m benchmarks.kernel_check --out DIR --tag trunk_kernel_h100_s7 [--budget 460]    # GPU
    python -m benchmarks.kernel_check --out /tmp/kc --smoke                                  # CPU, tiny
    python -m benchmarks.kernel_check --out DIR --case hiera_b_224_b128=default+ro,timm --no-detector
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: find the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import detector_speed, harness  # noqa: E402
from benchmarks import trunk_variants as tv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (trunk_variants case, variants in the order run); peers last, so that a spent budget costs a peer first
PLAN = [
    ("hiera_b_224_b128", ["shipped", "default", "shipped+ro", "default+ro", "timm"]),
    ("hiera_b_16x224_video_b16", ["shipped", "default", "shipped+ro", "default+ro", "official"]),
]
LAYOUTS = [("window_1024_b8", ["default"]), ("mask_unit_1024_b8", ["default"])]
# the trunk targets of issue 16 (H100): case: (threshold, unit); the best of our variants counts
TARGETS = {"hiera_b_224_b128": (12000, "im/s"), "hiera_b_16x224_video_b16": (1000, "clips/s")}
PYTEST_LIMIT_S = 200
TEST_FILES = ["tests/test_window_attention.py", "tests/test_fused_mlp.py", "tests/test_residual_norm.py",
              "tests/test_inference.py"]
LAYOUTS_S = 70  # what the layouts take (two compiles at 1024): the detector's modes leave it to them


def smoke_cases() -> None:
    """Tiny versions of the cases, eager, fp32 (a CPU rehearsal of the GPU run: same code paths)."""
    tiny = {"hiera_b_224_b128": ("hiera_tiny_224", (3, 32, 32)),
            "hiera_b_16x224_video_b16": ("hiera_base_16x224", (3, 4, 32, 32)),
            "window_1024_b8": ("hiera_tiny_224", (3, 64, 64)),
            "mask_unit_1024_b8": ("hiera_tiny_224", (3, 64, 64))}  # fmt: skip
    for case, (arch, shape) in tiny.items():
        _, attention, _, _, unit, labels = tv.CASES[case]
        tv.CASES[case] = (arch, attention, shape, 1, unit, labels)
    tv.VARIANTS = {k: (options, None) for k, (options, _) in tv.VARIANTS.items()}
    tv.DTYPE = "fp32"
    tv.WARMUP = 1


def run_gpu_tests(out: Path, tag: str, limit_s: float, marks: str = "gpu", keyword: str = "") -> dict:
    """The kernel's tests selected by ``marks`` and ``keyword`` (GPU tests on a machine without CUDA are
    skipped, and say so)."""
    command = [sys.executable, "-m", "pytest", "-m", marks, *(["-k", keyword] if keyword else []),
               "--noconftest", "-q", "-p", "no:cacheprovider", *TEST_FILES]  # fmt: skip
    log = out / f"{tag}_pytest_gpu.txt"
    t0 = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit_s)
        text, status = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        text, status = text + f"\nstopped after {limit_s:.0f} s", "timeout"
    log.write_text(" ".join(command) + "\n" + text)
    summary = [line for line in text.splitlines() if line.strip()][-1:] or [""]
    print("gpu tests:", summary[0], flush=True)
    return {"command": command, "returncode": status, "summary": summary[0],
            "seconds": round(time.monotonic() - t0, 1), "log": log.name}  # fmt: skip


def run_cases(plan, device, repeats: int, deadline: float, record: dict, write) -> None:
    """Each (key, variants) of ``plan``: the key is a trunk_variants case, or ``case@name`` for the same case
    again with other variants (recorded under the key)."""
    for key, labels in plan:
        if time.monotonic() > deadline:
            record["cases"][key] = {"skipped": "time budget spent"}
            continue
        try:
            record["cases"][key] = tv.measure_case(key.split("@")[0], device, repeats, deadline, labels)
        except Exception as e:  # one case failing must not cost the others
            record["cases"][key] = {"error": harness.describe_error(e)}
            print(key, "FAILED", record["cases"][key]["error"], flush=True)
        write()
        torch._dynamo.reset()
        harness.release_memory(device)


def run_detector(device, smoke: bool, repeats: int, modes, deadline: float, record: dict, key: str, write):
    if time.monotonic() > deadline:
        record[key] = {"skipped": "time budget spent"}
        return
    try:
        record[key] = detector_speed.kernel_on_off(device, smoke, repeats, modes, deadline)
    except Exception as e:
        record[key] = {"error": harness.describe_error(e)}
        print(key, "FAILED", record[key]["error"], flush=True)
    write()
    torch._dynamo.reset()
    harness.release_memory(device)


def _fmt(value, digits=1) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "—"


def markdown(record: dict) -> str:
    """The tables of ``record``: per case each variant's time, throughput and TFLOP/s, the profile split,
    the target verdicts; the detector with the kernel on and off; the layouts; the GPU tests."""
    lines = [f"# {record['tag']}: {record['gpu']}", "",
             f"torch {record['torch']}, Triton {record.get('triton')}, bf16 autocast; CUDA-event medians of "
             f"interleaved calls after warm-up. Command: `{' '.join(record['command'])}`", ""]  # fmt: skip
    for case, r in record["cases"].items():
        lines += [f"## {case}", ""]
        if "results" not in r:
            lines += [f"{r}", ""]
            continue
        unit = next((k for v in r["results"].values() for k in v if "/s" in k), "im/s")
        lines += [f"| variant | median ms (p10-p90) | {unit} | back to back: ms, {unit} | TFLOP/s | compile s | "
                  "stage-4 rel. diff vs first of ours | vs the fp32 model |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, e in r["results"].items():
            if "median_ms" not in e:
                lines.append(f"| {label} | {e.get('error') or e.get('skipped')} | | | | | | |")
                continue
            diff, fp32 = e.get("rel_max_diff_vs_shipped"), e.get("rel_max_diff_vs_fp32")
            b2b = (
                f"{e['back_to_back_ms']:.2f}, {e[f'back_to_back_{unit}']:,.0f}"
                if "back_to_back_ms" in e
                else ""
            )
            lines.append(f"| {label} | {e['median_ms']:.2f} ({e['p10_ms']:.2f}-{e['p90_ms']:.2f}) | "
                         f"{_fmt(e.get(unit))} | {b2b} | {_fmt(e.get('tflops'))} | {_fmt(e.get('compile_s'))} | "
                         f"{'(peer)' if diff is None else f'{diff:.2e}'} | "
                         f"{'' if fp32 is None else f'{fp32:.2e}'} |")  # fmt: skip
        for label, p in r.get("profiles", {}).items():
            split = ", ".join(f"{k} {v:.2f}" for k, v in p["by_category_ms"].items())
            lines.append(f"\nGPU kernel time of `{label}`: {p['gpu_ms_per_call']:.2f} ms per call ({split}).")
        if case.split("@")[0] in TARGETS:
            goal, unit = TARGETS[case.split("@")[0]]
            ours = {k: e[unit] for k, e in r["results"].items()
                    if unit in e and "rel_max_diff_vs_shipped" in e}  # fmt: skip
            if ours:
                best = max(ours, key=ours.get)
                verdict = "met" if ours[best] >= goal else "missed"
                lines.append(
                    f"\nTarget {goal:,} {unit}: best of ours `{best}` {ours[best]:,.0f} {unit}, "
                    f"**{verdict}** on this GPU."
                )
        lines.append("")
    layouts = {c: record["cases"].get(c, {}).get("results", {}).get("default", {}) for c, _ in LAYOUTS}
    if all("tflops" in e for e in layouts.values()):
        window, unit_ = (layouts[c]["tflops"] for c, _ in LAYOUTS)
        lines += ["## Layouts at 1024 b8, compiled", "",
                  f"window {window:.1f} TFLOP/s against mask unit {unit_:.1f} TFLOP/s: target (window at "
                  f"least the mask unit's) **{'met' if window >= unit_ else 'missed'}**.", ""]  # fmt: skip
    d = record.get("detector")
    if d:
        lines += ["## Mask R-CNN (HieraROIHeads), one 1024 image, bf16: small-window kernel on and off", ""]
        if "latency_ms" in d:
            lines += ["| mode | kernel on, median ms | kernel off, median ms |", "|---|---|---|"]
            for mode, per in d["latency_ms"].items():
                lines.append(f"| {mode} | {_fmt(per.get('kernel on', {}).get('median_ms'), 2)} | "
                             f"{_fmt(per.get('kernel off', {}).get('median_ms'), 2)} |")  # fmt: skip
            lines.append("\nSplit (eager, ms): " + "; ".join(
                f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in split.items() if not k.endswith("_cpu"))
                for name, split in d["split_ms"].items()))  # fmt: skip
            lines.append(f"\nOn against off: {d['agreement_on_vs_off']}")
        else:
            lines.append(f"{d}")
        lines.append("")
    tests = record.get("gpu_tests")
    if tests:
        lines += [
            "## GPU tests",
            "",
            f"`{' '.join(tests['command'][2:])}`: {tests['summary']} "
            f"(return code {tests['returncode']}, {tests['seconds']} s; "
            f"[{tests['log']}]({tests['log']}))",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tag", default="kernel_check")
    parser.add_argument("--budget", type=float, default=460.0, help="seconds; later work is skipped")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per variant, interleaved")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, eager: a rehearsal")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the GPU tests")
    parser.add_argument("--test-marks", default="gpu", help="pytest -m expression for the kernel's tests")
    parser.add_argument("--test-keyword", default="", help="pytest -k expression for the kernel's tests")
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="CASE=V1,V2",
        help="run only these trunk_variants cases with these variants, in the order given "
        "(repeatable; CASE@NAME runs a case again under another key; default: PLAN, then the "
        "layouts)",
    )
    parser.add_argument("--no-detector", action="store_true", help="leave out the Mask R-CNN kernel on/off")
    parser.add_argument(
        "--mlp-configs",
        type=Path,
        metavar="SWEEP.json",
        help="launch the fused MLP kernels with the fastest settings of this fused_mlp_sweep "
        "record instead of the shipped tables",
    )
    args = parser.parse_args(argv)
    chosen = [(spec.split("=")[0], [v for v in spec.partition("=")[2].split(",") if v]) for spec in args.case]
    unknown = [c for c, labels in chosen if c.split("@")[0] not in tv.CASES or not labels]
    unknown += [v for _, labels in chosen for v in labels if v not in tv.VARIANTS]
    if unknown:
        parser.error(
            f"bad --case: {', '.join(unknown)}; cases: {', '.join(tv.CASES)}; variants: "
            f"{', '.join(tv.VARIANTS)}"
        )
    if args.smoke:
        smoke_cases()
    elif not torch.cuda.is_available():
        sys.exit("kernel_check measures GPU kernels; run it on a CUDA machine (or --smoke on the CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    deadline = time.monotonic() + args.budget
    record = {"tag": args.tag, **tv.run_record("kernel_check", argv, device)}
    if args.mlp_configs:
        from benchmarks import fused_mlp_sweep

        record["mlp_configs"] = fused_mlp_sweep.use_best_configs(json.loads(args.mlp_configs.read_text()))
    torch._dynamo.config.cache_size_limit = 64
    args.out.mkdir(parents=True, exist_ok=True)

    def write():
        (args.out / f"{args.tag}.json").write_text(json.dumps(record, indent=2))
        (args.out / f"{args.tag}.md").write_text(markdown(record))

    if not args.skip_tests:
        limit = min(PYTEST_LIMIT_S, args.budget / 2)
        record["gpu_tests"] = run_gpu_tests(args.out, args.tag, limit, args.test_marks, args.test_keyword)
        write()
    repeats = 3 if args.smoke else args.repeats
    run_cases(chosen or PLAN, device, repeats, deadline, record, write)
    if not args.no_detector:
        modes = (None,) if args.smoke else (None, "default")  # the CPU rehearsal does not compile
        run_detector(device, args.smoke, repeats, modes, deadline - LAYOUTS_S, record, "detector", write)
    if not chosen:
        run_cases(LAYOUTS, device, repeats, deadline, record, write)
    record["elapsed_s"] = round(time.monotonic() - deadline + args.budget, 1)
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
