"""COCO-like data for end-to-end training benchmarks: 640x480 JPEGs with several polygon-masked instances each,
and short frame-folder videos for the video models; registered through ``DATASETS.CUSTOM`` specs.

Images reuse the hiera_shapes painter (``hiera_det.data.datasets.shapes.render_scene``: textured backgrounds,
up to ``max_instances`` occluding shapes of seven classes, sensor noise) at COCO's typical size, saved as
JPEG (quality 90, like COCO's ~160 KB files) so that training decodes them from disk as it would COCO.
Masks are COCO polygons (the outer contours of the visible parts), which is what Detectron2's LSJ crop and
the mask head's ``PolygonMasks`` then process.

Videos reuse the moving-shapes generator (``hiera_det.data.datasets.moving_shapes``) at a larger frame size and
length, and are unpacked into folders of JPEG frames, so that no video decoder is needed (the GPU machine has
none); the classification list and the keyframe json then name the folders.

    python -m benchmarks.coco_like --root /tmp/coco_like --num-train 512 --num-val 64 --videos 64

prints the ``--dataset`` specs (``coco_like_train=...``, ``clips_train=...``, ``clip_kf_train=...`` and the
val splits).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from hiera_det.data.datasets.moving_shapes import generate_moving_shapes
from hiera_det.data.datasets.shapes import SHAPES_CLASSES, SceneRules, render_scene

JPEG_QUALITY = 90
MIN_POLYGON_AREA = 4.0


def visible_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons of a boolean mask: the outer contours of its parts (holes filled), each a flat
    ``[x0, y0, x1, y1, ...]`` list in continuous pixel coordinates; parts smaller than 4 px are dropped."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if len(contour) >= 3 and cv2.contourArea(contour) >= MIN_POLYGON_AREA:
            polygons.append((contour.reshape(-1, 2).astype(np.float64) + 0.5).reshape(-1).tolist())
    return polygons


def _render_image(job: tuple) -> tuple[dict, list[dict]]:
    """One image (written to disk) and its annotations, without ids (assigned in order afterwards)."""
    seed, split_id, index, width, height, max_instances, path = job
    scene = render_scene(np.random.default_rng([seed, split_id, index]), height, width, SceneRules(max_instances))
    if not cv2.imwrite(path, cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")
    annotations = []
    for category_id, mask in zip(scene.category_ids, scene.masks):
        polygons = visible_polygons(mask)
        if not polygons:
            continue
        ys, xs = np.nonzero(mask)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
        annotations.append({"category_id": category_id, "segmentation": polygons, "area": float(mask.sum()),
                            "bbox": box, "iscrowd": 0})
    image = {"file_name": os.path.basename(path), "width": width, "height": height}
    return image, annotations


def generate_images(root: str | Path, num_train: int, num_val: int, *, width: int = 640, height: int = 480,
                    max_instances: int = 14, seed: int = 0, workers: int | None = None) -> dict[str, str]:
    """Write ``root/{train,val}/*.jpg`` and ``root/annotations/instances_{train,val}.json``; returns
    ``{split: "ANNOTATIONS.json:IMAGE_ROOT"}``."""
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SHAPES_CLASSES)]
    specs = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            (root / split).mkdir(exist_ok=True)
            jobs = [(seed, split_id, i, width, height, max_instances, str(root / split / f"{i:06d}.jpg"))
                    for i in range(count)]
            images, annotations = [], []
            for image_id, (image, objects) in enumerate(pool.map(_render_image, jobs, chunksize=8), start=1):
                images.append({"id": image_id, **image})
                for annotation in objects:
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
            json_file = root / "annotations" / f"instances_{split}.json"
            json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
            specs[split] = f"{json_file}:{root / split}"
    return specs


def _unpack(job: tuple[str, str]) -> int:
    video, folder = job
    os.makedirs(folder, exist_ok=True)
    capture = cv2.VideoCapture(video)
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        cv2.imwrite(os.path.join(folder, f"{count:06d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        count += 1
    capture.release()
    if count == 0:
        raise OSError(f"OpenCV decoded no frames from {video}; it needs its FFmpeg backend to unpack the videos")
    return count


def generate_videos(root: str | Path, num_train: int, num_val: int, *, frame_size: int = 256,
                    num_frames: int = 32, seed: int = 0, workers: int | None = None) -> dict[str, str]:
    """Moving-shapes videos as frame folders under ``root/frames``; returns the specs ``{"clips_train":
    LIST.csv, "clips_val": ..., "clip_kf_train": "keyframes:ANNOTATIONS.json:ROOT", "clip_kf_val": ...}``."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    generate_moving_shapes(str(root), num_train=num_train, num_val=num_val, frame_size=frame_size,
                           num_frames=num_frames, seed=seed)
    videos = sorted((root / "videos").glob("*.mp4"))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_unpack, [(str(v), str(root / "frames" / v.stem)) for v in videos], chunksize=4))
    shutil.rmtree(root / "videos")
    specs = {}
    for split in ("train", "val"):
        lines = (root / f"{split}.csv").read_text().splitlines()
        (root / f"{split}.csv").write_text("\n".join(_to_frames(line) for line in lines) + "\n")
        json_file = root / "annotations" / f"keyframes_{split}.json"
        content = json.loads(json_file.read_text())
        for image in content["images"]:
            image["frame_dir"] = _to_frames(image.pop("video_file"))
            image["file_name"] = f"{image['frame_dir']}#{image['frame_index']}"
        json_file.write_text(json.dumps(content))
        specs[f"clips_{split}"] = str(root / f"{split}.csv")
        specs[f"clip_kf_{split}"] = f"keyframes:{json_file}:{root}"
    return specs


def _to_frames(path: str) -> str:
    return path.replace("videos/", "frames/").replace(".mp4", "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="output folder (images under ROOT/images, videos under ROOT/videos)")
    parser.add_argument("--num-train", type=int, default=512)
    parser.add_argument("--num-val", type=int, default=64)
    parser.add_argument("--videos", type=int, default=0, metavar="N", help="also N training videos (N/4 for val)")
    parser.add_argument("--frame-size", type=int, default=256)
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    specs = {f"coco_like_{k}": v for k, v in generate_images(root / "images", args.num_train, args.num_val,
                                                              workers=args.workers).items()}
    if args.videos:
        specs.update(generate_videos(root / "videos", args.videos, max(1, args.videos // 4),
                                     frame_size=args.frame_size, num_frames=args.num_frames, workers=args.workers))
    (root / "specs.json").write_text(json.dumps(specs, indent=1))
    for name, spec in specs.items():
        print(f"{name}={spec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
