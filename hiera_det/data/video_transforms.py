"""Clip sampling and clip-level geometric transforms.

Temporal sampling follows PySlowFast: a clip is ``num_frames`` frames taken every ``sampling_rate`` source
frames (Hiera's video models use 16x4). Training takes one clip at a random start; testing takes
``num_temporal`` evenly spaced clips and ``num_spatial`` crops of each.

Test views. The Hiera paper reports Kinetics-400 accuracy with "3x5 views". Hiera tables follow MViT/MViTv2,
which write views as (spatial crops) x (temporal clips) -- the MViTv2 Kinetics configs test with
NUM_SPATIAL_CROPS=3 and NUM_ENSEMBLE_VIEWS=5 -- so we read 3x5 as 3 spatial crops x 5 temporal clips,
i.e. ``num_temporal=5, num_spatial=3``.

Geometry. Every geometric op is an fvcore ``Transform`` (the classes Detectron2 re-exports in
``detectron2.data.transforms``), so the parameters of one sampled augmentation are kept and the same
transform is applied to every frame (``apply_to_clip``) and to boxes (``apply_to_boxes`` or Detectron2's
``transform_instance_annotations``). Boxes are XYXY in continuous pixel coordinates: pixel ``(x, y)``
covers ``[x, x + 1) x [y, y + 1)``.

Randomness comes from ``rng``: ``numpy.random`` (the default, which Detectron2 seeds per worker), a
``RandomState`` or a ``Generator``; only ``rng.uniform`` is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from fvcore.transforms.transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    ScaleTransform,
    Transform,
    TransformList,
)

# Transforms whose fvcore apply_image already accepts a stack of frames [T, H, W, C].
_CLIP_NATIVE = (CropTransform, HFlipTransform, ScaleTransform, NoOpTransform)
# fvcore's ScaleTransform converts a uint8 clip to float32, interpolates with torch and rounds back: about two
# thirds of a training clip's CPU time in a loader worker (16x256x341 frames). OpenCV resizes uint8 directly,
# with the same half-pixel sampling and no antialiasing, so pixels differ from fvcore's by at most one level.
_CV2_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR}  # the only one the clip transforms use


# ---------------------------------------------------------------------------------------------- temporal
def clip_span(num_frames: int, sampling_rate: int) -> int:
    """Source frames covered by a clip, first to last inclusive."""
    return (num_frames - 1) * sampling_rate + 1


def clip_indices(
    anchor_frame: int, num_frames: int, sampling_rate: int, video_length: int, anchor_position: int = 0
) -> np.ndarray:
    """Source frame indices of a clip, ``int64 [num_frames]``, clamped into the video (edge padding).

    Source frame ``anchor_frame`` sits at clip position ``anchor_position``: 0 for a clip that starts there,
    the keyframe position for clip-to-keyframe detection. Indices before the first or after the last frame
    repeat that frame, so a short video still yields a full clip.
    """
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(f"need num_frames >= 1 and sampling_rate >= 1, got {num_frames} and {sampling_rate}")
    if video_length < 1:
        raise ValueError(f"the video has {video_length} frames; a clip needs at least one")
    if not 0 <= anchor_position < num_frames:
        raise ValueError(f"anchor_position {anchor_position} is outside a clip of {num_frames} frames")
    offsets = (np.arange(num_frames, dtype=np.int64) - anchor_position) * sampling_rate
    return np.clip(int(anchor_frame) + offsets, 0, video_length - 1)


def train_clip_start(video_length: int, num_frames: int, sampling_rate: int, rng=np.random) -> int:
    """A uniformly random clip start such that the clip fits in the video (0 when it cannot fit)."""
    slack = max(video_length - clip_span(num_frames, sampling_rate), 0)
    return min(int(rng.uniform(0, slack + 1)), slack)


def test_clip_starts(video_length: int, num_frames: int, sampling_rate: int, num_views: int) -> list[int]:
    """Starts of ``num_views`` evenly spaced test clips.

    The first clip starts at frame 0 and the last ends at the last frame (PySlowFast's offset spacing); a
    single view is centered. When the video is shorter than a clip all views start at 0 (and are padded).
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    slack = max(video_length - clip_span(num_frames, sampling_rate), 0)
    if num_views == 1:
        return [slack // 2]
    return [int(round(i * slack / (num_views - 1))) for i in range(num_views)]


# ---------------------------------------------------------------------------------------------- spatial
def short_side_scale(height: int, width: int, short_side: int) -> Transform:
    """Resize so the shorter side becomes ``short_side``, keeping the aspect ratio."""
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    scale = short_side / min(height, width)
    if height <= width:
        new_h, new_w = short_side, int(round(width * scale))
    else:
        new_h, new_w = int(round(height * scale)), short_side
    if (new_h, new_w) == (height, width):
        return NoOpTransform()
    return ScaleTransform(height, width, new_h, new_w, interp="bilinear")


def random_short_side_scale(
    height: int, width: int, min_size: int, max_size: int, rng=np.random
) -> Transform:
    """Scale jitter: the shorter side becomes a uniformly random integer in ``[min_size, max_size]``."""
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got ({min_size}, {max_size})")
    return short_side_scale(height, width, min(int(rng.uniform(min_size, max_size + 1)), max_size))


def _check_crop(height: int, width: int, crop_size: int) -> None:
    if crop_size > min(height, width):
        raise ValueError(
            f"crop {crop_size}x{crop_size} does not fit a {height}x{width} frame; resize first so the shorter "
            f"side is >= {crop_size}"
        )


def random_crop(height: int, width: int, crop_size: int, rng=np.random) -> CropTransform:
    """A square crop at a uniformly random position."""
    _check_crop(height, width, crop_size)
    y0 = min(int(rng.uniform(0, height - crop_size + 1)), height - crop_size)
    x0 = min(int(rng.uniform(0, width - crop_size + 1)), width - crop_size)
    return CropTransform(x0, y0, crop_size, crop_size, orig_w=width, orig_h=height)


def spatial_view_crop(
    height: int, width: int, crop_size: int, spatial_idx: int, num_spatial: int
) -> CropTransform:
    """The ``spatial_idx``-th of ``num_spatial`` test crops; the middle index is always the center crop.

    1 view: center. 3 views: start, center and end of the longer side (centered on the shorter side), as
    PySlowFast's ``uniform_crop``. 5 views: top-left, top-right, center, bottom-left, bottom-right.
    """
    _check_crop(height, width, crop_size)
    if not 0 <= spatial_idx < num_spatial:
        raise ValueError(f"spatial_idx {spatial_idx} is outside [0, {num_spatial})")
    free_y, free_x = height - crop_size, width - crop_size
    if num_spatial == 1:
        y0, x0 = free_y // 2, free_x // 2
    elif num_spatial == 3:
        fraction = (0.0, 0.5, 1.0)[spatial_idx]
        if height > width:
            y0, x0 = int(round(free_y * fraction)), free_x // 2
        else:
            y0, x0 = free_y // 2, int(round(free_x * fraction))
    elif num_spatial == 5:
        fy, fx = [(0.0, 0.0), (0.0, 1.0), (0.5, 0.5), (1.0, 0.0), (1.0, 1.0)][spatial_idx]
        y0, x0 = int(round(free_y * fy)), int(round(free_x * fx))
    else:
        raise ValueError(f"num_spatial must be 1, 3 or 5, got {num_spatial}")
    return CropTransform(x0, y0, crop_size, crop_size, orig_w=width, orig_h=height)


def random_resized_crop(
    height: int,
    width: int,
    crop_size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    rng=np.random,
    attempts: int = 10,
) -> TransformList:
    """Inception-style crop: a random area fraction in ``scale`` and aspect ratio (w/h) in ``ratio``
    (log-uniform), resized to ``crop_size`` square. Falls back to the largest centered crop that fits
    the ratio range when no sample fits."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y0 = min(int(rng.uniform(0, height - h + 1)), height - h)
            x0 = min(int(rng.uniform(0, width - w + 1)), width - w)
            break
    else:
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(height * max(ratio))), height
        else:
            w, h = width, height
        y0, x0 = (height - h) // 2, (width - w) // 2
    crop = CropTransform(x0, y0, w, h, orig_w=width, orig_h=height)
    return TransformList([crop, ScaleTransform(h, w, crop_size, crop_size, interp="bilinear")])


def random_hflip(width: int, prob: float = 0.5, rng=np.random) -> Transform:
    return HFlipTransform(width) if rng.uniform(0.0, 1.0) < prob else NoOpTransform()


def train_transform(
    height: int,
    width: int,
    *,
    crop_size: int,
    jitter_scales: Sequence[int] = (256, 320),
    flip_prob: float = 0.5,
    relative_scales: Sequence[float] | None = None,
    relative_aspects: Sequence[float] = (3 / 4, 4 / 3),
    rng=np.random,
) -> TransformList:
    """Training geometry for a ``height x width`` clip.

    Default (``relative_scales=None``): short-side scale jitter in ``jitter_scales``, a random square crop of
    ``crop_size``, horizontal flip. With ``relative_scales`` (e.g. ``(0.08, 1.0)``, the MViTv2/MAE-ST
    fine-tuning recipe): a random resized crop with that area range and ``relative_aspects``, then the flip.
    """
    if relative_scales:
        geometry = random_resized_crop(height, width, crop_size, relative_scales, relative_aspects, rng)
    else:
        resize = random_short_side_scale(height, width, jitter_scales[0], jitter_scales[-1], rng)
        new_h, new_w = _output_size(resize, height, width)
        geometry = TransformList([resize, random_crop(new_h, new_w, crop_size, rng)])
    return TransformList([geometry, random_hflip(crop_size, flip_prob, rng)])


def test_transform(
    height: int, width: int, *, crop_size: int, spatial_idx: int = 0, num_spatial: int = 1
) -> TransformList:
    """Test geometry: shorter side to ``crop_size``, then spatial view ``spatial_idx`` of ``num_spatial``."""
    resize = short_side_scale(height, width, crop_size)
    new_h, new_w = _output_size(resize, height, width)
    return TransformList([resize, spatial_view_crop(new_h, new_w, crop_size, spatial_idx, num_spatial)])


def _output_size(transform: Transform, height: int, width: int) -> tuple[int, int]:
    """Frame size after ``transform``, found by mapping a dummy frame's corner box."""
    box = transform.apply_box(np.array([[0.0, 0.0, width, height]]))[0]
    return int(round(box[3] - box[1])), int(round(box[2] - box[0]))


# ---------------------------------------------------------------------------------------------- applying
def apply_to_clip(transform: Transform, clip: np.ndarray) -> np.ndarray:
    """Apply one transform identically to every frame of ``clip`` ``[T, H, W, C]``.

    Crops and flips run on the whole stack at once, scales of uint8 clips frame by frame in OpenCV (of other
    dtypes through fvcore, on the whole stack); any other transform (e.g. Detectron2's
    ``ResizeTransform``, which resizes with PIL like Detectron2's image pipeline) runs frame by frame.
    """
    if clip.ndim != 4:
        raise ValueError(f"a clip is [T, H, W, C]; got shape {tuple(clip.shape)}")
    steps = transform.transforms if isinstance(transform, TransformList) else [transform]
    for step in steps:
        if isinstance(step, ScaleTransform) and clip.dtype == np.uint8 and step.interp in _CV2_INTERPOLATION:
            clip = _resize_uint8(clip, step.new_h, step.new_w, _CV2_INTERPOLATION[step.interp])
        elif isinstance(step, _CLIP_NATIVE):
            clip = step.apply_image(clip)
        else:
            clip = np.stack([step.apply_image(frame) for frame in clip])
    return np.ascontiguousarray(clip)


def _resize_uint8(clip: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    frames = [cv2.resize(np.ascontiguousarray(f), (width, height), interpolation=interpolation) for f in clip]
    return np.stack(frames).reshape(len(clip), height, width, clip.shape[3])  # OpenCV drops a single channel


def apply_to_boxes(
    transform: Transform, boxes: np.ndarray, image_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Map XYXY boxes ``[N, 4]`` through ``transform``; with ``image_size=(H, W)`` clip them to the frame."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = transform.apply_box(boxes) if len(boxes) else boxes.copy()
    if image_size is not None:
        h, w = image_size
        out = np.clip(out, 0, [w, h, w, h])
    return out


def clip_to_tensor(clip: np.ndarray, image_format: str = "RGB") -> torch.Tensor:
    """``[T, H, W, 3]`` RGB numpy -> ``[3, T, H, W]`` tensor (same dtype), channels in ``image_format``."""
    if image_format == "BGR":
        clip = clip[..., ::-1]
    elif image_format != "RGB":
        raise ValueError(f"video clips support image_format 'RGB' or 'BGR', got {image_format!r}")
    return torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))


def normalize_clip(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(clip - mean) / std`` per channel for a ``[3, T, H, W]`` (or ``[B, 3, T, H, W]``) clip; mean and
    std in the clip's value units (0-255 for uint8 clips, Detectron2's PIXEL_MEAN convention)."""
    shape = (-1, 1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=clip.device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=clip.device).view(shape)
    return (clip.float() - mean_t) / std_t
