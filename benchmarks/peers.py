"""The implementations a benchmark compares, ours and the peers (official hiera, timm, transformers,
detectron2's ViTDet-B): how each is built at a given input size, and which feature API it is called by.
Every model has random weights; nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn


@dataclass
class Subject:
    name: str
    role: str  # "ours" or "peer"
    label: str
    build: Callable  # (input_size, smoke) -> nn.Module
    optimizer: Callable | None = None  # (model, input_size, smoke) -> Optimizer, for training cases


class FeatureCall(nn.Module):
    """Exposes a model's feature API as ``forward(x)``, so that torch.compile and the timing loop see the
    same thing for ours and every peer."""

    def __init__(self, model: nn.Module, call: Callable[[nn.Module, torch.Tensor], object]):
        super().__init__()
        self.model = model
        self.call = call

    def forward(self, x: torch.Tensor):
        return self.call(self.model, x)


def _hiera_name(smoke: bool, video: bool = False, size: str = "base") -> str:
    if video:
        return "hiera_base_16x224"
    return "hiera_tiny_224" if smoke else f"hiera_{size}_224"


# Smoke runs keep every code path but shrink the models: Hiera-T for images, a one-block-per-stage video
# Hiera, and a two-block narrow ViT.
SMOKE_VIDEO_STAGES = (1, 1, 1, 1)
SMOKE_VIT = dict(embed_dim=96, depth=2, num_heads=2, window_block_indexes=[0])
# Smoke detectors: the same heads, 32 channels wide, on few proposals and detections. At full size the
# 4conv1fc box head alone costs 0.2 TFLOP per image at 1000 proposals: minutes on two CPU cores.
SMOKE_NECK, SMOKE_FC = 32, 64
SMOKE_DETECTOR = {
    "MODEL.FPN.OUT_CHANNELS": SMOKE_NECK,
    "MODEL.ROI_BOX_HEAD.CONV_DIM": SMOKE_NECK,
    "MODEL.ROI_BOX_HEAD.FC_DIM": SMOKE_FC,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": SMOKE_NECK,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 100,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 100,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 20,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 20,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 64,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 16,
    "TEST.DETECTIONS_PER_IMAGE": 5,
}


def ours_trunk(attention: str = "mask_unit", size: str = "base", video: bool = False):
    def build(input_size, smoke):
        from hiera_det.modeling import build_hiera

        extra = {"stages": SMOKE_VIDEO_STAGES} if video and smoke else {}
        if video:
            return build_hiera(_hiera_name(smoke, True), num_classes=0, input_size=input_size, **extra)
        return build_hiera(
            _hiera_name(smoke, size=size), num_classes=0, input_size=input_size, attention=attention
        )

    return build


def official_video_hiera(**overrides) -> nn.Module:
    """The official video Hiera with the arguments of ``hiera.hiera_base_16x224`` (which fixes the input
    size itself), any of them overridable: ``stages``, ``input_size``, ``embed_dim`` ..."""
    import hiera

    video = dict(
        num_classes=400,
        q_stride=(1, 2, 2),
        mask_unit_size=(1, 8, 8),
        patch_kernel=(3, 7, 7),
        patch_stride=(2, 4, 4),
        patch_padding=(1, 3, 3),
        sep_pos_embed=True,
    )
    return hiera.Hiera(**{**video, **overrides})


def official_trunk(size: str = "base", video: bool = False):
    def build(input_size, smoke):
        import hiera

        if video and smoke:
            model = official_video_hiera(input_size=tuple(input_size), stages=SMOKE_VIDEO_STAGES)
        elif video:
            if tuple(input_size) != (16, 224, 224):
                raise ValueError(f"the official video Hiera is built for 16x224x224 only, not {input_size}")
            model = hiera.hiera_base_16x224(pretrained=False)
        else:
            model = getattr(hiera, _hiera_name(smoke, size=size))(
                pretrained=False, input_size=tuple(input_size)
            )
        # the official model also pools and classifies; that head is under 0.1% of the FLOPs
        return FeatureCall(model, lambda m, x: m(x, return_intermediates=True)[1])

    return build


def timm_trunk(input_size, smoke):
    import timm

    model = timm.create_model(_hiera_name(smoke), pretrained=False, img_size=tuple(input_size))
    return FeatureCall(model, lambda m, x: m.forward_intermediates(x, intermediates_only=True))


def hf_trunk(input_size, smoke):
    from transformers import HieraConfig, HieraModel

    depths = [1, 2, 7, 2] if smoke else [2, 3, 16, 3]
    config = HieraConfig(embed_dim=96, depths=depths, num_heads=[1, 2, 4, 8], image_size=list(input_size))
    model = HieraModel(config, add_pooling_layer=False)
    return FeatureCall(
        model, lambda m, x: m(pixel_values=x, output_hidden_states=True).reshaped_hidden_states
    )


def _ours_cfg(attention: str, input_size, smoke: bool, device: torch.device, name: str = "hiera_base_224"):
    """Our Mask R-CNN config (configs/hiera_fpn.yaml) at ``input_size``, with random weights."""
    from hiera_det.config import get_hiera_cfg, merge_config

    import hiera_det.d2  # noqa: F401  (registers the backbone builders)

    side = int(input_size[0])
    overrides = {
        "MODEL.DEVICE": device.type,
        "MODEL.WEIGHTS": "",
        "MODEL.HIERA.WEIGHTS": "",
        "MODEL.HIERA.NAME": "hiera_tiny_224" if smoke else name,
        "MODEL.HIERA.ATTENTION": attention,
        "MODEL.HIERA.INPUT_SIZE": [side, side],
        "INPUT.LSJ.IMAGE_SIZE": side,
        # random weights score every class near 1/81: a zero threshold keeps the full 100 detections per
        # image, so that the mask head and the paste-back run as they do with a trained model
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0,
    }
    if smoke:
        overrides.update(SMOKE_DETECTOR)
    opts = [part for pair in overrides.items() for part in pair]
    return merge_config(get_hiera_cfg(), "hiera_fpn.yaml", opts)


def ours_fpn(attention: str = "mask_unit", name: str = "hiera_base_224"):
    def build(input_size, smoke):
        from detectron2.modeling import build_backbone

        device = torch.get_default_device()
        return build_backbone(_ours_cfg(attention, input_size, smoke, device, name))

    return build


def ours_detector(attention: str = "mask_unit", roi_heads: str | None = None):
    """Our Mask R-CNN; ``roi_heads`` replaces the config's ``MODEL.ROI_HEADS.NAME`` (``HieraROIHeads``)."""

    def build(input_size, smoke):
        from detectron2.modeling import build_model

        cfg = _ours_cfg(attention, input_size, smoke, torch.get_default_device())
        if roi_heads is not None:
            cfg.defrost()
            cfg.MODEL.ROI_HEADS.NAME = roi_heads
            if roi_heads == "StandardROIHeads":  # Detectron2's inference throughout: its mask paste too
                cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
        return build_model(cfg)

    return build


