"""The model-only training step of a ``benchmarks.ddp`` config on one GPU: forward, backward and optimizer
step on batches already in memory, timed with ``benchmarks.harness`` (what end-to-end training would reach
with an infinitely fast loader).

For Mask R-CNN three inputs: ``synthetic`` is the ``maskrcnn_train_1024`` case of ``benchmarks.cases``
(random images, 8 box-shaped instances as bitmasks: what ``tools/benchmark.py`` measures); ``real_batch`` is
one batch from the run's own loader (COCO-like polygon masks as padded tensors, whose mask targets the mask
head cuts on the GPU); ``real_batch_bitmask`` the same batch with ``INPUT.MASK_FORMAT bitmask``.

    python -m benchmarks.model_only --model maskrcnn --data /tmp/coco_like --batch 8 --out /tmp/mo.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _to_device(batch: list[dict], device: torch.device) -> list[dict]:
    moved = []
    for item in batch:
        item = dict(item)
        for key, value in item.items():
            if isinstance(value, torch.Tensor) or key == "instances":
                item[key] = value.to(device)
        moved.append(item)
    return moved


def _time_step(model, optimizer, inputs, dtype: str, device, warmup: int, repeats: int) -> dict:
    from benchmarks.harness import DetectorWorkload, summarize, time_call

    step = DetectorWorkload(model, inputs, optimizer).step(dtype, None)
    for _ in range(warmup):
        step()
    summary = summarize([time_call(step, device) for _ in range(repeats)])
    summary["images_per_s"] = round(len(inputs) / (summary["median_ms"] / 1e3), 2)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)

    import hiera_det.d2  # noqa: F401
    from benchmarks.ddp import MODELS, dataset_args, model_opts
    from hiera_det.engine import Trainer, loaders
    from hiera_det.engine.run_config import build_run_config

    datasets = dataset_args(args.data)[1::2]
    base = model_opts(args.model, args.smoke) + ["DATASETS.TRAIN", f"('{MODELS[args.model]['train']}',)",
                                                 "SOLVER.IMS_PER_BATCH", str(args.batch), "DATALOADER.NUM_WORKERS", "0"]
    cfg, _ = build_run_config(MODELS[args.model]["config"], base, datasets)
    device = torch.device(cfg.MODEL.DEVICE)
    dtype = ({"float16": "fp16", "bfloat16": "bf16"}[cfg.SOLVER.AMP.PRECISION] if cfg.SOLVER.AMP.ENABLED else "fp32")
    warmup, repeats = (1, 2) if args.smoke else (5, 15)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    result = {"status": "ok", "model": args.model, "batch": args.batch, "dtype": dtype, "device": str(device)}

    batch = _to_device(next(iter(loaders.build_train_loader(cfg))), device)
    result["real_batch"] = _time_step(model, optimizer, batch, dtype, device, warmup, repeats)
    result["real_batch_images_per_s"] = result["real_batch"]["images_per_s"]
    if args.model == "maskrcnn":
        bitmask_cfg, _ = build_run_config(MODELS[args.model]["config"], base + ["INPUT.MASK_FORMAT", "bitmask"],
                                          datasets)
        bitmask_batch = _to_device(next(iter(loaders.build_train_loader(bitmask_cfg))), device)
        result["real_batch_bitmask"] = _time_step(model, optimizer, bitmask_batch, dtype, device, warmup, repeats)
        result["real_batch_bitmask_images_per_s"] = result["real_batch_bitmask"]["images_per_s"]

        from benchmarks.cases import Point, default_cases

        case = next(c for c in default_cases() if c.name == "maskrcnn_train_1024")
        side = cfg.INPUT.LSJ.IMAGE_SIZE
        synthetic = case.inputs(Point(args.batch, (side, side)), device, seed=0, smoke=args.smoke)
        for item in synthetic:  # the case draws COCO's 80 classes; this model has the data's
            item["instances"].gt_classes %= cfg.MODEL.ROI_HEADS.NUM_CLASSES
        result["synthetic"] = _time_step(model, optimizer, synthetic, dtype, device, warmup, repeats)
        result["synthetic_images_per_s"] = result["synthetic"]["images_per_s"]
    if device.type == "cuda":
        result["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
