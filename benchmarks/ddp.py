"""End-to-end training throughput as ``tools/train_net.py --num-gpus N`` delivers it, on COCO-like data: images/s,
the loader's share, per-GPU peak memory, GPU utilisation, scaling efficiency against one GPU, the model-only
step for the same config; and the checks whose figures do not depend on speed: loss curves on 1 and N GPUs at
the same global batch with the run-to-run spread, a 2-GPU checkpoint resumed on 1 (and N) GPUs, and
distributed-evaluation agreement; written as a json + markdown table.

    python -m benchmarks.ddp --data /tmp/coco_like --gpus 4 --out benchmarks/results --tag h100x4
    python -m benchmarks.ddp --data /tmp/coco_like --gpus 2 --models video_cls,clip_det --tag video_h100x2
    python -m benchmarks.ddp --smoke --data /tmp/coco_like --gpus 2 --out /tmp/ddp   # CPU, gloo, tiny models

Models (per-GPU batch 8, ``SOLVER.IMS_PER_BATCH`` = 8 N, random weights):

* ``maskrcnn``: ``hiera_fpn.yaml`` (Hiera-B, 1024 LSJ, fp16 AMP) on ``benchmarks.coco_like`` JPEGs with polygon
  masks, whose mask targets the mask head cuts on the GPU (``MODEL.ROI_MASK_HEAD.GPU_TARGETS``, the config's
  default); ``maskrcnn_bitmask`` is the way before it (``INPUT.MASK_FORMAT bitmask``: masks rasterised whole
  in the loader workers, targets cut from them by ROIAlign);
* ``video_cls``: ``video/hiera_base_16x224_k400.yaml`` on frame-folder moving-shapes clips (sampling rate 2);
* ``clip_det``: ``video/hiera_base_16x224_ava_keyframe.yaml`` on the keyframes of those clips;
* ``maskrcnn_small`` (the checks): ``maskrcnn`` with a Hiera-T trunk at 512 LSJ, global batch ``--lc-batch``.

Throughput is ``IMS_PER_BATCH / time`` with Detectron2's ``time`` (the median seconds per iteration over the
20-iteration window that metrics.json records) from the windows after the first (warm-up); the loader's
share is ``data_time / time`` of the same windows; GPU utilisation is ``nvidia-smi`` sampled every 0.5 s over
those windows. Jobs of one phase run at the same time on different GPUs (``CUDA_VISIBLE_DEVICES``), sharing
the host's CPUs (the report names them); the multi-GPU timing runs run alone. The work is planned in priority order and stops starting jobs
when ``--time-budget`` is spent; what did not run is listed as skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WINDOW = 20  # Detectron2's metrics.json window (PeriodicWriter period and smoothing)

_COMMON = ["MODEL.WEIGHTS", "", "MODEL.HIERA.WEIGHTS", "", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "10",
           "SOLVER.CHECKPOINT_PERIOD", "1000000", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SEED", "0"]
_VIDEO = ["MODEL.HIERA_VIDEO.SAMPLING_RATE", "2"]
MODELS = {
    # the checks whose figures do not depend on speed (loss curves, resume, evaluation): same pipeline, Hiera-T
    # at 512 LSJ, so that a few hundred iterations fit
    "maskrcnn_small": dict(config="hiera_fpn.yaml", train="coco_like_train", test="coco_like_val",
                           opts=["MODEL.HIERA.NAME", "hiera_tiny_224", "INPUT.LSJ.IMAGE_SIZE", "512",
                                 "MODEL.HIERA.INPUT_SIZE", "[512,512]", "MODEL.HIERA.DROP_PATH_RATE", "0.1"]),
    "maskrcnn": dict(config="hiera_fpn.yaml", train="coco_like_train", test="coco_like_val", opts=[]),
    # before GPU mask targets: LSJ crops the masks, so they are rasterised in the workers as bitmasks
    "maskrcnn_bitmask": dict(config="hiera_fpn.yaml", train="coco_like_train", test="coco_like_val",
                             opts=["INPUT.MASK_FORMAT", "bitmask", "MODEL.ROI_MASK_HEAD.GPU_TARGETS", "False",
                                   "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"]),
    "video_cls": dict(config="video/hiera_base_16x224_k400.yaml", train="clips_train", test="clips_val", opts=_VIDEO),
    # the class count of a keyframes spec is not fitted to the data at registration (its classes are read
    # lazily), so it is given: the six moving-shapes classes
    "clip_det": dict(config="video/hiera_base_16x224_ava_keyframe.yaml", train="clip_kf_train", test="clip_kf_val",
                     opts=_VIDEO + ["MODEL.ROI_HEADS.NUM_CLASSES", "6"]),
}
# --smoke: the same pipelines with tiny trunks and inputs on the CPU
_TINY = ["MODEL.DEVICE", "cpu", "MODEL.HIERA.STAGES", "[1,1,1,1]", "MODEL.HIERA.EMBED_DIM", "32",
         "MODEL.HIERA.NUM_HEADS", "1"]
SMOKE_OPTS = {
    "maskrcnn": _TINY + ["INPUT.LSJ.IMAGE_SIZE", "128", "MODEL.HIERA.INPUT_SIZE", "[128,128]", "INPUT.MIN_SIZE_TEST",
                         "128", "INPUT.MAX_SIZE_TEST", "128", "MODEL.FPN.OUT_CHANNELS", "32",
                         "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
                         "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
                         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"],
    "video": _TINY + ["MODEL.HIERA_VIDEO.NUM_FRAMES", "4", "INPUT.VIDEO.TRAIN_JITTER_SCALES", "[64,72]",
                      "INPUT.VIDEO.TRAIN_CROP_SIZE", "64", "INPUT.VIDEO.TEST_CROP_SIZE", "64", "INPUT.MIN_SIZE_TRAIN",
                      "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
                      "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"],
}


def model_opts(model: str, smoke: bool) -> list[str]:
    spec = MODELS[model]
    extra = SMOKE_OPTS["maskrcnn" if model.startswith("maskrcnn") else "video"] if smoke else []
    return _COMMON + spec["opts"] + extra


def dataset_args(data: Path) -> list[str]:
    specs = json.loads((data / "specs.json").read_text())
    return [arg for name, spec in specs.items() for arg in ("--dataset", f"{name}={spec}")]


# ------------------------------------------------------------------------------------------- GPU sampling


class GpuSampler:
    """``nvidia-smi`` utilisation and memory of every GPU every 0.5 s, in the background (nothing without it)."""

    def __init__(self, path: Path):
        self.samples: list[tuple[float, int, float, float]] = []  # (time, gpu, util %, memory MiB)
        self._process = None
        self._thread = None
        try:
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-lms", "500"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        except OSError:
            return
        self._log = open(path, "w")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._process.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 3 and parts[0].isdigit():
                try:
                    sample = (time.time(), int(parts[0]), float(parts[1]), float(parts[2]))
                except ValueError:
                    continue
                self.samples.append(sample)
                self._log.write(f"{sample[0]:.2f},{line}")

    def mean_utilisation(self, gpus: list[int], start: float, end: float) -> list[float] | None:
        result = []
        for gpu in gpus:
            values = [u for t, g, u, _ in self.samples if g == gpu and start <= t <= end]
            if not values:
                return None
            result.append(round(statistics.mean(values), 1))
        return result

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._log.close()


# ----------------------------------------------------------------------------------------------- one job


@dataclass
class Job:
    """One ``train_net.py`` (or model-only) process on ``gpus``."""

    name: str
    kind: str  # train | eval | model_only
    model: str
    gpus: list[int]
    output_dir: Path
    command: list[str]
    env: dict
    started: float = 0.0
    measured_from: float | None = None
    ended: float = 0.0
    process: subprocess.Popen | None = None
    result: dict = field(default_factory=dict)
    result_file: Path | None = None  # what a script job writes (json)


def _environment(gpus: list[int], smoke: bool) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["OMP_NUM_THREADS"] = "1"
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    return env


# Jobs of one phase start together: each multi-process one gets its own rendezvous port, since Detectron2's
# "auto" picks a free port that another job starting at the same moment can take first (EADDRINUSE).
_PORTS = itertools.count(29500 + os.getpid() % 1000 * 20)


def _launcher(gpus: list[int]) -> list[str]:
    return ["--num-gpus", str(len(gpus)), "--dist-url", f"tcp://127.0.0.1:{next(_PORTS)}"]


def train_job(name, model, gpus, args, iters, per_gpu, extra=()) -> Job:
    out = args.work / name
    command = [sys.executable, str(REPO / "tools" / "train_net.py"), *_launcher(gpus),
               "--config", MODELS[model]["config"], *dataset_args(args.data),
               *model_opts(model, args.smoke), "DATASETS.TRAIN", f"('{MODELS[model]['train']}',)",
               "SOLVER.IMS_PER_BATCH", str(per_gpu * len(gpus)), "SOLVER.MAX_ITER", str(iters),
               "DATALOADER.NUM_WORKERS", str(args.workers), *extra, "OUTPUT_DIR", str(out)]  # fmt: skip
    return Job(name, "train", model, gpus, out, command, _environment(gpus, args.smoke))


def eval_job(name, model, gpus, args, weights: Path) -> Job:
    out = args.work / name
    command = [sys.executable, str(REPO / "tools" / "train_net.py"), *_launcher(gpus),
               "--config", MODELS[model]["config"], *dataset_args(args.data), "--eval-only",
               *model_opts(model, args.smoke), "MODEL.WEIGHTS", str(weights),
               "DATASETS.TRAIN", f"('{MODELS[model]['train']}',)", "DATASETS.TEST", f"('{MODELS[model]['test']}',)",
               # every image keeps its 100 best detections, so the comparison is not decided by a threshold
               "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "DATALOADER.NUM_WORKERS", "4", "OUTPUT_DIR", str(out)]  # fmt: skip
    return Job(name, "eval", model, gpus, out, command, _environment(gpus, args.smoke))


def script_job(name, module, gpus, args, arguments, kind="model_only", model="maskrcnn") -> Job:
    """``python -m module ... --out RESULT.json`` on ``gpus``; its json is the job's result."""
    out = args.work / name
    command = [sys.executable, "-m", module, *arguments, "--out", str(out / "result.json")]
    job = Job(name, kind, model, gpus, out, command, _environment(gpus, args.smoke))
    job.result_file = out / "result.json"
    return job


