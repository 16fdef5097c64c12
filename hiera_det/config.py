"""Detectron2 (yacs) config keys of hiera_det, their checks, the packaged configs, and config-file loading.

``add_hiera_config(cfg)`` adds every key of ``CONFIG_KEYS`` to a Detectron2 ``CfgNode``:

* ``MODEL.HIERA``: the trunk, shared by image and video models. A ``*_16x224`` ``NAME`` makes it a video
  trunk; the layout keys (``ATTENTION``, ``POS_EMBED``, ``WINDOW_SPEC``, ``GLOBAL_BLOCKS``) are image-only.
* ``MODEL.HIERA_VIDEO``: what only video models have (clip sampling, temporal pooling, classifier head).
* ``MODEL.MAE``: MAE pre-training (``HieraMAE``): mask ratio, loss target, decoder.
* ``INPUT.LSJ`` (large-scale jitter), ``INPUT.VIDEO`` (clip decoding and views), and the optimizer keys.

``docs/config.md`` lists the keys from the same table (``python -m hiera_det.config --write-docs``; a test
checks it is current). ``validate_hiera_config(cfg)`` rejects bad values with a message naming the valid
choices; the trunk builder and ``tools/train_net.py`` call it.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from dataclasses import dataclass
from importlib import resources

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .checkpoint import CheckpointError
from .checkpoint.download import check_weights
from .checkpoint.zoo import find_entry
from .modeling import ARCHITECTURES, ATTENTION_LAYOUTS, STEMS

STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")
IMAGE_POS_EMBEDS = ("absolute", "absolute_win")
OPTIMIZERS = ("ADAMW", "SGD")
AMP_PRECISIONS = ("float16", "bfloat16")
TEST_PRECISIONS = ("float32",) + AMP_PRECISIONS
GPU_TARGET_MASK_HEADS = ("MaskRCNNGPUTargetsHead",)  # hiera_det.detection.mask_head
TEMPORAL_POOLS = ("mean", "max", "keyframe", "learned")
IMAGE_ARCHITECTURES = tuple(n for n, spec in ARCHITECTURES.items() if len(spec["input_size"]) == 2)
VIDEO_ARCHITECTURES = tuple(n for n, spec in ARCHITECTURES.items() if len(spec["input_size"]) == 3)


@dataclass(frozen=True)
class ConfigKey:
    """One config key: its full name, default and the sentence docs/config.md gives for it."""

    name: str
    default: object
    doc: str


def _keys(section: str, rows: list[tuple[str, object, str]]) -> list[ConfigKey]:
    return [ConfigKey(f"{section}.{key}", default, doc) for key, default, doc in rows]


CONFIG_KEYS: dict[str, list[ConfigKey]] = {
    "MODEL.HIERA": _keys("MODEL.HIERA", [
        ("NAME", "hiera_base_224", "official architecture: image `hiera_{tiny,small,base,base_plus,large,huge}_224`, "
         "or video `hiera_{base,base_plus,large,huge}_16x224` (clips; see `MODEL.HIERA_VIDEO`)"),
        ("STAGES", [], "blocks per stage; `[]` = the architecture's. For quick CPU runs: published weights do "
         "not load into other stages (the config check names the keys to reset)"),
        ("EMBED_DIM", 0, "width of stage 1 (doubled at every stage); 0 = the architecture's. Like `STAGES`, "
         "for small CPU models"),
        ("NUM_HEADS", 0, "attention heads of stage 1 (doubled at every stage); 0 = the architecture's"),
        ("OUT_FEATURES", list(STAGE_NAMES), "trunk stages handed to the neck (strides 4, 8, 16, 32; Hiera-B "
         "channels 96, 192, 384, 768)"),
        ("DROP_PATH_RATE", 0.0, "stochastic depth, rising linearly over the blocks to this value"),
        ("ATTENTION", "mask_unit", "image only: `mask_unit` (the paper; official / MAE weights) or `window` "
         "(HieraDet / SAM2 windowed attention with a few global blocks; SAM2 weights)"),
        ("POS_EMBED", "", "image only: `\"\"` = the layout's default (`absolute` for mask_unit, `absolute_win` "
         "for window), or `absolute`, `absolute_win`"),
        ("STEM", "patch", "image only: `patch` (the paper's single 7x7 stride-4 convolution; official weights) "
         "or `conv` (two 3x3 stride-2 convolutions with GroupNorm, then a 1x1: learns faster from random init, "
         "see `configs/shapes/hiera_tiny_shapes.yaml`; no official weights have it)"),
        ("OUT_NORM", "", "normalization of each stage output before the neck: `\"\"` (none), `LN` (per-position "
         "LayerNorm over channels, as ViTDet's feature pyramid) or `GN`"),
        ("WINDOW_SPEC", [], "window only: window size per stage; `[]` = the SAM2 preset of the architecture"),
        ("GLOBAL_BLOCKS", [], "window only: indices of blocks with full attention; `[]` = the SAM2 preset"),
        ("ACTIVATION_CHECKPOINTING", False, "recompute each block in the backward pass: less activation "
         "memory, one more forward pass of compute"),
        ("GELU_EPILOGUE", False, "bf16 inference on CUDA only: fc1 and a tanh-approximated GELU in one cuBLASLt "
         "GEMM (faster; the trunk's GELU is otherwise the exact erf of the official weights, which fp32 always "
         "keeps). Output deviation from fp32 no larger than bf16's own: `benchmarks/results/trunk_kernel.md`"),
        ("FREEZE_AT", 0, "0 trains everything; 1 freezes the patch embedding and position embeddings; k >= 2 "
         "also stages 1..k-1; 5 = the whole trunk"),
        ("WEIGHTS", "", "pretrained trunk: a file in any format `hiera_det.checkpoint.load_checkpoint` reads "
         "(official, MAE, Hugging Face, timm, SAM2) or a weights name (`python -m hiera_det.checkpoint --list`: "
         "e.g. `hiera_base_224.mae_in1k`, downloaded once into `$HIERA_DET_CACHE`), loaded at build time with "
         "position embeddings resampled; "
         "`\"\"` = random init. `MODEL.WEIGHTS` (a whole model) loads afterwards and wins"),
        ("INPUT_SIZE", [], "image only: (H, W) the position embeddings are stored for; other sizes interpolate "
         "them at run time (as ViTDet). `[]` = the pretraining size (224, 224), so that converted checkpoints "
         "load through `MODEL.WEIGHTS` with every shape matching. Video trunks store `NUM_FRAMES x "
         "INPUT.VIDEO.TRAIN_CROP_SIZE^2`"),
    ]),
    "MODEL.HIERA_VIDEO": _keys("MODEL.HIERA_VIDEO", [
        ("NUM_FRAMES", 16, "frames per clip (T), a positive even number (video Hiera embeds frames in pairs)"),
        ("SAMPLING_RATE", 4, "stride between sampled frames in the source video: 16x4 covers 64 frames"),
        ("TEMPORAL_POOL", "mean", "how the clip detector's FPN collapses time per stage: `mean`, `max`, "
         "`keyframe` (the temporal slice holding the keyframe) or `learned` (softmax weights over the T/2 "
         "slices, one set per stage, starting as the mean)"),
        ("KEYFRAME", -1, "position of the annotated keyframe inside the clip; -1 = the center frame, "
         "`NUM_FRAMES // 2`, where the keyframe mapper puts it"),
        ("NUM_CLASSES", 400, "classifier outputs; must match the dataset's class count (checked at start)"),
        ("HEAD_DROPOUT", 0.0, "dropout before the classifier's linear head"),
        ("MIXUP_ALPHA", 0.0, "classifier mixup alpha (Hiera K400: 0.8); 0 = off"),
        ("CUTMIX_ALPHA", 0.0, "classifier cutmix alpha (Hiera K400: 1.0); 0 = off"),
        ("MIXUP_PROB", 1.0, "chance that a batch is mixed at all"),
        ("MIXUP_SWITCH_PROB", 0.5, "with both alphas > 0, the chance of cutmix rather than mixup"),
        ("LABEL_SMOOTHING", 0.0, "classifier label smoothing (Hiera K400: 0.1)"),
    ]),
    "MODEL.ACTION_HEAD": _keys("MODEL.ACTION_HEAD", [
        ("IN_FEATURE", "stage4", "AVA actor head: the trunk stage pooled per person box, `stage4` (stride 32, as "
         "MViTv2's AVA head) or `stage3` (stride 16: twice the resolution, for small frames or people)"),
        ("NUM_CLASSES", 80, "action outputs; output k is action id k + 1 (AVA v2.2: 80, of which the label map's "
         "60 are evaluated)"),
        ("POOLER_RESOLUTION", 7, "RoIAlign cells per side of each person box on the time-averaged features"),
        ("POOLER_SAMPLING_RATIO", 0, "RoIAlign sampling ratio (0 = adaptive)"),
        ("POOLER_ALIGNED", True, "RoIAlign with the half-pixel correction"),
        ("SPATIAL_POOL", "max", "pooling over the RoIAlign cells: `max` or `avg`"),
        ("DROPOUT", 0.5, "dropout before the linear classifier (PySlowFast's AVA configs: 0.5)"),
        ("PERSON_DETECTOR.CONFIG_FILE", "", "optional image detector config of this repository that proposes "
         "the person boxes where no proposals file exists (`tools/video_demo.py --mode actions` on any video)"),
        ("PERSON_DETECTOR.WEIGHTS", "", "that detector's trained weights"),
        ("PERSON_DETECTOR.CLASS_ID", 0, "the person class in that detector's contiguous ids (COCO: 0)"),
        ("PERSON_DETECTOR.SCORE_THRESH", 0.8, "person detections scoring below this are dropped"),
    ]),
    "MODEL.MAE": _keys("MODEL.MAE", [
        ("MASK_RATIO", 0.6, "fraction of mask units hidden from the encoder, in (0, 1): the paper uses 0.6 for "
         "images and 0.9 for video (`META_ARCHITECTURE: HieraMAE`, `hiera_det.pretraining`)"),
        ("MASK_MODE", "units", "`units`: random mask units, the paper; `time` (video): random whole time steps "
         "of the unit grid, every unit at a kept step visible, so the hidden instants are predicted from other "
         "instants (`MASK_RATIO` then counts time steps)"),
        ("NORM_PIX_LOSS", True, "regress per-patch normalised pixels (the paper) rather than raw pixels"),
        ("DECODER_EMBED_DIM", 512, "width of the MAE decoder (the paper: 512)"),
        ("DECODER_DEPTH", 8, "transformer blocks of the MAE decoder (the paper: 8)"),
        ("DECODER_NUM_HEADS", 16, "attention heads of the MAE decoder (the paper: 16)"),
        ("ENCODER_INIT", "xavier", "initialisation of the encoder before pre-training: `xavier` (the official "
         "MAE: every linear) or `trunk` (Hiera's trunc-normal 0.02, where random-init training starts; the "
         "decoder still gets xavier), so that MAE and random init differ by the pre-training "
         "alone (benchmarks/mae_proof.py)"),
        ("IMAGE_CROP_SCALE", [0.2, 1.0], "images: area range of the random resized crop to the trunk's input "
         "size (video clips use `INPUT.VIDEO`)"),
    ]),
    "INPUT.LSJ": _keys("INPUT.LSJ", [
        ("ENABLED", False, "training augmentation = `ResizeScale(MIN_SCALE, MAX_SCALE)` to `IMAGE_SIZE`, "
         "`FixedSizeCrop(IMAGE_SIZE)` (crop or pad), horizontal flip; replaces `INPUT.MIN_SIZE_TRAIN` resizing. "
         "Boxes are recomputed from the cropped masks when `MODEL.MASK_ON`. Batches are padded to `IMAGE_SIZE` "
         "squares, also at test time, so that position embeddings line up"),
        ("IMAGE_SIZE", 1024, "square side of the crops"),
        ("MIN_SCALE", 0.1, "smallest rescale factor of `IMAGE_SIZE`"),
        ("MAX_SCALE", 2.0, "largest rescale factor"),
    ]),
    "INPUT.VIDEO": _keys("INPUT.VIDEO", [
        ("DECODE_THREADS", 1, "decord threads per reader (each DataLoader worker opens its own readers)"),
        ("TRAIN_JITTER_SCALES", [256, 320], "training: the short side is resized to a random value in this "
         "range, then a `TRAIN_CROP_SIZE` square is cut at random (flipped per `INPUT.RANDOM_FLIP`)"),
        ("TRAIN_JITTER_SCALES_RELATIVE", [], "when set (area fractions, e.g. [0.08, 1.0]), a random resized "
         "crop replaces jitter + crop"),
        ("TRAIN_JITTER_ASPECT_RELATIVE", [0.75, 1.3333], "aspect-ratio range of that random resized crop"),
        ("TRAIN_CROP_SIZE", 224, "training crop side, a multiple of 32"),
        ("TEST_CROP_SIZE", 224, "testing: the short side is resized to this, then `NUM_SPATIAL_VIEWS` crops "
         "of this side; a multiple of 32"),
        ("NUM_TEMPORAL_VIEWS", 5, "uniformly spaced test clips per video (Hiera K400: 5)"),
        ("NUM_SPATIAL_VIEWS", 3, "test crops per clip: 1, 3 or 5 (Hiera K400: 3)"),
        ("TEST_BATCH_SIZE", 4, "views per batch at evaluation (views of one video are consecutive)"),
        ("DATASET_ROOT", "", "Kinetics-style datasets: root folder; `\"\"` = `$DETECTRON2_DATASETS/<name>`"),
        ("LAYOUT", "csv", "`csv` (PySlowFast `{train,val,test}.csv` with `path label` lines, paths relative "
         "to the root) or `folders` (one folder per class)"),
        ("CSV_SEPARATOR", " ", "column separator of those csv files"),
    ]),
    "INPUT.AVA": _keys("INPUT.AVA", [
        ("DATASET_ROOT", "", "AVA datasets `ava*_{train,val}` not registered yet come from here (`\"\"` = "
         "`$DETECTRON2_DATASETS/ava`), in PySlowFast's layout: `annotations/` (`ava_{split}_VERSION.csv`, label "
         "maps, excluded timestamps, `ava_detection_{split}_boxes_and_labels.csv`), `frames/` + "
         "`frame_lists/{split}.csv` or `videos_15min/<id>.<ext>`"),
        ("LAYOUT", "frames", "`frames` (frame folders and PySlowFast frame lists) or `videos` (decoded by decord)"),
        ("VERSION", "v2.2", "the annotation files' version suffix"),
        ("FRAME_RATE", 30.0, "frame k of a frame folder is at `VIDEO_START_SEC + k / FRAME_RATE` (videos use "
         "their container's rate)"),
        ("VIDEO_START_SEC", 900.0, "the time of a frame folder's first frame (AVA's 15-minute clips: 900)"),
        ("KEYFRAME_RANGE", [902, 1798], "keyframes with `KEYFRAME_RANGE[0] <= timestamp <= KEYFRAME_RANGE[1]` "
         "are used"),
        ("PROPOSAL_SCORE_THRESH", 0.8, "person proposals scoring below this are dropped (PySlowFast's "
         "DETECTION_SCORE_THRESH)"),
        ("TRAIN_BOX_JITTER", 0.05, "training boxes are the ground truth, each side moved by up to this fraction "
         "of the box size"),
        ("MIN_BOX_AREA_KEPT", 0.3, "a box cut by the training crop is kept if this fraction of its area remains"),
        ("KEYFRAME_ONLY", False, "the keyframe-alone baseline: every frame of the clip is the keyframe"),
    ]),
    "TEST.AVA": _keys("TEST.AVA", [
        ("MAX_DETECTIONS_PER_KEYFRAME", 50, "the official evaluator keeps the 50 best (box, action) rows of "
         "each keyframe; 0 keeps all (PySlowFast's in-memory scoring)"),
        ("IGNORE_KEYFRAMES_WITHOUT_GROUNDTRUTH", False, "False: detections on keyframes without ground truth "
         "are false positives (the v2.2 evaluator with the excluded-timestamps file); True: ignored (2020+)"),
    ]),
    "MODEL.ROI_MASK_HEAD": _keys("MODEL.ROI_MASK_HEAD", [
        ("GPU_TARGETS", False, "training: polygon masks leave the loader as padded tensors and the mask head "
         "rasterises its targets inside the sampled RoIs on the GPU, instead of Detectron2 cutting them per "
         "instance with pycocotools on the CPU in the main process (the same targets: 99.8% of masks identical, "
         "the rest one pixel off). Polygons are then not cropped by LSJ, so training needs no shapely. Needs "
         "`NAME: MaskRCNNGPUTargetsHead` (the Hiera configs set both); no effect on bitmasks or with `MODEL.DEVICE cpu` "
         "(Detectron2's per-instance cut is faster on the CPU)"),
    ]),
    "DATASETS": _keys("DATASETS", [
        ("CUSTOM", [], "your own datasets, registered without code: `NAME=ANNOTATIONS.json:IMAGE_ROOT` (COCO "
         "instances), `NAME=keyframes:ANNOTATIONS.json:VIDEO_ROOT`, `NAME=LIST.csv` or `NAME=CLASS_FOLDERS` "
         "(video classification), `NAME=images:FOLDER` or `NAME=videos:LIST` (unlabeled, MAE pre-training); "
         "`tools/train_net.py --dataset` adds to it, and the saved config keeps it"),
    ]),
    "DATALOADER": _keys("DATALOADER", [
        ("LOG_DATA_ORDER", False, "append what every training batch held (global batch index, positions, dataset "
         "indices, file names) to `OUTPUT_DIR/data_order.rank<R>.jsonl`, one line per batch, to check that a "
         "resumed run saw the same data as an uninterrupted one"),
    ]),
    "TEST": _keys("TEST", [
        ("PRECISION", "float32", "autocast dtype of inference on CUDA (evaluation, `tools/demo.py`): `float32` "
         "(no autocast), `bfloat16` or `float16`; `bfloat16` runs the Mask R-CNN of `configs/hiera_fpn.yaml` "
         "about 1.4x faster on an H100 (benchmarks/results/h100_run4_detector.md). Ignored on the CPU"),
        ("CUDA_GRAPHS", False, "image detectors on CUDA (`tools/demo.py`, `tools/video_demo.py`, `--eval-only`): "
         "run the backbone (trunk + FPN) compiled and replayed from CUDA graphs (`torch.compile`, "
         "`mode=\"reduce-overhead\"`); one image at a time is bound by the host, and this takes most of the "
         "backbone's host work away: Mask R-CNN at 1024 with `TEST.PRECISION bfloat16` on an H100 went from "
         "35.0 to 29.5 ms per image (benchmarks/results/trunk_kernel.md, session 11). Each new input size "
         "compiles and captures again (about 30 s), so it suits inputs of one size: the frames of a video, or "
         "images padded to one square (`INPUT.LSJ.ENABLED`). Ignored on the CPU"),
    ]),
    "SOLVER": _keys("SOLVER", [
        ("OPTIMIZER", "ADAMW", "`ADAMW` (betas `SOLVER.BETAS`) or `SGD` (`SOLVER.MOMENTUM`, `SOLVER.NESTEROV`)"),
        ("BETAS", (0.9, 0.999), "AdamW betas"),
        ("LAYER_DECAY", 1.0, "layer-wise lr decay: patch embedding and position embeddings are layer 0, block "
         "i layer i+1, neck and heads layer n+1 (n blocks); layer l trains at `BASE_LR * LAYER_DECAY ** (n + 1 "
         "- l)`. 1.0 = off"),
        ("AMP.PRECISION", "float16", "autocast dtype under `SOLVER.AMP.ENABLED` (CUDA only): `float16` or "
         "`bfloat16`"),
        ("COMPILE_BACKBONE", False, "train with the backbone (trunk + FPN) under `torch.compile` (static "
         "shapes; the first iterations compile for 1-3 minutes): Mask R-CNN at 1024, batch 8 on an H100 went "
         "from 23.4 to 30.1 images/s (with the fused AdamW used on CUDA) and from 29.5 to 25.2 GiB "
         "(benchmarks/results/h100_run4_detector.md)"),
        ("LOSS_SYNC_PERIOD", 20, "iterations between copies of the losses to the host and their gather across "
         "processes (`hiera_det/engine/loss_metrics.py`); every iteration's value is still written, and the "
         "metrics writer (every 20), checkpoints, evaluation and the last iteration always flush first. "
         "1 = every iteration, as Detectron2 does: a host sync and a CPU collective between backward and the "
         "optimizer step"),
    ]),
}

# Trunk keys that lived under MODEL.HIERA_VIDEO before the trunk keys got one home in MODEL.HIERA.
_MOVED_TO_HIERA = ("NAME", "STAGES", "EMBED_DIM", "NUM_HEADS", "OUT_FEATURES", "DROP_PATH_RATE", "WEIGHTS",
                   "ACTIVATION_CHECKPOINTING", "FREEZE_AT")


def add_hiera_config(cfg: CN) -> CN:
    """Add every hiera_det key (``CONFIG_KEYS``) with its default to ``cfg`` in place; returns ``cfg``."""
    for keys in CONFIG_KEYS.values():
        for key in keys:
            *parents, leaf = key.name.split(".")
            node = cfg
            for part in parents:
                if part not in node:
                    node[part] = CN()
                node = node[part]
            node[leaf] = key.default
    for key in _MOVED_TO_HIERA:
        cfg.register_renamed_key(f"MODEL.HIERA_VIDEO.{key}", f"MODEL.HIERA.{key}",
                                 message="the trunk keys of image and video models live in MODEL.HIERA")
    return cfg


def get_hiera_cfg() -> CN:
    """Detectron2's default config with the hiera_det keys added."""
    return add_hiera_config(get_cfg())


