"""Config keys of AVA-style action detection: the actor head (``MODEL.ACTION_HEAD``), AVA data (``INPUT.AVA``)
and frame-mAP evaluation (``TEST.AVA``).

``add_ava_config(cfg)`` adds them to a Detectron2 ``CfgNode`` that already has the video keys
(``hiera_det.video.config.add_video_config``); ``validate_ava_config(cfg)`` rejects values the model cannot use.
Clip length and sampling (``MODEL.HIERA_VIDEO.NUM_FRAMES`` / ``SAMPLING_RATE``), scale jitter, crops and flips
(``INPUT.VIDEO.*``, ``INPUT.RANDOM_FLIP``) are the video keys; for AVA, ``INPUT.VIDEO.TEST_CROP_SIZE`` is the
test frames' short side and nothing is cropped at test time (PySlowFast's AVA convention).
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN

IN_FEATURES = ("stage3", "stage4")
SPATIAL_POOLS = ("max", "avg")
LAYOUTS = ("frames", "videos")


def add_ava_config(cfg: CN) -> CN:
    """Add ``MODEL.ACTION_HEAD``, ``INPUT.AVA`` and ``TEST.AVA`` (with defaults) to ``cfg`` in place; returns it."""
    h = cfg.MODEL.ACTION_HEAD = CN()
    # Trunk stage whose features are pooled per person box: "stage4" (stride 32, the last stage, as the
    # MViT/MViTv2 AVA heads use) or "stage3" (stride 16: twice the resolution, for small frames or people).
    h.IN_FEATURE = "stage4"
    # Model outputs; output k is action id k + 1 (AVA v2.2: 80, of which the label map's 60 are evaluated).
    h.NUM_CLASSES = 80
    # RoIAlign of each box on the time-pooled feature map, then max (or avg) pooling over the R x R cells.
    h.POOLER_RESOLUTION = 7
    h.POOLER_SAMPLING_RATIO = 0
    h.POOLER_ALIGNED = True
    h.SPATIAL_POOL = "max"
    # Dropout before the linear classifier (0.5 in the PySlowFast AVA configs).
    h.DROPOUT = 0.5
    # Optional person detector (an image detector config + weights of this repository) that proposes the boxes
    # when no proposals file exists: tools/video_demo.py --mode actions on any video.
    p = h.PERSON_DETECTOR = CN()
    p.CONFIG_FILE = ""
    p.WEIGHTS = ""
    p.CLASS_ID = 0  # "person" in COCO's contiguous ids
    p.SCORE_THRESH = 0.8

    a = cfg.INPUT.AVA = CN()
    # Datasets named ava*_{train,val} that are not registered yet come from DATASET_ROOT ("" =
    # $DETECTRON2_DATASETS/ava) in PySlowFast's layout: annotations/ (ava_{split}_VERSION.csv, label maps,
    # excluded timestamps, ava_detection_{split}_boxes_and_labels.csv), frames/ + frame_lists/{split}.csv
    # (LAYOUT "frames") or videos_15min/<id>.<ext> (LAYOUT "videos", decoded by decord).
    a.DATASET_ROOT = ""
    a.LAYOUT = "frames"
    a.VERSION = "v2.2"
    # Frame k of a frame folder is at VIDEO_START_SEC + k / FRAME_RATE (videos use their container's rate);
    # only keyframes with KEYFRAME_RANGE[0] <= timestamp <= KEYFRAME_RANGE[1] are used.
    a.FRAME_RATE = 30.0
    a.VIDEO_START_SEC = 900.0
    a.KEYFRAME_RANGE = [902, 1798]
    # Person proposals scoring below this are dropped (PySlowFast's DETECTION_SCORE_THRESH).
    a.PROPOSAL_SCORE_THRESH = 0.8
    # Training boxes are the ground truth, each coordinate moved by up to this fraction of the box size.
    a.TRAIN_BOX_JITTER = 0.05
    # A box cut by the training crop is kept only if this fraction of its area remains.
    a.MIN_BOX_AREA_KEPT = 0.3
    # The "keyframe alone" baseline: every frame of the clip is the keyframe (no motion information).
    a.KEYFRAME_ONLY = False

    t = cfg.TEST.AVA = CN()
    # The official evaluator keeps the 50 best detection rows (box, action) of each keyframe; 0 keeps all.
    t.MAX_DETECTIONS_PER_KEYFRAME = 50
    # False: detections on keyframes without ground truth count as false positives (the v2.2 evaluator with
    # the excluded-timestamps file); True: they are ignored (the evaluator since 2020).
    t.IGNORE_KEYFRAMES_WITHOUT_GROUNDTRUTH = False
    return cfg


def validate_ava_config(cfg: CN) -> None:
    """Raise ValueError naming the key and the valid choices for a value the action detector cannot use."""
    h, a = cfg.MODEL.ACTION_HEAD, cfg.INPUT.AVA
    if h.IN_FEATURE not in IN_FEATURES:
        raise ValueError(f"MODEL.ACTION_HEAD.IN_FEATURE={h.IN_FEATURE!r}; choose one of {list(IN_FEATURES)}")
    if h.SPATIAL_POOL not in SPATIAL_POOLS:
        raise ValueError(f"MODEL.ACTION_HEAD.SPATIAL_POOL={h.SPATIAL_POOL!r}; choose one of {list(SPATIAL_POOLS)}")
    if h.NUM_CLASSES < 1 or h.POOLER_RESOLUTION < 1 or not 0.0 <= h.DROPOUT < 1.0:
        raise ValueError(
            f"MODEL.ACTION_HEAD needs NUM_CLASSES >= 1, POOLER_RESOLUTION >= 1 and 0 <= DROPOUT < 1; got "
            f"{h.NUM_CLASSES}, {h.POOLER_RESOLUTION}, {h.DROPOUT}"
        )
    if a.LAYOUT not in LAYOUTS:
        raise ValueError(f"INPUT.AVA.LAYOUT={a.LAYOUT!r}; choose one of {list(LAYOUTS)}")
    if len(a.KEYFRAME_RANGE) != 2 or a.KEYFRAME_RANGE[0] > a.KEYFRAME_RANGE[1]:
        raise ValueError(f"INPUT.AVA.KEYFRAME_RANGE={list(a.KEYFRAME_RANGE)} must be [first, last] seconds")
    if a.FRAME_RATE <= 0 or not 0.0 <= a.TRAIN_BOX_JITTER < 0.5 or not 0.0 <= a.MIN_BOX_AREA_KEPT <= 1.0:
        raise ValueError(
            f"INPUT.AVA needs FRAME_RATE > 0, 0 <= TRAIN_BOX_JITTER < 0.5 and 0 <= MIN_BOX_AREA_KEPT <= 1; got "
            f"{a.FRAME_RATE}, {a.TRAIN_BOX_JITTER}, {a.MIN_BOX_AREA_KEPT}"
        )