def model_only_job(name, model, gpu, args, per_gpu) -> Job:
    return script_job(name, "benchmarks.model_only", [gpu], args, ["--model", model, "--data", str(args.data),
                      "--batch", str(per_gpu)] + (["--smoke"] if args.smoke else []), model=model)  # fmt: skip


def mask_targets_job(name, gpu, args) -> Job:
    smoke = ["--images", "2", "--rois", "32", "--repeats", "1"] if args.smoke else []
    return script_job(name, "benchmarks.mask_targets_speed", [gpu], args, ["--data", str(args.data), *smoke],
                      kind="mask_targets")


def resume_job(name, mode, gpus, args, source: Path | None = None) -> Job:
    """``benchmarks.resume_check`` on absolute GPU ids (it sets ``CUDA_VISIBLE_DEVICES`` per run itself);
    ``across`` resumes ``source``'s first checkpoint (the 2-GPU loss-curve run: same model and batch)."""
    smoke = (["--smoke", "--workers", "1"] + (["--iters", "10", "--period", "4"] if source is None else [])
             if args.smoke else [])
    arguments = ["--mode", mode, "--data", str(args.data), "--work", str(args.work), "--gpus", ",".join(map(str, gpus))]
    if source is not None:
        arguments += ["--source", str(source), "--period", str(args.lc_period), "--global-batch", str(args.lc_batch)]
    return script_job(name, "benchmarks.resume_check", gpus, args, arguments + smoke, kind="resume",
                      model="maskrcnn_small")