def _choices(valid) -> str:
    return ", ".join(map(str, valid))


def is_video_config(cfg: CN) -> bool:
    """Whether the configured trunk is a video Hiera (clips in)."""
    return cfg.MODEL.HIERA.NAME in VIDEO_ARCHITECTURES


def trunk_input_size(cfg: CN) -> tuple[int, ...]:
    """The input size the trunk's position embeddings are stored for: (H, W) or (T, H, W)."""
    h = cfg.MODEL.HIERA
    if is_video_config(cfg):
        crop = cfg.INPUT.VIDEO.TRAIN_CROP_SIZE
        return (cfg.MODEL.HIERA_VIDEO.NUM_FRAMES, crop, crop)
    if len(h.INPUT_SIZE):
        return tuple(h.INPUT_SIZE)
    return tuple(ARCHITECTURES[h.NAME]["input_size"])


def resolve_keyframe(num_frames: int, keyframe: int = -1) -> int:
    """Index of the keyframe in a clip of ``num_frames``: ``keyframe``, or the center frame when it is -1."""
    position = num_frames // 2 if keyframe < 0 else keyframe
    if not 0 <= position < num_frames:
        raise ValueError(f"keyframe {keyframe} is outside a clip of {num_frames} frames")
    return position


def keyframe_position(cfg: CN) -> int:
    """Index of the keyframe inside a clip of ``MODEL.HIERA_VIDEO.NUM_FRAMES`` frames."""
    return resolve_keyframe(cfg.MODEL.HIERA_VIDEO.NUM_FRAMES, cfg.MODEL.HIERA_VIDEO.KEYFRAME)


