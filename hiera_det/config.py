"""Detectron2 (yacs) config keys for Hiera detectors, their checks, and config-file loading.

``add_hiera_config(cfg)`` adds the keys below to a Detectron2 ``CfgNode`` (and the video keys of
``hiera_det.video.config`` when that module is present). Every key, with its default, is listed in
``docs/config.md``. ``validate_hiera_config(cfg)`` rejects bad values with a message naming the valid
choices; the backbone builders and ``tools/train_net.py`` call it.
"""

from __future__ import annotations

import difflib
import os

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .modeling import ARCHITECTURES, ATTENTION_LAYOUTS

STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")
IMAGE_POS_EMBEDS = ("absolute", "absolute_win")
OPTIMIZERS = ("ADAMW", "SGD")
AMP_PRECISIONS = ("float16", "bfloat16")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def add_hiera_config(cfg: CN) -> CN:
    """Add ``MODEL.HIERA``, ``INPUT.LSJ`` and the optimizer keys (with defaults) to ``cfg`` in place."""
    h = cfg.MODEL.HIERA = CN()
    # Official image architecture: hiera_{tiny,small,base,base_plus,large,huge}_224.
    h.NAME = "hiera_base_224"
    # Trunk stages handed to the neck (strides 4, 8, 16, 32).
    h.OUT_FEATURES = list(STAGE_NAMES)
    # Stochastic depth, rising linearly over the blocks to this value.
    h.DROP_PATH_RATE = 0.0
    # "mask_unit": the paper's attention (official / MAE weights). "window": HieraDet / SAM2 windowed
    # attention with a few global blocks (SAM2 image-encoder weights).
    h.ATTENTION = "mask_unit"
    # "" = the layout's default ("absolute" for mask_unit, "absolute_win" for window).
    h.POS_EMBED = ""
    # Window attention only: window size per stage; [] = the SAM2 preset of the architecture.
    h.WINDOW_SPEC = []
    # Window attention only: indices of blocks with full attention; [] = the SAM2 preset.
    h.GLOBAL_BLOCKS = []
    # Blocks per stage; [] = the architecture's. Smaller trunks are for quick CPU runs: official weights
    # then load only partly (the loader reports what it skipped).
    h.STAGES = []
    # Recompute each block in the backward pass: less activation memory, one more forward of compute.
    h.ACTIVATION_CHECKPOINTING = False
    # 0 trains everything; 1 freezes the patch embedding and position embeddings; k >= 2 also freezes
    # stages 1..k-1 (5 freezes the whole trunk).
    h.FREEZE_AT = 0
    # Pretrained trunk weights in any format hiera_det.checkpoint.load_checkpoint reads (official, MAE,
    # Hugging Face, timm, SAM2), loaded when the model is built. "" = random init. MODEL.WEIGHTS (a whole
    # detector) is loaded afterwards and wins where both set a parameter.
    h.WEIGHTS = ""
    # (H, W) the position embeddings are stored for; every other input size interpolates them on the fly,
    # as ViTDet does. [] = the architecture's pretraining size (224, 224), so that pretrained and converted
    # checkpoints (tools/convert_checkpoint.py) load through MODEL.WEIGHTS with every shape matching.
    h.INPUT_SIZE = []

    # Large-scale jitter (ViTDet / Copy-Paste): resize by a random factor of IMAGE_SIZE, then crop or pad
    # to IMAGE_SIZE x IMAGE_SIZE, then flip. Replaces INPUT.MIN_SIZE_TRAIN resizing when enabled. Test
    # images are then padded to IMAGE_SIZE squares, as in training, so that position embeddings line up.
    lsj = cfg.INPUT.LSJ = CN()
    lsj.ENABLED = False
    lsj.IMAGE_SIZE = 1024
    lsj.MIN_SCALE = 0.1
    lsj.MAX_SCALE = 2.0

    # "ADAMW" (betas SOLVER.BETAS) or "SGD" (SOLVER.MOMENTUM, SOLVER.NESTEROV).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BETAS = (0.9, 0.999)
    # Layer-wise lr decay: block i of n gets lr * LAYER_DECAY ** (n - i), the patch embedding
    # LAYER_DECAY ** (n + 1), the neck and heads the full lr. 1.0 = off.
    cfg.SOLVER.LAYER_DECAY = 1.0
    # Autocast dtype under SOLVER.AMP.ENABLED (CUDA only): "float16" or "bfloat16".
    cfg.SOLVER.AMP.PRECISION = "float16"

    try:
        from .video.config import add_video_config
    except ImportError as e:
        if e.name not in ("hiera_det.video.config", "hiera_det.video"):
            raise
    else:
        add_video_config(cfg)
    return cfg


