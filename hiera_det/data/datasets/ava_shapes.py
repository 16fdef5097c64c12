"""AVA shapes: a generated dataset in the AVA v2.2 file format whose actions can only be told apart over time.

Each short video shows several "actors" (shapes) doing one to three actions at once, among static look-alike
distractors drawn from the same shapes, sizes and colours. Every action is a motion:

========  ==========  ===============================================================================
id        action      motion
========  ==========  ===============================================================================
1-4       move_*      drifting left / right / up / down at a constant speed
5         bounce      periodic hops
6         spin        rotating
7         pulse       periodic growing and shrinking
8         blink       switching between two colours
9         shake       fast small side-to-side jitter (rare, and not evaluated, like AVA's rare actions)
========  ==========  ===============================================================================

An actor does at most one of 1-5 and 9 (they all move its centre) plus any of 6-8. In a single frame every
actor looks like a distractor: positions, angles, sizes (an actor that does not pulse is drawn at a random
phase of a pulse) and colours (a blinking actor shows one of two random colours) have the same distribution,
so only motion tells who acts and how.

Layout under ``root`` (PySlowFast's AVA layout, so ``hiera_det.data.ava.ava_split_files(root, split)`` reads it):

* ``annotations/ava_{train,val}_v2.2.csv``: one row per (actor box, action), boxes normalised, person ids;
* ``annotations/ava_action_list_v2.2.pbtxt`` (9 actions) and ``..._for_activitynet_2019.pbtxt`` (8 evaluated);
* ``annotations/ava_{train,val}_excluded_timestamps_v2.2.csv``: a few keyframes without ground truth;
* ``annotations/ava_detection_{train,val}_boxes_and_labels.csv``: proposals = every actor's box jittered
  (a few missed), plus false positives on the distractors and random boxes, scored as a person detector would;
* ``frames/<video>/<video>_000001.jpg`` with ``frame_lists/{train,val}.csv``; with ``write_videos``, also
  ``videos_15min/<video>.mp4``;
* ``ava_shapes.json``: the generation parameters, written last (marks a complete dataset).

Time follows AVA: frame 0 of every video is second 900 (``video_start_sec``), keyframes are whole seconds
strictly inside the video (901 .. 900 + seconds - 1), ``fps`` frames a second.
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

from .moving_shapes import _SHAPES, _fill, _vertices, _write_mp4

# (id, name, channel, evaluated); channel "move" actions exclude each other
ACTIONS = (
    (1, "move_left", "move", True),
    (2, "move_right", "move", True),
    (3, "move_up", "move", True),
    (4, "move_down", "move", True),
    (5, "bounce", "move", True),
    (6, "spin", "spin", True),
    (7, "pulse", "pulse", True),
    (8, "blink", "blink", True),
    (9, "shake", "move", False),
)
ACTION_NAMES = {i: name for i, name, _, _ in ACTIONS}
EVALUATED_IDS = tuple(i for i, _, _, evaluated in ACTIONS if evaluated)
SPLITS = ("train", "val")
MARKER = "ava_shapes.json"
FORMAT_VERSION = 2
VIDEO_START_SEC = 900
SHAKE_PROBABILITY = 0.04

# Sizes: the full dataset for the recipe and the proof, and a tiny one that tests generate in seconds.
PRESETS = {
    "default": dict(num_train=480, num_val=80, frame_size=64, seconds=4, fps=8),
    "tiny": dict(num_train=6, num_val=3, frame_size=64, seconds=3, fps=8),
}


def default_root(preset: str = "default") -> str:
    name = "ava_shapes" if preset == "default" else f"ava_shapes_{preset}"
    return str(datasets_root() / name)


# ---------------------------------------------------------------------------------------------- actors
def _choose_actions(rng: np.random.Generator) -> list[int]:
    channels = rng.choice(["move", "spin", "pulse", "blink"], size=int(rng.integers(1, 4)), replace=False)
    actions = []
    for channel in channels:
        if channel == "move":
            actions.append(9 if rng.random() < SHAKE_PROBABILITY else int(rng.integers(1, 6)))
        else:
            actions.append({"spin": 6, "pulse": 7, "blink": 8}[channel])
    return sorted(actions)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(90, 256, size=3).astype(np.float64)


def _script(actions: list[int], rng: np.random.Generator, size: int, num_frames: int) -> dict:
    """Per-frame centre offset, angle, scale and colour of one shape doing ``actions`` (none: a distractor)."""
    t = np.arange(num_frames, dtype=np.float64)
    base = size * rng.uniform(0.07, 0.11)
    dx, dy = np.zeros(num_frames), np.zeros(num_frames)
    speed = size * rng.uniform(0.010, 0.016)  # of the frame per frame
    if 1 in actions:
        dx = -speed * t
    elif 2 in actions:
        dx = speed * t
    elif 3 in actions:
        dy = -speed * t
    elif 4 in actions:
        dy = speed * t
    elif 5 in actions:
        dy = -size * rng.uniform(0.10, 0.16) * np.abs(np.sin(math.pi * t / rng.uniform(5, 8) + rng.uniform(0, math.pi)))
    elif 9 in actions:
        dx = size * rng.uniform(0.03, 0.045) * np.sign(np.sin(math.pi * (t + rng.uniform(0, 2)) / 2.0 + 0.1))
    angle0 = rng.uniform(0, 2 * math.pi)
    angle = angle0 + (rng.choice([-1.0, 1.0]) * math.radians(rng.uniform(14, 24)) * t if 6 in actions else 0 * t)
    # a non-pulsing shape is drawn at a random phase of a pulse, so a single frame's size says nothing
    period, phase = rng.uniform(7, 11), rng.uniform(0, 2 * math.pi)
    scale = 1 + 0.3 * np.sin(2 * math.pi * t / period + phase) if 7 in actions else np.full(num_frames, 1 + 0.3 * math.sin(phase))
    colors = np.repeat(_random_color(rng)[None], num_frames, axis=0)
    if 8 in actions:
        # slower than the trunk's temporal resolution (sampling rate 2, then a stride-2 patch embedding): a
        # period of 5-7 frames aliased into a constant blended colour and blink stayed at chance
        other, blink_period = _random_color(rng), int(rng.integers(10, 15))
        on = ((t + rng.integers(0, blink_period)) % blink_period) < blink_period / 2
        colors[~on] = other
    outline = np.asarray(_SHAPES[sorted(_SHAPES)[int(rng.integers(len(_SHAPES)))]], np.float64)
    return dict(outline=outline, radius=base, dx=dx, dy=dy, angle=angle, scale=scale, colors=colors)


def _place(script: dict, rng: np.random.Generator, size: int, taken: list) -> bool:
    """Pick a start so the shape stays inside the frame, away from the shapes placed before; False if none fits."""
    reach = script["radius"] * script["scale"].max() * 1.1 + 1
    lo_x, hi_x = reach - script["dx"].min(), size - reach - script["dx"].max()
    lo_y, hi_y = reach - script["dy"].min(), size - reach - script["dy"].max()
    if hi_x < lo_x or hi_y < lo_y:
        return False
    for _ in range(40):
        x0, y0 = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        extent = (x0 + script["dx"].min() - reach, y0 + script["dy"].min() - reach,
                  x0 + script["dx"].max() + reach, y0 + script["dy"].max() + reach)
        if all(_overlap(extent, other) < 0.15 for other in taken):
            script.update(x0=x0, y0=y0)
            taken.append(extent)
            return True
    return False


def _overlap(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def _polygon(script: dict, i: int) -> np.ndarray:
    shape = {"outline": script["outline"], "radius": script["radius"]}
    center = (script["x0"] + script["dx"][i], script["y0"] + script["dy"][i])
    return _vertices(shape, center, script["angle"][i], script["scale"][i])


def render_video(rng: np.random.Generator, size: int, num_frames: int, num_actors: int, num_distractors: int):
    """Frames ``[T, S, S, 3]`` RGB and the actors: ``(actions, boxes [T, 4] in pixels)`` each."""
    background = rng.integers(0, 60, size=3)
    taken: list = []
    actors, distractors = [], []
    for _ in range(num_actors):
        actions = _choose_actions(rng)
        script = _script(actions, rng, size, num_frames)
        if _place(script, rng, size, taken):
            actors.append((actions, script))
    for _ in range(num_distractors):
        script = _script([], rng, size, num_frames)
        if _place(script, rng, size, taken):
            distractors.append(script)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    boxes = [np.zeros((num_frames, 4)) for _ in actors]
    for i in range(num_frames):
        frame = np.empty((size, size, 3), np.uint8)
        frame[:] = background
        for script in distractors:
            _fill(frame, _polygon(script, i), tuple(int(c) for c in script["colors"][i]))
        for k, (_, script) in enumerate(actors):
            polygon = _polygon(script, i)
            _fill(frame, polygon, tuple(int(c) for c in script["colors"][i]))
            x0, y0 = np.floor(polygon.min(0))
            x1, y1 = np.ceil(polygon.max(0)) + 1
            boxes[k][i] = np.clip([x0, y0, x1, y1], 0, size)
        frames[i] = frame
    distractor_boxes = []
    for script in distractors:
        polygons = [_polygon(script, i) for i in range(num_frames)]
        distractor_boxes.append(np.array([[*np.floor(p.min(0)), *(np.ceil(p.max(0)) + 1)] for p in polygons]).clip(0, size))
    return frames, [(actions, b) for (actions, _), b in zip(actors, boxes)], distractor_boxes


# ---------------------------------------------------------------------------------------------- proposals
def _jitter(box: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return box + rng.normal(0, amount, 4) * np.array([w, h, w, h])


def _proposals(rng, actor_boxes, distractor_boxes, size: int) -> list[tuple[np.ndarray, float]]:
    """A person detector's output at one keyframe: actors found (5% missed), look-alike distractors found as
    persons too, and a few low-scoring random boxes (most under the 0.8 threshold)."""
    out = []
    for box in actor_boxes:
        if rng.random() >= 0.05:
            out.append((_jitter(box, rng, 0.06), rng.uniform(0.85, 1.0)))
    for box in distractor_boxes:
        out.append((_jitter(box, rng, 0.06), rng.uniform(0.8, 1.0)))
    for _ in range(int(rng.integers(0, 3))):
        x, y = rng.uniform(0, 0.75 * size, 2)
        w, h = rng.uniform(0.1, 0.25, 2) * size
        out.append((np.array([x, y, x + w, y + h]), rng.uniform(0.3, 0.9)))
    return out


def _norm(box: np.ndarray, size: int) -> list[str]:
    return [f"{v:.3f}" for v in np.clip(np.asarray(box) / size, 0.0, 1.0)]


# ---------------------------------------------------------------------------------------------- writing
def _write_label_maps(annotations: str) -> None:
    with open(os.path.join(annotations, "ava_action_list_v2.2.pbtxt"), "w", encoding="utf-8") as f:
        for i, name, _, _ in ACTIONS:
            f.write(f'label {{\n  name: "{name}"\n  label_id: {i}\n  label_type: PERSON_MOVEMENT\n}}\n')
    with open(os.path.join(annotations, "ava_action_list_v2.2_for_activitynet_2019.pbtxt"), "w", encoding="utf-8") as f:
        for i, name, _, evaluated in ACTIONS:
            if evaluated:
                f.write(f'item {{\n  name: "{name}"\n  id: {i}\n}}\n')


def generate_ava_shapes(
    root: str,
    *,
    num_train: int = 480,
    num_val: int = 80,
    frame_size: int = 64,
    seconds: int = 4,
    fps: int = 8,
    actors: tuple[int, int] = (2, 3),
    distractors: tuple[int, int] = (1, 2),
    excluded_fraction: float = 0.03,
    write_videos: bool = False,
    seed: int = 0,
) -> dict:
    """Write the dataset into the existing folder ``root`` (``ensure_ava_shapes_dataset`` is the atomic,
    idempotent version). Returns the generation parameters."""
    import cv2

    params = dict(version=FORMAT_VERSION, num_train=num_train, num_val=num_val, frame_size=frame_size,
                  seconds=seconds, fps=fps, actors=list(actors), distractors=list(distractors),
                  excluded_fraction=excluded_fraction, write_videos=write_videos, seed=seed,
                  video_start_sec=VIDEO_START_SEC, keyframe_range=[VIDEO_START_SEC + 1, VIDEO_START_SEC + seconds - 1])
    if frame_size < 32 or seconds < 3 or fps < 2:
        raise ValueError(f"need frame_size >= 32, seconds >= 3 (keyframes strictly inside), fps >= 2: {params}")
    annotations = os.path.join(root, "annotations")
    for folder in ("annotations", "frames", "frame_lists") + (("videos_15min",) if write_videos else ()):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    _write_label_maps(annotations)
    num_frames = seconds * fps
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        gt_rows, proposal_rows, excluded_rows = [], [], []
        frame_list = ["original_vido_id video_id frame_id path labels"]
        for index in range(count):
            rng = np.random.default_rng([seed, split_id, index])
            video = f"{split}{index:04d}"
            frames, actor_tracks, distractor_tracks = render_video(
                rng, frame_size, num_frames, int(rng.integers(actors[0], actors[1] + 1)),
                int(rng.integers(distractors[0], distractors[1] + 1)))
            os.makedirs(os.path.join(root, "frames", video), exist_ok=True)
            for k, frame in enumerate(frames):
                rel = f"{video}/{video}_{k + 1:06d}.jpg"
                cv2.imwrite(os.path.join(root, "frames", rel), frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
                frame_list.append(f'{video} {index} {k} {rel} ""')
            if write_videos:
                _write_mp4(os.path.join(root, "videos_15min", f"{video}.mp4"), frames, fps)
            for second in range(1, seconds):
                timestamp = VIDEO_START_SEC + second
                k = second * fps
                if rng.random() < excluded_fraction:
                    excluded_rows.append(f"{video},{timestamp:04d}")
                else:
                    for person, (actions, boxes) in enumerate(actor_tracks):
                        coords = ",".join(_norm(boxes[k], frame_size))
                        gt_rows += [f"{video},{timestamp:04d},{coords},{a},{person}" for a in actions]
                for box, score in _proposals(rng, [b[k] for _, b in actor_tracks], [b[k] for b in distractor_tracks], frame_size):
                    proposal_rows.append(f"{video},{timestamp:04d},{','.join(_norm(box, frame_size))},,{score:.6f}")
        files = {
            f"annotations/ava_{split}_v2.2.csv": gt_rows,
            f"annotations/ava_{split}_excluded_timestamps_v2.2.csv": excluded_rows,
            f"annotations/ava_detection_{split}_boxes_and_labels.csv": proposal_rows,
            f"frame_lists/{split}.csv": frame_list,
        }
        for rel, lines in files.items():
            with open(os.path.join(root, rel), "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
    with open(os.path.join(root, MARKER), "w", encoding="utf-8") as f:
        json.dump(params, f, indent=1)
    return params


def is_complete(root: str) -> bool:
    return os.path.isfile(os.path.join(root, MARKER))


def read_params(root: str) -> dict:
    with open(os.path.join(root, MARKER), encoding="utf-8") as f:
        return json.load(f)


def ensure_ava_shapes_dataset(root: str | None = None, preset: str = "default", **overrides) -> str:
    """Generate the dataset at ``root`` (default ``$DETECTRON2_DATASETS/ava_shapes[_<preset>]``) unless a
    complete one with the same parameters is there; returns ``root``. Written to a temporary sibling folder,
    then renamed into place, so concurrent callers never see half a dataset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    kwargs = {**PRESETS[preset], **overrides}
    root = os.path.abspath(root or default_root(preset))
    if is_complete(root):
        existing = read_params(root)
        differing = {k: (existing.get(k), v) for k, v in kwargs.items() if existing.get(k) != (list(v) if isinstance(v, tuple) else v)}
        if differing:
            raise FileExistsError(
                f"{root!r} holds an AVA-shapes dataset made with other parameters (existing, requested): "
                f"{differing}; delete it, regenerate with `python -m hiera_det.data.datasets.ava_shapes --root "
                f"{root} --force`, or choose another root"
            )
        return root
    if os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(f"{root!r} exists but holds no complete AVA-shapes dataset (no {MARKER}); delete it or choose another root")
    os.makedirs(os.path.dirname(root), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".ava_shapes.tmp-", dir=os.path.dirname(root))
    try:
        generate_ava_shapes(tmp, **kwargs)
        try:
            os.replace(tmp, root)
        except OSError:
            if not is_complete(root):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def splits(root: str, layout: str = "frames") -> dict:
    """``{"train": AvaSplit, "val": AvaSplit}`` for a generated dataset (proposals for val only, as on AVA)."""
    from ..ava import ava_split_files

    params = read_params(root)
    common = dict(layout=layout, frame_rate=float(params["fps"]), video_start_sec=float(params["video_start_sec"]),
                  keyframe_range=tuple(params["keyframe_range"]))
    return {split: ava_split_files(root, split, **common) for split in SPLITS}


def register_ava_shapes(root: str, prefix: str = "ava_shapes", layout: str = "frames") -> None:
    """Register ``<prefix>_train`` and ``<prefix>_val`` (frames, or ``layout="videos"`` when generated with
    ``write_videos``)."""
    from ..ava import register_ava

    for split, files in splits(root, layout).items():
        register_ava(f"{prefix}_{split}", files)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--root", default="", help="output folder (default: $DETECTRON2_DATASETS/ava_shapes[_<preset>])")
    parser.add_argument("--videos", action="store_true", help="also write mp4 videos (videos_15min/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="delete an existing dataset at --root first")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root or default_root(args.preset))
    if args.force and os.path.isdir(root):
        shutil.rmtree(root)
    start = time.perf_counter()
    existed = is_complete(root)
    ensure_ava_shapes_dataset(root, args.preset, write_videos=args.videos, seed=args.seed)
    verb = "already present" if existed else f"generated in {time.perf_counter() - start:.1f} s"
    print(f"AVA shapes {verb} at {root}: {read_params(root)}")


if __name__ == "__main__":
    main()
