"""The benchmark report: comparisons with their target verdicts, the environment, Markdown, JSON and plots."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Sequence

import torch

from benchmarks.harness import describe_error


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        pass
    # detectron2 unpacked onto PYTHONPATH (no dist-info) still answers to import
    try:
        module = __import__(distribution.replace("-", "_"))
    except Exception:  # a missing peer package is itself a fact worth recording
        return "not installed"
    return getattr(module, "__version__", "unknown")


def environment(device: torch.device, packages: Sequence[str] = ()) -> dict:
    """Hardware and software facts a reader needs to compare two benchmark files."""
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "packages": {name: _version(name) for name in packages},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_multiprocessors=props.multi_processor_count,
            gpu_capability=f"{props.major}.{props.minor}",
            cuda_driver=_driver_version(),
        )
    return env


def _driver_version() -> str | None:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except Exception:
        return None


def comparison_rows(report: dict) -> list[dict]:
    """One row per (measured item, comparison): speedup = peer median time / our median time (above 1:
    ours is faster) and memory ratio = our peak / the peer's (below 1: ours needs less), with targets."""
    comparisons = {c["name"]: c["comparisons"] for c in report["cases"]}
    rows = []
    for item in report["results"]:
        if item["status"] != "ok":
            continue
        for comp in comparisons.get(item["case"], []):
            ours, peer = item["subjects"].get(comp["ours"], {}), item["subjects"].get(comp["peer"], {})
            row = {
                "case": item["case"],
                "point": item["point"],
                "dtype": item["dtype"],
                "compile": item["compile"],
                **comp,
            }
            if ours.get("status") != "ok" or peer.get("status") != "ok":
                failed = [
                    n for n, s in ((comp["ours"], ours), (comp["peer"], peer)) if s.get("status") != "ok"
                ]
                row.update(verdict="not measured", reason=f"{', '.join(failed)} did not run")
                rows.append(row)
                continue
            row["speedup"] = peer["median_ms"] / ours["median_ms"]
            if ours.get("peak_mem_bytes") and peer.get("peak_mem_bytes"):
                row["memory_ratio"] = ours["peak_mem_bytes"] / peer["peak_mem_bytes"]
            checks = []
            if comp.get("min_throughput") is not None:
                checks.append(ours.get("throughput", 0.0) >= comp["min_throughput"])
            if comp.get("min_speedup") is not None:
                checks.append(row["speedup"] >= comp["min_speedup"])
            if comp.get("max_memory_ratio") is not None and "memory_ratio" in row:
                checks.append(row["memory_ratio"] <= comp["max_memory_ratio"])
            row["verdict"] = ("met" if all(checks) else "missed") if checks else "no target"
            rows.append(row)
    return rows


def _point(p: dict | None) -> str:
    if not p:
        return "all"
    return f"{p['batch']} x {'x'.join(map(str, p['size']))}"


def _num(x, fmt: str = ".2f", missing: str = "—") -> str:
    return missing if x is None else format(x, fmt)


def _target(comp: dict) -> str:
    parts = []
    if comp.get("min_throughput") is not None:
        parts.append(f"ours >= {comp['min_throughput']:g}/s")
    if comp.get("min_speedup") is not None:
        parts.append(f"speed >= {comp['min_speedup']:g}x")
    if comp.get("max_memory_ratio") is not None:
        parts.append(f"memory <= {comp['max_memory_ratio']:g}x")
    return ", ".join(parts) or "—"