def _metrics(output_dir: Path) -> list[dict]:
    path = output_dir / "metrics.json"
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return entries


def _watch(job: Job, skip: int) -> None:
    """Notes when the first measured window starts (the warm-up window is in metrics.json)."""
    while job.process.poll() is None:
        if job.measured_from is None and any(e.get("iteration", -1) >= skip - 1 for e in _metrics(job.output_dir)):
            job.measured_from = time.time()
        time.sleep(0.5)


def summarize_train(job: Job, skip: int, sampler: GpuSampler | None) -> dict:
    entries = [e for e in _metrics(job.output_dir) if "time" in e and "total_loss" in e]
    measured = [e for e in entries if e["iteration"] - WINDOW + 1 >= skip] or entries[-1:]
    if not measured:
        return {"status": "failed", "error": "no metrics.json entries"}
    batch = int(_opt(job.command, "SOLVER.IMS_PER_BATCH"))
    seconds = statistics.median(e["time"] for e in measured)
    data_seconds = statistics.median(e.get("data_time", 0.0) for e in measured)
    last = entries[-1]
    peaks = [round(v) for k, v in sorted(last.items(), key=lambda kv: _rank(kv[0])) if k.startswith("peak_mem_mib/")]
    util = None
    if sampler is not None and job.measured_from is not None:
        util = sampler.mean_utilisation(job.gpus, job.measured_from, job.ended)
    return {
        "status": "ok",
        "gpus": len(job.gpus),
        "global_batch": batch,
        "iterations": last["iteration"] + 1,
        "measured_windows": [e["iteration"] for e in measured],
        "seconds_per_iteration": round(seconds, 4),
        "images_per_s": round(batch / seconds, 2),
        "data_seconds": round(data_seconds, 4),
        "loader_share": round(data_seconds / seconds, 3),
        "peak_mem_mib_per_rank": peaks or None,
        "gpu_util_percent": util,
        "loss_curve": [[e["iteration"], round(e["total_loss"], 4)] for e in entries],
    }


