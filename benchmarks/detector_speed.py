"""Where Mask R-CNN's time goes, and what the fast inference path and a compiled training backbone change.

Inference (one 1024 image, 100 detections with masks, bf16 autocast unless stated):
* the split per stage (pre-processing, backbone, RPN, box head + box post-processing, mask head, mask paste +
  rescale), from CUDA events and wall clock around each stage, for ViTDet-B, ours with Detectron2's
  ``StandardROIHeads`` and ours with ``HieraROIHeads`` (the default of the packaged configs);
* end-to-end latency of variants (eager / compiled backbone, fp32 / bf16; ours also with the backbone as CUDA
  graphs, ``mode="reduce-overhead"``), batch-8 throughput, and the evaluation loop's images/s on 640x480
  images (resize, model, paste at 480x640, COCO json with RLE masks);
* agreement of the fast path with Detectron2's path: boxes, scores, classes and mask IoU of matched
  detections (same precision, and bf16 against the eager fp32 path);
* a torch.profiler table of the slowest operators of each path;
* (``--parts window_kernel``) ours with the trunk's small-window attention kernel on and off, eager and with
  the backbone compiled;
* (``--parts host_after_compile``) whether a compile slows what runs after it: ours eager and compiled, with
  inductor's compile workers alive and shut down. The compiled latencies above are taken with the workers
  shut down after each compile.

Training (batch 8 at 1024, bf16 autocast): eager against the backbone compiled, foreach against fused
AdamW, ``HieraRPN`` against Detectron2's ``RPN``: images/s, peak memory, the time the Python garbage
collector takes, and the split of a step by phase (pre-processing, backbone, RPN, RoI heads, backward,
optimizer) and by the RPN's and RoI heads' own steps, synchronized at each boundary; then the loss curves of
eager and compiled from the same seed (``--curve-iters``).

``--parts proposals``: the RPN's proposal selection alone, Detectron2's ``find_top_rpn_proposals`` against
``HieraRPN``'s, for training's batch of 8 and inference's single image, and whether they agree.

    python -m benchmarks.detector_speed --out /tmp/det            # GPU
    python -m benchmarks.detector_speed --smoke --out /tmp/det    # CPU, tiny models, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.cases import synthetic_instances
from benchmarks.peers import _ours_cfg, vitdet_detector


def build_ours(size: int, smoke: bool, heads: str, rpn: str = "HieraRPN"):
    from detectron2.modeling import build_model

    cfg = _ours_cfg("mask_unit", (size, size), smoke, torch.get_default_device())
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.NAME = heads
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = rpn
    if heads == "StandardROIHeads":  # Detectron2's inference throughout: its mask paste too
        cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    return build_model(cfg).eval(), cfg


def images(batch: int, size: int, device, seed: int = 0, height: int | None = None, width: int | None = None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8).to(device)
        out.append({"image": image, "height": height or size, "width": width or size})
    return out


def _sync(device):
    harness.synchronize(device)


def spread_predictors(model) -> None:
    """Widen the class and mask predictors of a randomly initialized model, in place.

    Detectron2 initializes them with std 0.01 and 0.001: random weights then give every class the same score
    and every mask pixel a probability of 0.5, which makes any comparison of outputs a comparison of ties.
    Wider predictors keep the detections and masks distinct."""
    heads = model.roi_heads
    with torch.no_grad():
        heads.box_predictor.cls_score.weight.mul_(20)
        heads.mask_head.predictor.weight.mul_(200)


def split_once(model, inputs, device, dtype: str) -> dict:
    """Milliseconds per stage of one inference call (GPU: CUDA events; CPU: wall clock)."""
    stages = ["preprocess", "backbone", "rpn", "box_head_and_nms", "mask_head", "paste_and_rescale"]
    cuda = device.type == "cuda"
    marks, walls = [], []

    def mark():
        walls.append(time.perf_counter())
        if cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            marks.append(e)

    _sync(device)
    with torch.no_grad(), harness.autocast(dtype, device):
        mark()
        images_ = model.preprocess_image(inputs)
        mark()
        features = model.backbone(images_.tensor)
        mark()
        proposals, _ = model.proposal_generator(images_, features, None)
        mark()
        instances = model.roi_heads._forward_box(features, proposals)
        mark()
        instances = model.roi_heads.forward_with_given_boxes(features, instances)
        mark()
        model._postprocess(instances, inputs, images_.image_sizes)
        mark()
    _sync(device)
    walls.append(time.perf_counter())
    out = {}
    for i, name in enumerate(stages):
        out[name] = marks[i].elapsed_time(marks[i + 1]) if cuda else (walls[i + 1] - walls[i]) * 1e3
        out[name + "_cpu"] = (walls[i + 1] - walls[i]) * 1e3
    out["total"] = sum(out[s] for s in stages)
    out["total_wall"] = (walls[-1] - walls[0]) * 1e3
    return out


def split(model, inputs, device, dtype, repeats) -> dict:
    for _ in range(2):
        split_once(model, inputs, device, dtype)
    runs = [split_once(model, inputs, device, dtype) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def latency(fn, device, warmup, repeats) -> dict:
    for _ in range(warmup):
        fn()
    return harness.summarize([harness.time_call(fn, device) for _ in range(repeats)])


def compile_workers() -> int:
    """How many child processes this process has (on Linux; 0 elsewhere): inductor's compile workers."""
    me, count = str(os.getpid()), 0
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    count += f.read().rsplit(")", 1)[1].split()[1] == me  # the field after the state: ppid
            except (OSError, IndexError):
                pass
    return count


