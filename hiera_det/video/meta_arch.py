"""Video meta-architectures: a Kinetics-style clip classifier and a clip-to-keyframe R-CNN detector."""

from __future__ import annotations

import torch
import torch.nn as nn
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList

from ..config import keyframe_position
from ..detection.trunk import build_trunk, freeze_trunk
from ..modeling import Hiera
from .mixup import ClipMixup, smooth_one_hot, soft_target_cross_entropy


def _check_clips(clips: list[torch.Tensor], num_frames: int, key: str) -> None:
    for i, clip in enumerate(clips):
        if clip.dim() != 4 or clip.shape[0] != 3:
            raise ValueError(
                f'batched_inputs[{i}]["{key}"] must be a clip [3, T, H, W], got shape {tuple(clip.shape)}; '
                f"use VideoClassificationMapper / KeyframeClipMapper (hiera_det.data.video_mapper)"
            )
        if clip.shape[1] != num_frames:
            raise ValueError(
                f'batched_inputs[{i}]["{key}"] has {clip.shape[1]} frames but the model was configured for '
                f"MODEL.HIERA_VIDEO.NUM_FRAMES={num_frames}"
            )


@META_ARCH_REGISTRY.register()
class HieraVideoClassifier(nn.Module):
    """Video Hiera + mean-pooled final norm + linear head (the trunk's own ``norm`` / ``head``).

    Inputs: dicts with ``"clip"`` (``[3, T, H, W]``, 0-255, channels in ``INPUT.FORMAT``) and, in training,
    ``"label"``.
    Training returns ``{"loss_cls"}`` (soft-target cross-entropy after label smoothing and mixup/cutmix);
    evaluation returns one ``{"scores": softmax [K]}`` per input.
    """

    @configurable
    def __init__(
        self,
        *,
        trunk: Hiera,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        label_smoothing: float = 0.0,
        mixup: ClipMixup | None = None,
    ):
        super().__init__()
        if trunk.head is None:
            raise ValueError("HieraVideoClassifier needs a trunk built with num_classes > 0")
        self.trunk = trunk
        self.num_classes = trunk.num_classes
        self.label_smoothing = label_smoothing
        self.mixup = mixup
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.HIERA_VIDEO
        trunk = build_trunk(cfg, num_classes=m.NUM_CLASSES)
        freeze_trunk(trunk, cfg.MODEL.HIERA.FREEZE_AT)
        return {
            "trunk": trunk,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "label_smoothing": m.LABEL_SMOOTHING,
            "mixup": ClipMixup(m.MIXUP_ALPHA, m.CUTMIX_ALPHA, m.MIXUP_PROB, m.MIXUP_SWITCH_PROB),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: list[dict]) -> torch.Tensor:
        clips = [x["clip"] for x in batched_inputs]
        _check_clips(clips, self.trunk.input_size[0], "clip")
        if len({tuple(c.shape) for c in clips}) > 1:
            raise ValueError(
                f"clips in a batch must share one size, got {sorted({tuple(c.shape) for c in clips})}; "
                f"the video mappers crop to INPUT.VIDEO.TRAIN_CROP_SIZE / TEST_CROP_SIZE"
            )
        # each clip goes over as it came (uint8, pinned by the training loader) and the batch is stacked and
        # normalised on the device: stacking on the host first would copy the batch once more there, into
        # pageable memory, whose transfer then blocks the host
        x = torch.stack([c.to(self.device, non_blocking=True) for c in clips]).float()
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, batched_inputs: list[dict]):
        clips = self.preprocess(batched_inputs)
        if not self.training:
            probs = self.trunk(clips, return_logits=True)["logits"].float().softmax(dim=-1)
            return [{"scores": p} for p in probs]
        labels = [int(x["label"]) for x in batched_inputs]
        if min(labels) < 0 or max(labels) >= self.num_classes:  # checked on the host: no wait for the device
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}) (MODEL.HIERA_VIDEO.NUM_CLASSES), got "
                f"{labels}; set NUM_CLASSES to the dataset's class count"
            )
        labels = torch.tensor(labels).to(self.device, non_blocking=True)
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if self.mixup is not None:
            clips, targets = self.mixup(clips, targets)
        logits = self.trunk(clips, return_logits=True)["logits"]
        return {"loss_cls": soft_target_cross_entropy(logits.float(), targets)}


@META_ARCH_REGISTRY.register()
class HieraClipDetector(GeneralizedRCNN):
    """R-CNN on clips, detecting on the keyframe.

    Each input's ``"image"`` is a clip ``[3, T, H, W]`` (the keyframe at ``MODEL.HIERA_VIDEO.KEYFRAME``,
    center by default), ``"instances"`` the keyframe's boxes. The backbone (``build_hiera_video_fpn_backbone``)
    pools time away, so RPN and ROI heads are Detectron2's own; outputs are keyframe ``Instances`` scaled to
    ``height`` / ``width`` like GeneralizedRCNN's.
    """

    @configurable
    def __init__(self, *, num_frames: int, keyframe: int, **kwargs):
        super().__init__(**kwargs)
        self.num_frames = num_frames
        self.keyframe = keyframe

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret.update(num_frames=cfg.MODEL.HIERA_VIDEO.NUM_FRAMES, keyframe=keyframe_position(cfg))
        return ret

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalize and pad clips to a common, divisible frame size: ``ImageList`` pads the last two dims,
        so ``tensor`` is ``[B, 3, T, H, W]`` and ``image_sizes`` the frames' ``(H, W)``."""
        clips = [self._move_to_current_device(x["image"]) for x in batched_inputs]
        _check_clips(clips, self.num_frames, "image")
        for i, x in enumerate(batched_inputs):
            if "keyframe_index" in x and int(x["keyframe_index"]) != self.keyframe:
                raise ValueError(
                    f"batched_inputs[{i}] has its keyframe at frame {x['keyframe_index']} but the model pools "
                    f"features for frame {self.keyframe} (MODEL.HIERA_VIDEO.KEYFRAME); sample clips centered "
                    f"on the keyframe or set KEYFRAME to match"
                )
        mean, std = self.pixel_mean[..., None], self.pixel_std[..., None]
        clips = [(x - mean) / std for x in clips]
        return ImageList.from_tensors(
            clips, self.backbone.size_divisibility, padding_constraints=self.backbone.padding_constraints
        )

    def visualize_training(self, batched_inputs, proposals):
        # GeneralizedRCNN draws on a [C, H, W] image: show the keyframe the boxes belong to
        keyframes = [dict(x, image=x["image"][:, self.keyframe]) for x in batched_inputs]
        super().visualize_training(keyframes, proposals)