def render_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# hiera_det benchmark: {report['tag']}", ""]
    device = env.get("gpu") or f"CPU ({env.get('processor')})"
    lines += [
        f"- Command: `{report['command']}`",
        f"- Started {report.get('started')}, elapsed {report.get('elapsed_s')} s",
        f"- Device: {device}"
        + (
            f", {env['gpu_memory_gib']} GiB, capability {env['gpu_capability']}, "
            f"driver {env.get('cuda_driver')}"
            if env.get("gpu")
            else ""
        ),
        f"- torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, Python {env['python']}, "
        f"{env['torch_threads']} CPU threads, TF32 matmul {env['tf32_matmul']}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
    ]
    for key, c in report["ceilings"].items():
        if isinstance(c, dict):
            lines.append(
                f"- Matmul ceiling ({key}): {c['tflops']:.1f} TFLOP/s, {c['dtype']} {c['size']}^3, "
                f"median of {c['repeats']}"
            )
        else:
            lines.append(f"- Matmul ceiling ({key}): not measured: {c}")
    lines.append(f"- Plot: {report.get('plot')}")
    if report.get("interrupted"):
        lines.append(f"- **Interrupted**: {report['interrupted']}")
    if report["settings"].get("smoke"):
        lines.append(
            "- **Smoke run**: tiny models (Hiera-T, narrow heads) at tiny sizes on the CPU. It checks "
            "that every case runs; its numbers say nothing about speed."
        )
    lines += [
        "",
        "Latency: median (p10-p90) of interleaved repeats. Speedup = peer time / our time (above 1: "
        "ours is faster). Memory ratio = our peak / the peer's (below 1: ours needs less). Peak memory = "
        "what the model holds (weights, optimizer state) + the peak growth during one call.",
        "",
    ]

    rows = comparison_rows(report)
    targeted = [r for r in rows if r["verdict"] in ("met", "missed")]
    lines += ["## Targets", ""]
    if targeted:
        met = sum(r["verdict"] == "met" for r in targeted)
        lines += [
            f"{met} of {len(targeted)} targeted comparisons met.",
            "",
            "| case | input | dtype | compile | ours | peer | speedup | memory ratio | target | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in targeted:
            lines.append(
                f"| {r['case']} | {_point(r['point'])} | {r['dtype']} | {r['compile']} | {r['ours']} | "
                f"{r['peer']} | {_num(r.get('speedup'))}x | {_num(r.get('memory_ratio'))} | "
                f"{_target(r)} | {'met' if r['verdict'] == 'met' else '**MISSED**'} |"
            )
    else:
        lines.append("No targeted comparison was measured.")
    lines.append("")

    for case in report["cases"]:
        items = [i for i in report["results"] if i["case"] == case["name"]]
        lines += [f"## {case['title']} (`{case['name']}`)", ""]
        if case.get("notes"):
            lines += [case["notes"], ""]
        lines += [
            f"| input | dtype | compile | implementation | latency ms | {case['unit']} | peak MiB | "
            "GFLOP/call | TFLOP/s | % ceiling | compile s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        skipped = []
        for item in items:
            if item["status"] != "ok":
                skipped.append(item)
                continue
            for name, s in item["subjects"].items():
                head = f"| {_point(item['point'])} | {item['dtype']} | {item['compile']} | {name} |"
                if s.get("status") != "ok":
                    lines.append(f"{head} error: {s.get('error', 'unknown')} | | | | | | |")
                    continue
                mem = s.get("peak_mem_bytes")
                flops = s.get("flops")
                lines.append(
                    f"{head} {s['median_ms']:.2f} ({s['p10_ms']:.2f}-{s['p90_ms']:.2f}) | {s['throughput']:.1f} | "
                    f"{_num(mem / 2**20 if mem else None, '.0f', 'n/a')} | "
                    f"{_num(flops / 1e9 if flops else None, '.1f', s.get('flops_error', '—'))} | "
                    f"{_num(s.get('tflops'))} | {_num(s.get('pct_of_ceiling'), '.1f')} | "
                    f"{_num(s.get('compile_s'), '.0f')} |"
                )
        lines.append("")
        for item in skipped:
            lines.append(
                f"- not measured: {_point(item['point'])} {item['dtype']} compile={item['compile']}: "
                f"{item['reason']}"
            )
        case_rows = [r for r in rows if r["case"] == case["name"]]
        if case_rows:
            lines += [
                "",
                "| input | dtype | compile | ours | peer | speedup | memory ratio | target | verdict |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for r in case_rows:
                verdict = r["verdict"] if r["verdict"] != "missed" else "**MISSED**"
                if r["verdict"] == "not measured":
                    verdict += f" ({r['reason']})"
                lines.append(
                    f"| {_point(r['point'])} | {r['dtype']} | {r['compile']} | {r['ours']} | {r['peer']} | "
                    f"{_num(r.get('speedup'))}x | {_num(r.get('memory_ratio'))} | {_target(r)} | "
                    f"{verdict} |"
                )
        labels = "; ".join(f"`{s['name']}` = {s['label']}" for s in case["subjects"])
        lines += ["", f"Implementations: {labels}.", ""]
    return "\n".join(lines) + "\n"


def plot_sweeps(report: dict, path) -> str | None:
    """Throughput against batch size / resolution for the sweep cases. Returns why no plot was written,
    or None when it was."""
    panels = [c for c in report["cases"] if c.get("plot")]
    if not panels:
        return "no sweep case was selected"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib is not importable ({describe_error(e)}); pip install matplotlib"
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    drawn = 0
    for ax, case in zip(axes[0], panels):
        items = [
            i
            for i in report["results"]
            if i["case"] == case["name"] and i["status"] == "ok" and i["compile"] == "off"
        ]
        dtype = items[0]["dtype"] if items else None
        for subject in case["subjects"]:
            xs, ys = [], []
            for item in items:
                s = item["subjects"].get(subject["name"], {})
                if item["dtype"] == dtype and s.get("status") == "ok":
                    xs.append(
                        item["point"]["batch"] if case["plot"] == "batch" else item["point"]["size"][-1]
                    )
                    ys.append(s["throughput"])
            if xs:
                style = "-o" if subject["role"] == "ours" else "--s"
                ax.plot(xs, ys, style, label=subject["label"])
                drawn += 1
        ax.set_xlabel("batch size" if case["plot"] == "batch" else "input side (px)")
        ax.set_ylabel(case["unit"])
        if case["plot"] == "batch":
            ax.set_xscale("log", base=2)
        ax.set_title(f"{case['title']}\n{dtype or 'no data'}, eager", fontsize=9)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if not drawn:
        plt.close(fig)
        return "the sweep cases measured nothing"
    fig.suptitle(f"{report['tag']}: {report['environment'].get('gpu') or 'CPU'}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_report(report: dict, out_dir, tag: str) -> None:
    """Write ``tag``.json, ``tag``.md and ``tag``.png under ``out_dir`` (atomically, so that a run cut off
    mid-write leaves the previous complete files)."""
    out = Path(out_dir)
    png, png_tmp = out / f"{tag}.png", out / f".{tag}.tmp.png"
    try:
        why_not = plot_sweeps(report, png_tmp)
        if why_not is None:
            os.replace(png_tmp, png)
        report["plot"] = why_not or png.name
    except Exception as e:  # a broken plot must not lose the measurements
        report["plot"] = f"plot failed: {describe_error(e)}"
    try:
        markdown = render_markdown(report)
    except Exception as e:  # the JSON still holds every number
        markdown = (
            f"# {tag}\n\nThe Markdown report could not be rendered ({describe_error(e)}); see {tag}.json.\n"
        )
    for suffix, text in ((".json", json.dumps(report, indent=1, default=str)), (".md", markdown)):
        tmp = out / f".{tag}{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / f"{tag}{suffix}")


def summary_line(result: dict) -> str:
    """One console line for one measured item."""
    if result["status"] != "ok":
        return f"skipped: {result['reason']}"
    parts = []
    for name, s in result["subjects"].items():
        if s.get("status") == "ok":
            parts.append(f"{name} {s['median_ms']:.2f} ms")
        else:
            parts.append(f"{name} ERROR {s.get('error', '')[:120]}")
    return "; ".join(parts)