def _validate_trunk(cfg: CN) -> None:
    h = cfg.MODEL.HIERA
    if h.NAME not in ARCHITECTURES:
        close = difflib.get_close_matches(h.NAME, list(ARCHITECTURES), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"MODEL.HIERA.NAME {h.NAME!r} is not a Hiera architecture.{hint} Image: "
                         f"{_choices(IMAGE_ARCHITECTURES)}; video: {_choices(VIDEO_ARCHITECTURES)}")
    video = h.NAME in VIDEO_ARCHITECTURES
    if h.ATTENTION not in ATTENTION_LAYOUTS:
        raise ValueError(f"MODEL.HIERA.ATTENTION {h.ATTENTION!r} is unknown; choose one of: "
                         f"{_choices(ATTENTION_LAYOUTS)}")
    if video and (h.ATTENTION != "mask_unit" or h.POS_EMBED or len(h.INPUT_SIZE)):
        raise ValueError(f"MODEL.HIERA.NAME {h.NAME!r} is a video trunk: it takes ATTENTION mask_unit, "
                         "POS_EMBED '' and INPUT_SIZE [] (the clip size comes from MODEL.HIERA_VIDEO.NUM_FRAMES "
                         "and INPUT.VIDEO.TRAIN_CROP_SIZE)")
    if h.STEM not in STEMS or (video and h.STEM != "patch"):
        raise ValueError(f"MODEL.HIERA.STEM {h.STEM!r} is unknown; choose one of: {_choices(STEMS)} (`patch` "
                         "for video trunks)")
    if h.OUT_NORM not in ("", "LN", "GN") or (video and h.OUT_NORM):
        raise ValueError(f"MODEL.HIERA.OUT_NORM {h.OUT_NORM!r} is unknown; choose one of: '' (none), 'LN', 'GN' "
                         "('' for video trunks)")
    if h.POS_EMBED not in ("",) + IMAGE_POS_EMBEDS:
        raise ValueError(f"MODEL.HIERA.POS_EMBED {h.POS_EMBED!r} is unknown for images; choose one of: "
                         f"'' (layout default), {_choices(IMAGE_POS_EMBEDS)}")
    if h.ATTENTION == "mask_unit" and h.POS_EMBED == "absolute_win":
        raise ValueError("MODEL.HIERA.POS_EMBED 'absolute_win' needs MODEL.HIERA.ATTENTION 'window' "
                         "(it tiles a per-window embedding)")
    if h.ATTENTION != "window" and (len(h.WINDOW_SPEC) or len(h.GLOBAL_BLOCKS)):
        raise ValueError("MODEL.HIERA.WINDOW_SPEC and GLOBAL_BLOCKS apply to ATTENTION 'window' only; "
                         f"ATTENTION is {h.ATTENTION!r}: set ATTENTION window or leave them []")
    if len(h.WINDOW_SPEC) not in (0, 4) or any(w <= 0 for w in h.WINDOW_SPEC):
        raise ValueError(f"MODEL.HIERA.WINDOW_SPEC {list(h.WINDOW_SPEC)} must be [] or 4 positive window "
                         "sizes, one per stage (e.g. [8, 4, 14, 7])")
    if len(h.STAGES) not in (0, 4) or any(s <= 0 for s in h.STAGES):
        raise ValueError(f"MODEL.HIERA.STAGES {list(h.STAGES)} must be [] or 4 positive block counts")
    if h.EMBED_DIM < 0 or h.NUM_HEADS < 0 or (h.EMBED_DIM and h.NUM_HEADS and h.EMBED_DIM % h.NUM_HEADS):
        raise ValueError(f"MODEL.HIERA.EMBED_DIM {h.EMBED_DIM} / NUM_HEADS {h.NUM_HEADS}: use 0 (the "
                         "architecture's) or positive values with EMBED_DIM divisible by NUM_HEADS")
    depth = sum(h.STAGES) if len(h.STAGES) else sum(ARCHITECTURES[h.NAME]["stages"])
    bad_blocks = [b for b in h.GLOBAL_BLOCKS if not 0 <= b < depth]
    if bad_blocks:
        raise ValueError(f"MODEL.HIERA.GLOBAL_BLOCKS {bad_blocks} are not block indices of a {depth}-block "
                         f"trunk (0..{depth - 1})")
    if h.ATTENTION == "window" and len(h.STAGES) and not len(h.GLOBAL_BLOCKS):
        raise ValueError("MODEL.HIERA.STAGES changes the depth, so the SAM2 preset of global blocks no "
                         "longer fits: set MODEL.HIERA.GLOBAL_BLOCKS explicitly")
    if not len(h.OUT_FEATURES) or any(f not in STAGE_NAMES for f in h.OUT_FEATURES):
        raise ValueError(f"MODEL.HIERA.OUT_FEATURES {list(h.OUT_FEATURES)} must be a non-empty subset of "
                         f"{_choices(STAGE_NAMES)}")
    if not 0 <= h.FREEZE_AT <= 5:
        raise ValueError(f"MODEL.HIERA.FREEZE_AT {h.FREEZE_AT} must be in 0..5 (0 = train everything, "
                         "1 = patch embed + pos embeds, k = also stages 1..k-1)")
    if not 0.0 <= h.DROP_PATH_RATE < 1.0:
        raise ValueError(f"MODEL.HIERA.DROP_PATH_RATE {h.DROP_PATH_RATE} must be in [0, 1)")
    if len(h.INPUT_SIZE) not in (0, 2) or any(s <= 0 for s in h.INPUT_SIZE):
        raise ValueError(f"MODEL.HIERA.INPUT_SIZE {list(h.INPUT_SIZE)} must be [] or [H, W]")
    if h.WEIGHTS:
        try:
            check_weights(h.WEIGHTS, architecture=h.NAME, attention=h.ATTENTION)
        except CheckpointError as e:
            raise ValueError(f"MODEL.HIERA.WEIGHTS {h.WEIGHTS!r}: {e}") from None
        _check_published_weights_fit(h)


