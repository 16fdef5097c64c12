"""Side-by-side speed and memory benchmark of hiera_det against every peer implementation.

For each case, ours and the peers are built in one process, fed the same random inputs, warmed up, and
timed in interleaved repeats (CUDA events; median, p10, p90), under fp32 / bf16 / fp16 autocast and with
torch.compile off and on. Each case also reports peak memory, FLOPs per call, achieved TFLOP/s and the share
of a bf16 matmul ceiling measured in the same run, and each comparison its ratio and its target.

    python tools/benchmark.py --out DIR                      # every case, on the GPU
    python tools/benchmark.py --cases hiera_b_224 --dtypes bf16 --compile off
    python tools/benchmark.py --smoke --out /tmp/smoke       # every case, tiny, on CPU (what CI runs)
    python tools/benchmark.py --list                         # (python -m benchmarks.run takes the same)

Writes DIR/<tag>.json, DIR/<tag>.md (tables, ratios, targets met or missed) and DIR/<tag>.png (throughput
against batch size and resolution), rewritten after every measurement so that a run cut short keeps what
it measured. A peer that cannot be built or run (missing package, OOM, compile error) is recorded with its
error and the run goes on. See benchmarks/README.md for the protocol and how to read the results.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from benchmarks import harness, report as reporting
from benchmarks.cases import Case, Point, default_cases
from benchmarks.harness import ALL_DTYPES, COMPILE_MODES, describe_error
from benchmarks.peers import Subject

REPO = Path(__file__).resolve().parents[1]
# distributions whose versions the report records (hiera-transformer is the official Hiera)
PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "hiera-transformer",
    "detectron2",
    "fvcore",
    "matplotlib",
)
GPU_CEILING = dict(size=8192, dtype=torch.bfloat16)
CPU_CEILING = dict(size=2048, dtype=torch.float32)
SMOKE_CEILING_SIZE = 256
# Rough cold-cache torch.compile time per model (default mode, 16 CPU cores for Triton), to decide whether a
# compile item still fits in the time left.
COMPILE_ESTIMATE_S = {"forward": 35, "detect": 45, "train": 80}


@dataclass
class WorkItem:
    case: Case
    point: Point
    dtype: str
    compile: str  # key of COMPILE_MODES


class Runner:
    """Builds each case's subjects once, measures its work items, and keeps every result."""

    def __init__(self, args, cases: list[Case]):
        self.args = args
        self.cases = cases
        self.start = time.monotonic()
        self.case_spent: dict[str, float] = {c.name: 0.0 for c in cases}
        self.models: dict[tuple, nn.Module | str] = {}  # (case, subject, size) -> model or build error
        self.workloads: dict[tuple, object] = {}  # (case, subject, point) -> workload or error
        self.inputs: dict[tuple, object] = {}  # (case, point) -> inputs
        self.flops: dict[tuple, dict[str, int | str]] = {}  # (case, point) -> subject -> FLOPs or error
        self.ceilings: dict[str, dict | str] = {}
        self.items: list[dict] = []
        self.gpu = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")

    # ---- devices and limits
    def device_for(self, case: Case) -> torch.device:
        return torch.device("cpu") if case.on_cpu or self.args.smoke else self.gpu

    def remaining(self, case: Case) -> tuple[float, str]:
        """Seconds left for ``case`` and the name of the limit that binds."""
        global_left = self.args.time_budget - (time.monotonic() - self.start)
        case_limit = case.time_limit_s * self.args.time_scale
        case_left = case_limit - self.case_spent[case.name]
        if global_left <= case_left:
            return global_left, f"the run's time budget of {self.args.time_budget:.0f} s (--time-budget)"
        return case_left, f"the case's time limit of {case_limit:.0f} s (--time-scale)"

    def ceiling(self, device: torch.device) -> dict | str:
        key = device.type
        if key not in self.ceilings:
            spec = GPU_CEILING if device.type == "cuda" else CPU_CEILING
            size = SMOKE_CEILING_SIZE if self.args.smoke else spec["size"]
            try:
                self.ceilings[key] = harness.matmul_ceiling(
                    device, size, spec["dtype"], repeats=3 if self.args.smoke else 20
                )
            except Exception as e:
                self.ceilings[key] = describe_error(e)
        return self.ceilings[key]

    # ---- building
    def model(self, case: Case, subject: Subject, size, device) -> nn.Module | str:
        key = (case.name, subject.name, tuple(size))
        if key not in self.models:
            try:
                with torch.device(device):
                    model = subject.build(tuple(size), self.args.smoke)
                self.models[key] = model.to(device)
            except Exception as e:
                self.models[key] = f"build failed: {describe_error(e)}"
                harness.release_memory(device)
        return self.models[key]

    def case_inputs(self, case: Case, point: Point, device: torch.device):
        key = (case.name, point)
        if key not in self.inputs:
            self.inputs[key] = case.inputs(point, device, self.args.seed, self.args.smoke)
        return self.inputs[key]

    def workload(self, case: Case, subject: Subject, point: Point, device):
        key = (case.name, subject.name, point)
        if key in self.workloads:
            return self.workloads[key]
        model = self.model(case, subject, point.size, device)
        if isinstance(model, str):
            return model
        try:
            inputs = self.case_inputs(case, point, device)
            if case.kind == "forward":
                workload = harness.ForwardWorkload(model, inputs)
            elif case.kind == "detect":
                workload = harness.DetectorWorkload(model, inputs)
            else:
                with torch.device(device):
                    optimizer = subject.optimizer(model, tuple(point.size), self.args.smoke)
                workload = harness.DetectorWorkload(model, inputs, optimizer)
        except Exception as e:
            workload = f"setup failed: {describe_error(e)}"
        self.workloads[key] = workload
        return workload

    def release(self, case: Case, subjects: list[str] | None = None) -> None:
        """Frees a case's models, workloads and inputs, or only the given subjects' models and workloads."""
        stores = (self.models, self.workloads) if subjects else (self.models, self.workloads, self.inputs)
        for store in stores:
            for key in [k for k in store if k[0] == case.name and (subjects is None or k[1] in subjects)]:
                del store[key]
        harness.release_memory(self.gpu)

    # ---- planning
    def plan(self) -> tuple[list[WorkItem], list[dict]]:
        """Work items in priority order, and the combinations not measured with the reason. Eager items
        come first (--dtypes order, then the cases), compiled ones after (--compile-dtypes order, then the
        --compile-cases order), so that a run cut by its time budget has the eager numbers of every case."""
        args = self.args

        def measured(case: Case, dtype: str) -> bool:
            return args.smoke or dtype in case.dtypes

        by_name = {c.name: c for c in self.cases}
        items = []
        for mode in args.compile:
            if mode == "off":
                order, dtypes = self.cases, args.dtypes
            else:
                order = [by_name[n] for n in args.compile_cases if n in by_name and by_name[n].compile]
                dtypes = args.compile_dtypes
            for dtype in dtypes:
                for case in order:
                    if measured(case, dtype):
                        points = case.smoke_points if args.smoke else case.points
                        items += [WorkItem(case, point, dtype, mode) for point in points]
        skipped = []
        for case in self.cases:
            for dtype in dict.fromkeys(args.dtypes + args.compile_dtypes):
                if not measured(case, dtype):
                    reason = f"{case.name} measures {', '.join(case.dtypes)} only"
                    skipped.append(self._skip(case, None, dtype, "*", reason))
            if any(m != "off" for m in args.compile):
                if not case.compile:
                    skipped.append(self._skip(case, None, "*", "on", "a plot sweep: measured eager only"))
                elif case.name not in args.compile_cases:
                    skipped.append(self._skip(case, None, "*", "on", "not in --compile-cases"))
        return items, skipped

    @staticmethod
    def _skip(case: Case, point: Point | None, dtype: str, mode: str, reason: str) -> dict:
        return {
            "case": case.name,
            "point": point.as_dict() if point else None,
            "dtype": dtype,
            "compile": mode,
            "status": "skipped",
            "reason": reason,
            "subjects": {},
        }

    # ---- measuring
    def measure(self, item: WorkItem) -> dict:
        case, point, dtype, mode = item.case, item.point, item.dtype, item.compile
        left, limit = self.remaining(case)
        if left <= 0:
            return self._skip(case, point, dtype, mode, f"{limit} was used up")
        if mode != "off" and not self.args.smoke:
            # a compile cannot be interrupted: start one only if it is likely to finish in time
            need = COMPILE_ESTIMATE_S[case.kind] * len(case.subjects)
            if left < need:
                reason = (
                    f"compiling {len(case.subjects)} models takes about {need} s; "
                    f"{left:.0f} s are left of {limit}"
                )
                return self._skip(case, point, dtype, mode, reason)
        device = self.device_for(case)
        if device.type == "cpu" and not case.on_cpu and not self.args.smoke and not self.args.allow_cpu:
            reason = (
                "needs a CUDA GPU and none is visible; run with --smoke for the CPU check, "
                "or --allow-cpu to run the full sizes on the CPU"
            )
            return self._skip(case, point, dtype, mode, reason)
        t0 = time.monotonic()
        threads = torch.get_num_threads()
        if case.threads and not self.args.smoke:
            torch.set_num_threads(case.threads)
        try:
            return self._measure(item, device, deadline=t0 + left)
        finally:
            torch.set_num_threads(threads)
            self.case_spent[case.name] += time.monotonic() - t0

    def _measure(self, item: WorkItem, device: torch.device, deadline: float) -> dict:
        case, point, smoke = item.case, item.point, self.args.smoke
        result = {
            "case": case.name,
            "point": point.as_dict(),
            "dtype": item.dtype,
            "compile": item.compile,
            "status": "ok",
            "device": str(device),
            "subjects": {},
        }
        if device.type == "cuda" and item.dtype == "bf16" and not torch.cuda.is_bf16_supported():
            result.update(status="skipped", reason="this GPU has no bf16 support")
            return result
        ceiling = self.ceiling(device)
        by_name = {s.name: s for s in case.subjects}
        repeats = 1 if smoke else max(1, round(case.repeats * self.args.repeat_scale))
        entries, result["stopped_early"] = harness.measure_subjects(
            list(by_name),
            lambda name: self.workload(case, by_name[name], point, device),
            item.dtype,
            COMPILE_MODES[item.compile],
            device,
            warmup=1 if smoke else case.warmup,
            repeats=repeats,
            min_repeats=min(repeats, 1 if smoke else 3),
            deadline=deadline,
            flops=self.flops.setdefault((case.name, point), {}),
            isolate=case.isolate,
            release=lambda names: self.release(case, names),
        )
        for name, entry in entries.items():
            subject = result["subjects"][name] = {"role": by_name[name].role, "label": by_name[name].label}
            subject.update(entry)
            if entry["status"] != "ok":
                continue
            seconds = entry["median_ms"] * 1e-3
            subject["throughput"] = point.batch / seconds
            if "flops" in entry:
                subject["tflops"] = entry["flops"] / seconds / 1e12
                if isinstance(ceiling, dict):
                    subject["pct_of_ceiling"] = 100 * subject["tflops"] / ceiling["tflops"]
        return result

    def run(self, write: Callable[[], None]) -> None:
        items, skipped = self.plan()
        self.items.extend(skipped)
        last = {item.case.name: i for i, item in enumerate(items)}
        for i, item in enumerate(items):
            label = (
                f"{item.case.name} {item.point.batch}x{'x'.join(map(str, item.point.size))} {item.dtype} "
                f"compile={item.compile}"
            )
            print(f"[benchmark {time.monotonic() - self.start:6.1f}s] {label}", flush=True)
            result = self.measure(item)
            self.items.append(result)
            print("    " + reporting.summary_line(result), flush=True)
            if last[item.case.name] == i:
                self.release(item.case)
            write()


