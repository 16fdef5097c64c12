"""Mixup / CutMix for clip batches, with soft targets (the Hiera / MAE-ST video fine-tuning recipe)."""

from __future__ import annotations

import math

import torch


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Label-smoothed one-hot targets: ``1 - smoothing + smoothing / K`` on the label, ``smoothing / K`` off."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * logits.log_softmax(dim=-1), dim=-1).mean()


class ClipMixup:
    """Mixes each clip with the batch's reversed order (as timm's batch mode does).

    Per batch: with probability ``prob`` mix at all; then CutMix with probability ``switch_prob`` when both
    alphas are positive (else whichever is positive). CutMix pastes the same box into every frame, so the
    pasted region moves as the source clip does; its weight is the box's true area after clipping.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0, switch_prob: float = 0.5):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup/cutmix alphas must be >= 0, got {mixup_alpha} / {cutmix_alpha}")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _use_cutmix(self) -> bool:
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return bool(torch.rand(()) < self.switch_prob)
        return self.cutmix_alpha > 0

    def __call__(self, clips: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``clips`` ``[B, C, T, H, W]`` and soft ``targets`` ``[B, K]`` -> mixed copies of both."""
        if not self.enabled or torch.rand(()) >= self.prob:
            return clips, targets
        partner = clips.flip(0)
        if self._use_cutmix():
            lam = float(torch.distributions.Beta(self.cutmix_alpha, self.cutmix_alpha).sample())
            H, W = clips.shape[-2:]
            cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
            cy, cx = int(torch.randint(H, ())), int(torch.randint(W, ()))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
            clips = clips.clone()
            clips[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)
        else:
            lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
            clips = clips * lam + partner * (1.0 - lam)
        return clips, targets * lam + targets.flip(0) * (1.0 - lam)
