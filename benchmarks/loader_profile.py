"""Where the Mask R-CNN training loader spends its time, per image, on one CPU core: file read, JPEG decode,
LSJ resize and crop, annotation transform (polygons, as COCO stores them, or bitmasks), the hand-over from a
DataLoader worker, the host-to-device copy, and the mask targets the ROI head cuts in the main process; then
the whole loader's images/s against worker count and pinned memory.

    python -m benchmarks.loader_profile --data /tmp/coco_like --out benchmarks/results/loader_profile_cpu2.json

``--data`` is a ``benchmarks.coco_like`` root (generated there when missing). The config is hiera_fpn.yaml's
data path (1024 LSJ, polygon masks, boxes recomputed from the cropped masks).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.multiprocessing  # noqa: F401  (registers the shared-memory reductions of tensors)
from multiprocessing.reduction import ForkingPickler

LSJ_SIZE = 1024


def _timed(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _cfg(data_root: Path, mask_format: str, workers: int = 0):
    from hiera_det.engine.run_config import build_run_config

    specs = json.loads((data_root / "specs.json").read_text())
    opts = ["DATASETS.TRAIN", "('coco_like_train',)", "DATASETS.TEST", "()", "MODEL.DEVICE", "cpu",
            "INPUT.MASK_FORMAT", mask_format, "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_WORKERS", str(workers),
            "MODEL.HIERA.WEIGHTS", "", "MODEL.WEIGHTS", ""]  # fmt: skip
    datasets = [f"{k}={v}" for k, v in specs.items() if k.startswith("coco_like")]
    cfg, _ = build_run_config("hiera_fpn.yaml", opts, datasets)
    return cfg


def stage_times(data_root: Path, num_images: int, repeats: int) -> dict:
    """Median ms per image of each stage, averaged over ``num_images`` images."""
    import detectron2.data.transforms as T
    from detectron2.data import DatasetCatalog
    from detectron2.data import detection_utils as d2_utils
    from detectron2.structures import BitMasks, PolygonMasks

    from hiera_det.data.image_io import read_image
    from hiera_det.data.image_mapper import build_detection_train_mapper, build_lsj_augmentations

    cfg = _cfg(data_root, "polygon")
    dicts = DatasetCatalog.get("coco_like_train")[:num_images]
    augmentations = T.AugmentationList(build_lsj_augmentations(cfg))
    polygon_mapper = build_detection_train_mapper(cfg)
    bitmask_cfg = _cfg(data_root, "bitmask")
    bitmask_mapper = build_detection_train_mapper(bitmask_cfg)
    rng_state = np.random.get_state()

    rows = {k: [] for k in ("read_file", "decode_pil_hiera_det", "decode_cv2", "lsj_image", "annotations_polygon",
                            "annotations_bitmask", "mapper_polygon", "mapper_bitmask", "worker_handover",
                            "pin_memory", "mask_targets_polygon", "mask_targets_bitmask")}
    instances_per_image = []
    for d in dicts:
        path = d["file_name"]
        rows["read_file"].append(_timed(lambda: Path(path).read_bytes(), repeats))
        rows["decode_pil_hiera_det"].append(_timed(lambda: read_image(path, format="RGB"), repeats))
        data = np.frombuffer(Path(path).read_bytes(), np.uint8)
        rows["decode_cv2"].append(_timed(lambda: cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1], repeats))
        image = read_image(path, format="RGB")

        np.random.seed(0)
        aug_input = T.AugInput(image)
        transforms = augmentations(aug_input)

        def lsj_image():
            np.random.seed(0)
            augmentations(T.AugInput(image))

        rows["lsj_image"].append(_timed(lsj_image, repeats))
        size = aug_input.image.shape[:2]

        def annotations(mask_format):
            # transform_instance_annotations changes its input in place, as the mapper's own copy allows
            annos = [d2_utils.transform_instance_annotations(a, transforms, size) for a in copy.deepcopy(d["annotations"])]
            instances = d2_utils.annotations_to_instances(annos, size, mask_format=mask_format)
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
            return d2_utils.filter_empty_instances(instances)

        rows["annotations_polygon"].append(_timed(lambda: annotations("polygon"), repeats))
        rows["annotations_bitmask"].append(_timed(lambda: annotations("bitmask"), repeats))

        def mapped(mapper):
            np.random.seed(0)
            return mapper(d)

        rows["mapper_polygon"].append(_timed(lambda: mapped(polygon_mapper), repeats))
        rows["mapper_bitmask"].append(_timed(lambda: mapped(bitmask_mapper), repeats))
        item = mapped(polygon_mapper)
        instances_per_image.append(len(item["instances"]))
        # A DataLoader worker hands results over by pickling with tensors moved to shared memory.
        rows["worker_handover"].append(_timed(lambda: pickle.loads(ForkingPickler.dumps(item)), repeats))
        rows["pin_memory"].append(_timed(lambda: item["image"].pin_memory() if torch.cuda.is_available()
                                         else item["image"].clone(), repeats))

        # The ROI mask head cuts a 28x28 target per foreground proposal (about 128 per image at 512 sampled
        # ROIs and 25% foreground); the boxes here are jittered ground-truth boxes.
        instances = item["instances"]
        if len(instances):
            g = torch.Generator().manual_seed(0)
            index = torch.randint(len(instances), (128,), generator=g)
            boxes = instances.gt_boxes.tensor[index] + torch.randn(128, 4, generator=g) * 8
            polygons = PolygonMasks([instances.gt_masks.polygons[i] for i in index.tolist()])
            bitmasks = BitMasks.from_polygon_masks(instances.gt_masks, *size)[index]
            rows["mask_targets_polygon"].append(_timed(lambda: polygons.crop_and_resize(boxes, 28), repeats))
            rows["mask_targets_bitmask"].append(_timed(lambda: bitmasks.crop_and_resize(boxes, 28), repeats))
    np.random.set_state(rng_state)
    return {
        "images": len(dicts),
        "mean_instances_per_image": float(np.mean(instances_per_image)),
        "mean_jpeg_kib": float(np.mean([os.path.getsize(d["file_name"]) for d in dicts]) / 1024),
        "ms_per_image": {k: float(np.mean(v)) for k, v in rows.items() if v},
        "notes": {
            "lsj_image": "ResizeScale(0.1-2.0) + FixedSizeCrop(1024) + flip of the image alone",
            "annotations_polygon": "transform_instance_annotations (shapely crop) + annotations_to_instances + "
            "boxes from the cropped masks",
            "mapper_polygon": "the whole training mapper: decode + LSJ + annotations (what a worker does)",
            "worker_handover": "pickling the mapped dict as a DataLoader worker does (tensor to shared memory)",
            "pin_memory": "pinning the 1024x1024 image (a clone without CUDA)",
            "mask_targets_polygon": "PolygonMasks.crop_and_resize of 128 ROIs: in the training step, main process",
        },
    }


def loader_rates(data_root: Path, workers: list[int], batches: int) -> list[dict]:
    """Images/s of the whole training loader (this repo's resumable loader, batch 8) per worker count, with
    and without pinned memory."""
    from hiera_det.engine import loaders

    results = []
    for count in workers:
        for pin in (False, True) if torch.cuda.is_available() else (False,):
            cfg = _cfg(data_root, "polygon", workers=count)
            loader = loaders.build_train_loader(cfg)
            loader.pin_memory = pin
            stream = iter(loader)
            next(stream)  # workers started, first batch in
            t0 = time.perf_counter()
            for _ in range(batches):
                next(stream)
            elapsed = time.perf_counter() - t0
            stream.close()
            results.append({"workers": count, "pin_memory": pin, "images_per_s": batches * 8 / elapsed})
            print(f"workers {count} pin {pin}: {batches * 8 / elapsed:.1f} images/s", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a benchmarks.coco_like root")
    parser.add_argument("--out", type=Path, required=True, help="json file to write")
    parser.add_argument("--images", type=int, default=12, help="images profiled stage by stage")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="0,1,2", help="worker counts for the whole-loader rate")
    parser.add_argument("--batches", type=int, default=6, help="batches of 8 timed per worker count")
    args = parser.parse_args(argv)
    import hiera_det.d2  # noqa: F401

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if not (args.data / "specs.json").is_file():
        from benchmarks.coco_like import main as generate

        generate(["--root", str(args.data), "--num-train", "64", "--num-val", "8"])
    result = {
        "cpu": os.cpu_count(),
        "torch_threads": 1,
        "stages": stage_times(args.data, args.images, args.repeats),
        "loader": loader_rates(args.data, [int(w) for w in args.workers.split(",")], args.batches),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for name, ms in result["stages"]["ms_per_image"].items():
        print(f"{name:24s} {ms:8.2f} ms/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