def get_hiera_cfg() -> CN:
    """Detectron2's default config with the hiera_det keys added."""
    return add_hiera_config(get_cfg())


def _choices(valid) -> str:
    return ", ".join(map(str, valid))


def hiera_input_size(cfg: CN) -> tuple[int, int]:
    """The (H, W) the trunk's position embeddings are stored for (see MODEL.HIERA.INPUT_SIZE)."""
    if len(cfg.MODEL.HIERA.INPUT_SIZE):
        return tuple(cfg.MODEL.HIERA.INPUT_SIZE)
    return tuple(ARCHITECTURES[cfg.MODEL.HIERA.NAME]["input_size"])


def validate_hiera_config(cfg: CN) -> None:
    """Raise ValueError naming the key, the bad value and the valid choices for any bad hiera_det key."""
    h = cfg.MODEL.HIERA
    image_names = [n for n, spec in ARCHITECTURES.items() if len(spec["input_size"]) == 2]
    if h.NAME not in ARCHITECTURES:
        raise ValueError(f"MODEL.HIERA.NAME {h.NAME!r} is not a Hiera architecture; choose one of: "
                         f"{_choices(image_names)}")
    if h.NAME not in image_names:
        raise ValueError(f"MODEL.HIERA.NAME {h.NAME!r} is a video architecture; image detectors take one of: "
                         f"{_choices(image_names)} (video models are configured under MODEL.HIERA_VIDEO)")
    if h.ATTENTION not in ATTENTION_LAYOUTS:
        raise ValueError(f"MODEL.HIERA.ATTENTION {h.ATTENTION!r} is unknown; choose one of: "
                         f"{_choices(ATTENTION_LAYOUTS)}")
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
    if h.WEIGHTS and not os.path.isfile(os.path.expanduser(h.WEIGHTS)):
        raise ValueError(f"MODEL.HIERA.WEIGHTS {h.WEIGHTS!r} is not a file; give the path of a downloaded "
                         "Hiera checkpoint (official .pth, MAE, Hugging Face .safetensors, timm or SAM2) "
                         "or '' for random init")
    lsj = cfg.INPUT.LSJ
    if lsj.ENABLED and not (0 < lsj.MIN_SCALE <= lsj.MAX_SCALE and lsj.IMAGE_SIZE > 0):
        raise ValueError(f"INPUT.LSJ needs 0 < MIN_SCALE <= MAX_SCALE and IMAGE_SIZE > 0, got MIN_SCALE "
                         f"{lsj.MIN_SCALE}, MAX_SCALE {lsj.MAX_SCALE}, IMAGE_SIZE {lsj.IMAGE_SIZE}")
    if cfg.SOLVER.OPTIMIZER not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER!r} is unknown; choose one of: "
                         f"{_choices(OPTIMIZERS)}")
    if not 0.0 < cfg.SOLVER.LAYER_DECAY <= 1.0:
        raise ValueError(f"SOLVER.LAYER_DECAY {cfg.SOLVER.LAYER_DECAY} must be in (0, 1]; 1.0 turns it off")
    if cfg.SOLVER.AMP.PRECISION not in AMP_PRECISIONS:
        raise ValueError(f"SOLVER.AMP.PRECISION {cfg.SOLVER.AMP.PRECISION!r} is unknown; choose one of: "
                         f"{_choices(AMP_PRECISIONS)}")


def resolve_config_file(name: str) -> str:
    """A config path as given, or else a name under the repository's ``configs/`` folder."""
    if os.path.isfile(name):
        return name
    candidate = os.path.join(CONFIG_DIR, name)
    if os.path.isfile(candidate):
        return candidate
    known = sorted(
        os.path.relpath(os.path.join(d, f), CONFIG_DIR)
        for d, _, files in os.walk(CONFIG_DIR)
        for f in files
        if f.endswith(".yaml")
    )
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise FileNotFoundError(f"config {name!r} is neither a file nor a name under {CONFIG_DIR}.{hint} "
                            f"Known configs: {', '.join(known)}")


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


def merge_config(cfg: CN, config_file: str = "", opts: list[str] | None = None) -> CN:
    """Merge a config file (path or name under ``configs/``) and ``KEY VALUE`` overrides into ``cfg``."""
    if config_file:
        path = resolve_config_file(config_file)
        try:
            cfg.merge_from_file(path)
        except KeyError as e:
            raise _explain_key_error(cfg, e, path) from None
    if opts:
        if len(opts) % 2:
            raise ValueError(f"config overrides come in KEY VALUE pairs; got an odd number: {opts}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:  # yacs reports an unknown override key with an assert
            raise _explain_key_error(cfg, e, "command-line overrides") from None
    return cfg
