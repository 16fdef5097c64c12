"""The benchmark cases: what each one measures (subjects, input sizes, dtypes, limits), its comparisons with
their targets from the performance issue, and the random inputs it is fed."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmarks.harness import ALL_DTYPES
from benchmarks.peers import (
    HF,
    OFFICIAL,
    OURS,
    OURS_MU,
    OURS_MU_FPN,
    OURS_WIN,
    OURS_WIN_FPN,
    TIMM,
    VITDET,
    Subject,
    official_trunk,
    ours_detector,
    ours_fpn,
    ours_optimizer,
    ours_trunk,
    vitdet_detector,
    vitdet_optimizer,
)


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

    def inputs(self, point: Point, device: torch.device, seed: int, smoke: bool):
        """The random inputs of one point: an image batch for a feature extractor, a list of Detectron2
        input dicts for a detector (with synthetic instances for training)."""
        g = torch.Generator().manual_seed(seed)
        if self.kind == "forward":
            # random, not zeros: zeros would let kernels and caches look better than real data
            return torch.randn(point.batch, 3, *point.size, generator=g).to(device)
        h, w = point.size
        batch = []
        for _ in range(point.batch):
            image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
            item = {"image": image.to(device), "height": h, "width": w}
            if self.kind == "train":
                count = 2 if smoke else self.instances_per_image
                item["instances"] = synthetic_instances(h, w, count, g).to(device)
            batch.append(item)
        return batch

    def summary(self, smoke: bool) -> dict:
        """What the report records about the case."""
        return {
            "name": self.name,
            "title": self.title,
            "kind": self.kind,
            "unit": self.unit,
            "plot": self.plot,
            "notes": self.notes,
            "device": "cpu" if self.on_cpu else "gpu",
            "threads": self.threads,
            "subjects": [{"name": s.name, "role": s.role, "label": s.label} for s in self.subjects],
            "comparisons": [vars(c) for c in self.comparisons],
            "points": [p.as_dict() for p in (self.smoke_points if smoke else self.points)],
        }


# Same math as the official implementation and timm: ours must not be slower nor use more memory. The
# official Hiera-B and timm also pool, norm and classify; that is under 0.1% of the FLOPs.
SAME_MODEL = dict(min_speedup=1.0, max_memory_ratio=1.0)
# The performance issue's targets on one H100 (bf16 autocast; the issue compares the best of compile on and
# off for both sides, so read the compiled and eager rows together).
TARGET_224 = dict(min_throughput=12000.0, max_memory_ratio=1.0)  # about 1.65x the fastest peer
TARGET_FPN_1024 = dict(min_speedup=2.0)  # against the fastest of timm and ViTDet-B
TARGET_VIDEO = dict(min_throughput=1000.0, min_speedup=2.3)  # 2.3x the official compiled
# issue 16: one 1024 image in at most 40 ms, or at least 2.5x ViTDet-B in the same run
TARGET_INFER = dict(min_speedup=2.5)
TARGET_TRAIN = dict(min_speedup=1.5, max_memory_ratio=1.0)  # and lower peak memory than ViTDet-B
# The plot sweeps: many points, each short, eager bf16 only.
SWEEP = dict(dtypes=("bf16",), compile=False, warmup=3, repeats=15, time_limit_s=45)


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
                Subject(
                    "ours_d2_heads",
                    "ours",
                    "hiera_det Mask R-CNN Hiera-B + FPN with Detectron2's StandardROIHeads (before issue 16)",
                    ours_detector(roi_heads="StandardROIHeads"),
                ),
                Subject("vitdet_b", "peer", "detectron2 ViTDet-B Mask R-CNN (LazyConfig)", vitdet_detector),
            ],
            [Point(1, (1024, 1024))],
            [Point(1, (64, 64))],
            [
                Comparison("ours", "vitdet_b", **TARGET_INFER),
                Comparison("ours_window", "vitdet_b"),
                Comparison("ours_d2_heads", "vitdet_b"),
            ],
            repeats=20,
            time_limit_s=200,
            notes="Random weights with the score threshold at 0, so each image keeps 100 detections and the "
            "mask head runs on all of them. Latency per image, pre- and post-processing included; "
            "compile on = backbone compiled. `ours` and `ours_window` run the packaged configs' HieraROIHeads "
            "(top-k batched NMS, masks pasted by matrix products); `ours_d2_heads` is the same model with "
            "Detectron2's StandardROIHeads.",
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
            plot="batch",
            **SWEEP,
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
            plot="resolution",
            **SWEEP,
        ),
    ]


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