def _check_published_weights_fit(h: CN) -> None:
    """Refuse, before anything is downloaded, a weights name for a trunk reshaped away from its architecture:
    every published Hiera has its architecture's blocks, width and heads, and a patch embedding."""
    if find_entry(h.WEIGHTS) is None:
        return
    spec = ARCHITECTURES[h.NAME]
    own = {"STAGES": (list(h.STAGES), list(spec["stages"]), "[]"),
           "EMBED_DIM": (h.EMBED_DIM, spec["embed_dim"], "0"),
           "NUM_HEADS": (h.NUM_HEADS, spec["num_heads"], "0")}
    fixes = [f"MODEL.HIERA.{key} {reset}" for key, (value, published, reset) in own.items()
             if value and value != published]
    if h.STEM != "patch":
        fixes.append("MODEL.HIERA.STEM patch")
    if fixes:
        raise ValueError(
            f"MODEL.HIERA.WEIGHTS {h.WEIGHTS!r} holds {h.NAME} as published (stages {list(spec['stages'])}, "
            f"embed_dim {spec['embed_dim']}, num_heads {spec['num_heads']}, a patch embedding), which this "
            f"trunk cannot take: set {' '.join(fixes)} to load it, or MODEL.HIERA.WEIGHTS '' to train from "
            f"random init"
        )


