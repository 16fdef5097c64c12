"""Moving shapes: a generated video dataset in which only motion tells the classes apart.

Every video shows one moving object and one or two static distractors, all drawn from the same shape,
size and colour distribution at random positions and orientations. The class is the object's motion:
``move_right``, ``move_left``, ``move_up``, ``rotate``, ``pulse`` (periodic growing and shrinking) or
``bounce`` (periodic hops). Any single frame is consistent with every class -- which shape is the moving
one, and how it moves, shows only across frames -- so a single-frame model is at chance while a video model
can learn the task.

Layout written under ``root`` (defaults: 64x64 frames, 16 frames at 10 fps, 1200 train / 120 val videos):

* ``videos/{split}_{i:04d}.mp4`` (OpenCV, ``mp4v``), ``{split}.csv`` (PySlowFast ``path label``),
  ``classes.txt``;
* ``annotations/keyframes_{split}.json``: COCO json whose images are keyframes (``video_file``,
  ``frame_index``, ``width``, ``height``) and whose annotations are the moving object's box and polygon on
  that frame, category = its motion class;
* ``moving_shapes.json``: the generation parameters, written last, marks a complete dataset.

Generation is deterministic for a seed (every video has its own random stream) and atomic (written to a
temporary folder, then renamed), so concurrent callers cannot observe a half-written dataset.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np

from .shapes_spec import datasets_root

CLASSES = ("move_right", "move_left", "move_up", "rotate", "pulse", "bounce")
SPLITS = ("train", "val")
MARKER = "moving_shapes.json"
DIRNAME = "moving_shapes"
# 2: 1200 train / 120 val videos by default (200 training videos were too few to learn motion from scratch)
FORMAT_VERSION = 2

# Unit outlines (radius about 1) of the shape family. Circles are left out: a rotating circle looks static.
_SHAPES = {
    "triangle": [(0.0, -1.0), (0.87, 0.5), (-0.87, 0.5)],
    "square": [(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)],
    "bar": [(-1.0, -0.4), (1.0, -0.4), (1.0, 0.4), (-1.0, 0.4)],
    "ell": [(-0.8, -1.0), (-0.2, -1.0), (-0.2, 0.4), (0.8, 0.4), (0.8, 1.0), (-0.8, 1.0)],
    "arrow": [(-1.0, -0.3), (0.2, -0.3), (0.2, -0.8), (1.0, 0.0), (0.2, 0.8), (0.2, 0.3), (-1.0, 0.3)],
}


def default_root() -> str:
    return str(datasets_root() / DIRNAME)


# ---------------------------------------------------------------------------------------------- drawing
def _random_shape(rng: np.random.Generator, frame_size: int) -> dict:
    return {
        "outline": np.asarray(_SHAPES[rng.choice(sorted(_SHAPES))], np.float64),
        "radius": rng.uniform(0.09, 0.15) * frame_size,
        "angle": rng.uniform(0, 2 * math.pi),
        "color": tuple(int(c) for c in rng.integers(90, 256, size=3)),
    }


def _vertices(shape: dict, center: tuple[float, float], angle: float, scale: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rotated = shape["outline"] @ np.array([[c, s], [-s, c]])
    return rotated * shape["radius"] * scale + np.asarray(center)


def _motion(label: int, rng: np.random.Generator, shape: dict, num_frames: int, frame_size: int):
    """Per-frame (center, angle, scale) of the moving object for class ``label``; it stays inside the frame."""
    t = np.arange(num_frames, dtype=np.float64)
    angle = np.full(num_frames, shape["angle"])
    scale = np.ones(num_frames)
    dx = np.zeros(num_frames)
    dy = np.zeros(num_frames)
    name = CLASSES[label]
    travel_speed = rng.uniform(0.9, 1.5) * frame_size / 48  # pixels per frame
    if name == "move_right":
        dx = travel_speed * t
    elif name == "move_left":
        dx = -travel_speed * t
    elif name == "move_up":
        dy = -travel_speed * t
    elif name == "rotate":
        angle = shape["angle"] + rng.choice([-1.0, 1.0]) * math.radians(rng.uniform(12, 20)) * t
    elif name == "pulse":
        period = rng.uniform(6, 10)
        scale = 1.0 + 0.4 * np.sin(2 * math.pi * t / period + rng.uniform(0, 2 * math.pi))
    elif name == "bounce":
        period = rng.uniform(6, 10)
        dy = (
            -rng.uniform(0.15, 0.25)
            * frame_size
            * np.abs(np.sin(math.pi * t / period + rng.uniform(0, math.pi)))
        )
    reach = shape["radius"] * scale.max() + 1.0
    lo_x, hi_x = reach - dx.min(), frame_size - reach - dx.max()
    lo_y, hi_y = reach - dy.min(), frame_size - reach - dy.max()
    x0 = rng.uniform(lo_x, max(hi_x, lo_x))
    y0 = rng.uniform(lo_y, max(hi_y, lo_y))
    return [((x0 + dx[i], y0 + dy[i]), angle[i], scale[i]) for i in range(num_frames)]


def _fill(canvas: np.ndarray, vertices: np.ndarray, color) -> None:
    import cv2

    cv2.fillPoly(canvas, [np.round(vertices).astype(np.int32)], color, lineType=cv2.LINE_8)


def _render_video(label: int, rng: np.random.Generator, frame_size: int, num_frames: int):
    """Frames (RGB ``[T, S, S, 3]``) and per-frame (box XYXY, polygon) of the moving object."""
    background = tuple(int(c) for c in rng.integers(0, 70, size=3))
    moving = _random_shape(rng, frame_size)
    path = _motion(label, rng, moving, num_frames, frame_size)
    distractors = []
    for _ in range(int(rng.integers(1, 3))):
        shape = _random_shape(rng, frame_size)
        margin = shape["radius"] + 1.0
        center = tuple(rng.uniform(margin, frame_size - margin, size=2))
        distractors.append((_vertices(shape, center, shape["angle"], 1.0), shape["color"]))

    frames = np.empty((num_frames, frame_size, frame_size, 3), np.uint8)
    objects = []
    for i, (center, angle, scale) in enumerate(path):
        frame = np.empty((frame_size, frame_size, 3), np.uint8)
        frame[:] = background
        for vertices, color in distractors:
            _fill(frame, vertices, color)
        vertices = _vertices(moving, center, angle, scale)
        _fill(frame, vertices, moving["color"])  # drawn last: never occluded, so its box is exact
        mask = np.zeros((frame_size, frame_size), np.uint8)
        _fill(mask, vertices, 1)
        ys, xs = np.nonzero(mask)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        # cv2 fills pixels whose centers lie in the integer polygon; +0.5 moves it to continuous coordinates.
        polygon = (np.round(vertices) + 0.5).clip(0, frame_size).reshape(-1).tolist()
        frames[i] = frame
        objects.append((box, polygon))
    return frames, objects


def _write_mp4(path: str, frames_rgb: np.ndarray, fps: float) -> None:
    import cv2

    height, width = frames_rgb.shape[1:3]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path!r} with the mp4v codec; is opencv built with FFmpeg?")
    for frame in frames_rgb:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()


# ---------------------------------------------------------------------------------------------- dataset
def keyframe_positions(num_frames: int, keyframes_per_video: int) -> list[int]:
    """Evenly spaced interior frames, e.g. 16 frames, 3 keyframes -> [4, 8, 12]."""
    step = num_frames / (keyframes_per_video + 1)
    return [int(round(step * (k + 1))) for k in range(keyframes_per_video)]


def generate_moving_shapes(
    root: str,
    *,
    num_train: int = 1200,
    num_val: int = 120,
    frame_size: int = 64,
    num_frames: int = 16,
    fps: float = 10.0,
    keyframes_per_video: int = 3,
    seed: int = 0,
) -> dict:
    """Write the dataset into the existing empty folder ``root`` (use ``ensure_moving_shapes_dataset``
    for the atomic, idempotent version). Returns the generation parameters."""
    params = dict(
        version=FORMAT_VERSION,
        classes=list(CLASSES),
        num_train=num_train,
        num_val=num_val,
        frame_size=frame_size,
        num_frames=num_frames,
        fps=fps,
        keyframes_per_video=keyframes_per_video,
        seed=seed,
    )
    if frame_size < 32 or num_frames < 4 or keyframes_per_video < 1:
        raise ValueError(f"need frame_size >= 32, num_frames >= 4, keyframes_per_video >= 1: {params}")
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(CLASSES) + "\n")
    keyframes = keyframe_positions(num_frames, keyframes_per_video)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        lines, images, annotations = [], [], []
        for index in range(count):
            rng = np.random.default_rng([seed, split_id, index])
            label = index % len(CLASSES)  # balanced classes
            frames, objects = _render_video(label, rng, frame_size, num_frames)
            rel_path = f"videos/{split}_{index:04d}.mp4"
            _write_mp4(os.path.join(root, rel_path), frames, fps)
            lines.append(f"{rel_path} {label}")
            for frame_index in keyframes:
                image_id = len(images) + 1
                images.append(
                    {
                        "id": image_id,
                        "file_name": f"{rel_path}#{frame_index}",
                        "video_file": rel_path,
                        "video_id": f"{split}_{index:04d}",
                        "frame_index": frame_index,
                        "width": frame_size,
                        "height": frame_size,
                    }
                )
                (x0, y0, x1, y1), polygon = objects[frame_index]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": label + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": float((x1 - x0) * (y1 - y0)),
                        "segmentation": [polygon],
                        "iscrowd": 0,
                    }
                )
        with open(os.path.join(root, f"{split}.csv"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        coco = {
            "info": {"description": f"moving shapes {split} keyframes", "version": str(FORMAT_VERSION)},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        with open(os.path.join(root, "annotations", f"keyframes_{split}.json"), "w", encoding="utf-8") as f:
            json.dump(coco, f)
    with open(os.path.join(root, MARKER), "w", encoding="utf-8") as f:
        json.dump(params, f, indent=1)
    return params


def is_complete(root: str) -> bool:
    return os.path.isfile(os.path.join(root, MARKER))


def ensure_moving_shapes_dataset(root: str | None = None, **generation_kwargs) -> str:
    """Generate the dataset at ``root`` (default ``$DETECTRON2_DATASETS/moving_shapes``) unless a complete
    one is there; returns ``root``. Writes to a temporary sibling folder and renames it into place."""
    root = os.path.abspath(root or default_root())
    if is_complete(root):
        with open(os.path.join(root, MARKER), encoding="utf-8") as f:
            existing = json.load(f)
        requested = dict(generation_kwargs, version=FORMAT_VERSION)
        differing = {k: (existing.get(k), v) for k, v in requested.items() if existing.get(k) != v}
        if differing:
            raise FileExistsError(
                f"{root!r} holds a moving-shapes dataset generated with other parameters "
                f"(existing, requested): {differing}; delete it (or regenerate with `python -m "
                f"hiera_det.data.datasets.moving_shapes --root {root} --force`) or choose another root"
            )
        return root
    if os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(
            f"{root!r} exists but holds no complete moving-shapes dataset (no {MARKER}); delete it or "
            "choose another root"
        )
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".moving_shapes.tmp-", dir=parent)
    try:
        generate_moving_shapes(tmp, **generation_kwargs)
        try:
            os.replace(tmp, root)  # atomic; also replaces an empty folder at root
        except OSError:
            if not is_complete(root):  # lost a race only if the winner finished
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def require_complete(root: str) -> None:
    if not is_complete(root):
        raise FileNotFoundError(
            f"moving-shapes dataset not found at {root!r}. Generate it (about 10 s) with "
            f"`python -m hiera_det.data.datasets.moving_shapes --root {root}` or "
            "hiera_det.data.datasets.moving_shapes.ensure_moving_shapes_dataset(root)"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=default_root(), help="output folder (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=1200)
    parser.add_argument("--num-val", type=int, default=120)
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="delete an existing dataset at --root first")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root)
    if args.force and os.path.isdir(root):
        shutil.rmtree(root)
    start = time.perf_counter()
    existed = is_complete(root)
    ensure_moving_shapes_dataset(
        root,
        num_train=args.num_train,
        num_val=args.num_val,
        frame_size=args.frame_size,
        num_frames=args.num_frames,
        seed=args.seed,
    )
    with open(os.path.join(root, MARKER), encoding="utf-8") as f:
        params = json.load(f)
    verb = "already present" if existed else f"generated in {time.perf_counter() - start:.1f} s"
    print(f"moving shapes {verb} at {root}: {params}")


if __name__ == "__main__":
    main()
