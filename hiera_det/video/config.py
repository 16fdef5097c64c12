"""Config keys of the video models (``MODEL.HIERA_VIDEO.*``) and of video input (``INPUT.VIDEO.*``).

``add_video_config(cfg)`` adds them to a Detectron2 ``CfgNode``; ``hiera_det.config.add_hiera_config`` calls
it, so every config that ``tools/train_net.py`` reads has them. Names and defaults follow PySlowFast where one
exists (16x4 sampling, 256-320 short-side jitter, 224 crops, 5 temporal x 3 spatial test views).
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN

TEMPORAL_POOLS = ("mean", "max", "keyframe", "learned")


def add_video_config(cfg: CN) -> CN:
    """Add ``MODEL.HIERA_VIDEO`` and ``INPUT.VIDEO`` (with defaults) to ``cfg`` in place; returns it."""
    m = cfg.MODEL.HIERA_VIDEO = CN()
    # Official video architecture: hiera_{base,base_plus,large,huge}_16x224.
    m.NAME = "hiera_base_16x224"
    # Per-stage block counts; [] keeps the architecture's (e.g. [2, 3, 16, 3] for base). Tiny CPU configs
    # shrink the model with it; official weights then load only partly (the loader reports what it skipped).
    m.STAGES = []
    # Width of stage 1 and its attention heads (doubled at every stage); 0 keeps the architecture's (96 and 1
    # for base). Like STAGES, for small CPU models; official weights need the official widths.
    m.EMBED_DIM = 0
    m.NUM_HEADS = 0
    # Frames per clip (T) and the stride between them in the source video (PySlowFast NUM_FRAMES /
    # SAMPLING_RATE): 16x4 covers 64 source frames. T must be a multiple of 2 (temporal patch stride).
    m.NUM_FRAMES = 16
    m.SAMPLING_RATE = 4
    m.OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]
    # How the clip detector's FPN collapses time per stage: mean | max | keyframe (the temporal slice holding
    # the keyframe) | learned (softmax weights over the T/2 slices, one set per stage, initialised to mean).
    m.TEMPORAL_POOL = "mean"
    # Position of the annotated keyframe inside the clip; -1 = the center frame, NUM_FRAMES // 2, which is
    # where KeyframeClipMapper puts it.
    m.KEYFRAME = -1
    m.DROP_PATH_RATE = 0.0
    # Dropout before the classifier's linear head.
    m.HEAD_DROPOUT = 0.0
    # Classifier output size; it must match the dataset's class count (checked when training starts).
    m.NUM_CLASSES = 400
    # Trunk weights in any format hiera_det.checkpoint.load_checkpoint reads (official / MAE / HF / timm),
    # loaded when the model is built; pos embeds are resized to the clip. "" = random init.
    m.WEIGHTS = ""
    m.ACTIVATION_CHECKPOINTING = False
    # 0 trains everything; 1 freezes the patch embedding and position embeddings; k >= 2 also stages 1..k-1.
    m.FREEZE_AT = 0
    # Classifier regularisation (Hiera / MAE-ST K400 fine-tuning uses 0.8 / 1.0 / 0.1). With both alphas
    # > 0, each batch uses cutmix with probability MIXUP_SWITCH_PROB, else mixup; MIXUP_PROB is the chance
    # that a batch is mixed at all.
    m.MIXUP_ALPHA = 0.0
    m.CUTMIX_ALPHA = 0.0
    m.MIXUP_PROB = 1.0
    m.MIXUP_SWITCH_PROB = 0.5
    m.LABEL_SMOOTHING = 0.0

    # Names follow PySlowFast's DATA.* keys; hiera_det.data.video_mapper reads them.
    v = cfg.INPUT.VIDEO = CN()
    # decord decoding threads per reader (each DataLoader worker opens its own readers).
    v.DECODE_THREADS = 1
    # Training: the short side is resized to a random value in TRAIN_JITTER_SCALES, then a TRAIN_CROP_SIZE
    # square is cut at a random place (and flipped per INPUT.RANDOM_FLIP: "horizontal" or "none"). With
    # TRAIN_JITTER_SCALES_RELATIVE set (area fractions, e.g. [0.08, 1.0]), a random resized crop with
    # aspect ratios in TRAIN_JITTER_ASPECT_RELATIVE replaces jitter + crop.
    v.TRAIN_JITTER_SCALES = [256, 320]
    v.TRAIN_JITTER_SCALES_RELATIVE = []
    v.TRAIN_JITTER_ASPECT_RELATIVE = [0.75, 1.3333]
    v.TRAIN_CROP_SIZE = 224
    # Testing: the short side is resized to TEST_CROP_SIZE, then NUM_SPATIAL_VIEWS crops (1, 3 or 5) of
    # that size from each of NUM_TEMPORAL_VIEWS uniformly spaced clips. The Hiera paper evaluates K400 with
    # "3 spatial x 5 temporal views".
    v.TEST_CROP_SIZE = 224
    v.NUM_TEMPORAL_VIEWS = 5
    v.NUM_SPATIAL_VIEWS = 3
    # Views per batch at evaluation (views of one video are consecutive).
    v.TEST_BATCH_SIZE = 4
    # Kinetics-style datasets: root folder ("" = $DETECTRON2_DATASETS/kinetics400), layout "csv" (PySlowFast
    # {train,val,test}.csv with "path label" lines, paths relative to the root) or "folders" (one folder per
    # class), and the csv column separator.
    v.DATASET_ROOT = ""
    v.LAYOUT = "csv"
    v.CSV_SEPARATOR = " "
    return cfg


def validate_video_config(cfg: CN) -> None:
    """Raise ValueError naming the key and the valid choices for a config the video models cannot use."""
    from hiera_det.modeling import ARCHITECTURES

    m = cfg.MODEL.HIERA_VIDEO
    video_names = [n for n in ARCHITECTURES if n.endswith("16x224")]
    if m.NAME not in video_names:
        raise ValueError(
            f"MODEL.HIERA_VIDEO.NAME={m.NAME!r} is not a video architecture; choose one of {video_names}"
        )
    if m.TEMPORAL_POOL not in TEMPORAL_POOLS:
        raise ValueError(
            f"MODEL.HIERA_VIDEO.TEMPORAL_POOL={m.TEMPORAL_POOL!r}; choose one of {list(TEMPORAL_POOLS)}"
        )
    if m.NUM_FRAMES < 2 or m.NUM_FRAMES % 2:
        raise ValueError(
            f"MODEL.HIERA_VIDEO.NUM_FRAMES={m.NUM_FRAMES}: video Hiera embeds frames in pairs (temporal patch "
            f"stride 2), so the clip length must be a positive even number, e.g. 16"
        )
    if m.SAMPLING_RATE < 1:
        raise ValueError(f"MODEL.HIERA_VIDEO.SAMPLING_RATE={m.SAMPLING_RATE} must be >= 1")
    if not -1 <= m.KEYFRAME < m.NUM_FRAMES:
        raise ValueError(
            f"MODEL.HIERA_VIDEO.KEYFRAME={m.KEYFRAME} must be -1 (center) or a frame index in "
            f"[0, {m.NUM_FRAMES - 1}]"
        )
    if m.EMBED_DIM < 0 or m.NUM_HEADS < 0 or (m.EMBED_DIM and m.NUM_HEADS and m.EMBED_DIM % m.NUM_HEADS):
        raise ValueError(
            f"MODEL.HIERA_VIDEO.EMBED_DIM={m.EMBED_DIM} / NUM_HEADS={m.NUM_HEADS}: use 0 (architecture default) "
            f"or positive values with EMBED_DIM divisible by NUM_HEADS"
        )
    if m.STAGES and len(m.STAGES) != 4:
        raise ValueError(f"MODEL.HIERA_VIDEO.STAGES={list(m.STAGES)} must list 4 block counts, or be []")
    for key in ("TRAIN_CROP_SIZE", "TEST_CROP_SIZE"):
        size = cfg.INPUT.VIDEO[key]
        if size <= 0 or size % 32:
            raise ValueError(f"INPUT.VIDEO.{key}={size} must be a positive multiple of 32 (Hiera's mask units)")
    if cfg.INPUT.VIDEO.LAYOUT not in ("csv", "folders"):
        raise ValueError(f"INPUT.VIDEO.LAYOUT={cfg.INPUT.VIDEO.LAYOUT!r}; choose 'csv' or 'folders'")


def keyframe_position(cfg: CN) -> int:
    """Index of the keyframe inside a clip of ``MODEL.HIERA_VIDEO.NUM_FRAMES`` frames."""
    k = cfg.MODEL.HIERA_VIDEO.KEYFRAME
    return cfg.MODEL.HIERA_VIDEO.NUM_FRAMES // 2 if k < 0 else k
