"""Detectron2 dataset mappers for video: clip classification and clip-to-keyframe detection.

Both mappers open a decord reader per call (no reader or lock is shared between DataLoader workers) and
return uint8 clips ``[3, T, H, W]``; the model normalizes, as Detectron2 models do with images.

Unreadable videos. In training a mapper returns ``None`` for a video that raises ``VideoReadError``, so
Detectron2's ``MapDataset`` retries with another index; every skip is logged with the path and counted in
``mapper.num_skipped`` / ``mapper.skipped_videos`` (gathered from all DataLoader worker processes). In
evaluation the error propagates: silently dropping test videos would change the reported accuracy.

Config keys read by ``from_config`` (``hiera_det.config.add_hiera_config`` adds them):

* ``MODEL.HIERA_VIDEO.NUM_FRAMES`` / ``SAMPLING_RATE``: clip length and stride in source frames (16x4).
* ``INPUT.VIDEO.DECODE_THREADS``: decord threads per reader.
* ``INPUT.VIDEO.TRAIN_JITTER_SCALES``: (min, max) short side for training scale jitter.
* ``INPUT.VIDEO.TRAIN_JITTER_SCALES_RELATIVE`` / ``TRAIN_JITTER_ASPECT_RELATIVE``: when the first is non-empty,
  training uses a random resized crop with these area and aspect ranges instead of jitter + crop.
* ``INPUT.VIDEO.TRAIN_CROP_SIZE`` / ``TEST_CROP_SIZE``: square crop size; at test time the short side is
  first resized to ``TEST_CROP_SIZE``.
* ``INPUT.VIDEO.NUM_TEMPORAL_VIEWS`` / ``NUM_SPATIAL_VIEWS``: test views (5 x 3 for the Hiera K400 protocol).
* ``INPUT.RANDOM_FLIP`` ("horizontal" or "none" for classification), ``INPUT.FORMAT`` ("RGB"/"BGR"), and for
  the keyframe mapper the usual ``INPUT.MIN_SIZE_*``/``MAX_SIZE_*``, ``MODEL.MASK_ON``, ``INPUT.MASK_FORMAT``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import weakref

import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..config import resolve_keyframe
from . import video_transforms as vt
from .video_io import VideoReadError, open_video

logger = logging.getLogger(__name__)

__all__ = [
    "KeyframeClipMapper",
    "VideoClassificationMapper",
    "expand_test_views",
]

def expand_test_views(dataset_dicts: list[dict], num_temporal: int, num_spatial: int) -> list[dict]:
    """One dict per test view: each video repeated ``num_temporal * num_spatial`` times (views of a video
    are consecutive) with ``"view": (temporal_idx, spatial_idx)`` and ``"num_views": (T, S)`` added."""
    if num_temporal < 1 or num_spatial not in (1, 3, 5):
        raise ValueError(
            f"need num_temporal >= 1 and num_spatial in (1, 3, 5), got {num_temporal}, {num_spatial}"
        )
    return [
        dict(d, view=(t, s), num_views=(num_temporal, num_spatial))
        for d in dataset_dicts
        for t in range(num_temporal)
        for s in range(num_spatial)
    ]


class _SkipLog:
    """Records skipped videos across DataLoader worker processes, whatever their start method.

    Each process appends the paths it skips to its own file in a private temporary folder, so no lock is
    needed and only the folder name is pickled (shared memory would not survive Detectron2's cloudpickled
    map functions under the spawn/forkserver start methods). The folder is removed with the object that
    created it.
    """

    def __init__(self):
        self._dir = tempfile.mkdtemp(prefix="hiera_det_skipped_videos-")
        self._in_this_process = 0
        weakref.finalize(self, _remove_folder_of_process, self._dir, os.getpid())

    def add(self, path: str) -> int:
        os.makedirs(self._dir, exist_ok=True)
        with open(os.path.join(self._dir, f"{os.getpid()}.txt"), "a", encoding="utf-8") as f:
            f.write(path.replace("\n", " ") + "\n")
        self._in_this_process += 1
        return self._in_this_process

    def paths(self) -> list[str]:
        if not os.path.isdir(self._dir):
            return []
        paths = []
        for name in sorted(os.listdir(self._dir)):
            with open(os.path.join(self._dir, name), encoding="utf-8") as f:
                paths.extend(line.rstrip("\n") for line in f)
        return paths


def _remove_folder_of_process(folder: str, owner_pid: int) -> None:
    # A forked worker inherits the finalizer; only the creating process may delete the shared folder.
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)


class _SkipsUnreadable:
    def __init__(self, is_train: bool):
        self.is_train = is_train
        self._skips = _SkipLog()

    @property
    def num_skipped(self) -> int:
        """Videos skipped as unreadable so far, summed over all processes using this mapper."""
        return len(self._skips.paths())

    @property
    def skipped_videos(self) -> list[str]:
        """Paths of the skipped videos (one entry per skip, from all processes using this mapper)."""
        return self._skips.paths()

    def __call__(self, dataset_dict: dict) -> dict | None:
        """The mapped dict; in training, None for an unreadable video (Detectron2's MapDataset then takes
        another index), counted and logged; in evaluation the VideoReadError propagates."""
        try:
            return self._map(dataset_dict)
        except VideoReadError as e:
            if not self.is_train:
                raise
            self._skip(e)
            return None

    def _skip(self, error: VideoReadError) -> None:
        count = self._skips.add(error.path)
        logger.warning("skipping unreadable training video (%d skipped in this process): %s", count, error)


class VideoClassificationMapper(_SkipsUnreadable):
    """Dataset dict ``{"file_name", "label", "video_id"[, "view", "num_views"]}`` -> ``{"clip": uint8
    [3, T, H, W], "label", "video_id", "view": (temporal_idx, spatial_idx), "num_views", "file_name"}``.

    Training: a random clip, short-side jitter (or random resized crop), random crop, flip. Testing: the
    view named by ``"view"`` (see ``expand_test_views``); a dict without one gets the centered clip and
    center crop, reported as view (0, 0) of (1, 1).
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        num_frames: int,
        sampling_rate: int,
        train_crop_size: int = 224,
        test_crop_size: int = 224,
        jitter_scales: tuple[int, int] = (256, 320),
        relative_scales: tuple[float, float] | None = None,
        relative_aspects: tuple[float, float] = (0.75, 4 / 3),
        flip_prob: float = 0.5,
        decode_threads: int = 1,
        image_format: str = "RGB",
    ):
        super().__init__(is_train)
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.train_crop_size = train_crop_size
        self.test_crop_size = test_crop_size
        self.jitter_scales = tuple(jitter_scales)
        self.relative_scales = tuple(relative_scales) if relative_scales else None
        self.relative_aspects = tuple(relative_aspects)
        self.flip_prob = flip_prob
        self.decode_threads = decode_threads
        self.image_format = image_format
        if not self.relative_scales and min(self.jitter_scales) < train_crop_size:
            raise ValueError(
                f"training crop {train_crop_size} (INPUT.VIDEO.TRAIN_CROP_SIZE) is larger than the smallest jittered "
                f"short side {min(self.jitter_scales)} (INPUT.VIDEO.TRAIN_JITTER_SCALES); raise the scales or "
                "lower the crop"
            )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        video, model = cfg.INPUT.VIDEO, cfg.MODEL.HIERA_VIDEO
        if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
            raise ValueError(
                f"video classification supports INPUT.RANDOM_FLIP 'horizontal' or 'none', got {cfg.INPUT.RANDOM_FLIP!r}"
            )
        return dict(
            is_train=is_train,
            num_frames=model.NUM_FRAMES,
            sampling_rate=model.SAMPLING_RATE,
            train_crop_size=video.TRAIN_CROP_SIZE,
            test_crop_size=video.TEST_CROP_SIZE,
            jitter_scales=tuple(video.TRAIN_JITTER_SCALES),
            relative_scales=tuple(video.TRAIN_JITTER_SCALES_RELATIVE) or None,
            relative_aspects=tuple(video.TRAIN_JITTER_ASPECT_RELATIVE),
            flip_prob=0.5 if cfg.INPUT.RANDOM_FLIP == "horizontal" else 0.0,
            decode_threads=video.DECODE_THREADS,
            image_format=cfg.INPUT.FORMAT,
        )

    def _map(self, dataset_dict: dict) -> dict:
        view = tuple(dataset_dict.get("view", (0, 0)))
        num_views = tuple(dataset_dict.get("num_views", (1, 1)))
        if not (0 <= view[0] < num_views[0] and 0 <= view[1] < num_views[1]):
            raise ValueError(
                f"view {view} is outside num_views {num_views} for {dataset_dict['file_name']!r}"
            )
        with open_video(dataset_dict["file_name"], num_threads=self.decode_threads) as reader:
            if self.is_train:
                start = vt.train_clip_start(reader.num_frames, self.num_frames, self.sampling_rate)
            else:
                start = vt.test_clip_starts(
                    reader.num_frames, self.num_frames, self.sampling_rate, num_views[0]
                )[view[0]]
            indices = vt.clip_indices(start, self.num_frames, self.sampling_rate, reader.num_frames)
            clip = reader.get_frames(indices)
        height, width = clip.shape[1:3]
        if self.is_train:
            geometry = vt.train_transform(
                height,
                width,
                crop_size=self.train_crop_size,
                jitter_scales=self.jitter_scales,
                flip_prob=self.flip_prob,
                relative_scales=self.relative_scales,
                relative_aspects=self.relative_aspects,
            )
        else:
            geometry = vt.test_transform(
                height, width, crop_size=self.test_crop_size, spatial_idx=view[1], num_spatial=num_views[1]
            )
        clip = vt.apply_to_clip(geometry, clip)
        return {
            "clip": vt.clip_to_tensor(clip, self.image_format),
            "label": int(dataset_dict["label"]),
            "video_id": str(dataset_dict["video_id"]),
            "view": view,
            "num_views": num_views,
            "file_name": dataset_dict["file_name"],
            "frame_indices": torch.from_numpy(indices),
        }