def _validate_video(cfg: CN) -> None:
    m, v = cfg.MODEL.HIERA_VIDEO, cfg.INPUT.VIDEO
    if m.TEMPORAL_POOL not in TEMPORAL_POOLS:
        raise ValueError(f"MODEL.HIERA_VIDEO.TEMPORAL_POOL {m.TEMPORAL_POOL!r}; choose one of: "
                         f"{_choices(TEMPORAL_POOLS)}")
    if m.NUM_FRAMES < 2 or m.NUM_FRAMES % 2:
        raise ValueError(f"MODEL.HIERA_VIDEO.NUM_FRAMES {m.NUM_FRAMES}: video Hiera embeds frames in pairs "
                         "(temporal patch stride 2), so the clip length must be a positive even number, e.g. 16")
    if m.SAMPLING_RATE < 1:
        raise ValueError(f"MODEL.HIERA_VIDEO.SAMPLING_RATE {m.SAMPLING_RATE} must be >= 1")
    if not -1 <= m.KEYFRAME < m.NUM_FRAMES:
        raise ValueError(f"MODEL.HIERA_VIDEO.KEYFRAME {m.KEYFRAME} must be -1 (center) or a frame index in "
                         f"[0, {m.NUM_FRAMES - 1}]")
    for key in ("TRAIN_CROP_SIZE", "TEST_CROP_SIZE"):
        if v[key] <= 0 or v[key] % 32:
            raise ValueError(f"INPUT.VIDEO.{key} {v[key]} must be a positive multiple of 32 (Hiera's mask units)")
    if v.LAYOUT not in ("csv", "folders"):
        raise ValueError(f"INPUT.VIDEO.LAYOUT {v.LAYOUT!r}; choose csv or folders")


