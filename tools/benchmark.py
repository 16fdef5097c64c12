#!/usr/bin/env python
"""Side-by-side speed and memory benchmark of hiera_det against every peer implementation.

For each case, ours and the peers are built in one process, fed the same random inputs, warmed up, and
timed in interleaved repeats (CUDA events; median, p10, p90), under fp32 / bf16 / fp16 autocast and with
torch.compile off and on. Each case also reports peak memory, FLOPs per call, achieved TFLOP/s and the share
of a bf16 matmul ceiling measured in the same run, and each comparison its ratio and its target.

    python tools/benchmark.py --out DIR                      # every case, on the GPU
    python tools/benchmark.py --cases hiera_b_224 --dtypes bf16 --compile off
    python tools/benchmark.py --smoke --out /tmp/smoke       # every case, tiny, on CPU (what CI runs)
    python tools/benchmark.py --list

Writes DIR/<tag>.json, DIR/<tag>.md (tables, ratios, targets met or missed) and DIR/<tag>.png (throughput
against batch size and resolution), rewritten after every measurement so that a run cut short keeps what
it measured. A peer that cannot be built or run (missing package, OOM, compile error) is recorded with its
error and the run goes on. See benchmarks/README.md for the protocol and how to read the results.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from hiera_det import benchmarking as bm  # noqa: E402

# distributions whose versions the report records (hiera-transformer is the official Hiera)
PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "hiera-transformer",
    "detectron2",
    "fvcore",
    "matplotlib",
)
ALL_DTYPES = ("fp32", "bf16", "fp16")
COMPILE_MODES = {"off": None, "on": "default", "reduce-overhead": "reduce-overhead"}
GPU_CEILING = dict(size=8192, dtype=torch.bfloat16)
CPU_CEILING = dict(size=2048, dtype=torch.float32)
SMOKE_CEILING_SIZE = 256
# Rough cold-cache torch.compile time per model (default mode, 16 CPU cores for Triton), to decide whether a
# compile item still fits in the time left.
COMPILE_ESTIMATE_S = {"forward": 35, "detect": 45, "train": 80}


# --------------------------------------------------------------------------------------------------------
# Subjects: how each implementation is built at a given input size, and which feature API it is called by


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


def official_trunk(size: str = "base", video: bool = False):
    def build(input_size, smoke):
        import hiera

        if video and smoke:
            # the arguments of hiera.hiera_base_16x224, which fixes input_size itself
            model = hiera.Hiera(
                input_size=tuple(input_size),
                stages=SMOKE_VIDEO_STAGES,
                q_stride=(1, 2, 2),
                mask_unit_size=(1, 8, 8),
                patch_kernel=(3, 7, 7),
                patch_stride=(2, 4, 4),
                patch_padding=(1, 3, 3),
                sep_pos_embed=True,
                num_classes=400,
            )
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

    import hiera_det.detection  # noqa: F401  (registers the backbone builders)

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


def ours_detector(attention: str = "mask_unit"):
    def build(input_size, smoke):
        from detectron2.modeling import build_model

        return build_model(_ours_cfg(attention, input_size, smoke, torch.get_default_device()))

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


@dataclass
class Subject:
    name: str
    role: str  # "ours" or "peer"
    label: str
    build: Callable  # (input_size, smoke) -> nn.Module
    optimizer: Callable | None = None  # (model, input_size, smoke) -> Optimizer, for training cases


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


# --------------------------------------------------------------------------------------------------------
# Workloads: one measured call of a subject on a case's inputs, under a dtype and a compile mode


class ForwardWorkload:
    """Inference forward pass of a feature extractor on one input batch."""

    def __init__(self, module: nn.Module, inputs: torch.Tensor):
        self.module = module.eval()
        self.inputs = inputs
        self._compiled: dict[str, nn.Module] = {}

    def _target(self, mode: str | None) -> nn.Module:
        if mode is None:
            return self.module
        if mode not in self._compiled:
            self._compiled[mode] = torch.compile(
                self.module, mode=None if mode == "default" else mode, dynamic=False
            )
        return self._compiled[mode]

    def step(self, dtype: str, mode: str | None) -> Callable[[], None]:
        module, x = self._target(mode), self.inputs

        def run():
            with torch.no_grad(), bm.autocast(dtype, x.device):
                module(x)

        return run

    def resident_bytes(self) -> int:
        return bm.resident_bytes(self.module)


class DetectorWorkload:
    """A Detectron2 meta-architecture on a list of input dicts: inference, or one training iteration
    (forward, backward, optimizer step). torch.compile, when on, compiles the backbone, where nearly all
    FLOPs are; proposals and box post-processing have data-dependent shapes and stay eager."""

    def __init__(self, model: nn.Module, inputs: list[dict], optimizer=None):
        self.model = model
        self.inputs = inputs
        self.optimizer = optimizer
        self.backbones: dict[str | None, nn.Module] = {None: model.backbone}

    def _backbone(self, mode: str | None) -> nn.Module:
        if mode not in self.backbones:
            self.backbones[mode] = torch.compile(
                self.backbones[None], mode=None if mode == "default" else mode, dynamic=False
            )
        return self.backbones[mode]

    def step(self, dtype: str, mode: str | None) -> Callable[[], None]:
        model, inputs, backbone = self.model, self.inputs, self._backbone(mode)
        device = next(model.parameters()).device
        if self.optimizer is None:

            def infer():
                model.backbone = backbone
                model.eval()
                with torch.no_grad(), bm.autocast(dtype, device):
                    model(inputs)

            return infer

        from detectron2.utils.events import EventStorage

        optimizer = self.optimizer
        scaler = torch.amp.GradScaler(device.type) if dtype == "fp16" else None
        storage = EventStorage()  # the heads log training statistics into the current storage

        def train():
            model.backbone = backbone
            model.train()
            with storage, bm.autocast(dtype, device):
                losses = model(inputs)
            total = sum(losses.values())
            if scaler is None:
                total.backward()
                optimizer.step()
            else:
                scaler.scale(total).backward()
                scaler.step(optimizer)
                scaler.update()
            # gradients are freed here, so that the peak of the next call counts them as its own
            optimizer.zero_grad(set_to_none=True)

        return train

    def resident_bytes(self) -> int:
        return bm.resident_bytes(self.model, self.optimizer)


def synthetic_instances(
    height: int, width: int, count: int, generator: torch.Generator, num_classes: int = 80
):
    """Random boxes, classes and box-filling masks: what a COCO annotation gives the losses."""
    from detectron2.structures import BitMasks, Boxes, Instances

    wh = torch.rand(count, 2, generator=generator) * 0.3 + 0.05
    xy = torch.rand(count, 2, generator=generator) * (1 - wh)
    scale = torch.tensor([width, height], dtype=torch.float32)
    boxes = torch.cat([xy * scale, (xy + wh) * scale], dim=1)
    masks = torch.zeros(count, height, width, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        masks[i, y0:y1, x0:x1] = True
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = torch.randint(0, num_classes, (count,), generator=generator)
    instances.gt_masks = BitMasks(masks)
    return instances


# --------------------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Point:
    batch: int
    size: tuple[int, ...]  # (H, W) or (T, H, W)

    def as_dict(self) -> dict:
        return {"batch": self.batch, "size": list(self.size)}


@dataclass
class Comparison:
    ours: str
    peer: str
    # Targets: ours must be at least this much faster (peer time / our time) and at most this multiple of
    # the peer's peak memory. None = reported without a target.
    min_speedup: float | None = None
    max_memory_ratio: float | None = None
    min_throughput: float | None = None  # ours, absolute (images/s or clips/s)


@dataclass
class Case:
    name: str
    title: str
    kind: str  # "forward", "detect" (inference) or "train"
    unit: str
    subjects: list[Subject]
    points: list[Point]
    smoke_points: list[Point]
    comparisons: list[Comparison] = field(default_factory=list)
    dtypes: tuple[str, ...] = ALL_DTYPES
    compile: bool = True
    on_cpu: bool = False
    threads: int | None = None
    warmup: int = 5
    repeats: int = 30
    time_limit_s: float = 90.0
    instances_per_image: int = 8
    plot: str | None = None  # "batch" or "resolution": x axis of this case's panel in the plot
    notes: str = ""
    # Measure the subjects one after another, each alone on the GPU, instead of interleaved: for cases
    # whose models cannot share the memory (ViTDet-B training at 1024 peaks near 70 GiB by itself).
    isolate: bool = False


# Same math as the official implementation and timm: ours must not be slower nor use more memory. The
# official Hiera-B and timm also pool, norm and classify; that is under 0.1% of the FLOPs.
SAME_MODEL = dict(min_speedup=1.0, max_memory_ratio=1.0)
# The performance issue's targets on one H100 (bf16 autocast; the issue compares the best of compile on and
# off for both sides, so read the compiled and eager rows together).
TARGET_224 = dict(min_throughput=12000.0, max_memory_ratio=1.0)  # about 1.65x the fastest peer
TARGET_FPN_1024 = dict(min_speedup=2.0)  # against the fastest of timm and ViTDet-B
TARGET_VIDEO = dict(min_throughput=1000.0, min_speedup=2.3)  # 2.3x the official compiled
TARGET_TRAIN = dict(min_speedup=1.5, max_memory_ratio=1.0)  # and lower peak memory than ViTDet-B


def default_cases() -> list[Case]:
    s224 = (224, 224)
    return [
        Case(
            "hiera_b_224",
            "Hiera-B 224, stage outputs, batch 128",
            "forward",
            "images/s",
            [OURS, OFFICIAL, TIMM, HF],
            [Point(128, s224)],
            [Point(1, (64, 64))],
            [
                Comparison("ours", "official", **TARGET_224),
                Comparison("ours", "timm", **TARGET_224),
                Comparison("ours", "hf", **TARGET_224),
            ],
            time_limit_s=200,
        ),
        Case(
            "hiera_b_fpn_1024",
            "Hiera-B (+ FPN) at 1024, batch 8",
            "forward",
            "images/s",
            [OURS_MU, OURS_WIN, OURS_MU_FPN, OURS_WIN_FPN, OFFICIAL, TIMM, VITDET],
            [Point(8, (1024, 1024))],
            [Point(1, (64, 64))],
            [
                Comparison("ours_mask_unit", "official", **SAME_MODEL),
                Comparison("ours_mask_unit", "timm", **SAME_MODEL),
                Comparison("ours_window", "official"),
                Comparison("ours_mask_unit_fpn", "timm", **TARGET_FPN_1024),
                Comparison("ours_window_fpn", "timm", **TARGET_FPN_1024),
                Comparison("ours_mask_unit_fpn", "vitdet_b", **TARGET_FPN_1024),
                Comparison("ours_window_fpn", "vitdet_b", **TARGET_FPN_1024),
            ],
            repeats=20,
            time_limit_s=330,
            notes="Trunks (ours, official, timm) give stage1-4; the +FPN rows and ViTDet-B give the p2-p6 "
            "pyramid a Mask R-CNN reads. Compare trunk with trunk, pyramid with pyramid.",
        ),
        Case(
            "hiera_b_16x224_video",
            "Video Hiera-B 16x224, stage outputs, batch 16",
            "forward",
            "clips/s",
            [
                Subject("ours", "ours", "hiera_det Hiera-B 16x224", ours_trunk(video=True)),
                Subject("official", "peer", "official hiera 16x224", official_trunk(video=True)),
            ],
            [Point(16, (16, 224, 224))],
            [Point(1, (4, 64, 64))],
            [Comparison("ours", "official", **TARGET_VIDEO)],
            repeats=20,
            time_limit_s=120,
        ),
        Case(
            "maskrcnn_infer_1024",
            "Mask R-CNN inference, one 1024x1024 image",
            "detect",
            "images/s",
            [
                Subject(
                    "ours", "ours", "hiera_det Mask R-CNN Hiera-B + FPN (hiera_fpn.yaml)", ours_detector()
                ),
                Subject(
                    "ours_window",
                    "ours",
                    "hiera_det Mask R-CNN Hiera-B (window) + FPN",
                    ours_detector("window"),
                ),
                Subject("vitdet_b", "peer", "detectron2 ViTDet-B Mask R-CNN (LazyConfig)", vitdet_detector),
            ],
            [Point(1, (1024, 1024))],
            [Point(1, (64, 64))],
            [Comparison("ours", "vitdet_b"), Comparison("ours_window", "vitdet_b")],
            repeats=20,
            time_limit_s=200,
            notes="Random weights with the score threshold at 0, so each image keeps 100 detections and the "
            "mask head runs on all of them. Latency per image, pre- and post-processing included; "
            "compile on = backbone compiled.",
        ),
        Case(
            "maskrcnn_train_1024",
            "Mask R-CNN training iteration, batch 8 at 1024, AMP",
            "train",
            "images/s",
            [
                Subject(
                    "ours",
                    "ours",
                    "hiera_det Mask R-CNN Hiera-B + FPN (hiera_fpn.yaml)",
                    ours_detector(),
                    ours_optimizer,
                ),
                Subject(
                    "vitdet_b",
                    "peer",
                    "detectron2 ViTDet-B Mask R-CNN (LazyConfig)",
                    vitdet_detector,
                    vitdet_optimizer,
                ),
            ],
            [Point(8, (1024, 1024))],
            [Point(1, (64, 64))],
            [Comparison("ours", "vitdet_b", **TARGET_TRAIN)],
            dtypes=("bf16",),
            warmup=3,
            repeats=10,
            time_limit_s=250,
            instances_per_image=8,
            isolate=True,
            notes="Forward + backward + AdamW step on 8 synthetic instances (box masks) per image; each "
            "model's own optimizer recipe (ours: SOLVER of hiera_fpn.yaml; ViTDet-B: layer decay "
            "0.7). Drop path as configured (0.2 ours, 0.1 ViTDet-B). Each model is measured alone on the GPU "
            "(ViTDet-B peaks near 70 GiB), one after the other, not interleaved.",
        ),
        Case(
            "cpu_hiera_t_fpn_512",
            "CPU: Hiera-T (+ FPN) at 512x512, batch 1, 2 threads",
            "forward",
            "images/s",
            [
                Subject("ours_t", "ours", "hiera_det Hiera-T", ours_trunk(size="tiny")),
                Subject("ours_t_fpn", "ours", "hiera_det Hiera-T + FPN", ours_fpn(name="hiera_tiny_224")),
                Subject("official_t", "peer", "official hiera Hiera-T", official_trunk(size="tiny")),
            ],
            [Point(1, (512, 512))],
            [Point(1, (64, 64))],
            [
                Comparison("ours_t", "official_t", **SAME_MODEL),
                # the CPU target: Hiera-T + FPN no slower than the official trunk alone
                Comparison("ours_t_fpn", "official_t", min_speedup=1.0),
            ],
            dtypes=("fp32",),
            on_cpu=True,
            threads=2,
            warmup=2,
            repeats=10,
            time_limit_s=60,
            notes="Runs on the CPU with 2 threads whatever the GPU; % of ceiling is against an fp32 CPU "
            "matmul. Memory is not tracked on the CPU.",
        ),
        Case(
            "sweep_batch_224",
            "Hiera-B 224 throughput against batch size",
            "forward",
            "images/s",
            [OURS, OFFICIAL, TIMM, HF],
            [Point(b, s224) for b in (1, 8, 32, 128)],
            [Point(1, (64, 64)), Point(2, (64, 64))],
            [Comparison("ours", "official"), Comparison("ours", "timm"), Comparison("ours", "hf")],
            dtypes=("bf16",),
            compile=False,
            warmup=3,
            repeats=15,
            time_limit_s=45,
            plot="batch",
        ),
        Case(
            "sweep_resolution_fpn",
            "Hiera-B + FPN vs ViTDet-B throughput against resolution, batch 8",
            "forward",
            "images/s",
            [OURS_MU_FPN, OURS_WIN_FPN, VITDET],
            [Point(8, (s, s)) for s in (512, 768, 1024)],
            [Point(1, (64, 64)), Point(1, (96, 96))],
            [Comparison("ours_mask_unit_fpn", "vitdet_b"), Comparison("ours_window_fpn", "vitdet_b")],
            dtypes=("bf16",),
            compile=False,
            warmup=3,
            repeats=15,
            time_limit_s=45,
            plot="resolution",
        ),
    ]


# --------------------------------------------------------------------------------------------------------
# Running


@dataclass
class WorkItem:
    case: Case
    point: Point
    dtype: str
    compile: str  # key of COMPILE_MODES


class Runner:
    """Builds each case's subjects once, measures its work items, and keeps every result."""

    def __init__(self, args, cases: list[Case]):
        self.args = args
        self.cases = cases
        self.start = time.monotonic()
        self.case_spent: dict[str, float] = {c.name: 0.0 for c in cases}
        self.models: dict[tuple, nn.Module | str] = {}  # (case, subject, size) -> model or build error
        self.workloads: dict[tuple, object] = {}  # (case, subject, point) -> workload or error
        self.inputs: dict[tuple, object] = {}
        self.flops: dict[tuple, int | str] = {}
        self.ceilings: dict[str, dict | str] = {}
        self.items: list[dict] = []
        self.gpu = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")

    # ---- devices and limits
    def device_for(self, case: Case) -> torch.device:
        return torch.device("cpu") if case.on_cpu or self.args.smoke else self.gpu

    def remaining(self, case: Case) -> tuple[float, str]:
        """Seconds left for ``case`` and the name of the limit that binds."""
        global_left = self.args.time_budget - (time.monotonic() - self.start)
        case_limit = case.time_limit_s * self.args.time_scale
        case_left = case_limit - self.case_spent[case.name]
        if global_left <= case_left:
            return global_left, f"the run's time budget of {self.args.time_budget:.0f} s (--time-budget)"
        return case_left, f"the case's time limit of {case_limit:.0f} s (--time-scale)"

    def ceiling(self, device: torch.device) -> dict | str:
        key = device.type
        if key not in self.ceilings:
            spec = GPU_CEILING if device.type == "cuda" else CPU_CEILING
            size = SMOKE_CEILING_SIZE if self.args.smoke else spec["size"]
            try:
                self.ceilings[key] = bm.matmul_ceiling(
                    device, size, spec["dtype"], repeats=3 if self.args.smoke else 20
                )
            except Exception as e:
                self.ceilings[key] = bm.describe_error(e)
        return self.ceilings[key]

    # ---- building
    def model(self, case: Case, subject: Subject, size, device) -> nn.Module | str:
        key = (case.name, subject.name, tuple(size))
        if key not in self.models:
            try:
                with torch.device(device):
                    model = subject.build(tuple(size), self.args.smoke)
                self.models[key] = model.to(device)
            except Exception as e:
                self.models[key] = f"build failed: {bm.describe_error(e)}"
                bm.release_memory(device)
        return self.models[key]

    def case_inputs(self, case: Case, point: Point, device: torch.device):
        key = (case.name, point)
        if key not in self.inputs:
            g = torch.Generator().manual_seed(self.args.seed)
            if case.kind == "forward":
                # random, not zeros: zeros would let kernels and caches look better than real data
                self.inputs[key] = torch.randn(point.batch, 3, *point.size, generator=g).to(device)
            else:
                h, w = point.size
                batch = []
                for _ in range(point.batch):
                    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
                    item = {"image": image.to(device), "height": h, "width": w}
                    if case.kind == "train":
                        count = 2 if self.args.smoke else case.instances_per_image
                        item["instances"] = synthetic_instances(h, w, count, g).to(device)
                    batch.append(item)
                self.inputs[key] = batch
        return self.inputs[key]

    def workload(self, case: Case, subject: Subject, point: Point, device):
        key = (case.name, subject.name, point)
        if key in self.workloads:
            return self.workloads[key]
        model = self.model(case, subject, point.size, device)
        if isinstance(model, str):
            return model
        try:
            inputs = self.case_inputs(case, point, device)
            if case.kind == "forward":
                workload = ForwardWorkload(model, inputs)
            elif case.kind == "detect":
                workload = DetectorWorkload(model, inputs)
            else:
                with torch.device(device):
                    optimizer = subject.optimizer(model, tuple(point.size), self.args.smoke)
                workload = DetectorWorkload(model, inputs, optimizer)
        except Exception as e:
            workload = f"setup failed: {bm.describe_error(e)}"
        self.workloads[key] = workload
        return workload

    def release(self, case: Case, subjects: list[str] | None = None) -> None:
        """Frees a case's models, workloads and inputs, or only the given subjects' models and workloads."""
        stores = (self.models, self.workloads) if subjects else (self.models, self.workloads, self.inputs)
        for store in stores:
            for key in [k for k in store if k[0] == case.name and (subjects is None or k[1] in subjects)]:
                del store[key]
        bm.release_memory(self.gpu)

    # ---- planning
    def plan(self) -> tuple[list[WorkItem], list[dict]]:
        """Work items in priority order, and the combinations not measured with the reason. Eager items
        come first (--dtypes order, then the cases), compiled ones after (--compile-dtypes order, then the
        --compile-cases order), so that a run cut by its time budget has the eager numbers of every case."""
        args = self.args

        def measured(case: Case, dtype: str) -> bool:
            return args.smoke or dtype in case.dtypes

        by_name = {c.name: c for c in self.cases}
        items = []
        for mode in args.compile:
            if mode == "off":
                order, dtypes = self.cases, args.dtypes
            else:
                order = [by_name[n] for n in args.compile_cases if n in by_name and by_name[n].compile]
                dtypes = args.compile_dtypes
            for dtype in dtypes:
                for case in order:
                    if measured(case, dtype):
                        points = case.smoke_points if args.smoke else case.points
                        items += [WorkItem(case, point, dtype, mode) for point in points]
        skipped = []
        for case in self.cases:
            for dtype in dict.fromkeys(args.dtypes + args.compile_dtypes):
                if not measured(case, dtype):
                    reason = f"{case.name} measures {', '.join(case.dtypes)} only"
                    skipped.append(self._skip(case, None, dtype, "*", reason))
            if any(m != "off" for m in args.compile):
                if not case.compile:
                    skipped.append(self._skip(case, None, "*", "on", "a plot sweep: measured eager only"))
                elif case.name not in args.compile_cases:
                    skipped.append(self._skip(case, None, "*", "on", "not in --compile-cases"))
        return items, skipped

    @staticmethod
    def _skip(case: Case, point: Point | None, dtype: str, mode: str, reason: str) -> dict:
        return {
            "case": case.name,
            "point": point.as_dict() if point else None,
            "dtype": dtype,
            "compile": mode,
            "status": "skipped",
            "reason": reason,
            "subjects": {},
        }

    # ---- measuring
    def measure(self, item: WorkItem) -> dict:
        case, point, dtype, mode = item.case, item.point, item.dtype, item.compile
        left, limit = self.remaining(case)
        if left <= 0:
            return self._skip(case, point, dtype, mode, f"{limit} was used up")
        if mode != "off" and not self.args.smoke:
            # a compile cannot be interrupted: start one only if it is likely to finish in time
            need = COMPILE_ESTIMATE_S[case.kind] * len(case.subjects)
            if left < need:
                reason = f"compiling {len(case.subjects)} models takes about {need} s; {left:.0f} s are left of {limit}"
                return self._skip(case, point, dtype, mode, reason)
        device = self.device_for(case)
        if device.type == "cpu" and not case.on_cpu and not self.args.smoke and not self.args.allow_cpu:
            reason = (
                "needs a CUDA GPU and none is visible; run with --smoke for the CPU check, "
                "or --allow-cpu to run the full sizes on the CPU"
            )
            return self._skip(case, point, dtype, mode, reason)
        t0 = time.monotonic()
        deadline = t0 + left
        threads = torch.get_num_threads()
        if case.threads and not self.args.smoke:
            torch.set_num_threads(case.threads)
        try:
            return self._measure(case, point, dtype, mode, device, deadline)
        finally:
            torch.set_num_threads(threads)
            self.case_spent[case.name] += time.monotonic() - t0

    def _measure(self, case, point, dtype, mode, device, deadline) -> dict:
        compile_mode = COMPILE_MODES[mode]
        result = {
            "case": case.name,
            "point": point.as_dict(),
            "dtype": dtype,
            "compile": mode,
            "status": "ok",
            "device": str(device),
            "subjects": {},
        }
        if device.type == "cuda" and dtype == "bf16" and not torch.cuda.is_bf16_supported():
            result.update(status="skipped", reason="this GPU has no bf16 support")
            return result
        ceiling = self.ceiling(device)
        subjects = result["subjects"]
        groups = [[s] for s in case.subjects] if case.isolate else [case.subjects]
        result["stopped_early"] = False
        for group in groups:
            stopped = self._measure_group(case, group, point, dtype, compile_mode, device, deadline, subjects, ceiling)
            result["stopped_early"] |= stopped
            if case.isolate:
                self.release(case, [s.name for s in group])
        return result

    def _measure_group(self, case, group, point, dtype, compile_mode, device, deadline, subjects, ceiling):
        calls = {}
        warmup = 1 if self.args.smoke else case.warmup
        for subject in group:
            entry = subjects[subject.name] = {"role": subject.role, "label": subject.label}
            workload = self.workload(case, subject, point, device)
            if isinstance(workload, str):
                entry.update(status="error", error=workload)
                continue
            try:
                fn = workload.step(dtype, compile_mode)
                flop_key, warmups = (case.name, subject.name, point), warmup
                if flop_key not in self.flops:
                    # the counter observes one eager call; for an eager item that is the first warm-up
                    counted = fn if compile_mode is None else workload.step(dtype, None)
                    self.flops[flop_key] = self._count_flops(counted)
                    warmups -= compile_mode is None
                flops = self.flops[flop_key]
                entry["flops" if isinstance(flops, int) else "flops_error"] = flops
                if compile_mode is not None:
                    t0 = time.monotonic()
                    fn()  # the first compiled call compiles
                    bm.synchronize(device)
                    entry["compile_s"] = time.monotonic() - t0
                    warmups -= 1
                for _ in range(warmups):
                    fn()
                if device.type == "cuda":
                    entry["peak_mem_bytes"] = workload.resident_bytes() + bm.peak_call_bytes(fn, device)
                calls[subject.name] = fn
            except Exception as e:
                stage = "compile or run" if compile_mode else "run"
                entry.update(status="error", error=f"{stage} failed: {bm.describe_error(e)}")
                bm.release_memory(device)
        repeats = 1 if self.args.smoke else max(1, round(case.repeats * self.args.repeat_scale))
        timed = bm.time_interleaved(
            calls, device, repeats, deadline=deadline, min_repeats=min(repeats, 1 if self.args.smoke else 3)
        )
        stopped_early = timed.stopped_early
        for name, fn in calls.items():
            entry = subjects[name]
            if name in timed.errors:
                entry.update(status="error", error=f"run failed: {timed.errors[name]}")
                continue
            stats = bm.summarize(timed.times_ms[name])
            entry.update(status="ok", **stats)
            entry["throughput"] = point.batch / (stats["median_ms"] * 1e-3)
            if "flops" in entry:
                entry["tflops"] = entry["flops"] / (stats["median_ms"] * 1e-3) / 1e12
                if isinstance(ceiling, dict):
                    entry["pct_of_ceiling"] = 100 * entry["tflops"] / ceiling["tflops"]
        return stopped_early

    @staticmethod
    def _count_flops(fn) -> int | str:
        try:
            return bm.count_flops(fn)
        except Exception as e:  # a failing call fails again, and is reported, in the warm-up
            return f"flop count failed: {bm.describe_error(e)}"

    def run(self, write: Callable[[], None]) -> None:
        items, skipped = self.plan()
        self.items.extend(skipped)
        last = {}
        for i, item in enumerate(items):
            last[item.case.name] = i
        for i, item in enumerate(items):
            label = (
                f"{item.case.name} {item.point.batch}x{'x'.join(map(str, item.point.size))} {item.dtype} "
                f"compile={item.compile}"
            )
            print(f"[benchmark {time.monotonic() - self.start:6.1f}s] {label}", flush=True)
            result = self.measure(item)
            self.items.append(result)
            print("    " + summary_line(result), flush=True)
            if last[item.case.name] == i:
                self.release(item.case)
            write()


