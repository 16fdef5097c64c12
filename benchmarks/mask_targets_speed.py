"""How long cutting the Mask R-CNN mask targets of one training batch takes: Detectron2's way (the sampled
proposals index ``PolygonMasks``, then ``crop_and_resize`` rasterises each with pycocotools on the CPU)
against ``hiera_det.detection.mask_targets`` (index the packed polygon tensor, rasterise every RoI at once)
on the CPU and, when there is one, the GPU; plus how well the two agree on that batch.

The batch is real: ``--images`` COCO-like images through the training mapper of ``hiera_fpn.yaml`` (1024 LSJ),
and ``--rois`` foreground proposals spread over them, each a ground-truth box with its corners moved by up to
20% of its size (as sampled proposals overlap their instance by IoU >= 0.5).

    python -m benchmarks.mask_targets_speed --data /tmp/coco_like --out benchmarks/results/mask_targets_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def _timed(function, repeats: int, sync) -> dict:
    function()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3)}


def real_batch(data: Path, images: int) -> list:
    """``images`` training-mapped COCO-like images (Detectron2's ``PolygonMasks`` in ``gt_masks``)."""
    import hiera_det.d2  # noqa: F401
    from benchmarks.ddp import MODELS, dataset_args
    from detectron2.data import DatasetCatalog
    from hiera_det.data.image_mapper import build_detection_train_mapper
    from hiera_det.engine.run_config import build_run_config

    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.HIERA.WEIGHTS", "", "DATASETS.TRAIN",
            f"('{MODELS['maskrcnn']['train']}',)"]
    cfg, _ = build_run_config(MODELS["maskrcnn"]["config"], opts, dataset_args(data)[1::2])
    mapper = build_detection_train_mapper(cfg)
    mapper.polygon_tensors = False  # Detectron2's polygon path (LSJ crops the polygons: needs shapely)
    records = DatasetCatalog.get(MODELS["maskrcnn"]["train"])
    return [mapper(record)["instances"] for record in records[:images]]


def proposals(batch: list, rois: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(matched instance index, proposal box) per image, ``rois`` in all, spread evenly."""
    generator = torch.Generator().manual_seed(seed)
    per_image = []
    for k, instances in enumerate(batch):
        count = rois // len(batch) + (k < rois % len(batch))
        matched = torch.randint(len(instances), (count,), generator=generator)
        boxes = instances.gt_boxes.tensor[matched]
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = boxes + (torch.rand(count, 4, generator=generator) - 0.5) * 0.4 * size
        per_image.append((matched, boxes))
    return per_image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a benchmarks.coco_like root")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rois", type=int, default=512)
    parser.add_argument("--side", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    from hiera_det.detection.mask_targets import pack_polygons, pad_polygons, rasterize_polygons_in_boxes

    batch = real_batch(args.data, args.images)
    sampled = proposals(batch, args.rois)
    packed = [pack_polygons(instances.gt_masks.polygons) for instances in batch]

    def detectron2_targets():
        return torch.cat([instances.gt_masks[matched].crop_and_resize(boxes, args.side)
                          for instances, (matched, boxes) in zip(batch, sampled)])

    def ours(device):
        polygons = [p.to(device) for p in packed]  # in training the instances arrive on the device
        chosen = [(m.to(device), b.to(device)) for m, b in sampled]

        def run():
            gathered = torch.cat(pad_polygons([p[m] for p, (m, _) in zip(polygons, chosen)]))
            return rasterize_polygons_in_boxes(gathered, torch.cat([b for _, b in chosen]), args.side)

        return run

    instances_per_image = [len(i) for i in batch]
    result = {"status": "ok", "images": args.images, "rois": args.rois, "mask_side": args.side,
              "instances_per_image": instances_per_image,
              "edges_padded_per_image": [p.shape[1] for p in packed],
              "torch_threads": torch.get_num_threads()}  # fmt: skip
    reference = detectron2_targets()
    result["detectron2_cpu"] = _timed(detectron2_targets, args.repeats, lambda: None)
    result["gpu_targets_on_cpu"] = _timed(ours("cpu"), max(1, args.repeats // 5), lambda: None)  # seconds each
    mine = ours("cpu")()
    if torch.cuda.is_available():
        result["gpu_targets_on_cuda"] = _timed(ours("cuda"), args.repeats * 5, torch.cuda.synchronize)
        result["cuda_equals_cpu"] = bool(torch.equal(ours("cuda")().cpu(), mine))
        result["cuda_device"] = torch.cuda.get_device_name(0)
    differing = (mine != reference).flatten(1).sum(1)
    union = (mine | reference).flatten(1).sum(1).clamp(min=1)
    iou = (mine & reference).flatten(1).sum(1) / union
    result["agreement"] = {"pixels": round(1 - differing.sum().item() / mine.numel(), 5),
                           "exact_masks": round((differing == 0).float().mean().item(), 4),
                           "mean_iou": round(iou.mean().item(), 4), "min_iou": round(iou.min().item(), 4),
                           "max_differing_pixels": int(differing.max())}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
