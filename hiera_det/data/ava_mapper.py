"""Detectron2 dataset mapper for AVA-style action detection: a keyframe record -> a clip around the keyframe
and its person boxes (training: jittered ground truth with multi-hot action labels; testing: the proposals).

The clip is ``NUM_FRAMES`` frames ``SAMPLING_RATE`` apart with the keyframe at position ``NUM_FRAMES // 2``,
edge frames repeated past either end of the video. Geometry follows PySlowFast's AVA pipeline: training
jitters the short side in ``INPUT.VIDEO.TRAIN_JITTER_SCALES``, crops ``TRAIN_CROP_SIZE`` squares and flips
(``INPUT.RANDOM_FLIP``); testing resizes the short side to ``TEST_CROP_SIZE`` and keeps the whole frame.

A video that cannot be used (missing frames, unreadable, shorter than the clip span, or not reaching the
keyframe) raises ``VideoReadError`` naming the file and the fix: training skips the keyframe and counts it
(``mapper.num_skipped``), evaluation stops.
"""

from __future__ import annotations

import numpy as np
import torch
from detectron2.config import CfgNode, configurable

from . import video_transforms as vt
from .ava import clip_frame_indices, keyframe_index, open_frames
from .video_io import VideoReadError
from .video_mapper import _SkipsUnreadable

__all__ = ["AvaClipMapper"]