def _rank(key: str) -> int:
    match = re.search(r"rank(\d+)$", key)
    return int(match.group(1)) if match else -1


def _opt(command: list[str], key: str) -> str:
    return command[len(command) - 1 - command[::-1].index(key) + 1]


def summarize_eval(job: Job, log: str) -> dict:
    """The ``copypaste`` metrics Detectron2 logs, and the predictions file when the evaluator wrote one (COCO
    detections, or the video classifier's per-video top-5)."""
    metrics, task = {}, None
    lines = [line.split("copypaste: ", 1)[1] for line in log.splitlines() if "copypaste: " in line]
    for first, second in zip(lines, lines[1:]):
        if first.startswith("Task: "):
            task = first[len("Task: "):]
        elif task and not second.startswith("Task: ") and "," in first:
            metrics[task] = dict(zip(first.split(","), (float(v) for v in second.split(","))))
            task = None
    detections = next((path for pattern in ("coco_instances_results.json", "video_predictions.json")
                       for path in job.output_dir.glob(f"inference/*/{pattern}")), None)
    return {"status": "ok" if metrics else "failed", "metrics": metrics,
            "detections_file": str(detections) if detections else None}


# ------------------------------------------------------------------------------------------------- phases


def run_phase(jobs: list[Job], args, sampler, skip: int, deadline: float) -> None:
    threads = []
    for job in jobs:
        # Detectron2 appends to an existing metrics.json: a rerun into the same --work would mix two runs
        shutil.rmtree(job.output_dir, ignore_errors=True)
        job.output_dir.mkdir(parents=True)
        log = open(job.output_dir / "stdout.txt", "w")
        job.started = time.time()
        job.process = subprocess.Popen(job.command, env=job.env, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=REPO, start_new_session=True)
        thread = threading.Thread(target=_watch, args=(job, skip), daemon=True)
        thread.start()
        threads.append(thread)
        print(f"[{time.strftime('%H:%M:%S')}] start {job.name} on {job.gpus}", flush=True)
    for job in jobs:
        try:
            job.process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(job.process.pid, 9)
            job.process.wait()
            job.result = {"status": "killed at the time budget"}
        job.ended = time.time()
    for job in jobs:
        log = (job.output_dir / "stdout.txt").read_text(errors="replace")
        if job.result:
            pass
        elif job.process.returncode != 0:
            job.result = {"status": "failed", "error": log[-1500:]}
        elif job.kind == "train":
            job.result = summarize_train(job, skip, sampler)
        elif job.kind == "eval":
            job.result = summarize_eval(job, log)
        else:
            job.result = json.loads(job.result_file.read_text())
        job.result.update(name=job.name, kind=job.kind, model=job.model, gpus_used=job.gpus,
                          wall_s=round(job.ended - job.started, 1), beside=[j.name for j in jobs if j is not job])
        print(f"[{time.strftime('%H:%M:%S')}] {job.name}: {json.dumps(_headline(job.result))}", flush=True)


def _headline(result: dict) -> dict:
    keys = ("status", "images_per_s", "loader_share", "peak_mem_mib_per_rank", "gpu_util_percent", "metrics",
            "synthetic_images_per_s", "real_batch_images_per_s", "detectron2_cpu", "gpu_targets_on_cuda", "agreement",
            "data_order", "wall_s")
    return {k: result[k] for k in keys if k in result}