class KeyframeClipMapper(_SkipsUnreadable):
    """Clip-to-keyframe detection: a COCO-style keyframe record -> a Detectron2 input dict.

    Input: ``video_file`` (or ``frame_dir``, or ``file_name`` naming the video), ``frame_index`` (the
    annotated keyframe), ``height``/``width`` of the source frames, ``annotations`` of the keyframe.
    Output: ``"image"`` uint8 ``[3, T, H, W]`` (``T`` frames ``sampling_rate`` apart with the keyframe at
    position ``keyframe_index``, by default ``T // 2``; edge-padded at the ends of the video), ``"instances"``
    (training), ``height``, ``width``, ``keyframe_index``, ``frame_indices``. The augmentations (resize shortest edge, flip) are
    sampled once on the keyframe and applied to every frame and, through Detectron2's
    ``transform_instance_annotations``, to boxes and masks, so annotations stay aligned with the pixels.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list,
        num_frames: int,
        sampling_rate: int,
        image_format: str = "RGB",
        use_instance_mask: bool = False,
        instance_mask_format: str = "polygon",
        recompute_boxes: bool = False,
        decode_threads: int = 1,
        keyframe_index: int = -1,
    ):
        super().__init__(is_train)
        self.augmentations = T.AugmentationList(augmentations)
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.keyframe_index = resolve_keyframe(num_frames, keyframe_index)
        self.image_format = image_format
        self.use_instance_mask = use_instance_mask
        self.instance_mask_format = instance_mask_format
        self.recompute_boxes = recompute_boxes
        self.decode_threads = decode_threads

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        video, model = cfg.INPUT.VIDEO, cfg.MODEL.HIERA_VIDEO
        augmentations = utils.build_augmentation(cfg, is_train)
        if cfg.INPUT.CROP.ENABLED and is_train:  # as Detectron2's DatasetMapper
            augmentations.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        return dict(
            is_train=is_train,
            augmentations=augmentations,
            num_frames=model.NUM_FRAMES,
            sampling_rate=model.SAMPLING_RATE,
            image_format=cfg.INPUT.FORMAT,
            use_instance_mask=cfg.MODEL.MASK_ON,
            instance_mask_format=cfg.INPUT.MASK_FORMAT,
            recompute_boxes=cfg.MODEL.MASK_ON and cfg.INPUT.CROP.ENABLED and is_train,
            decode_threads=video.DECODE_THREADS,
            keyframe_index=model.KEYFRAME,
        )

    def _map(self, dataset_dict: dict) -> dict:
        record = copy.deepcopy(dataset_dict)
        source = record.get("video_file") or record.get("frame_dir") or record["file_name"]
        frame_index = int(record["frame_index"])
        with open_video(source, num_threads=self.decode_threads) as reader:
            if not 0 <= frame_index < reader.num_frames:
                raise ValueError(
                    f"keyframe frame_index {frame_index} is outside the {reader.num_frames} frames of {source!r}; "
                    "the annotation does not match the video"
                )
            first = frame_index - self.keyframe_index * self.sampling_rate
            indices = vt.clip_indices(first, self.num_frames, self.sampling_rate, reader.num_frames)
            clip = reader.get_frames(indices)
        utils.check_image_size(record, clip[self.keyframe_index])

        aug_input = T.AugInput(clip[self.keyframe_index])
        transforms = self.augmentations(aug_input)
        clip = vt.apply_to_clip(transforms, clip)
        image_shape = clip.shape[1:3]

        record["image"] = vt.clip_to_tensor(clip, self.image_format)
        record["keyframe_index"] = self.keyframe_index
        record["frame_indices"] = torch.from_numpy(indices)
        if not self.is_train:
            record.pop("annotations", None)
            return record
        if "annotations" in record:
            self._transform_annotations(record, transforms, image_shape)
        return record

    def _transform_annotations(self, record: dict, transforms, image_shape) -> None:
        for anno in record["annotations"]:
            if not self.use_instance_mask:
                anno.pop("segmentation", None)
            anno.pop("keypoints", None)
        annos = [
            utils.transform_instance_annotations(obj, transforms, image_shape)
            for obj in record.pop("annotations")
            if obj.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        record["instances"] = utils.filter_empty_instances(instances)