def shutdown_compile_workers() -> None:
    """End inductor's pool of compile workers (a later compile starts it again), so that timings after a
    compile run on a host where only the measured process works."""
    from torch._inductor import async_compile

    if hasattr(async_compile, "shutdown_compile_workers"):
        async_compile.shutdown_compile_workers()


def infer_call(model, inputs, device, dtype):
    def run():
        with torch.no_grad(), harness.autocast(dtype, device):
            return model(inputs)

    return run


def agreement(a: list[dict], b: list[dict]) -> dict:
    """Detections of ``a`` matched to ``b`` (same class, box IoU >= 0.99): matched fraction, largest score
    and box differences, and the smallest and mean mask IoU of the matched pairs."""
    from torchvision.ops import box_iou

    matched = total = 0
    score_diff = box_diff = 0.0
    mask_ious = []
    for ra, rb in zip(a, b):
        ia, ib = ra["instances"].to("cpu"), rb["instances"].to("cpu")
        total += max(len(ia), len(ib))
        if not len(ia) or not len(ib):
            continue
        iou = box_iou(ia.pred_boxes.tensor.float(), ib.pred_boxes.tensor.float())
        iou[ia.pred_classes[:, None] != ib.pred_classes[None, :]] = 0
        best, j = iou.max(dim=1)
        for i in torch.nonzero(best >= 0.99).flatten().tolist():
            matched += 1
            k = j[i].item()
            score_diff = max(score_diff, abs(ia.scores[i].item() - ib.scores[k].item()))
            box_diff = max(box_diff, (ia.pred_boxes.tensor[i] - ib.pred_boxes.tensor[k]).abs().max().item())
            if ia.has("pred_masks"):
                ma, mb = ia.pred_masks[i].bool(), ib.pred_masks[k].bool()
                union = (ma | mb).sum().item()
                mask_ious.append((ma & mb).sum().item() / union if union else 1.0)
    return {
        "detections": total,
        "matched_fraction": matched / total if total else 1.0,
        "max_score_diff": score_diff,
        "max_box_diff_px": box_diff,
        "min_mask_iou": min(mask_ious) if mask_ious else None,
        "mean_mask_iou": statistics.mean(mask_ious) if mask_ious else None,
    }