def plan(args) -> list[list]:
    """Phases in priority order, each a list of (name, builder) run together on disjoint GPUs, except where
    the figure does not depend on speed (loss curves, resume, evaluation): those share GPUs.

    Timing (for each of ``--models``): on 1 GPU, with the model-only step (and for the image model the way
    before GPU mask targets and the mask-target timing) beside it on other GPUs; then on 2 and on N GPUs alone;
    the 2-GPU kill-and-resume check goes with the image model. Then the checks on ``--lc-model``: its loss
    curve on 1 GPU (two seeds: the run-to-run spread) and on 2 (and N) GPUs at the same global batch; the 2-GPU
    checkpoint of that run resumed on 1 (and N) GPUs; evaluation of the same weights on 1 GPU and on all, for
    the image model and the video classifier. Last, the video classifier with the losses synchronised every
    step (``SOLVER.LOSS_SYNC_PERIOD 1``, Detectron2's way) on N GPUs, against the default of every 20.
    """
    n, iters, batch, models = args.gpus, args.iters, args.per_gpu, args.models

    def gpu(k):
        return k % n

    def train(model, gpus, name=None, extra=()):
        name = name or f"{model}_{len(gpus)}gpu"
        return name, lambda: train_job(name, model, gpus, args, iters, batch, extra=extra)

    def model_only(model, k):
        name = f"model_only_{model}"
        return name, lambda: model_only_job(name, model, gpu(k), args, batch)

    counts = sorted({2, n}) if n > 1 else []
    phases = []
    if "maskrcnn" in models:
        phases.append([train("maskrcnn", [0]), model_only("maskrcnn", 1)])
        phases.append([train("maskrcnn", [0, 1])])
        if n > 2:
            phases.append([train("maskrcnn", list(range(n)))])
        if "maskrcnn_bitmask" in models:
            phases.append([train("maskrcnn_bitmask", [0]),
                           ("mask_targets", lambda: mask_targets_job("mask_targets", gpu(1), args))])
        phases.append([("resume_2gpu", lambda: resume_job("resume_2gpu", "same", [0, 1], args))])
    video = [m for m in ("video_cls", "clip_det") if m in models]
    if video:
        phases.append([train(m, [gpu(k)]) for k, m in enumerate(video)])
        phases.append([model_only(m, k) for k, m in enumerate(video)])
        phases += [[train(m, list(range(count)))] for count in counts for m in video]
    phases += loss_curve_phases(args, counts)
    lc_source = args.work / f"{args.lc_model}_lc_2gpu_seed0"
    checks = []
    if n > 1:
        checks.append(("resume_across", lambda: resume_job("resume_across", "across", list(range(n)) if n > 2
                                                           else [0], args, source=lc_source)))
    weights = {args.lc_model: args.work / f"{args.lc_model}_lc_1gpu_seed0" / "model_final.pth"}
    if "video_cls" in models:
        weights["video_cls"] = args.work / "video_cls_1gpu" / "model_final.pth"
    for model, path in weights.items():
        for gpus in ([gpu(1)], list(range(n))) if n > 1 else ([0],):
            name = f"eval_{model}_{len(gpus)}gpu"
            checks.append((name, lambda name=name, model=model, gpus=gpus, path=path:
                           eval_job(name, model, gpus, args, path)))
    phases.append(checks)
    if "video_cls" in models and n > 1:
        phases.append([train("video_cls", list(range(n)), name=f"video_cls_stepsync_{n}gpu",
                             extra=["SOLVER.LOSS_SYNC_PERIOD", "1"])])
    return phases