def validate_ava_config(cfg: CN) -> None:
    """Raise ValueError naming the key and the valid choices for a value the action detector cannot use."""
    h, a = cfg.MODEL.ACTION_HEAD, cfg.INPUT.AVA
    if h.IN_FEATURE not in ("stage3", "stage4"):
        raise ValueError(f"MODEL.ACTION_HEAD.IN_FEATURE {h.IN_FEATURE!r}; choose one of: stage3, stage4")
    if h.SPATIAL_POOL not in ("max", "avg"):
        raise ValueError(f"MODEL.ACTION_HEAD.SPATIAL_POOL {h.SPATIAL_POOL!r}; choose one of: max, avg")
    if h.NUM_CLASSES < 1 or h.POOLER_RESOLUTION < 1 or not 0.0 <= h.DROPOUT < 1.0:
        raise ValueError(f"MODEL.ACTION_HEAD needs NUM_CLASSES >= 1, POOLER_RESOLUTION >= 1 and 0 <= DROPOUT < 1; "
                         f"got {h.NUM_CLASSES}, {h.POOLER_RESOLUTION}, {h.DROPOUT}")
    if a.LAYOUT not in ("frames", "videos"):
        raise ValueError(f"INPUT.AVA.LAYOUT {a.LAYOUT!r}; choose one of: frames, videos")
    if len(a.KEYFRAME_RANGE) != 2 or a.KEYFRAME_RANGE[0] > a.KEYFRAME_RANGE[1]:
        raise ValueError(f"INPUT.AVA.KEYFRAME_RANGE {list(a.KEYFRAME_RANGE)} must be [first, last] seconds")
    if a.FRAME_RATE <= 0 or not 0.0 <= a.TRAIN_BOX_JITTER < 0.5 or not 0.0 <= a.MIN_BOX_AREA_KEPT <= 1.0:
        raise ValueError(f"INPUT.AVA needs FRAME_RATE > 0, 0 <= TRAIN_BOX_JITTER < 0.5 and 0 <= MIN_BOX_AREA_KEPT "
                         f"<= 1; got {a.FRAME_RATE}, {a.TRAIN_BOX_JITTER}, {a.MIN_BOX_AREA_KEPT}")


