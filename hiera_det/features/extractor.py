"""``FeatureExtractor``: images or clips in, Hiera stage maps (and, on request, embeddings and top-k) out."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from hiera_det.checkpoint import load_checkpoint
from hiera_det.modeling import Hiera, build_hiera

from .classnames import class_names as named_class_list
from .classnames import default_class_list
from .preprocessing import (
    ClipPreprocessing,
    ImagePreprocessing,
    InputError,
    preprocess_clip,
    preprocess_image,
)

logger = logging.getLogger(__name__)

# transformers' HieraBackbone builds its per-stage norms as nn.LayerNorm(channels): the default eps.
BACKBONE_NORM_EPS = 1e-5
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")


def is_video_path(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


@dataclass(frozen=True)
class Prediction:
    """One of the top-k classes of one input."""

    index: int
    name: str
    probability: float


def _read_backbone_norms(weights, stages: Sequence[str], channels: dict[str, int]) -> nn.ModuleDict:
    from hiera_det.checkpoint.reading import read_checkpoint

    raw = read_checkpoint(weights).obj
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else {}
    norms = nn.ModuleDict()
    missing = []
    for stage in stages:
        prefix = f"hidden_states_norms.{stage}."
        weight, bias = state.get(prefix + "weight"), state.get(prefix + "bias")
        if weight is None or bias is None:
            missing.append(stage)
            continue
        norm = nn.LayerNorm(channels[stage], eps=BACKBONE_NORM_EPS)
        with torch.no_grad():
            norm.weight.copy_(weight)
            norm.bias.copy_(bias)
        norms[stage] = norm
    if missing:
        found = sorted({k.split(".")[1] for k in state if k.startswith("hidden_states_norms.")})
        raise ValueError(
            f"stage_norms=True applies the per-stage LayerNorms of a Hugging Face HieraBackbone checkpoint, "
            f"but {weights} has none for {missing} (it has them for {found or 'no stage'}); load a "
            f"HieraBackbone save_pretrained folder whose out_features include them, or drop stage_norms"
        )
    return norms


class FeatureExtractor:
    """Hiera features with the Hugging Face processor's preprocessing, from one call.

    ``FeatureExtractor("hiera_base_plus_224", weights="hiera_base_plus_224.pth")(images)`` returns
    ``{"stage1": [B, C1, H/4, W/4], ..., "stage4": [B, C4, H/32, W/32]}`` in true spatial order (the
    unrolled token layout is undone), plus ``"pooled"`` (``pooled=True``: the final LayerNorm of the mean
    token, Hugging Face's ``pooler_output``) and ``"logits"`` / ``"top_k"`` (``top_k > 0``).

    Args:
        model: an architecture name (``hiera_*_224`` for images, ``hiera_*_16x224`` for clips) or a built
            ``Hiera``.
        weights: any checkpoint ``hiera_det.checkpoint.load_checkpoint`` reads (official, Hugging Face folder
            or file, timm, SAM2, hiera_det); ``None`` keeps the random initialisation (tests only).
        out_features: the stages to return, default all four.
        pooled: also return the pooled embedding.
        top_k: also return the classifier's logits and its ``top_k`` classes per input (the checkpoint
            must hold a classification head).
        class_names: names for the head's classes; default ImageNet-1k (1000-way image heads) or
            Kinetics-400 (400-way video heads), see ``hiera_det.features.classnames``.
        stage_norms: apply the per-stage LayerNorms stored in a Hugging Face ``HieraBackbone`` checkpoint
            (``hidden_states_norms``) to the correct stage maps.
        device: "cuda", "cpu", ... (default: CUDA when available).
        bf16: run under bfloat16 autocast; outputs are then bfloat16.
        bf16_weights: hold the weights in bfloat16 and feed it bfloat16 pixels, without autocast: faster than
            ``bf16`` (no per-call weight casts; 16-bit LayerNorm outputs), slightly further from fp32.
        cuda_graphs: compile the trunk and replay it from CUDA graphs (``hiera_det.inference.CudaGraphRunner``),
            one per batch shape (a shorter batch reuses a larger batch's graph, zero-padded): the least host
            time per batch, for long runs at a fixed batch size on CUDA. The first batch of each shape
            compiles (tens of seconds).
        crop_size: image crop (default the model's input size, 224), resized from ``256/224 * crop``.
        num_frames, sampling_rate: clip length and frame step for video paths (default: the model's
            ``T`` and 4, the official 16x4).
        **overrides: ``build_hiera`` overrides when ``model`` is a name (e.g. ``input_size``, ``stages``).
    """

    def __init__(
        self,
        model: str | Hiera = "hiera_base_plus_224",
        weights: str | os.PathLike | None = None,
        out_features: Sequence[str] | None = None,
        *,
        pooled: bool = False,
        top_k: int = 0,
        class_names: Sequence[str] | str | None = None,
        stage_norms: bool = False,
        device: str | torch.device | None = None,
        bf16: bool = False,
        bf16_weights: bool = False,
        cuda_graphs: bool = False,
        crop_size: int | None = None,
        num_frames: int | None = None,
        sampling_rate: int = 4,
        **overrides,
    ):
        if isinstance(model, Hiera):
            if overrides:
                raise ValueError(f"build overrides {sorted(overrides)} apply to a model name, not a built Hiera")
            trunk = model
        else:
            trunk = build_hiera(model, **overrides)
        self.trunk = trunk.eval()
        self.video = trunk.ndim == 3
        self.load_report = None
        if weights is not None:
            self.load_report = load_checkpoint(trunk, weights)
            logger.info("%s", self.load_report)
        else:
            logger.warning("FeatureExtractor(%s) has no weights: its features come from random initialisation",
                           trunk.name)

        stages = trunk.out_features
        self.out_features = list(out_features or stages)
        unknown = [f for f in self.out_features if f not in stages]
        if unknown or not self.out_features:
            raise ValueError(f"out_features {self.out_features} must be a non-empty subset of {stages}")
        if stage_norms and weights is None:
            raise ValueError("stage_norms=True reads the norms from a HieraBackbone checkpoint: pass weights")
        channels = dict(zip(stages, trunk.stage_dims))
        self.stage_norms = _read_backbone_norms(weights, self.out_features, channels) if stage_norms else None

        self.pooled = pooled
        self.top_k = int(top_k)
        self.class_names = self._class_names(class_names) if self.top_k > 0 else None

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs replays CUDA graphs, but the device is {self.device}; leave it off")
        if bf16 and bf16_weights:
            raise ValueError("bf16 (autocast) and bf16_weights are two ways to run in bfloat16: choose one")
        self.bf16 = bf16
        self.bf16_weights = bf16_weights
        self.dtype = torch.bfloat16 if bf16_weights else torch.float32
        self.trunk.to(self.device, self.dtype)
        if self.stage_norms is not None:
            self.stage_norms.to(self.device, self.dtype)
        self.cuda_graphs = cuda_graphs
        self._runner = None

        side = crop_size or trunk.input_size[-1]
        if side % trunk.size_multiple[-1]:
            raise ValueError(f"crop_size {side} must be a multiple of {trunk.size_multiple[-1]} for {trunk.name}")
        self.image_preprocessing = ImagePreprocessing().for_crop(side)
        self.clip_preprocessing = ClipPreprocessing(crop_size=side)
        self.num_frames = num_frames or (trunk.input_size[0] if self.video else 1)
        self.sampling_rate = sampling_rate

    # ----------------------------------------------------------------------------------------- set-up
    def _class_names(self, given) -> list[str]:
        head = self.trunk.head
        if head is None:
            raise ValueError(f"top_k needs a classifier, but {self.trunk.name} was built with num_classes=0")
        missing_head = self.load_report is not None and any(
            k.startswith("head.") for k in self.load_report.missing_keys
        )
        if missing_head:
            raise ValueError(
                f"top_k needs a trained classification head, but the checkpoint {self.load_report.source} has "
                f"none (it is a features-only or MAE checkpoint); use an ImageNet-1k / Kinetics-400 "
                f"fine-tuned checkpoint, or top_k=0"
            )
        num_classes = self.trunk.num_classes
        if given is None:
            given = default_class_list(num_classes, self.video)
            if given is None:
                return [str(i) for i in range(num_classes)]
        names = list(named_class_list(given)) if isinstance(given, str) else list(given)
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for a {num_classes}-way head; give one name per class")
        return names

    # ------------------------------------------------------------------------------------ preprocess
    def preprocess(self, inputs) -> torch.Tensor:
        """Inputs (one, or a list) -> the normalised batch the trunk takes, on the CPU.

        Images: PIL images, uint8 arrays ``[H, W(, 3|4)]`` or image paths. Clips: uint8 arrays
        ``[T, H, W, 3]``, lists of frames, or video paths (the clip in the middle of the video; use
        ``extract_video`` for all clips).
        """
        items = inputs if isinstance(inputs, list) else [inputs]
        if not items:
            raise InputError("no inputs: pass an image or clip, or a non-empty list of them")
        return torch.stack([self.preprocess_one(x, f"input {i}") for i, x in enumerate(items)])

    def preprocess_one(self, item, what: str = "input") -> torch.Tensor:
        if not self.video:
            if is_video_path(item):
                raise InputError(f"{what} ({item}) is a video, but {self.trunk.name} is an image model; use a "
                                 f"*_16x224 video model, or extract frames first")
            return preprocess_image(item, self.image_preprocessing, what)
        if isinstance(item, (str, os.PathLike)):
            from .inputs import plan_video_clips, read_clip_frames

            clips = plan_video_clips(item, self.num_frames, self.sampling_rate)
            item = read_clip_frames(item, clips[len(clips) // 2])
        clip = preprocess_clip(item, self.clip_preprocessing, what)
        if clip.shape[1] != self.num_frames:
            raise InputError(f"{what} has {clip.shape[1]} frames; {self.trunk.name} takes clips of "
                             f"{self.num_frames} frames (num_frames)")
        return clip

    # --------------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def forward_pixels(self, pixel_values: torch.Tensor) -> dict:
        """Already normalised pixels (e.g. a Hugging Face processor's ``pixel_values``) -> outputs."""
        x = pixel_values.to(self.device, self.dtype, non_blocking=True)
        want_logits = self.top_k > 0
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            stages = self._trunk(want_logits)(x)
            # a CUDA graph's outputs are overwritten by its next replay: copy them (contiguous() may not)
            own = (lambda t: t.clone(memory_format=torch.contiguous_format)) if self.cuda_graphs else None
            out = {}
            for name in self.out_features:
                grid = stages[name]
                if self.stage_norms is not None:
                    grid = self.stage_norms[name](grid.movedim(1, -1)).movedim(-1, 1)
                out[name] = own(grid) if own else grid.contiguous()
            if self.pooled:
                last = stages[self.trunk.out_features[-1]]
                out["pooled"] = self.trunk.norm(last.flatten(2).mean(dim=2))
        if want_logits:
            out["logits"] = own(stages["logits"]) if own else stages["logits"]
            out["top_k"] = self.top_classes(out["logits"])
        return out

    def _trunk(self, want_logits: bool):
        if not self.cuda_graphs:
            return lambda x: self.trunk(x, return_logits=want_logits)
        if self._runner is None:
            from hiera_det.inference import CudaGraphRunner

            self._runner = CudaGraphRunner(_TrunkCall(self.trunk, want_logits).eval())
        return self._runner

    def __call__(self, inputs) -> dict:
        """Inputs (see ``preprocess``) -> ``{stage: [B, C, ...], "pooled"?, "logits"?, "top_k"?}``."""
        return self.forward_pixels(self.preprocess(inputs))

    def top_classes(self, logits: torch.Tensor) -> list[list[Prediction]]:
        probs = logits.float().softmax(dim=-1)
        values, indices = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)
        return [
            [Prediction(int(i), self.class_names[int(i)], float(p)) for p, i in zip(row_p, row_i)]
            for row_p, row_i in zip(values.cpu(), indices.cpu())
        ]

    def extract_video(self, path, stride: int | None = None, batch_size: int = 8) -> tuple[list, dict]:
        """Every clip of a video: ``(clips, outputs)`` where ``clips[i]`` (a ``ClipSpec``: frames and start /
        end times) is row ``i`` of each output. ``stride``: frames between clip starts (default: the clip's
        span, so clips tile the video)."""
        from .inputs import plan_video_clips, read_clip_frames

        if not self.video:
            raise InputError(f"{self.trunk.name} is an image model; extract_video needs a *_16x224 model")
        clips = plan_video_clips(path, self.num_frames, self.sampling_rate, stride)
        parts = []
        for begin in range(0, len(clips), batch_size):
            batch = [read_clip_frames(path, c) for c in clips[begin : begin + batch_size]]
            parts.append(self(batch))
        return clips, merge_outputs(parts)


def merge_outputs(parts: list[dict]) -> dict:
    """Concatenate the outputs of several batches along the batch dimension."""
    merged = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        merged[key] = sum(values, []) if isinstance(values[0], list) else torch.cat(values)
    return merged


class _TrunkCall(nn.Module):
    """``trunk(x, return_logits=...)`` as a one-argument module, the form ``CudaGraphRunner`` takes."""

    def __init__(self, trunk: Hiera, return_logits: bool):
        super().__init__()
        self.trunk = trunk
        self.return_logits = return_logits

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.trunk(x, return_logits=self.return_logits)