def profile_table(fn, device, rows=18) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    with profile(activities=activities) as prof:
        for _ in range(3):
            fn()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def eval_loop(model, device, dtype, count, smoke) -> dict:
    """Images/s of what COCO evaluation does per image: resize (shortest edge 1024, long side 1024 cap as
    the LSJ test config), model, masks pasted at the original 480x640, instances_to_coco_json (RLE)."""
    from detectron2.data import transforms as T
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    side = 64 if smoke else 1024
    aug = T.ResizeShortestEdge(side, side)
    g = torch.Generator().manual_seed(1)
    raw = [torch.randint(0, 256, (480, 640, 3), generator=g, dtype=torch.uint8).numpy() for _ in range(4)]
    resized = [aug.get_transform(r).apply_image(r) for r in raw]
    total = {"model": 0.0, "to_json": 0.0}

    def one(i):
        img = resized[i % len(resized)]
        t0 = time.perf_counter()
        tensor = torch.as_tensor(img.transpose(2, 0, 1).copy()).to(device)
        with torch.no_grad(), harness.autocast(dtype, device):
            out = model([{"image": tensor, "height": 480, "width": 640}])[0]
        inst = out["instances"].to("cpu")
        t1 = time.perf_counter()
        instances_to_coco_json(inst, i)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    one(0)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(count):
        a, b = one(i)
        total["model"] += a
        total["to_json"] += b
    elapsed = time.perf_counter() - t0
    return {
        "images": count,
        "images_per_s": count / elapsed,
        "model_and_copy_ms": total["model"] / count * 1e3,
        "coco_json_ms": total["to_json"] / count * 1e3,
    }


# --------------------------------------------------------------------------------------------------------