def uses_gpu_mask_targets(cfg) -> bool:
    """Whether training hands polygon masks over as tensors for the mask head to cut on the GPU: asked for
    (``MODEL.ROI_MASK_HEAD.GPU_TARGETS``) and training on CUDA. On the CPU the vectorised cut is about 30x
    slower than Detectron2's per-instance one (benchmarks/results/mask_targets_cpu2.json), so it is not used."""
    import torch

    # a machine without CUDA trains on the CPU whatever MODEL.DEVICE says (tools/train_net.py), and the loader
    # and the dataset checks must agree with the model on it
    on_cuda = str(cfg.MODEL.DEVICE).startswith("cuda") and torch.cuda.is_available()
    return bool(cfg.MODEL.MASK_ON and cfg.MODEL.ROI_MASK_HEAD.GPU_TARGETS and on_cuda)


def validate_hiera_config(cfg: CN) -> None:
    """Raise ValueError naming the key, the bad value and the valid choices for any bad hiera_det key."""
    _validate_trunk(cfg)
    if is_video_config(cfg):
        _validate_video(cfg)
        validate_ava_config(cfg)
    mask_head = cfg.MODEL.ROI_MASK_HEAD
    if cfg.MODEL.MASK_ON and mask_head.GPU_TARGETS and mask_head.NAME not in GPU_TARGET_MASK_HEADS:
        raise ValueError(f"MODEL.ROI_MASK_HEAD.GPU_TARGETS needs a mask head that reads polygon tensors, but NAME "
                         f"is {mask_head.NAME!r}; set MODEL.ROI_MASK_HEAD.NAME to one of "
                         f"{_choices(GPU_TARGET_MASK_HEADS)}, or GPU_TARGETS False")
    lsj = cfg.INPUT.LSJ
    if lsj.ENABLED and not (0 < lsj.MIN_SCALE <= lsj.MAX_SCALE and lsj.IMAGE_SIZE > 0):
        raise ValueError(f"INPUT.LSJ needs 0 < MIN_SCALE <= MAX_SCALE and IMAGE_SIZE > 0, got MIN_SCALE "
                         f"{lsj.MIN_SCALE}, MAX_SCALE {lsj.MAX_SCALE}, IMAGE_SIZE {lsj.IMAGE_SIZE}")
    if cfg.SOLVER.OPTIMIZER not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER!r} is unknown; choose one of: "
                         f"{_choices(OPTIMIZERS)}")
    if not 0.0 < cfg.SOLVER.LAYER_DECAY <= 1.0:
        raise ValueError(f"SOLVER.LAYER_DECAY {cfg.SOLVER.LAYER_DECAY} must be in (0, 1]; 1.0 turns it off")
    if cfg.TEST.CUDA_GRAPHS and is_video_config(cfg):
        raise ValueError(f"TEST.CUDA_GRAPHS is for image detectors, and {cfg.MODEL.HIERA.NAME} is a video "
                         "architecture: set TEST.CUDA_GRAPHS False")
    if cfg.TEST.PRECISION not in TEST_PRECISIONS:
        raise ValueError(f"TEST.PRECISION {cfg.TEST.PRECISION!r} is unknown; choose one of: "
                         f"{_choices(TEST_PRECISIONS)}")
    if cfg.SOLVER.AMP.PRECISION not in AMP_PRECISIONS:
        raise ValueError(f"SOLVER.AMP.PRECISION {cfg.SOLVER.AMP.PRECISION!r} is unknown; choose one of: "
                         f"{_choices(AMP_PRECISIONS)}")
    _validate_registered_names(cfg)