def summary_line(result: dict) -> str:
    if result["status"] != "ok":
        return f"skipped: {result['reason']}"
    parts = []
    for name, s in result["subjects"].items():
        if s.get("status") == "ok":
            parts.append(f"{name} {s['median_ms']:.2f} ms")
        else:
            parts.append(f"{name} ERROR {s.get('error', '')[:120]}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------------------
# CLI


def _csv(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"{bad or text!r}: choose from {', '.join(choices)} (comma-separated)"
            )
        return values

    return parse


def parse_args(argv=None, names: list[str] | None = None):
    names = names or [c.name for c in default_cases()]
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--cases", type=_csv(names), default=names, help=f"comma-separated subset of: {', '.join(names)}"
    )
    p.add_argument(
        "--dtypes",
        type=_csv(ALL_DTYPES),
        default=None,
        help="autocast dtypes, in priority order (default fp32,bf16,fp16; smoke: fp32)",
    )
    p.add_argument(
        "--compile",
        type=_csv(list(COMPILE_MODES)),
        default=None,
        help="torch.compile modes: off, on (default mode), reduce-overhead (CUDA graphs) "
        "(default off,on; smoke: off)",
    )
    p.add_argument(
        "--compile-dtypes",
        type=_csv(ALL_DTYPES),
        default=None,
        help="dtypes measured with compile on (default: all of --dtypes); compiling costs time",
    )
    p.add_argument(
        "--compile-cases",
        type=_csv(names),
        default=None,
        help="cases measured with compile on (default: all that allow it), in --cases order",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="every case at a tiny size on the CPU, fp32, compile off, 1 repeat: checks the tool",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument("--tag", default=None, help="file name stem of the results (default: device and date)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=480.0,
        help="seconds for the whole run; work left when it is spent is recorded as skipped",
    )
    p.add_argument("--time-scale", type=float, default=1.0, help="multiplies every case's time limit")
    p.add_argument("--repeat-scale", type=float, default=1.0, help="multiplies every case's repeat count")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; smoke: 2)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 matmuls and convolutions")
    p.add_argument("--allow-cpu", action="store_true", help="run the GPU cases at full size on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    if args.dtypes is None:
        args.dtypes = ["fp32"] if args.smoke else list(ALL_DTYPES)
    if args.compile is None:
        args.compile = ["off"] if args.smoke else ["off", "on"]
    if args.compile_dtypes is None:
        args.compile_dtypes = list(args.dtypes)
    if args.compile_cases is None:
        args.compile_cases = list(args.cases)
    return args


def default_tag(args, device: torch.device) -> str:
    if args.smoke:
        return "smoke"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{slug}-{datetime.date.today().isoformat()}"


def main(argv=None, cases: list[Case] | None = None) -> dict:
    all_cases = cases if cases is not None else default_cases()
    args = parse_args(argv, [c.name for c in all_cases])
    if args.list:
        for c in all_cases:
            print(f"{c.name:24s} {c.title}  [{', '.join(s.name for s in c.subjects)}]")
        return {}
    selected = [c for c in all_cases if c.name in args.cases]
    # Smoke: one thread. On a shared 2-core machine, two spinning intra-op threads made small ops 10x slower.
    threads = args.threads or (1 if args.smoke else None)
    if threads:
        torch.set_num_threads(threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for key in ("recompile_limit", "cache_size_limit"):  # each case compiles several modules of one class
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 256)
    for key in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 4096)
    runner = Runner(args, selected)
    tag = args.tag or default_tag(args, runner.gpu)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "tag": tag,
        "command": (
            shlex.join([sys.executable] + sys.argv)
            if argv is None
            else shlex.join(["tools/benchmark.py", *argv])
        ),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": bm.environment(runner.gpu, PACKAGES),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "ceilings": runner.ceilings,
        "cases": [case_summary(c, args.smoke) for c in selected],
        "results": runner.items,
    }

    def write():
        report["elapsed_s"] = round(time.monotonic() - runner.start, 1)
        bm.write_report(report, args.out, tag)

    print(
        f"[benchmark] {len(selected)} cases on {runner.gpu}; writing {args.out}/{tag}.{{json,md,png}}",
        flush=True,
    )
    write()
    try:
        runner.run(write)
    except KeyboardInterrupt:  # gpu_run.sh's hard stop: keep what was measured, say that the run was cut
        report["interrupted"] = "stopped by SIGINT / Ctrl-C; every item measured before it is complete"
        write()
        print(f"[benchmark] interrupted after {report['elapsed_s']} s: {args.out / tag}.md", flush=True)
        raise SystemExit(130)
    write()
    print(f"[benchmark] done in {report['elapsed_s']} s: {args.out / tag}.md", flush=True)
    return report


def case_summary(case: Case, smoke: bool) -> dict:
    return {
        "name": case.name,
        "title": case.title,
        "kind": case.kind,
        "unit": case.unit,
        "plot": case.plot,
        "notes": case.notes,
        "device": "cpu" if case.on_cpu else "gpu",
        "threads": case.threads,
        "subjects": [{"name": s.name, "role": s.role, "label": s.label} for s in case.subjects],
        "comparisons": [vars(c) for c in case.comparisons],
        "points": [p.as_dict() for p in (case.smoke_points if smoke else case.points)],
    }


if __name__ == "__main__":
    main()