def run_inference(args, device, report, save):
    size = 64 if args.smoke else 1024
    reps = 3 if args.smoke else args.repeats
    one = images(1, size, device)
    models = {}
    # built under a device context, not torch.set_default_device: that one intercepts every later torch
    # call in Python, which would slow the Python-heavy heads being measured
    with torch.device(device):
        models["vitdet_b"] = vitdet_detector((size, size), args.smoke).to(device).eval()
        models["ours_d2_heads"], _ = build_ours(size, args.smoke, "StandardROIHeads")
        models["ours_fast"], _ = build_ours(size, args.smoke, "HieraROIHeads")
    spread_predictors(models["ours_d2_heads"])
    # the same weights in both of ours, so that their outputs can be compared
    models["ours_fast"].load_state_dict(models["ours_d2_heads"].state_dict())
    inf = report.setdefault("inference", {})

    inf["split_ms"] = {name: split(m, one, device, "bf16", reps) for name, m in models.items()}
    save()
    lat = inf.setdefault("latency_ms", {})
    for name, m in models.items():
        for dtype in ("bf16", "fp32"):
            lat[f"{name} {dtype} eager"] = latency(infer_call(m, one, device, dtype), device, 3, reps)
    save()

    outs = {}
    for name in ("ours_d2_heads", "ours_fast"):
        for dtype in ("fp32", "bf16"):
            outs[name, dtype] = infer_call(models[name], one, device, dtype)()
    inf["agreement"] = {
        "fast vs d2 heads, fp32": agreement(outs["ours_fast", "fp32"], outs["ours_d2_heads", "fp32"]),
        "fast vs d2 heads, bf16": agreement(outs["ours_fast", "bf16"], outs["ours_d2_heads", "bf16"]),
        "fast bf16 vs d2 heads fp32": agreement(outs["ours_fast", "bf16"], outs["ours_d2_heads", "fp32"]),
    }
    save()

    eight = images(8, size, device, seed=2)
    thr = inf.setdefault("batch8_images_per_s", {})
    for name in ("ours_fast", "vitdet_b"):
        s = latency(infer_call(models[name], eight, device, "bf16"), device, 2, max(3, reps // 3))
        thr[f"{name} bf16 eager"] = 8 / s["median_ms"] * 1e3
    save()

    ev = inf.setdefault("eval_loop", {})
    for name in ("ours_d2_heads", "ours_fast", "vitdet_b"):
        for dtype in ("bf16", "fp32"):
            ev[f"{name} {dtype}"] = eval_loop(
                models[name], device, dtype, 4 if args.smoke else args.eval_images, args.smoke
            )
    save()

    if not args.no_profile:
        prof = inf.setdefault("profile", {})
        for name in ("ours_d2_heads", "ours_fast"):
            prof[name] = profile_table(infer_call(models[name], one, device, "bf16"), device)
        save()

    if not args.no_compile:
        for name in ("ours_fast", "vitdet_b"):
            m = models[name]
            eager_backbone = m.backbone
            m.backbone = torch.compile(eager_backbone, dynamic=False)
            t0 = time.monotonic()
            infer_call(m, one, device, "bf16")()
            _sync(device)
            inf.setdefault("compile_s", {})[name] = time.monotonic() - t0
            shutdown_compile_workers()  # see run_host_after_compile
            lat[f"{name} bf16 compiled"] = latency(infer_call(m, one, device, "bf16"), device, 3, reps)
            inf["split_ms"][f"{name} compiled"] = split(m, one, device, "bf16", reps)
            save()
            if name == "ours_fast":
                t0 = time.monotonic()
                s = latency(infer_call(m, eight, device, "bf16"), device, 2, max(3, reps // 3))
                thr[f"{name} bf16 compiled"] = 8 / s["median_ms"] * 1e3
                inf["compile_s"]["ours_fast batch 8"] = time.monotonic() - t0
                save()
            m.backbone = eager_backbone
        if (
            device.type == "cuda"
        ):  # the backbone as CUDA graphs: at batch 1 the host, not the GPU, sets the pace
            m = models["ours_fast"]
            eager_backbone = m.backbone
            m.backbone = torch.compile(eager_backbone, mode="reduce-overhead", dynamic=False)
            t0 = time.monotonic()
            for _ in range(3):  # CUDA graphs record on a later call
                infer_call(m, one, device, "bf16")()
            _sync(device)
            inf["compile_s"]["ours_fast CUDA graphs"] = time.monotonic() - t0
            shutdown_compile_workers()
            lat["ours_fast bf16 compiled, CUDA graphs"] = latency(
                infer_call(m, one, device, "bf16"), device, 3, reps
            )
            inf["split_ms"]["ours_fast compiled, CUDA graphs"] = split(m, one, device, "bf16", reps)
            m.backbone = eager_backbone
            save()
    del models
    harness.release_memory(device)


def kernel_on_off(
    device, smoke: bool, repeats: int, modes=(None, "default"), deadline=float("inf"), kernel="window_kernel"
):
    """Ours (``HieraROIHeads``, bf16) on one 1024 image with one of the trunk's inference kernels on and off
    (``Hiera.set_inference_kernels(<kernel>=...)``: ``window_kernel``, the small-window attention, or
    ``fused_mlp``), same weights: how far the kernel moves the detections (bf16, on against off), the
    per-stage split of each (eager), and end-to-end latency per compile mode (None: eager, "default": the
    backbone compiled), on and off timed interleaved. A mode is skipped once ``deadline``
    (``time.monotonic()``) has passed."""
    import copy

    from hiera_det.modeling import Hiera

    size = 64 if smoke else 1024
    one = images(1, size, device)
    with torch.device(device):
        on, _ = build_ours(size, smoke, "HieraROIHeads")
    spread_predictors(on)
    off = copy.deepcopy(on)
    for model, flag in ((on, True), (off, False)):
        next(m for m in model.modules() if isinstance(m, Hiera)).set_inference_kernels(**{kernel: flag})
    workloads = {
        name: harness.DetectorWorkload(model, one) for name, model in (("kernel on", on), ("kernel off", off))
    }
    outs = {name: infer_call(w.model, one, device, "bf16")() for name, w in workloads.items()}
    record = {
        "kernel": kernel,
        "image": size,
        "dtype": "bf16",
        "agreement_on_vs_off": agreement(outs["kernel on"], outs["kernel off"]),
        "split_ms": {name: split(w.model, one, device, "bf16", repeats) for name, w in workloads.items()},
        "latency_ms": {},
        "compile_s": {},
    }
    for mode in modes:
        mode_name = mode or "eager"
        if time.monotonic() > deadline:
            record["latency_ms"][mode_name] = {"skipped": "time budget spent"}
            continue
        calls = {}
        for name, w in workloads.items():
            calls[name], facts = harness.warm_up(w, "bf16", mode, device, 3, with_flops=False)
            if "compile_s" in facts:
                record["compile_s"][f"{name} {mode_name}"] = round(facts["compile_s"], 1)
        timed = harness.time_interleaved(calls, device, repeats)
        record["latency_ms"][mode_name] = {
            name: harness.summarize(times) if times else {"error": timed.errors.get(name, "no timed call")}
            for name, times in timed.times_ms.items()
        }
        medians = {k: v.get("median_ms") for k, v in record["latency_ms"][mode_name].items()}
        print(kernel, mode_name, medians, flush=True)
    return record


def run_window_kernel(args, device, report, save):
    modes = (None,) if args.no_compile else (None, "default")
    repeats = 3 if args.smoke else args.repeats
    report["window_kernel"] = kernel_on_off(device, args.smoke, repeats, modes)
    save()


def run_fused_mlp(args, device, report, save):
    modes = (None,) if args.no_compile else (None, "default")
    repeats = 3 if args.smoke else args.repeats
    report["fused_mlp"] = kernel_on_off(device, args.smoke, repeats, modes, kernel="fused_mlp")
    save()


def train_models(args, device, fused: bool, rpn: str = "HieraRPN", heads: str = "HieraROIHeads"):
    from hiera_det.engine.optimizer import build_optimizer

    size = 64 if args.smoke else 1024
    with torch.device(device):
        model, cfg = build_ours(size, args.smoke, heads, rpn)
        model.train()
        opt = build_optimizer(cfg, model)
    if fused and device.type == "cuda":
        for group in opt.param_groups:
            group["fused"], group["foreach"] = True, False
    return model, opt


def train_batches(count, batch, size, device, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        items = []
        for _ in range(batch):
            image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
            inst = synthetic_instances(size, size, 2 if size < 128 else 8, g).to(device)
            items.append({"image": image.to(device), "height": size, "width": size, "instances": inst})
        out.append(items)
    return out


def train_step(model, opt, batch, device):
    from detectron2.utils.events import EventStorage

    with EventStorage(), harness.autocast("bf16", device):
        losses = model(batch)
    total = sum(losses.values())
    total.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in losses.items()}, total.detach()


TRAIN_PHASES = ["preprocess", "backbone", "rpn", "roi_heads", "backward", "optimizer"]


def train_split_once(model, opt, batch, device) -> dict:
    """Wall milliseconds per phase of one training step, the GPU synchronized at each phase boundary (so a
    phase takes its host time or its GPU time, whichever is longer), and of the RPN's and RoI heads' steps
    (``TRAIN_STEPS``), each also between synchronizations."""
    from detectron2.utils.events import EventStorage

    walls = []

    def mark():
        _sync(device)
        walls.append(time.perf_counter())

    steps: dict[str, float] = {}
    with EventStorage(), _timed_methods(model, steps, device):
        mark()
        with harness.autocast("bf16", device):
            images_ = model.preprocess_image(batch)
            gt = [x["instances"].to(device) for x in batch]
            mark()
            features = model.backbone(images_.tensor)
            mark()
            proposals, proposal_losses = model.proposal_generator(images_, features, gt)
            mark()
            _, detector_losses = model.roi_heads(images_, features, proposals, gt)
            total = sum({**detector_losses, **proposal_losses}.values())
            mark()
        total.backward()
        mark()
        opt.step()
        opt.zero_grad(set_to_none=True)
        mark()
    out = {name: (walls[i + 1] - walls[i]) * 1e3 for i, name in enumerate(TRAIN_PHASES)}
    out["total"] = (walls[-1] - walls[0]) * 1e3
    return out | {f"{k} (synchronized)": v for k, v in steps.items()}


# The training steps of Detectron2's RPN and RoI heads that train_split_once times one by one.
TRAIN_STEPS = {
    "proposal_generator": ["label_and_sample_anchors", "losses", "predict_proposals"],
    "roi_heads": ["label_and_sample_proposals", "_forward_box", "_forward_mask"],
}  # fmt: skip


class _timed_methods:
    """Replace ``TRAIN_STEPS``'s methods of ``model`` by wrappers that synchronize before
    and after and add their wall milliseconds to ``record``; restored on exit."""

    def __init__(self, model, record: dict, device):
        self.model, self.record, self.device = model, record, device
        self.patched = []

    def __enter__(self):
        for owner_name, names in TRAIN_STEPS.items():
            owner = getattr(self.model, owner_name)
            for name in names:
                if not hasattr(owner, name):
                    continue
                original = getattr(owner, name)
                key = f"{owner_name}.{name}"

                def wrapper(*args, _original=original, _key=key, **kwargs):
                    _sync(self.device)
                    t0 = time.perf_counter()
                    result = _original(*args, **kwargs)
                    _sync(self.device)
                    self.record[_key] = self.record.get(_key, 0.0) + (time.perf_counter() - t0) * 1e3
                    return result

                self.patched.append((owner, name))
                setattr(owner, name, wrapper)
        return self

    def __exit__(self, *exc):
        for owner, name in reversed(self.patched):
            delattr(owner, name)  # the instance attribute: the class's method shows through again


class GarbageCollectionTimer:
    """Time the Python garbage collector spends, by generation, while active (``gc.callbacks``)."""

    def __init__(self):
        self.ms = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._start = None

    def _callback(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.ms[info["generation"]] += (time.perf_counter() - self._start) * 1e3
            self.count[info["generation"]] += 1

    def __enter__(self):
        import gc

        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        import gc

        gc.callbacks.remove(self._callback)

    def per_step(self, steps: int) -> dict:
        return {f"gen{g}": {"ms": round(self.ms[g] / steps, 2), "collections": self.count[g] / steps}
                for g in range(3)}  # fmt: skip


def run_training(args, device, report, save):
    size = 64 if args.smoke else 1024
    batch = 2 if args.smoke else 8
    tr = report.setdefault("training", {})
    data = train_batches(2, batch, size, device, 0)
    # (name, backbone compiled, fused AdamW, proposal generator, RoI heads); Detectron2's RoI heads train as
    # HieraROIHeads do, except that they label and sample the proposals image by image
    ours, detectron2 = ("HieraRPN", "HieraROIHeads"), ("RPN", "StandardROIHeads")
    variants = [
        ("eager foreach", False, False, *ours),
        ("eager fused", False, True, *ours),
        ("eager fused (Detectron2 RPN and sampling)", False, True, *detectron2),
        ("compiled fused", True, True, *ours),
        ("compiled fused (Detectron2 RPN and sampling)", True, True, *detectron2),
    ]
    if args.no_compile:
        variants = [v for v in variants if not v[1]]
    if args.train_variants:
        wanted = [name.strip() for name in args.train_variants.split(";") if name.strip()]
        unknown = sorted(set(wanted) - {v[0] for v in variants})
        if unknown:
            raise ValueError(
                f"unknown --train-variants {unknown}; choose among {[v[0] for v in variants]} (separated by ';')"
            )
        variants = [v for v in variants if v[0] in wanted]
    for name, compile_, fused, rpn, heads in variants:
        try:
            train_variant(args, device, tr, name, compile_, fused, rpn, heads, data, batch)
        except Exception as e:  # e.g. out of memory: record it, measure the others
            tr[name] = {"error": harness.describe_error(e)}
        save()
        harness.release_memory(device)

    if args.curve_iters > 0:
        _loss_curves(args, device, tr, size, save)


def train_variant(args, device, tr, name, compile_, fused, rpn, heads, data, batch):
    torch.manual_seed(0)
    model, opt = train_models(args, device, fused, rpn, heads)
    if compile_:
        model.backbone = torch.compile(model.backbone, dynamic=False)
    t0 = time.monotonic()
    train_step(model, opt, data[0], device)
    _sync(device)
    first = time.monotonic() - t0
    for i in range(2):
        train_step(model, opt, data[i % 2], device)
    held = harness.resident_bytes(model, opt, device)
    peak = harness.peak_call_bytes(lambda: train_step(model, opt, data[0], device), device)
    reps = 3 if args.smoke else args.train_repeats
    with GarbageCollectionTimer() as gc_timer:
        times = [
            harness.time_call(lambda i=i: train_step(model, opt, data[i % 2], device), device)
            for i in range(reps)
        ]
    s = harness.summarize(times)
    runs = [train_split_once(model, opt, data[i % 2], device) for i in range(3 if args.smoke else 6)]
    phases = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    if not args.no_profile:
        tr.setdefault("profiles", {})[name] = profile_table(
            lambda: train_step(model, opt, data[0], device), device, rows=30
        )
    tr[name] = {
        "images_per_s": batch / s["median_ms"] * 1e3,
        "median_ms": s["median_ms"],
        "p10_ms": s["p10_ms"],
        "p90_ms": s["p90_ms"],
        "peak_gib": (held + peak) / 2**30 if peak is not None else None,
        "first_step_s": first,
        "garbage_collection_per_step": gc_timer.per_step(reps),
        "phases_ms": phases,
    }


def _loss_curves(args, device, tr, size, save):
    """Loss curves from the same seed and data, eager against compiled (batch args.curve_batch)."""
    iters = 4 if args.smoke else args.curve_iters
    cb = 1 if args.smoke else args.curve_batch
    curves = tr.setdefault("loss_curves", {"batch": cb, "iterations": iters})
    data = train_batches(8, cb, size, device, 3)
    for name, compile_ in (("eager", False), ("compiled", True)):
        if compile_ and args.no_compile:
            continue
        torch.manual_seed(0)
        model, opt = train_models(args, device, True)
        if compile_:
            model.backbone = torch.compile(model.backbone, dynamic=False)
        totals, t0 = [], time.monotonic()
        for i in range(iters):
            torch.manual_seed(1000 + i)  # drop path and sampling: the same seeds step by step
            _, total = train_step(model, opt, data[i % len(data)], device)
            totals.append(total)
        curves[name] = [float(t) for t in torch.stack(totals).cpu()]
        curves[name + "_s"] = time.monotonic() - t0
        save()
        del model, opt
        harness.release_memory(device)
    if "compiled" in curves:
        e, c = curves["eager"], curves["compiled"]
        w = max(1, len(e) // 10)
        curves["mean_first_tenth"] = [statistics.mean(e[:w]), statistics.mean(c[:w])]
        curves["mean_last_tenth"] = [statistics.mean(e[-w:]), statistics.mean(c[-w:])]
        curves["max_abs_diff"] = max(abs(a - b) for a, b in zip(e, c))
        save()


def run_host_after_compile(args, device, report, save):
    """Whether a compile slows what runs after it: our Mask R-CNN (``HieraROIHeads``, bf16) on one image,
    eager and with the backbone compiled, before the compile, after it while inductor's compile workers
    live, and after they are shut down; with the number of child processes and the load average each time.
    (Session 9's and 10's compiled runs had the eager RPN and heads 30-65% slower than eager runs of the same
    process, and even the pre-processing, which the compile does not touch.)"""
    size = 64 if args.smoke else 1024
    reps = 3 if args.smoke else args.repeats
    one = images(1, size, device)
    with torch.device(device):
        model, _ = build_ours(size, args.smoke, "HieraROIHeads")
    rec = report.setdefault("host_after_compile", {})

    def measure(label):
        rec[label] = {
            "latency_ms": latency(infer_call(model, one, device, "bf16"), device, 3, reps)["median_ms"],
            "split_ms": {k: round(v, 2) for k, v in split(model, one, device, "bf16", reps).items()
                         if not k.endswith("_cpu")},
            "child_processes": compile_workers(),
            "load_average": os.getloadavg(),
        }  # fmt: skip
        print(label, rec[label], flush=True)
        save()

    measure("eager, before compiling")
    eager_backbone = model.backbone
    compiled = torch.compile(eager_backbone, dynamic=False)
    model.backbone = compiled
    infer_call(model, one, device, "bf16")()
    _sync(device)
    model.backbone = eager_backbone
    measure("eager, compile workers alive")
    model.backbone = compiled
    measure("compiled, compile workers alive")
    shutdown_compile_workers()
    time.sleep(1)
    measure("compiled, compile workers shut down")
    model.backbone = eager_backbone
    measure("eager, compile workers shut down")


def rpn_outputs(batch: int, size: int, device, seed: int = 0):
    """Random RPN outputs of a ``size`` image batch as the FPN levels p2-p6 with 3 anchors give them:
    per-level proposals ``[N, R, 4]`` about their anchors' sizes, and objectness logits ``[N, R]``."""
    g = torch.Generator().manual_seed(seed)
    proposals, logits = [], []
    for level in range(5):
        stride = 4 * 2**level
        count = (size // stride) ** 2 * 3
        xy = torch.rand(batch, count, 2, generator=g) * size
        wh = torch.rand(batch, count, 2, generator=g) * 8 * stride + stride
        proposals.append(torch.cat([xy - wh / 2, xy + wh / 2], dim=2).to(device))
        logits.append(torch.randn(batch, count, generator=g).to(device))
    return proposals, logits


def run_proposals(args, device, report, save):
    """The RPN's proposal selection alone: Detectron2's ``find_top_rpn_proposals`` against ``HieraRPN``'s
    ``select_proposals``, training's batch of 8 (pre-NMS top 2000 per level) and inference's single image
    (top 1000), with how many proposals agree."""
    from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals

    from hiera_det.detection.proposals import select_proposals

    size = 64 if args.smoke else 1024
    rec = report.setdefault("proposals", {})
    for name, batch, topk, training in (
        ("training, batch 8", 8, 2000, True),
        ("inference, batch 1", 1, 1000, False),
    ):
        proposals, logits = rpn_outputs(batch, size, device)
        call_args = ([(size, size)] * batch, 0.7, topk, 1000, 0.0, training)
        calls = {
            "Detectron2": lambda: find_top_rpn_proposals([p.clone() for p in proposals], logits, *call_args),
            "HieraRPN": lambda: select_proposals(proposals, logits, *call_args),
        }
        entry = {}
        for label, fn in calls.items():
            entry[label] = latency(fn, device, 3, 5 if args.smoke else args.repeats)
        want, got = calls["Detectron2"](), calls["HieraRPN"]()
        same = [
            len(w) == len(o) and bool((w.proposal_boxes.tensor == o.proposal_boxes.tensor).all())
            for w, o in zip(want, got)
        ]
        entry["images_with_identical_proposals"] = f"{sum(same)} of {batch}"
        entry["proposals_in_common"] = sum(
            sum((Counter(map(tuple, w.proposal_boxes.tensor.tolist()))
                 & Counter(map(tuple, o.proposal_boxes.tensor.tolist()))).values())
            for w, o in zip(want, got)
        ) / max(1, sum(len(w) for w in want))  # fmt: skip
        rec[name] = entry
        print(name, {k: v["median_ms"] if isinstance(v, dict) else v for k, v in entry.items()}, flush=True)
        save()


PARTS = {"host_after_compile": run_host_after_compile, "inference": run_inference, "training": run_training,
         "window_kernel": run_window_kernel, "fused_mlp": run_fused_mlp, "proposals": run_proposals}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--tag", default="detector_speed")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models")
    parser.add_argument(
        "--parts",
        default="inference,training",
        help="comma-separated: inference, training, window_kernel, fused_mlp (one of the "
        "trunk's inference kernels on and off), host_after_compile, proposals",
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--eval-images", type=int, default=24)
    parser.add_argument("--train-repeats", type=int, default=8)
    parser.add_argument(
        "--train-variants",
        default="",
        help="semicolon-separated subset of the training variants (names as in run_training); default all",
    )
    parser.add_argument("--curve-iters", type=int, default=150, help="0 skips the loss curves")
    parser.add_argument("--curve-batch", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown --parts {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    import hiera_det.d2  # noqa: F401

    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": vars(args),
    }

    def save():
        (out / f"{args.tag}.json").write_text(json.dumps(report, indent=1))

    for part, fn in PARTS.items():
        if part in parts:
            t0 = time.monotonic()
            try:
                fn(args, device, report, save)
            except Exception as e:  # keep what the other part measured
                import traceback

                traceback.print_exc()
                report.setdefault("errors", {})[part] = harness.describe_error(e)
            report.setdefault("elapsed_s", {})[part] = time.monotonic() - t0
            save()
            print(f"{part}: {time.monotonic() - t0:.0f} s", flush=True)
    print(json.dumps({k: v for k, v in report.items() if k != "inference" or True}, indent=1)[:20000])


if __name__ == "__main__":
    main()
