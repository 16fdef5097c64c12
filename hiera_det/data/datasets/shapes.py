"""Generator of "hiera_shapes", a small COCO-format instance segmentation dataset made from a seed.

Each image has a textured background (a cloudy blend of two colours, often with stripes, a checkerboard or
clutter lines) and 1-8 filled shapes of seven classes at random positions, angles, colours and scales
(small, medium and large in COCO's area sense). Colours are drawn independently of the class, so only the
outline tells the class apart. Shapes are painted in order, each over the earlier ones; an annotation
describes the *visible* part of its shape: its RLE mask, ``area`` (visible pixel count) and ``bbox`` (of the
visible pixels). A shape is only placed if every earlier shape keeps at least ``MIN_VISIBLE_FRACTION`` of its
pixels, so no object is hidden beyond recognition; with that limit set to 0, fully hidden shapes are dropped.

Everything follows from the seed: image ``i`` of a split uses ``numpy.random.default_rng([seed, split, i])``.

Writes ``root/{train,val}/NNNNNN.png`` and ``root/annotations/instances_{train,val}.json`` (categories 1..7,
segmentations as compressed RLE, so Detectron2 needs ``INPUT.MASK_FORMAT: bitmask``).

Command line: ``python -m hiera_det.data.datasets.shapes --root datasets/hiera_shapes``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .shapes_spec import (
    SHAPES_CLASSES,
    SHAPES_DIRNAME,
    SHAPES_MARKER,
    SHAPES_SPLITS,
    ShapesDatasetPaths,
    datasets_root,
)

__all__ = [
    "SHAPES_CLASSES",
    "Scene",
    "SceneRules",
    "ShapesDatasetPaths",
    "draw_shape_mask",
    "ensure_shapes_dataset",
    "find_shapes_dataset_problem",
    "generate_shapes_dataset",
    "render_scene",
    "scene_annotations",
    "visible_masks",
]

logger = logging.getLogger(__name__)

DEFAULT_NUM_TRAIN = 600
DEFAULT_NUM_VAL = 100
DEFAULT_MIN_SIZE = 192
DEFAULT_MAX_SIZE = 320
MAX_INSTANCES = 8
# A new shape may hide at most 40% of any earlier one. Generator version 1 allowed 65% (0.35): a shape reduced to
# a third of its outline is mostly guesswork, and the 10-minute CPU run of scripts/main.sh gains 2-5 box AP
# from 0.6 (benchmarks/results/shapes_recipe.md, "Session 7").
MIN_VISIBLE_FRACTION = 0.6
# Smallest circumradius drawn (px, before clipping to the image).
MIN_RADIUS = 8.0
# Shapes smaller than this (after clipping to the image) are not placed: too few pixels to tell the class.
MIN_SHAPE_PIXELS = 30
# Bump when the drawing changes, so ensure_shapes_dataset() regenerates copies made by an older generator.
GENERATOR_VERSION = 2

_SPLIT_STREAM = {"train": 0, "val": 1}
_PROGRESS_EVERY = 200
_POOL_FROM = 64
_PLACEMENT_TRIES = 12
_COLOR_TRIES = 20
# Minimum RGB distance between a shape's colour and the pixels it covers, so no shape is camouflaged.
_MIN_COLOR_CONTRAST = 70.0
# cv2 draws with sub-pixel vertex precision of 2**-_SHIFT pixels.
_SHIFT = 4


@dataclass(frozen=True)
class SceneRules:
    """How crowded and how hard a scene may be: the generator's difficulty, recorded in the dataset's marker."""

    max_instances: int = MAX_INSTANCES
    min_visible_fraction: float = MIN_VISIBLE_FRACTION
    min_radius: float = MIN_RADIUS

    def check(self) -> None:
        if self.max_instances < 1:
            raise ValueError(f"max_instances must be at least 1, got {self.max_instances}.")
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise ValueError(f"min_visible_fraction must be in [0, 1], got {self.min_visible_fraction}.")
        if not 2.0 <= self.min_radius <= 64.0:
            raise ValueError(f"min_radius must be in [2, 64] px, got {self.min_radius}.")


# ----------------------------------------------------------------------------------------------------------
# Geometry


def _star_vertices(points: int, inner_ratio: float) -> np.ndarray:
    angles = np.arange(2 * points) * math.pi / points - math.pi / 2
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner_ratio)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _regular_vertices(sides: int) -> np.ndarray:
    angles = np.arange(sides) * 2 * math.pi / sides - math.pi / 2
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _cross_vertices(half_width: float) -> np.ndarray:
    a = half_width
    return np.array(
        [
            [-a, -1],
            [a, -1],
            [a, -a],
            [1, -a],
            [1, a],
            [a, a],
            [a, 1],
            [-a, 1],
            [-a, a],
            [-1, a],
            [-1, -a],
            [-a, -a],
        ],
        dtype=np.float64,
    )


# Outlines on the unit circle (circumradius 1); circle and ring are drawn as discs.
_UNIT_POLYGONS = {
    "square": _regular_vertices(4),
    "triangle": _regular_vertices(3),
    "star": _star_vertices(5, inner_ratio=0.45),
    "hexagon": _regular_vertices(6),
    "cross": _cross_vertices(half_width=0.32),
}
_RING_INNER_RATIO = 0.55


def draw_shape_mask(
    kind: str, center: tuple[float, float], radius: float, angle: float, height: int, width: int
) -> np.ndarray:
    """Boolean ``[height, width]`` mask of one shape.

    Args:
        kind: one of ``SHAPES_CLASSES``.
        center: ``(x, y)`` in pixels; the shape may extend past the image border (it is clipped).
        radius: circumradius in pixels.
        angle: rotation in radians (ignored by circle and ring).
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    scale = 1 << _SHIFT
    cx, cy = center
    if kind in ("circle", "ring"):
        c = (round(cx * scale), round(cy * scale))
        cv2.circle(mask, c, round(radius * scale), 1, thickness=-1, lineType=cv2.LINE_8, shift=_SHIFT)
        if kind == "ring":
            inner = round(radius * _RING_INNER_RATIO * scale)
            cv2.circle(mask, c, inner, 0, thickness=-1, lineType=cv2.LINE_8, shift=_SHIFT)
    elif kind in _UNIT_POLYGONS:
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        points = _UNIT_POLYGONS[kind] @ rotation.T * radius + np.array([cx, cy])
        cv2.fillPoly(mask, [np.round(points * scale).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    else:
        raise ValueError(f"Unknown shape kind {kind!r}; expected one of {SHAPES_CLASSES}.")
    return mask.astype(bool)


def visible_masks(full_masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The visible part of each mask when the masks are painted in order, later ones over earlier ones."""
    if not full_masks:
        return []
    covered = np.zeros_like(full_masks[0], dtype=bool)
    visible: list[np.ndarray] = [covered] * len(full_masks)
    for i in range(len(full_masks) - 1, -1, -1):
        visible[i] = full_masks[i] & ~covered
        covered = covered | full_masks[i]
    return visible


# ----------------------------------------------------------------------------------------------------------
# Painting


@dataclass
class Scene:
    """One rendered image and its objects, in painting order.

    ``full_masks`` are the shapes as drawn; ``masks`` their visible parts. Shapes with no visible pixel are
    left out of all three lists and counted in ``num_hidden``.
    """

    image: np.ndarray  # [H, W, 3] uint8, RGB
    category_ids: list[int]  # 1-based, into SHAPES_CLASSES
    full_masks: list[np.ndarray]
    masks: list[np.ndarray]
    num_hidden: int = 0


def _smooth_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] (a coarse random grid, upsampled)."""
    grid = rng.uniform(0.0, 1.0, size=(int(rng.integers(2, 7)), int(rng.integers(2, 7)))).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _stripes(
    rng: np.random.Generator, height: int, width: int, period_range: tuple[float, float]
) -> np.ndarray:
    """A {0, 1} stripe pattern of random orientation and period."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(*period_range)
    phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period + rng.uniform(0, 1)
    return (np.floor(phase) % 2).astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    low, high = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    field = _smooth_field(rng, height, width)[..., None]
    image = low * (1 - field) + high * field
    pattern = rng.choice(["plain", "stripes", "checker", "lines"])
    if pattern == "stripes":
        image += _stripes(rng, height, width, (6, 30))[..., None] * rng.uniform(-60, 60, size=3)
    elif pattern == "checker":
        cell = int(rng.integers(8, 33))
        yy, xx = np.mgrid[0:height, 0:width]
        checker = ((yy // cell + xx // cell) % 2).astype(np.float32)
        image += checker[..., None] * rng.uniform(-50, 50, size=3)
    elif pattern == "lines":
        # Clutter: thin strokes in random colours that belong to the background, not to any object.
        image = np.ascontiguousarray(image)
        for _ in range(int(rng.integers(4, 15))):
            p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            color = tuple(float(c) for c in rng.uniform(0, 255, size=3))
            cv2.line(image, p0, p1, color, thickness=int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
    return image


def _paint_shape(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    """Fills ``mask`` with a random colour and texture that stands out from the pixels it covers."""
    covered_mean = image[mask].mean(axis=0)
    for _ in range(_COLOR_TRIES):
        color = rng.uniform(0, 255, size=3).astype(np.float32)
        if np.linalg.norm(color - covered_mean) >= _MIN_COLOR_CONTRAST:
            break
    height, width = mask.shape
    texture = rng.choice(["flat", "gradient", "stripes"])
    if texture == "flat":
        fill = np.broadcast_to(color, (height, width, 3))
    elif texture == "gradient":
        other = np.clip(color + rng.normal(0, 45, size=3), 0, 255).astype(np.float32)
        field = _smooth_field(rng, height, width)[..., None]
        fill = color * (1 - field) + other * field
    else:
        shade = rng.uniform(0.55, 0.85)
        stripes = _stripes(rng, height, width, (3, 10))[..., None]
        fill = color * (1 - stripes) + color * shade * stripes
    image[mask] = fill[mask]


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    rules: SceneRules = SceneRules(),
) -> Scene:
    """Paints one image: a background, then up to ``rules.max_instances`` shapes, each over the earlier ones.

    A proposed shape is re-drawn elsewhere (up to a few tries, then skipped) if it would leave an earlier
    shape with less than ``rules.min_visible_fraction`` of its pixels visible.
    """
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int32)  # index of the shape on top at each pixel
    full_areas: list[int] = []
    full_masks: list[np.ndarray] = []
    category_ids: list[int] = []
    max_radius = 0.48 * min(height, width)
    for _ in range(int(rng.integers(1, rules.max_instances + 1))):
        for _ in range(_PLACEMENT_TRIES):
            category = int(rng.integers(len(SHAPES_CLASSES)))
            # Log-uniform radius: with the default rules about 45% small, 45% medium, 10% large visible areas
            # (COCO's ranges).
            radius = float(math.exp(rng.uniform(math.log(rules.min_radius), math.log(max_radius))))
            margin = 0.75 * radius  # up to a quarter of the radius may fall outside the image
            center = (float(rng.uniform(margin, width - margin)), float(rng.uniform(margin, height - margin)))
            angle = float(rng.uniform(0, 2 * math.pi))
            mask = draw_shape_mask(SHAPES_CLASSES[category], center, radius, angle, height, width)
            if mask.sum() < MIN_SHAPE_PIXELS:
                continue
            still_visible = np.bincount(owner[(owner >= 0) & ~mask], minlength=len(full_areas))
            if np.all(still_visible >= rules.min_visible_fraction * np.asarray(full_areas, dtype=np.float64)):
                break
        else:
            continue
        _paint_shape(rng, image, mask)
        owner[mask] = len(full_masks)
        full_masks.append(mask)
        full_areas.append(int(mask.sum()))
        category_ids.append(category + 1)
    image += rng.normal(0, rng.uniform(2, 10), size=image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    visible = visible_masks(full_masks)
    keep = [i for i, m in enumerate(visible) if m.any()]
    return Scene(
        image=image,
        category_ids=[category_ids[i] for i in keep],
        full_masks=[full_masks[i] for i in keep],
        masks=[visible[i] for i in keep],
        num_hidden=len(full_masks) - len(keep),
    )


def scene_annotations(scene: Scene, image_id: int, first_annotation_id: int) -> list[dict]:
    """COCO annotations (RLE of the visible mask, its area and XYWH box) of a scene's objects."""
    annotations = []
    for offset, (category_id, mask) in enumerate(zip(scene.category_ids, scene.masks)):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append(
            {
                "id": first_annotation_id + offset,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return annotations


# ----------------------------------------------------------------------------------------------------------
# Dataset files


def _check_generation_args(num_train: int, num_val: int, min_size: int, max_size: int) -> None:
    if num_train < 1 or num_val < 1:
        raise ValueError(
            f"num_train and num_val must be at least 1, got num_train={num_train}, num_val={num_val}."
        )
    if not 64 <= min_size <= max_size:
        raise ValueError(
            "Image sides must satisfy 64 <= min_size <= max_size, "
            f"got min_size={min_size}, max_size={max_size}."
        )


def _write_image(
    image_dir: Path, split: str, index: int, seed: int, min_size: int, max_size: int, rules: SceneRules
) -> tuple[dict, list[dict]]:
    """Renders and writes image ``index`` of a split; its COCO image record and annotations (ids from 1)."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], index])
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    scene = render_scene(rng, height, width, rules)
    file_name = f"{index:06d}.png"
    if not cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"Could not write {image_dir / file_name}; check the disk space and permissions.")
    image_id = index + 1
    record = {"id": image_id, "file_name": file_name, "height": height, "width": width}
    return record, scene_annotations(scene, image_id, first_annotation_id=1)


def _write_split(
    paths: ShapesDatasetPaths, split: str, count: int, seed: int, min_size: int, max_size: int, rules: SceneRules
) -> None:
    image_dir = paths.image_dir(split)
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    start = time.perf_counter()
    write = functools.partial(_write_image, image_dir, split, seed=seed, min_size=min_size, max_size=max_size,
                              rules=rules)  # fmt: skip
    # Every image has its own seed, so the images come out the same with any number of workers; a pool pays
    # for itself from a few dozen images on (scripts/main.sh generates 700 in about half the time on 2 cores).
    # Spawned, not forked: the caller may be a training process whose OpenMP and OpenCV thread pools a forked
    # child would inherit in an unusable state.
    workers = min(len(os.sched_getaffinity(0)), 8) if count >= _POOL_FROM else 1
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn) if workers > 1 else contextlib.nullcontext() as pool:
        written = pool.map(write, range(count), chunksize=16) if pool else map(write, range(count))
        for index, (record, image_annotations) in enumerate(written):
            if index % _PROGRESS_EVERY == 0:
                elapsed = time.perf_counter() - start
                logger.info("hiera_shapes %s: %d/%d images (%.0f s)", split, index, count, elapsed)
            images.append(record)
            for annotation in image_annotations:
                annotations.append({**annotation, "id": len(annotations) + 1})
    coco = {
        "info": {
            "description": f"hiera_shapes {split} (synthetic, seed {seed})",
            "version": str(GENERATOR_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES_CLASSES)
        ],
    }
    annotation_file = paths.annotation_file(split)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps(coco, separators=(",", ":")))


_OWN_ENTRIES = {*SHAPES_SPLITS, "annotations", SHAPES_MARKER}


def _move_into_place(tmp: Path, root: Path, replace_complete: bool) -> None:
    """Renames the finished ``tmp`` to ``root``, replacing an old copy of the dataset there.

    With ``replace_complete=False`` (``ensure_shapes_dataset``), a complete copy that another process finished
    meanwhile is kept and ``tmp`` discarded.
    """
    if root.exists():
        if not replace_complete and find_shapes_dataset_problem(root) is None:
            shutil.rmtree(tmp)
            return
        foreign = (
            sorted(p.name for p in root.iterdir() if p.name not in _OWN_ENTRIES) if root.is_dir() else [""]
        )
        if foreign:
            shutil.rmtree(tmp)
            raise FileExistsError(
                f"{root} exists and holds files that are not part of the hiera_shapes dataset "
                f"({foreign[:5]}); "
                "move them away or pass another --root."
            )
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        root.rename(old / root.name)
        tmp.rename(root)
        shutil.rmtree(old)
    else:
        try:
            tmp.rename(root)
        except OSError:
            # Another process renamed its copy into place first.
            if find_shapes_dataset_problem(root) is not None:
                raise
            shutil.rmtree(tmp)


def _generate(
    root: Path, seed: int, num_train: int, num_val: int, min_size: int, max_size: int, rules: SceneRules,
    replace_complete: bool,
) -> ShapesDatasetPaths:
    _check_generation_args(num_train, num_val, min_size, max_size)
    rules.check()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the dataset should read like any other directory
    start = time.perf_counter()
    try:
        tmp_paths = ShapesDatasetPaths(tmp)
        _write_split(tmp_paths, "train", num_train, seed, min_size, max_size, rules)
        _write_split(tmp_paths, "val", num_val, seed, min_size, max_size, rules)
        settings = {"generator_version": GENERATOR_VERSION, "seed": seed, "num_train": num_train,
                    "num_val": num_val, "min_size": min_size, "max_size": max_size,
                    "classes": list(SHAPES_CLASSES), "scene_rules": dataclasses.asdict(rules)}  # fmt: skip
        tmp_paths.marker.write_text(json.dumps(settings, indent=1))
        _move_into_place(tmp, root, replace_complete)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "Generated hiera_shapes (%d train, %d val images) in %s in %.1f s.",
        num_train, num_val, root, time.perf_counter() - start,
    )  # fmt: skip
    return ShapesDatasetPaths(root)


def generate_shapes_dataset(
    root: str | Path,
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    rules: SceneRules = SceneRules(),
) -> ShapesDatasetPaths:
    """Writes the dataset to ``root`` (replacing an earlier copy there) and returns its paths.

    Image sides are drawn uniformly from ``[min_size, max_size]`` independently, so sizes and aspect ratios
    vary and most sides are not multiples of 32. The files are written to a temporary sibling directory that
    is renamed to ``root`` at the end: an interrupted run never leaves a partial dataset at ``root``.
    """
    return _generate(Path(root), seed, num_train, num_val, min_size, max_size, rules, replace_complete=True)


def ensure_shapes_dataset(
    root: str | Path | None = None,
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    rules: SceneRules = SceneRules(),
) -> ShapesDatasetPaths:
    """Returns the dataset at ``root``, generating it first if it is missing, incomplete or made by an older
    generator. A complete copy is used as it is, whatever seed and sizes it was made with.

    ``root`` defaults to ``$DETECTRON2_DATASETS/hiera_shapes``.
    """
    root = Path(root) if root is not None else datasets_root() / SHAPES_DIRNAME
    problem = find_shapes_dataset_problem(root)
    if problem is None:
        return ShapesDatasetPaths(root)
    logger.info("Generating hiera_shapes in %s: %s", root, problem)
    return _generate(root, seed, num_train, num_val, min_size, max_size, rules, replace_complete=False)


def find_shapes_dataset_problem(root: str | Path) -> str | None:
    """Why the dataset at ``root`` is unusable (missing, incomplete, outdated), or None if it is complete."""
    paths = ShapesDatasetPaths(Path(root))
    if not paths.root.is_dir():
        return f"{paths.root} does not exist"
    if not paths.marker.is_file():
        return f"{paths.marker} is missing (generation never finished there)"
    try:
        settings = json.loads(paths.marker.read_text())
    except (OSError, ValueError) as e:
        return f"{paths.marker} is unreadable ({e})"
    if settings.get("generator_version") != GENERATOR_VERSION:
        return (
            f"it was made by generator version {settings.get('generator_version')}, "
            f"this is version {GENERATOR_VERSION}"
        )
    for split in SHAPES_SPLITS:
        annotation_file = paths.annotation_file(split)
        try:
            images = json.loads(annotation_file.read_text())["images"]
        except (OSError, ValueError, KeyError) as e:
            return f"{annotation_file} is missing or unreadable ({e})"
        image_dir = paths.image_dir(split)
        missing = [im["file_name"] for im in images if not (image_dir / im["file_name"]).is_file()]
        if missing:
            example = image_dir / missing[0]
            return f"{len(missing)} images listed in {annotation_file} are missing, e.g. {example}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hiera_det.data.datasets.shapes",
        description="Generate the bundled hiera_shapes instance segmentation dataset (COCO json + PNG).",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=datasets_root() / SHAPES_DIRNAME,
        help="dataset directory (default: $DETECTRON2_DATASETS/hiera_shapes, else ./datasets/hiera_shapes)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL)
    parser.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE, help="smallest image side (px)")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, help="largest image side (px)")
    parser.add_argument("--max-instances", type=int, default=MAX_INSTANCES, help="most shapes per image")
    parser.add_argument("--min-visible-fraction", type=float, default=MIN_VISIBLE_FRACTION,
                        help="least visible share of a shape once later shapes cover it")  # fmt: skip
    parser.add_argument("--min-radius", type=float, default=MIN_RADIUS, help="smallest shape radius (px)")
    parser.add_argument(
        "--force", action="store_true", help="regenerate even if a complete copy already exists at --root"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = dict(seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                    min_size=args.min_size, max_size=args.max_size,
                    rules=SceneRules(args.max_instances, args.min_visible_fraction, args.min_radius))  # fmt: skip
    try:
        if args.force:
            generate_shapes_dataset(args.root, **settings)
        else:
            problem = find_shapes_dataset_problem(args.root)
            if problem is None:
                print(
                    f"{args.root} already holds a complete hiera_shapes dataset; "
                    "pass --force to regenerate it."
                )
                return 0
            ensure_shapes_dataset(args.root, **settings)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"hiera_shapes is ready in {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