# --------------------------------------------------------------------------------------------------------
# CLI


def _csv(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"{bad or text!r}: choose from {', '.join(choices)} (comma-separated)"
            )
        return values

    return parse


def parse_args(argv=None, names: list[str] | None = None):
    names = names or [c.name for c in default_cases()]
    p = argparse.ArgumentParser(
        prog="tools/benchmark.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lists = {  # flag: (choices, help); each takes a comma-separated list
        "--cases": (names, f"subset of: {', '.join(names)}"),
        "--dtypes": (ALL_DTYPES, "autocast dtypes, in priority order (default fp32,bf16,fp16; smoke: fp32)"),
        "--compile": (
            list(COMPILE_MODES),
            "torch.compile modes: off, on (default mode), reduce-overhead (CUDA graphs) "
            "(default off,on; smoke: off)",
        ),
        "--compile-dtypes": (ALL_DTYPES, "dtypes measured with compile on (default: all of --dtypes)"),
        "--compile-cases": (
            names,
            "cases measured with compile on (default: all that allow it), in this order",
        ),
    }
    for flag, (choices, help) in lists.items():
        p.add_argument(flag, type=_csv(choices), default=None, help=f"comma-separated {help}")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="every case at a tiny size on the CPU, fp32, compile off, 1 repeat: checks the tool",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument("--tag", default=None, help="file name stem of the results (default: device and date)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=480.0,
        help="seconds for the whole run; work left when it is spent is recorded as skipped",
    )
    p.add_argument("--time-scale", type=float, default=1.0, help="multiplies every case's time limit")
    p.add_argument("--repeat-scale", type=float, default=1.0, help="multiplies every case's repeat count")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; smoke: 1)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 matmuls and convolutions")
    p.add_argument("--allow-cpu", action="store_true", help="run the GPU cases at full size on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    if args.cases is None:
        args.cases = list(names)
    if args.dtypes is None:
        args.dtypes = ["fp32"] if args.smoke else list(ALL_DTYPES)
    if args.compile is None:
        args.compile = ["off"] if args.smoke else ["off", "on"]
    if args.compile_dtypes is None:
        args.compile_dtypes = list(args.dtypes)
    if args.compile_cases is None:
        args.compile_cases = list(args.cases)
    return args


def default_tag(args, device: torch.device) -> str:
    if args.smoke:
        return "smoke"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{slug}-{datetime.date.today().isoformat()}"


def main(argv=None, cases: list[Case] | None = None) -> dict:
    all_cases = cases if cases is not None else default_cases()
    args = parse_args(argv, [c.name for c in all_cases])
    if args.list:
        for c in all_cases:
            print(f"{c.name:24s} {c.title}  [{', '.join(s.name for s in c.subjects)}]")
        return {}
    selected = [c for c in all_cases if c.name in args.cases]
    # Smoke: one thread. On a shared 2-core machine, two spinning intra-op threads made small ops 10x slower.
    threads = args.threads or (1 if args.smoke else None)
    if threads:
        torch.set_num_threads(threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for key in ("recompile_limit", "cache_size_limit"):  # each case compiles several modules of one class
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 256)
    for key in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 4096)
    if args.out.exists() and not args.out.is_dir():
        raise SystemExit(f"error: --out {args.out} is a file; give a folder for the report")
    runner = Runner(args, selected)
    tag = args.tag or default_tag(args, runner.gpu)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "tag": tag,
        "command": (
            shlex.join([sys.executable] + sys.argv)
            if argv is None
            else shlex.join(["tools/benchmark.py", *argv])
        ),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": reporting.environment(runner.gpu, PACKAGES),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "ceilings": runner.ceilings,
        "cases": [c.summary(args.smoke) for c in selected],
        "results": runner.items,
    }

    def write():
        report["elapsed_s"] = round(time.monotonic() - runner.start, 1)
        reporting.write_report(report, args.out, tag)

    print(
        f"[benchmark] {len(selected)} cases on {runner.gpu}; writing {args.out}/{tag}.{{json,md,png}}",
        flush=True,
    )
    write()
    try:
        runner.run(write)
    except KeyboardInterrupt:  # gpu_run.sh's hard stop: keep what was measured, say that the run was cut
        report["interrupted"] = "stopped by SIGINT / Ctrl-C; every item measured before it is complete"
        write()
        print(f"[benchmark] interrupted after {report['elapsed_s']} s: {args.out / tag}.md", flush=True)
        raise SystemExit(130)
    write()
    measured = sum(1 for r in runner.items if r.get("status") != "skipped")
    print(f"[benchmark] done in {report['elapsed_s']} s, {measured} of {len(runner.items)} items measured: "
          f"{args.out / tag}.md", flush=True)  # fmt: skip
    if runner.items and not measured:
        reasons = sorted({r.get("reason", "") for r in runner.items})
        print(f"[benchmark] nothing was measured: {'; '.join(reasons)[:500]}", flush=True)
    return report


if __name__ == "__main__":
    main()
