"""Checking an exported file against eager PyTorch on real photographs (or clips panned across them).

Tolerances (fp32 on CPU):

* feature maps, logits, probabilities: ``max |export - eager| <= 1e-3 + 1e-3 * max |eager|`` per output;
* detections: every eager detection is matched to an exported one of the same class (greedy, by box IoU
  >= 0.5, highest score first); matched boxes agree within 0.5 pixel and scores within 1e-3; masks, pasted
  into the image and cut at 0.5 as Detectron2 does, overlap with IoU >= 0.9 each. Detections within 1e-3
  of the score threshold may be missing on either side (the threshold decides them on rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FEATURE_ATOL = 1e-3
FEATURE_RTOL = 1e-3
BOX_TOLERANCE = 0.5
SCORE_TOLERANCE = 1e-3
MASK_IOU_MIN = 0.9


@dataclass
class CheckResult:
    """One input's comparison: one line per output, and whether all were within tolerance."""

    label: str
    lines: list[str] = field(default_factory=list)
    ok: bool = True
    numbers: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        head = f"{self.label}: {'OK' if self.ok else 'FAILED'}"
        return "\n".join([head] + [f"  {line}" for line in self.lines])


def compare_outputs(label: str, names: list[str], eager: list[torch.Tensor], exported: list[torch.Tensor]):
    """Feature-like outputs: max absolute difference per output against its tolerance."""
    result = CheckResult(label)
    for name, ref, out in zip(names, eager, exported):
        if tuple(ref.shape) != tuple(out.shape):
            result.ok = False
            result.lines.append(f"{name}: shape {tuple(out.shape)} but eager gives {tuple(ref.shape)}")
            continue
        ref, out = ref.float(), out.float()
        scale = ref.abs().max().item() if ref.numel() else 0.0
        diff = (out - ref).abs().max().item() if ref.numel() else 0.0
        limit = FEATURE_ATOL + FEATURE_RTOL * scale
        result.numbers[name] = diff
        result.ok &= diff <= limit
        result.lines.append(f"{name} {list(ref.shape)}: max |diff| {diff:.2e} (max |eager| {scale:.3g}, "
                            f"limit {limit:.1e})")
    return result


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou

    return box_iou(a, b)


def _paste(masks: torch.Tensor, boxes: torch.Tensor, image_size) -> torch.Tensor:
    from detectron2.layers import paste_masks_in_image

    return paste_masks_in_image(masks[:, 0], boxes, image_size, threshold=0.5)


def compare_detections(
    label: str, names: list[str], eager: list[torch.Tensor], exported: list[torch.Tensor],
    image_size: tuple[int, int], score_threshold: float,
) -> CheckResult:
    """Mask R-CNN outputs (boxes, classes, masks, scores): match, then compare boxes, scores and masks."""
    ref = dict(zip(names, eager))
    out = dict(zip(names, exported))
    result = CheckResult(label)
    n_ref, n_out = len(ref["scores"]), len(out["scores"])
    iou = _box_iou(ref["boxes"].float(), out["boxes"].float()) if n_ref and n_out else torch.zeros(n_ref, n_out)
    same_class = ref["classes"][:, None] == out["classes"][None, :]
    candidates = torch.where(same_class & (iou >= 0.5), iou, torch.full_like(iou, -1.0))
    pairs, taken = [], set()
    for i in ref["scores"].argsort(descending=True).tolist():
        if not n_out:
            break
        order = candidates[i].argsort(descending=True).tolist()
        j = next((j for j in order if candidates[i, j] >= 0 and j not in taken), None)
        if j is not None:
            taken.add(j)
            pairs.append((i, j))
    borderline = score_threshold + SCORE_TOLERANCE
    missing = [i for i in range(n_ref) if i not in {p[0] for p in pairs} and ref["scores"][i] > borderline]
    extra = [j for j in range(n_out) if j not in taken and out["scores"][j] > borderline]
    result.lines.append(f"detections: eager {n_ref}, export {n_out}, matched {len(pairs)}, unmatched above the "
                        f"threshold {len(missing)} eager / {len(extra)} export")
    result.ok = not missing and not extra
    if pairs:
        i_ref = torch.tensor([p[0] for p in pairs])
        i_out = torch.tensor([p[1] for p in pairs])
        box_diff = (ref["boxes"][i_ref].float() - out["boxes"][i_out].float()).abs().max().item()
        score_diff = (ref["scores"][i_ref].float() - out["scores"][i_out].float()).abs().max().item()
        masks_ref = _paste(ref["masks"][i_ref].float(), ref["boxes"][i_ref].float(), image_size)
        masks_out = _paste(out["masks"][i_out].float(), out["boxes"][i_out].float(), image_size)
        inter = (masks_ref & masks_out).flatten(1).sum(1).float()
        union = (masks_ref | masks_out).flatten(1).sum(1).float()
        mask_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        result.numbers.update(box=box_diff, score=score_diff, mask_iou_min=mask_iou.min().item())
        result.ok &= box_diff <= BOX_TOLERANCE and score_diff <= SCORE_TOLERANCE
        result.ok &= mask_iou.min().item() >= MASK_IOU_MIN
        result.lines.append(f"boxes max |diff| {box_diff:.2e} px (limit {BOX_TOLERANCE}), scores max |diff| "
                            f"{score_diff:.2e} (limit {SCORE_TOLERANCE}), classes equal on all matches")
        result.lines.append(f"masks IoU min {mask_iou.min().item():.4f} mean {mask_iou.mean().item():.4f} "
                            f"(limit {MASK_IOU_MIN})")
    elif not n_ref:
        result.lines.append(f"no eager detection above MODEL.ROI_HEADS.SCORE_THRESH_TEST={score_threshold}: "
                            f"boxes and masks were not compared; lower the threshold to compare more")
    return result