class AvaClipMapper(_SkipsUnreadable):
    """AVA keyframe record (``hiera_det.data.ava.load_ava_dicts``) -> ``{"image": uint8 [3, T, H, W], "boxes":
    float [N, 4] pixels of the transformed frames, "labels": float [N, num_classes] (training), "box_scores": [N],
    "height", "width" (source frame), "video_id", "timestamp", "image_key", "frame_indices"}``."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        num_frames: int,
        sampling_rate: int,
        num_classes: int,
        train_crop_size: int = 224,
        test_short_side: int = 256,
        jitter_scales: tuple[int, int] = (256, 320),
        flip_prob: float = 0.5,
        box_jitter: float = 0.05,
        min_box_area_kept: float = 0.3,
        keyframe_only: bool = False,
        decode_threads: int = 1,
        image_format: str = "RGB",
    ):
        super().__init__(is_train)
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.num_classes = num_classes
        self.train_crop_size = train_crop_size
        self.test_short_side = test_short_side
        self.jitter_scales = tuple(jitter_scales)
        self.flip_prob = flip_prob
        self.box_jitter = box_jitter
        self.min_box_area_kept = min_box_area_kept
        self.keyframe_only = keyframe_only
        self.decode_threads = decode_threads
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
            raise ValueError(f"AVA clips support INPUT.RANDOM_FLIP 'horizontal' or 'none', got {cfg.INPUT.RANDOM_FLIP!r}")
        video, model, ava = cfg.INPUT.VIDEO, cfg.MODEL.HIERA_VIDEO, cfg.INPUT.AVA
        return dict(
            is_train=is_train,
            num_frames=model.NUM_FRAMES,
            sampling_rate=model.SAMPLING_RATE,
            num_classes=cfg.MODEL.ACTION_HEAD.NUM_CLASSES,
            train_crop_size=video.TRAIN_CROP_SIZE,
            test_short_side=video.TEST_CROP_SIZE,
            jitter_scales=tuple(video.TRAIN_JITTER_SCALES),
            flip_prob=0.5 if cfg.INPUT.RANDOM_FLIP == "horizontal" else 0.0,
            box_jitter=ava.TRAIN_BOX_JITTER,
            min_box_area_kept=ava.MIN_BOX_AREA_KEPT,
            keyframe_only=ava.KEYFRAME_ONLY,
            decode_threads=video.DECODE_THREADS,
            image_format=cfg.INPUT.FORMAT,
        )

    def read_clip(self, record: dict) -> tuple[np.ndarray, np.ndarray]:
        """(frames uint8 RGB ``[T, H, W, 3]``, source frame indices) around the record's keyframe."""
        with open_frames(record, self.decode_threads) as reader:
            span = vt.clip_span(self.num_frames, self.sampling_rate)
            source = record["file_name"]
            if reader.num_frames < span:
                raise VideoReadError(
                    source, f"it has {reader.num_frames} frames, fewer than the clip span of {span} "
                    f"({self.num_frames} frames x sampling rate {self.sampling_rate})",
                    "use longer videos, or a shorter MODEL.HIERA_VIDEO.NUM_FRAMES x SAMPLING_RATE",
                )
            fps = reader.fps
            keyframe = keyframe_index(record, fps)
            if not 0 <= keyframe < reader.num_frames:
                raise VideoReadError(
                    source, f"keyframe {record['timestamp']} s is frame {keyframe} at {fps:g} fps, but the video "
                    f"has {reader.num_frames} frames from second {record['video_start_sec']:g}",
                    "check INPUT.AVA.VIDEO_START_SEC / FRAME_RATE, or that this is the right video",
                )
            if self.keyframe_only:
                indices = np.full(self.num_frames, keyframe, np.int64)
            else:
                indices = clip_frame_indices(keyframe, self.num_frames, self.sampling_rate, reader.num_frames)
            return reader.get_frames(indices), indices

    def _map(self, record: dict) -> dict | None:
        clip, indices = self.read_clip(record)
        height, width = clip.shape[1:3]
        scale = np.array([width, height, width, height], np.float64)
        if self.is_train:
            geometry = vt.train_transform(height, width, crop_size=self.train_crop_size,
                                          jitter_scales=self.jitter_scales, flip_prob=self.flip_prob)
            persons = record.get("annotations", [])
            boxes = np.array([p["bbox"] for p in persons], np.float64).reshape(-1, 4) * scale
            boxes = self._jitter(boxes, width, height)
            box_scores = np.ones(len(boxes))
        else:
            geometry = vt.short_side_scale(height, width, self.test_short_side)
            proposals = record.get("proposals")
            if proposals is None:  # no proposals file: score the ground-truth boxes
                proposals = {"boxes": [p["bbox"] for p in record.get("annotations", [])],
                             "scores": [1.0] * len(record.get("annotations", []))}
            boxes = np.array(proposals["boxes"], np.float64).reshape(-1, 4) * scale
            box_scores = np.asarray(proposals["scores"], np.float64)
        clip = vt.apply_to_clip(geometry, clip)
        new_h, new_w = clip.shape[1:3]
        moved = vt.apply_to_boxes(geometry, boxes, (new_h, new_w))
        out = {
            "image": vt.clip_to_tensor(clip, self.image_format),
            "height": height,
            "width": width,
            "video_id": record["video_id"],
            "timestamp": record["timestamp"],
            "image_key": record["image_key"],
            "frame_indices": torch.from_numpy(np.asarray(indices)),
        }
        if self.is_train:
            keep = _area(moved) >= self.min_box_area_kept * _area(vt.apply_to_boxes(geometry, boxes))
            if not keep.any():
                return None  # every person was cropped away: Detectron2's MapDataset samples another keyframe
            labels = np.zeros((len(boxes), self.num_classes), np.float32)
            for row, person in enumerate(record["annotations"]):
                for action in person["actions"]:
                    if not 1 <= action <= self.num_classes:
                        raise ValueError(
                            f"{record['image_key']}: action id {action} does not fit MODEL.ACTION_HEAD.NUM_CLASSES="
                            f"{self.num_classes}; set it to the label map's largest id"
                        )
                    labels[row, action - 1] = 1.0
            moved, box_scores, out["labels"] = moved[keep], box_scores[keep], torch.from_numpy(labels[keep])
        out["boxes"] = torch.as_tensor(moved, dtype=torch.float32)
        out["box_scores"] = torch.as_tensor(box_scores, dtype=torch.float32)
        return out

    def _jitter(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        if not self.box_jitter or not len(boxes):
            return boxes
        size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
        moved = boxes + np.random.uniform(-self.box_jitter, self.box_jitter, boxes.shape) * size
        moved = np.clip(moved, 0, [width, height, width, height])
        degenerate = (moved[:, 2] <= moved[:, 0]) | (moved[:, 3] <= moved[:, 1])
        moved[degenerate] = boxes[degenerate]
        return moved


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