def _validate_registered_names(cfg: CN) -> None:
    """The model parts a config names by registry (meta-architecture, proposal generator, RoI heads) exist:
    Detectron2 would only say that a name is missing, later, when it builds the model."""
    from detectron2.modeling import META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY, ROI_HEADS_REGISTRY

    from . import d2  # noqa: F401  (registers hiera_det's parts)

    for key, registry in (
        ("MODEL.META_ARCHITECTURE", META_ARCH_REGISTRY),
        ("MODEL.PROPOSAL_GENERATOR.NAME", PROPOSAL_GENERATOR_REGISTRY),
        ("MODEL.ROI_HEADS.NAME", ROI_HEADS_REGISTRY),
    ):
        node, name = cfg, key.split(".")
        for part in name:
            node = node[part]
        if node not in registry:
            raise ValueError(f"{key} {node!r} is not a registered name; choose one of: "
                             f"{_choices(sorted(n for n, _ in registry))}")


# ---------------------------------------------------------------------------------------------------------
# Packaged config files

def config_dir() -> str:
    """The folder of the packaged configs (``hiera_det/configs``; ``configs/`` in a checkout links to it)."""
    return str(resources.files("hiera_det") / "configs")


def list_configs() -> list[str]:
    root = config_dir()
    return sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(root)
        for f in files
        if f.endswith(".yaml")
    )


def resolve_config_file(name: str) -> str:
    """A config path as given, or else a name of a packaged config (``hiera_fpn.yaml``, ``video/...``)."""
    if os.path.isfile(name):
        return name
    for candidate in (name, name[len("configs/"):] if name.startswith("configs/") else None):
        if candidate and os.path.isfile(os.path.join(config_dir(), candidate)):
            return os.path.join(config_dir(), candidate)
    known = list_configs()
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise FileNotFoundError(f"config {name!r} is neither a file nor a packaged config.{hint} Packaged configs "
                            f"({config_dir()}): {', '.join(known)}")


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        keys.append(prefix + k)
        if isinstance(v, CN):
            keys += _all_keys(v, prefix + k + ".")
    return keys


def _explain_key_error(cfg: CN, error: KeyError, source: str) -> KeyError:
    # yacs says "Non-existent config key: MODEL.HIERA.NAMEE"; add what the key could have been.
    message = str(error.args[0]) if error.args else str(error)
    bad = message.rsplit(":", 1)[-1].strip()
    close = difflib.get_close_matches(bad, _all_keys(cfg), n=3, cutoff=0.75)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return KeyError(f"{message} (in {source}).{hint} hiera_det keys are listed in docs/config.md")


def error_message(error: BaseException) -> str:
    """What a config, path or data error says, for a one-line ``error:``: a ``KeyError``'s message without
    the quotes its ``str()`` adds."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def merge_config(cfg: CN, config_file: str = "", opts: list[str] | None = None) -> CN:
    """Merge a config file (path or packaged name) and ``KEY VALUE`` overrides into ``cfg``."""
    if config_file:
        path = resolve_config_file(config_file)
        try:
            cfg.merge_from_file(path)
        except KeyError as e:
            raise _explain_key_error(cfg, e, path) from None
    if opts:
        options = [o for o in opts[0::2] if str(o).startswith("--")]
        if options:
            raise ValueError(f"{', '.join(options)} came after the KEY VALUE overrides, which take every word after "
                             f"the first key: put options before the overrides (overrides: {list(opts)})")
        if len(opts) % 2:
            raise ValueError(f"config overrides come in KEY VALUE pairs; got an odd number: {opts}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:  # yacs reports an unknown override key with an assert
            raise _explain_key_error(cfg, e, "command-line overrides") from None
    return cfg


# ---------------------------------------------------------------------------------------------------------
# docs/config.md: the key tables between "<!-- keys: SECTION -->" and "<!-- end keys -->" come from CONFIG_KEYS

_DOC_BLOCK = re.compile(r"(<!-- keys: (?P<section>[\w.]+) -->\n)(.*?)(<!-- end keys -->)", re.S)


def _format_default(value) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{list(value) if isinstance(value, list) else value}`"


def keys_table(section: str) -> str:
    """The markdown table of one section of ``CONFIG_KEYS``."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key in CONFIG_KEYS[section]:
        rows.append(f"| `{key.name[len(section) + 1:]}` | {_format_default(key.default)} | {key.doc} |")
    return "\n".join(rows) + "\n"


def render_config_docs(text: str) -> str:
    """``text`` (docs/config.md) with every key table regenerated from ``CONFIG_KEYS``."""
    return _DOC_BLOCK.sub(lambda m: m.group(1) + keys_table(m.group("section")) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hiera_det config keys and packaged configs")
    parser.add_argument("--write-docs", metavar="PATH", help="regenerate the key tables in this markdown file")
    parser.add_argument("--list", action="store_true", help="list the packaged configs")
    args = parser.parse_args(argv)
    if args.write_docs:
        with open(args.write_docs) as f:
            text = f.read()
        with open(args.write_docs, "w") as f:
            f.write(render_config_docs(text))
    if args.list or not args.write_docs:
        print("\n".join(list_configs()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