def loss_curve_phases(args, counts: list[int]) -> list[list]:
    """``--lc-model`` at one global batch (``--lc-batch``): on one GPU with SEED 0 and SEED 1 (the run-to-run
    spread: other data order, other initialisation) and on each of ``counts`` GPUs with SEED 0; the 2-GPU run
    checkpoints every ``--lc-period`` iterations and logs its data order, for ``resume_across``. The losses do
    not depend on speed, so the runs share the GPUs: all in one phase with 2 GPUs, two phases with more."""
    model, total = args.lc_model, args.lc_batch

    def job(count, seed, gpus):
        name = f"{model}_lc_{count}gpu_seed{seed}"
        extra = ["SEED", str(seed)]
        if count == 2:
            extra += ["SOLVER.CHECKPOINT_PERIOD", str(args.lc_period), "DATALOADER.LOG_DATA_ORDER", "True"]
        return name, lambda: train_job(name, model, gpus, args, args.lc_iters, total // count, extra=extra)

    first = [job(1, 0, [0]), job(1, 1, [1 % args.gpus])]
    if 2 in counts:
        first.append(job(2, 0, [0, 1] if args.gpus == 2 else [2, 3]))
    return [first] + [[job(count, 0, list(range(count)))] for count in counts if count > 2]


def loss_curve_agreement(results: dict) -> dict | None:
    """Largest |difference| of the windowed total loss: each GPU count vs one (same seed), and seed 0 vs
    seed 1 on one GPU."""
    curves = {}
    for name, r in results.items():
        match = re.fullmatch(r"(.+)_lc_(\d+)gpu_seed(\d+)", name)
        if match and r.get("status") == "ok":
            curves[(int(match.group(2)), int(match.group(3)))] = dict(map(tuple, r["loss_curve"]))
    counts = sorted(count for count, seed in curves if count > 1 and seed == 0)
    if not {(1, 0), (1, 1)} <= curves.keys() or not counts:
        return None
    keys = [(1, 0), (1, 1)] + [(count, 0) for count in counts]
    windows = sorted(set.intersection(*(set(curves[k]) for k in keys)))
    rows = [[w] + [curves[k][w] for k in keys] for w in windows]
    spread = max(abs(row[1] - row[2]) for row in rows)
    differences = {count: round(max(abs(row[1] - row[3 + i]) for row in rows), 4) for i, count in enumerate(counts)}
    return {"gpus": counts, "windows": rows, "seed_spread": round(spread, 4), "n_vs_1": differences,
            "within_spread": all(d <= spread for d in differences.values())}


# ------------------------------------------------------------------------------------------------- report


def derived(results: dict) -> dict:
    """Scaling efficiency per model and GPU count, end-to-end / model-only per model, the loss-curve and the
    evaluation agreement."""
    out = {"efficiency": {}, "end_to_end_vs_model_only": {}, "loss_curves": loss_curve_agreement(results)}
    for name, r in results.items():
        match = re.fullmatch(r"(.+)_(\d+)gpu", name)
        if not match or r.get("kind") != "train" or r.get("status") != "ok":
            continue
        model, count = match.group(1), int(match.group(2))
        base = results.get(f"{model}_1gpu", {})
        if count > 1 and base.get("status") == "ok":
            out["efficiency"][name] = round(r["images_per_s"] / (count * base["images_per_s"]), 3)
    for model in MODELS:
        mo, e2e = results.get(f"model_only_{model}", {}), results.get(f"{model}_1gpu", {})
        if mo.get("status") == "ok" and e2e.get("status") == "ok":
            out["end_to_end_vs_model_only"][model] = {
                key: round(e2e["images_per_s"] / mo[key], 3)
                for key in ("synthetic_images_per_s", "real_batch_images_per_s") if mo.get(key)}
    out["eval_agreement"] = eval_agreement(results)
    return out


def eval_agreement(results: dict) -> dict:
    """{model: metrics and predictions of its evaluation on the fewest GPUs against the most, same weights}."""
    runs: dict[str, dict[int, str]] = {}
    for name, r in results.items():
        match = re.fullmatch(r"eval_(.+)_(\d+)gpu", name)
        if match and r.get("status") == "ok":
            runs.setdefault(match.group(1), {})[int(match.group(2))] = name
    agreement = {}
    for model, by_count in sorted(runs.items()):
        if len(by_count) < 2:
            continue
        a, b = by_count[min(by_count)], by_count[max(by_count)]
        agreement[model] = {"runs": [a, b], "metrics": results[a]["metrics"],
                            "same_metrics": _same_metrics(results[a]["metrics"], results[b]["metrics"]),
                            "same_detections": _same_detections(results[a], results[b])}
    return agreement


def _same_metrics(a, b) -> bool:
    """Equal, NaN included: COCO reports NaN for an area range without objects, and NaN != NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_metrics(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _same_detections(a: dict, b: dict) -> bool | None:
    if not (a.get("detections_file") and b.get("detections_file")):
        return None

    def load(path):
        def key(d):
            if "bbox" in d:
                return d["image_id"], d["category_id"], [round(v, 2) for v in d["bbox"]], round(d["score"], 4)
            return d["video_id"], d["top5"], [round(v, 4) for v in d["top5_scores"]]

        return sorted(key(d) for d in json.loads(Path(path).read_text()))

    return load(a["detections_file"]) == load(b["detections_file"])


def write_report(out: Path, tag: str, meta: dict, results: dict) -> None:
    report = {"meta": meta, "results": results, "derived": derived(results)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ddp_{tag}.json").write_text(json.dumps(report, indent=1))
    (out / f"ddp_{tag}.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    meta, results, d = report["meta"], report["results"], report["derived"]
    lines = [f"# DDP end-to-end training: {meta['tag']}", "",
             f"{meta.get('device', '')}; {meta['iters']} iterations per run, first {WINDOW} skipped; per-GPU batch "
             f"{meta['per_gpu']}; {meta['workers']} loader workers per GPU; data: {meta['data_note']}. Items are "
             "images, or clips for the video models. 'Beside' names the jobs that ran at the same time on the "
             "other GPUs of the host (sharing its CPUs), or on the same GPUs where the figure does not depend on "
             "speed (loss curves, resume, evaluation).", "",
             "| run | GPUs | items/s | s/iter | loader share | efficiency | peak MiB per rank | GPU util % | beside "
             "| status |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        if r.get("kind") != "train":
            continue
        lines.append(f"| {name} | {r.get('gpus', len(r.get('gpus_used', [])))} | {r.get('images_per_s', '')} | "
                     f"{r.get('seconds_per_iteration', '')} | {r.get('loader_share', '')} | "
                     f"{d['efficiency'].get(name, '')} | {r.get('peak_mem_mib_per_rank', '')} | "
                     f"{r.get('gpu_util_percent', '')} | {', '.join(r.get('beside', []))} | {r.get('status')} |")
    for model in MODELS:
        mo = results.get(f"model_only_{model}")
        if not mo:
            continue
        lines += ["", f"Model-only training step of {model}, same config, one GPU (benchmarks/model_only.py; "
                  f"beside: {', '.join(mo.get('beside', [])) or 'nothing'}):", ""]
        if mo.get("status") != "ok":
            lines.append(f"- {mo.get('status')}")
        for key in ("synthetic_images_per_s", "real_batch_images_per_s", "real_batch_bitmask_images_per_s",
                    "peak_mem_mib"):
            if key in mo:
                lines.append(f"- {key}: {mo[key]}")
        for key, ratio in d["end_to_end_vs_model_only"].get(model, {}).items():
            lines.append(f"- end-to-end / {key}: {ratio}")
    targets = results.get("mask_targets")
    if targets and targets.get("status", "ok") == "ok" and "detectron2_cpu" in targets:
        cuda = targets.get("gpu_targets_on_cuda", {}).get("median_ms", "not measured")
        lines += ["", f"Mask targets of one batch ({targets['images']} images, {targets['rois']} foreground RoIs, "
                  f"{targets['mask_side']}x{targets['mask_side']}; benchmarks/mask_targets_speed.py): Detectron2 "
                  f"on the CPU {targets['detectron2_cpu']['median_ms']} ms, hiera_det's on the GPU {cuda} ms "
                  f"(on the CPU {targets['gpu_targets_on_cpu']['median_ms']} ms); agreement {targets['agreement']}"]
    same = results.get("resume_2gpu")
    if same and same.get("status") == "ok":
        order, losses = same["data_order"], same["losses"]
        lines += ["", f"Kill and resume on 2 GPUs (benchmarks/resume_check.py): {same['kill'].get('killed')} killed "
                  f"with SIGKILL after the first checkpoint, the other stopped after "
                  f"{same['kill'].get('others_stopped_after_s')} s (exit {same['kill'].get('exit_code')}); resumed "
                  f"from iteration {same.get('resumed_from')}; data order identical to the uninterrupted run: "
                  f"{order['identical']} ({order['batches_compared']} global batches); windowed losses differ by "
                  f"{losses['max_diff_before_kill']} before the kill (same computation: the kernels' "
                  f"nondeterminism) and {losses['max_diff_after_resume']} after the resume: within nondeterminism "
                  f"{losses['within_nondeterminism']}"]
    elif same:
        lines += ["", f"Kill and resume on 2 GPUs: {same.get('status')}"]
    across = results.get("resume_across")
    if across and across.get("status") == "ok":
        lines += ["", f"The 2-GPU checkpoint {across.get('checkpoint', '')} of {Path(across.get('source', '')).name} "
                  "resumed on other GPU counts (benchmarks/resume_check.py --mode across):", ""]
        for key, value in across.items():
            if key.startswith("on_"):
                lines.append(f"- {key[3:]} GPU(s): exit {value['exit_code']}, same global batches "
                             f"{value['same_global_batches']} ({value.get('batches_compared')} compared); message: "
                             f"`{value['message']}`")
    elif across:
        lines += ["", f"The 2-GPU checkpoint resumed on other GPU counts: {across.get('status')}"]
    for model, agreement in d["eval_agreement"].items():
        lines += ["", f"Distributed evaluation of {model} ({' vs '.join(agreement['runs'])}, same weights): same "
                  f"metrics {agreement['same_metrics']}, same predictions {agreement['same_detections']}; "
                  f"metrics {json.dumps(agreement['metrics'])}"]
    curves = d.get("loss_curves")
    if curves:
        counts = curves["gpus"]
        lines += ["", f"Loss curves at the same global batch (total_loss, median of each {WINDOW}-iteration "
                  f"window): " + "; ".join(f"{c} GPUs vs 1 differ by at most {curves['n_vs_1'][c]}" for c in counts)
                  + f"; two seeds on 1 GPU by {curves['seed_spread']}: within the spread {curves['within_spread']}",
                  "", "| iteration | 1 GPU seed 0 | 1 GPU seed 1 | " + " | ".join(f"{c} GPUs seed 0" for c in counts)
                  + " |", "|---|---|---|" + "---|" * len(counts)]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in curves["windows"]]
    stepsync = {k: v for k, v in results.items() if "_stepsync_" in k and v.get("status") == "ok"}
    for name, r in stepsync.items():
        default = results.get(name.replace("_stepsync", ""), {})
        if default.get("status") == "ok":
            lines += ["", f"Losses copied and gathered every step (`SOLVER.LOSS_SYNC_PERIOD 1`, Detectron2's way) "
                      f"against every 20 (the default): {name} {r['images_per_s']} items/s "
                      f"({r['seconds_per_iteration']} s/iter) against {default['images_per_s']} "
                      f"({default['seconds_per_iteration']} s/iter)"]
    skipped = [f"{k} ({v.get('status')})" for k, v in results.items() if v.get("status") != "ok"]
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a benchmarks.coco_like root (with --videos)")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs of the machine (2 or 4); 1 is the baseline")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ddp_runs"), help="run folders")
    parser.add_argument("--tag", default="run")
    parser.add_argument("--iters", type=int, default=2 * WINDOW)
    parser.add_argument("--per-gpu", type=int, default=8)
    parser.add_argument("--workers", type=int, default=8, help="DATALOADER.NUM_WORKERS per GPU")
    parser.add_argument("--time-budget", type=float, default=420.0, help="seconds; no job starts after that")
    parser.add_argument("--only", default="", help="comma-separated job names to run (default: the plan)")
    parser.add_argument("--models", default="maskrcnn,maskrcnn_bitmask,video_cls,clip_det",
                        help="comma-separated models whose speed to measure (the checks run in any case)")
    parser.add_argument("--lc-model", default="maskrcnn_small", choices=sorted(MODELS),
                        help="the model of the loss curves, the cross-count resume and the evaluation")
    parser.add_argument("--lc-iters", type=int, default=200)
    parser.add_argument("--lc-batch", type=int, default=8, help="global batch of the loss-curve runs")
    parser.add_argument("--lc-period", type=int, default=100, help="checkpoint period of the 2-GPU loss-curve run")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (gloo), to check the tool")
    args = parser.parse_args(argv)
    args.data, args.work = args.data.resolve(), args.work.resolve()
    args.models = [m for m in args.models.split(",") if m]
    start = time.time()
    deadline = start + args.time_budget
    skip = 0 if args.smoke else WINDOW
    sampler = None if args.smoke else GpuSampler(args.out / f"ddp_{args.tag}_gpu_samples.csv")
    meta = {"tag": args.tag, "iters": args.iters, "per_gpu": args.per_gpu, "workers": args.workers,
            "gpus": args.gpus, "smoke": args.smoke, "device": _device(), "models": args.models,
            "loss_curves": {"model": args.lc_model, "iters": args.lc_iters, "global_batch": args.lc_batch,
                            "checkpoint_period": args.lc_period},
            "data_note": "benchmarks/coco_like.py (640x480 JPEG q90, polygon masks; 32-frame 256px frame folders)"}
    results: dict[str, dict] = {}
    only = set(filter(None, args.only.split(",")))
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; choose from {sorted(MODELS)}")
    for phase in plan(args):
        phase = [(name, build) for name, build in phase if not only or name in only]
        if not phase:
            continue
        if time.time() > deadline - 30:
            for name, _ in phase:
                kind = "train" if not name.startswith(("eval_", "model_only", "resume", "mask_targets")) else ""
                results[name] = {"status": "skipped: time budget", "kind": kind}
            continue
        jobs = [build() for _, build in phase]
        run_phase(jobs, args, sampler, skip, deadline + 60)
        for job in jobs:
            results[job.name] = job.result
        write_report(args.out, args.tag, meta, results)
    if sampler is not None:
        sampler.stop()
    write_report(args.out, args.tag, meta, results)
    print((args.out / f"ddp_{args.tag}.md").read_text())
    return 0


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
        return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"
    except ImportError:
        return ""


if __name__ == "__main__":
    raise SystemExit(main())