def ours_optimizer(model: nn.Module, input_size, smoke):
    from hiera_det.engine.optimizer import build_optimizer

    return build_optimizer(_ours_cfg("mask_unit", input_size, smoke, torch.get_default_device()), model)


def _vitdet_lazy_config(input_size, smoke: bool):
    """detectron2's ViTDet Mask R-CNN LazyConfig (``common/models/mask_rcnn_vitdet.py``, the model of
    ``projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py``), read from the installed package."""
    import detectron2
    from detectron2.config import LazyConfig

    path = Path(detectron2.__file__).parent / "model_zoo/configs/common/models/mask_rcnn_vitdet.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from this detectron2 install; install detectron2 with its model_zoo configs "
            "(pip install 'git+https://github.com/facebookresearch/detectron2') to build ViTDet-B"
        )
    model = LazyConfig.load(str(path)).model
    side = int(input_size[0])
    model.backbone.square_pad = side
    if smoke:
        from detectron2.layers import ShapeSpec

        model.backbone.net.update(img_size=side, **SMOKE_VIT)
        model.backbone.out_channels = SMOKE_NECK
        rpn, roi = model.proposal_generator, model.roi_heads
        rpn.head.in_channels = SMOKE_NECK
        rpn.update(pre_nms_topk=(100, 100), post_nms_topk=(20, 20), batch_size_per_image=64)
        roi.batch_size_per_image = 16
        roi.box_head.update(
            input_shape=ShapeSpec(channels=SMOKE_NECK, height=7, width=7),
            conv_dims=[SMOKE_NECK] * 4,
            fc_dims=[SMOKE_FC],
        )
        roi.box_predictor.update(input_shape=ShapeSpec(channels=SMOKE_FC), test_topk_per_image=5)
        roi.mask_head.update(
            input_shape=ShapeSpec(channels=SMOKE_NECK, height=14, width=14), conv_dims=[SMOKE_NECK] * 5
        )
    model.roi_heads.box_predictor.test_score_thresh = 0.0  # as for ours: keep 100 detections per image
    return model


def vitdet_backbone(input_size, smoke):
    from detectron2.config import instantiate

    return instantiate(_vitdet_lazy_config(input_size, smoke).backbone)


def vitdet_detector(input_size, smoke):
    from detectron2.config import instantiate

    return instantiate(_vitdet_lazy_config(input_size, smoke))


def vitdet_optimizer(model: nn.Module, input_size, smoke):
    """AdamW as mask_rcnn_vitdet_b_100ep.py sets it: lr decay 0.7 over 12 blocks, no decay on pos_embed."""
    import detectron2
    from functools import partial

    from detectron2.config import LazyConfig, instantiate
    from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

    optim = LazyConfig.load(str(Path(detectron2.__file__).parent / "model_zoo/configs/common/optim.py")).AdamW
    optim.params.model = model
    depth = SMOKE_VIT["depth"] if smoke else 12
    optim.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=depth, lr_decay_rate=0.7)
    optim.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
    return instantiate(optim)


OURS = Subject("ours", "ours", "hiera_det Hiera-B", ours_trunk())
OURS_MU = Subject("ours_mask_unit", "ours", "hiera_det Hiera-B (mask unit)", ours_trunk("mask_unit"))
OURS_WIN = Subject("ours_window", "ours", "hiera_det Hiera-B (window)", ours_trunk("window"))
OURS_MU_FPN = Subject(
    "ours_mask_unit_fpn", "ours", "hiera_det Hiera-B (mask unit) + FPN", ours_fpn("mask_unit")
)
OURS_WIN_FPN = Subject("ours_window_fpn", "ours", "hiera_det Hiera-B (window) + FPN", ours_fpn("window"))
OFFICIAL = Subject("official", "peer", "official hiera (hiera-transformer)", official_trunk())
TIMM = Subject("timm", "peer", "timm hiera_base_224", timm_trunk)
HF = Subject("hf", "peer", "transformers HieraModel", hf_trunk)
VITDET = Subject("vitdet_b", "peer", "detectron2 ViTDet-B (ViT + SimpleFeaturePyramid)", vitdet_backbone)
