"""Drawing on images and video frames for the demos: detections (on Detectron2's ``Visualizer`` for pictures,
with OpenCV for video frames) and text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np
import torch
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

__all__ = ["class_color", "draw_boxes", "draw_instances", "draw_text_lines", "instance_labels"]

_PALETTE = colormap(rgb=True, maximum=1)


def class_color(class_index: int) -> np.ndarray:
    """RGB colour in [0, 1] of a class; the same class gets the same colour in every image and frame."""
    return _PALETTE[int(class_index) % len(_PALETTE)]


def instance_labels(
    classes: Sequence[int], scores: Sequence[float] | None, class_names: Sequence[str] | None
) -> list[str]:
    """ "name 87%" per instance ("class 3" when the index has no name; no percentage without scores)."""
    names = [
        class_names[c] if class_names is not None and 0 <= c < len(class_names) else f"class {c}"
        for c in classes
    ]
    if scores is None:
        return names
    return [f"{name} {score * 100:.0f}%" for name, score in zip(names, scores)]


def _as_numpy(value) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check_instances(image_rgb, boxes, scores, classes, masks, caller: str):
    """The inputs of a drawing call as numpy arrays, checked against each other."""
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(
            f"{caller} needs an [H, W, 3] uint8 RGB image, got shape {image_rgb.shape} "
            f"dtype {image_rgb.dtype};"
            " convert with image.astype(np.uint8) / image[:, :, ::-1] for BGR."
        )
    boxes = _as_numpy(boxes).reshape(-1, 4) if boxes is not None else np.zeros((0, 4))
    classes = _as_numpy(classes).astype(np.int64).reshape(-1)
    scores = _as_numpy(scores)
    masks = _as_numpy(masks)
    count = len(boxes)
    if len(classes) != count or (scores is not None and len(scores) != count):
        raise ValueError(
            f"{caller}: {count} boxes but {len(classes)} classes and "
            f"{'no' if scores is None else len(scores)} scores; pass one of each per instance."
        )
    if masks is not None and masks.shape != (count, *image_rgb.shape[:2]):
        raise ValueError(
            f"{caller}: masks must be [N, H, W] = {(count, *image_rgb.shape[:2])}, got {masks.shape}."
        )
    return image_rgb, boxes, scores, classes, masks


def draw_instances(
    image_rgb: np.ndarray,
    boxes,
    scores,
    classes,
    class_names: Sequence[str] | None,
    masks=None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Returns a copy of ``image_rgb`` with boxes, masks and "name score%" labels drawn on it.

    Args:
        image_rgb: ``[H, W, 3]`` uint8, RGB.
        boxes: ``[N, 4]`` absolute XYXY pixel boxes (numpy array or tensor).
        scores: ``[N]`` in [0, 1], or None to label with class names only.
        classes: ``[N]`` class indices (0-based, into ``class_names``).
        class_names: names by class index, e.g. ``MetadataCatalog.get(name).thing_classes``; may be None.
        masks: ``[N, H, W]`` boolean masks, or None.
        alpha: mask opacity.

    Returns:
        ``[H, W, 3]`` uint8 RGB picture.
    """
    image_rgb, boxes, scores, classes, masks = _check_instances(
        image_rgb, boxes, scores, classes, masks, "draw_instances"
    )
    count = len(boxes)
    visualizer = Visualizer(image_rgb)
    if count == 0:
        return visualizer.output.get_image()
    picture = visualizer.overlay_instances(
        boxes=boxes,
        labels=instance_labels(classes.tolist(), None if scores is None else scores.tolist(), class_names),
        masks=None if masks is None else masks.astype(np.uint8),
        assigned_colors=[class_color(c) for c in classes],
        alpha=alpha,
    )
    return picture.get_image()


def draw_boxes(image_rgb: np.ndarray, boxes, scores, classes, class_names: Sequence[str] | None) -> np.ndarray:
    """A copy of ``image_rgb`` with each box outlined in its class colour and labelled "name 87%" on a tag
    of that colour: the video demo's frames, drawn by OpenCV in about a millisecond per 720p frame (the
    matplotlib canvas behind :func:`draw_instances` takes about 100 ms, which would cap a video at about
    10 frames/s a CPU core).

    Arguments as :func:`draw_instances` (no masks)."""
    image_rgb, boxes, scores, classes, _ = _check_instances(image_rgb, boxes, scores, classes, None, "draw_boxes")
    out = image_rgb.copy()
    if not len(boxes):
        return out
    height, width = out.shape[:2]
    scale = max(min(height, width) / 720.0, 0.3)
    thickness = max(int(round(2 * scale)), 1)
    font_scale = 0.5 * scale
    labels = instance_labels(classes.tolist(), None if scores is None else scores.tolist(), class_names)
    corners = np.round(boxes).astype(np.int64)
    for (x0, y0, x1, y1), c, label in zip(corners.tolist(), classes.tolist(), labels):
        color = tuple(int(v) for v in np.round(class_color(c) * 255))
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness)
        (text_w, text_h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = y0 - text_h - base - 2 if y0 - text_h - base - 2 >= 0 else y0  # inside the box at the top edge
        cv2.rectangle(out, (x0, top), (x0 + text_w + 2, top + text_h + base + 2), color, -1)
        ink = (0, 0, 0) if sum(color) > 384 else (255, 255, 255)  # readable on light and dark tags
        cv2.putText(out, label, (x0 + 1, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, 1,
                    cv2.LINE_AA)  # fmt: skip
    return out


def draw_text_lines(image_rgb: np.ndarray, lines: Iterable[str]) -> np.ndarray:
    """A copy of ``image_rgb`` with ``lines`` written top left in white on black, scaled to the image."""
    out = np.ascontiguousarray(image_rgb.copy())
    scale = max(out.shape[0] / 480.0, 0.3)
    for i, line in enumerate(lines):
        y = int((i + 1) * 18 * scale) + 2
        cv2.putText(out, line, (3, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (0, 0, 0), 3)
        cv2.putText(out, line, (3, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (255, 255, 255), 1)
    return out
