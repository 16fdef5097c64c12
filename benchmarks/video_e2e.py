"""The video clip classifier trained end to end through ``tools/train_net.py`` on one GPU, for one source tree:
clips/s and s/iter from metrics.json, the loader's share, GPU utilisation, the wall clock of the measured
iterations, a ``torch.profiler`` summary of a few trainer steps after them and (``--model-only``) the
model-only step of the same config; ``--report`` merges the runs of several trees into a json + markdown.

Each run imports ``hiera_det``, ``benchmarks`` and ``tools/train_net.py`` from ``--tree``, so an older checkout
(the code before a change) and the current one are timed by the same script on the same machine:

    python benchmarks/video_e2e.py --tree ../before --name before --data /tmp/coco_like --out /tmp/ve
    python benchmarks/video_e2e.py --tree . --name after --data /tmp/coco_like --out /tmp/ve --model-only
    python benchmarks/video_e2e.py --report /tmp/ve --tag h100 --out benchmarks/results

``--smoke``: the tiny CPU model of ``benchmarks.ddp --smoke`` (checks the tool, measures nothing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

WINDOW = 20  # Detectron2's metrics.json window
# host-side calls that show where the training process waits or copies
HOST_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync",
               "cudaHostAlloc", "aten::_local_scalar_dense", "aten::item", "aten::stack", "aten::copy_",
               "aten::pin_memory", "cudaLaunchKernel")


def _profile_hook_class(HookBase, torch, start: int, steps: int, sink: dict):
    """A Detectron2 hook that profiles iterations ``[start, start + steps)`` (host and, on CUDA, device)."""

    class ProfileSteps(HookBase):
        def before_step(self):
            if self.trainer.iter == start:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                    torch.cuda.synchronize()
                sink["profiler"] = torch.profiler.profile(activities=activities)
                sink["profiler"].__enter__()
                sink["profile_t0"] = time.perf_counter()

        def after_step(self):
            if self.trainer.iter == start + steps - 1 and "profiler" in sink:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                sink["profile_wall_s"] = time.perf_counter() - sink["profile_t0"]
                sink["profiler"].__exit__(None, None, None)

    return ProfileSteps


def _clock_hook_class(HookBase, torch, first: int, last: int, sink: dict):
    """Wall clock from the start of iteration ``first`` to the end of iteration ``last`` (device included)."""

    class Clock(HookBase):
        def before_step(self):
            if self.trainer.iter == first:
                sink["measure_t0"] = time.perf_counter()
                sink["measure_unix0"] = time.time()

        def after_step(self):
            if self.trainer.iter == last:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                sink["measure_s"] = time.perf_counter() - sink["measure_t0"]
                sink["measure_unix1"] = time.time()

    return Clock


def profile_summary(profiler, steps: int) -> tuple[dict, str]:
    """Per-step totals of the profiled steps and the two top-20 tables (by device time, by host time)."""
    from torch.autograd import DeviceType

    averages = profiler.key_averages()
    # the device's own events (kernels, copies, memsets): the operators that launched them carry the same time
    device = [e for e in averages if e.device_type == DeviceType.CUDA]
    device_us = sum(e.self_device_time_total for e in device)
    kernels = sum(e.count for e in device)
    host = {e.key: {"calls_per_step": round(e.count / steps, 1), "ms_per_step": round(e.cpu_time_total / steps / 1e3, 3)}
            for e in averages if e.key in HOST_EVENTS}
    loader = [e for e in averages if e.key.startswith("enumerate(DataLoader)")]
    summary = {
        "steps": steps,
        "device_busy_ms_per_step": round(device_us / steps / 1e3, 2),
        "device_ops_per_step": round(kernels / steps),
        "host": host,
        "loader_next_ms_per_step": round(sum(e.cpu_time_total for e in loader) / steps / 1e3, 3),
    }
    tables = []
    if device_us:
        try:
            tables.append(averages.table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=60))
        except (KeyError, AttributeError):  # torch before 2.4 names it after CUDA
            tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=60))
    tables.append(averages.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
    return summary, "\n\n".join(tables)


def _metrics_windows(path: Path, first_window_end: int, last_window_end: int) -> dict:
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]
    measured = [e for e in entries if "time" in e and first_window_end <= e.get("iteration", -1) <= last_window_end]
    seconds = statistics.median(e["time"] for e in measured)
    data = statistics.median(e.get("data_time", 0.0) for e in measured)
    peak = max((v for e in entries for k, v in e.items() if k.startswith("peak_mem_mib/")), default=None)
    return {"measured_windows": [e["iteration"] for e in measured], "seconds_per_iteration": round(seconds, 4),
            "data_seconds": round(data, 4), "loader_share": round(data / seconds, 3),
            "peak_mem_mib": round(peak) if peak else None}


def run(args) -> dict:
    tree = args.tree.resolve()
    sys.path[0] = str(tree)  # not this script's folder: the tree's packages, whatever its age
    import torch
    from detectron2.engine import HookBase

    from benchmarks.ddp import MODELS, GpuSampler, dataset_args, model_opts
    from hiera_det.engine import Trainer

    spec = importlib.util.spec_from_file_location("train_net", tree / "tools" / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)

    out = args.out / args.name
    out.mkdir(parents=True, exist_ok=True)
    model = "video_cls"
    measure_first, measure_last = WINDOW, args.iters - 1  # after the warm-up window
    profile_start = args.iters
    total_iters = args.iters + args.profile_steps + 1
    opts = model_opts(model, args.smoke) + [
        "DATASETS.TRAIN", f"('{MODELS[model]['train']}',)", "SOLVER.IMS_PER_BATCH", str(args.batch),
        "SOLVER.MAX_ITER", str(total_iters), "DATALOADER.NUM_WORKERS", str(args.workers),
        "OUTPUT_DIR", str(out / "run")]  # fmt: skip
    cli = train_net.argument_parser().parse_args(
        ["--config", MODELS[model]["config"], *dataset_args(args.data), *opts])
    sink: dict = {}
    hooks = [_clock_hook_class(HookBase, torch, measure_first, measure_last, sink)(),
             _profile_hook_class(HookBase, torch, profile_start, args.profile_steps, sink)()]
    original = Trainer.build_hooks

    def build_hooks(self):
        return original(self) + hooks

    Trainer.build_hooks = build_hooks
    sampler = GpuSampler(out / "gpu_samples.csv") if torch.cuda.is_available() else None
    started = time.time()
    try:
        train_net.main(cli)
    finally:
        Trainer.build_hooks = original
        if sampler is not None:
            sampler.stop()
    result = {"name": args.name, "tree": str(tree), "status": "ok", "batch": args.batch, "workers": args.workers,
              "iterations": total_iters, "torch_threads_main": torch.get_num_threads(),
              "started_unix": round(started), "startup_and_run_s": round(time.time() - started, 1)}
    result.update(_metrics_windows(out / "run" / "metrics.json", 2 * WINDOW - 1, measure_last))
    result["clips_per_s"] = round(args.batch / result["seconds_per_iteration"], 2)
    measured = measure_last - measure_first + 1
    result["wall_s_per_iteration"] = round(sink["measure_s"] / measured, 4)
    result["wall_clips_per_s"] = round(args.batch * measured / sink["measure_s"], 2)
    if sampler is not None:
        util = sampler.mean_utilisation([0], sink["measure_unix0"], sink["measure_unix1"])
        result["gpu_util_percent"] = util[0] if util else None
    if "profiler" in sink:
        summary, tables = profile_summary(sink["profiler"], args.profile_steps)
        summary["wall_ms_per_step"] = round(sink["profile_wall_s"] / args.profile_steps * 1e3, 1)
        result["profile"] = summary
        (out / "profile.txt").write_text(tables)
    if args.model_only:
        from benchmarks import model_only

        only = out / "model_only.json"
        model_only.main(["--model", model, "--data", str(args.data), "--batch", str(args.batch), "--out", str(only)]
                        + (["--smoke"] if args.smoke else []))
        mo = json.loads(only.read_text())
        result["model_only_clips_per_s"] = mo["real_batch_images_per_s"]
        result["model_only_median_ms"] = round(mo["real_batch"]["median_ms"], 2)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


def report(folder: Path, out: Path, tag: str, earlier_2gpu: Path | None) -> dict:
    """Merges ``folder/<name>/result.json`` of every run (and ``nvidia-smi.txt``) into video_e2e_<tag>.{json,md}."""
    found = [json.loads(p.read_text()) for p in folder.glob("*/result.json")]
    runs = {r["name"]: r for r in sorted(found, key=lambda r: r["started_unix"])}  # in the order they ran
    model_only = next((r["model_only_clips_per_s"] for r in runs.values() if "model_only_clips_per_s" in r), None)
    earlier = None
    if earlier_2gpu and earlier_2gpu.is_file():
        earlier = json.loads(earlier_2gpu.read_text())["results"].get("video_cls_2gpu", {}).get("images_per_s")
    for r in runs.values():
        if model_only:
            r["end_to_end_vs_model_only"] = round(r["clips_per_s"] / model_only, 3)
        if earlier:
            r["efficiency_of_earlier_2gpu_run"] = round(earlier / (2 * r["clips_per_s"]), 3)
    smi = folder / "nvidia-smi.txt"
    device = smi.read_text().strip().splitlines()[-1] if smi.is_file() else "unknown device"
    doc = {"tag": tag, "device": device, "runs": runs, "model_only_clips_per_s": model_only,
           "earlier_2gpu_clips_per_s": earlier}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"video_e2e_{tag}.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# Video clip classifier end to end on one GPU: {tag}", "", f"Device: {device}. "
             "tools/train_net.py, video/hiera_base_16x224_k400.yaml (Hiera-B 16x224, fp16 AMP, mixup/cutmix), batch "
             "8, moving-shapes frame folders (benchmarks/coco_like.py); clips/s from metrics.json (median of the "
             f"{WINDOW}-iteration windows after the first), wall = clock over the same iterations.", "",
             "| run | clips/s | s/iter | wall clips/s | loader share | GPU util % | peak MiB | e2e / model-only "
             "| efficiency of the earlier 2-GPU run |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['clips_per_s']} | {r['seconds_per_iteration']} | {r['wall_clips_per_s']} | "
                     f"{r['loader_share']} | {r.get('gpu_util_percent')} | {r.get('peak_mem_mib')} | "
                     f"{r.get('end_to_end_vs_model_only', '')} | {r.get('efficiency_of_earlier_2gpu_run', '')} |")
    lines += ["", f"Model-only step (benchmarks/model_only.py, same config and process as the run that has it): "
              f"{model_only} clips/s. Earlier 2-GPU end-to-end figure (ddp_video_h100x2, another call and host): "
              f"{earlier} clips/s.", ""]
    for name, r in runs.items():
        p = r.get("profile")
        if p:
            host = ", ".join(f"{k} {v['ms_per_step']} ms ({v['calls_per_step']})" for k, v in p["host"].items())
            lines.append(f"- profile of {name} ({p['steps']} steps under torch.profiler, {p['wall_ms_per_step']} ms "
                         f"per step wall): device busy {p['device_busy_ms_per_step']} ms"
                         + (f" and {p['device_ops_per_step']} device ops" if "device_ops_per_step" in p else "")
                         + f" per step; waiting for the loader "
                         f"{p['loader_next_ms_per_step']} ms per step; host calls per step: {host}")
    (out / f"video_e2e_{tag}.md").write_text("\n".join(lines) + "\n")
    return doc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--name", default="run")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=60, help="trained and measured (the first window skipped)")
    parser.add_argument("--profile-steps", type=int, default=5, help="profiled after --iters")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--model-only", action="store_true", help="also time the model-only step")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--report", type=Path, help="merge the runs under this folder instead of running")
    parser.add_argument("--tag", default="run")
    parser.add_argument("--earlier", type=Path, help="ddp_<tag>.json with the earlier 2-GPU video_cls figure")
    args = parser.parse_args(argv)
    if args.report:
        report(args.report, args.out, args.tag, args.earlier)
        return 0
    if args.data is None:
        parser.error("--data is required to run")
    if args.iters < 2 * WINDOW:
        parser.error(f"--iters must be at least {2 * WINDOW}: the first {WINDOW}-iteration window is warm-up")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
