"""Turning images and clips into the normalised tensors Hiera was trained on.

Images follow the Hugging Face image processor of the Hiera checkpoints (``facebook/hiera-*-224-hf``),
step for step and with the same operations, so that ``preprocess_image`` and ``AutoImageProcessor`` give the
same ``pixel_values``. Where the numbers come from:

* transformers ``models/hiera/convert_hiera_to_hf.py`` wrote every hub ``preprocessor_config.json`` as
  ``BitImageProcessor(image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD,
  size={"shortest_edge": 256})`` and checked it against the official transform (Resize(256, bicubic),
  CenterCrop(224), ToTensor, Normalize), which is also the official ``examples/inference.ipynb`` one;
* the other values are ``BitImageProcessor``'s class defaults (transformers 5.23,
  ``models/bit/image_processing_bit.py``): bicubic resampling, a 224 x 224 centre crop, rescale by 1/255,
  RGB conversion. In transformers 5 that class runs on torchvision: ``resize`` is
  ``torchvision.transforms.v2.functional.resize(uint8, antialias=True)``, the shorter side becomes 256 and
  the longer ``int(256 * long / short)``, the crop starts at ``int((size - 224) / 2)``, and rescale and
  normalise are fused as ``(x - mean * 255) / (std * 255)`` in float32.

Clips follow hiera_det's own video evaluation pipeline (``VideoClassificationMapper`` at test time, one
centre view): the shorter side is scaled bilinearly to the crop size, the centre square is cut, and the
ImageNet statistics of ``configs/video/Base-HieraVideoClassifier.yaml`` normalise it. No Hugging Face video
processor exists for Hiera.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

# ImageNet statistics (timm's IMAGENET_DEFAULT_MEAN / STD), the values the hub processors store.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESCALE_FACTOR = 1 / 255


@dataclass(frozen=True)
class ImagePreprocessing:
    """The Hugging Face Hiera image processor's settings (see the module docstring for their source)."""

    resize_shortest_edge: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def for_crop(self, crop_size: int) -> "ImagePreprocessing":
        """The same recipe at another crop size, keeping the hub's 256/224 resize-to-crop ratio."""
        return ImagePreprocessing(int(256 / 224 * crop_size), crop_size, self.mean, self.std)


@dataclass(frozen=True)
class ClipPreprocessing:
    """hiera_det's single-view video test transform: short side to ``crop_size``, centre crop, normalise."""

    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class InputError(ValueError):
    """An input the extractor cannot turn into pixels; the message says which one and what to do."""


def _rgb_from_pil(image: Image.Image) -> np.ndarray:
    # transformers' convert_to_rgb for PIL inputs: transparency is composited onto white.
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def image_to_rgb_uint8(image, what: str = "input") -> np.ndarray:
    """A PIL image, an ``[H, W]`` / ``[H, W, 3]`` / ``[H, W, 4]`` uint8 array or an image file -> uint8 RGB
    ``[H, W, 3]``."""
    if isinstance(image, (str, os.PathLike)):
        from hiera_det.data.image_io import read_image

        # EXIF rotation applied and alpha dropped, as transformers' load_image (exif_transpose, convert("RGB"))
        return read_image(os.fspath(image), format="RGB")
    if isinstance(image, Image.Image):
        return _rgb_from_pil(image)
    if isinstance(image, torch.Tensor):
        image = image.cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputError(
                f"{what}: arrays must be uint8 RGB pixels (0-255), got dtype {image.dtype}; convert with "
                f"(x * 255).round().astype(np.uint8) if they are floats in [0, 1]"
            )
        if image.ndim == 2:
            return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
        if image.ndim == 3 and image.shape[2] == 3:
            return np.ascontiguousarray(image)
        if image.ndim == 3 and image.shape[2] == 4:
            return _rgb_from_pil(Image.fromarray(image, mode="RGBA"))
        raise InputError(f"{what}: an image array is [H, W], [H, W, 3] or [H, W, 4], got {image.shape}")
    raise InputError(
        f"{what}: expected a PIL image, a uint8 numpy array or an image path, got {type(image).__name__}"
    )


def resized_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """transformers' ``get_resize_output_image_size(..., default_to_square=False)``: the longer side is
    truncated, not rounded."""
    if height <= width:
        return shortest_edge, int(shortest_edge * width / height)
    return int(shortest_edge * height / width), shortest_edge


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Centre ``size`` x ``size`` crop of ``[..., H, W]``; smaller images are zero-padded first (as the
    Hugging Face processor does)."""
    import torchvision.transforms.v2.functional as tvF

    height, width = image.shape[-2:]
    if size > height or size > width:
        pad_w, pad_h = max(size - width, 0), max(size - height, 0)
        image = tvF.pad(image, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=0)
        height, width = image.shape[-2:]
    top, left = int((height - size) / 2.0), int((width - size) / 2.0)
    return image[..., top : top + size, left : left + size]


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32, rescale and normalise fused as transformers does it."""
    scale = 1.0 / RESCALE_FACTOR
    mean_t = (torch.tensor(mean, dtype=torch.float32) * scale).view(3, 1, 1)
    std_t = (torch.tensor(std, dtype=torch.float32) * scale).view(3, 1, 1)
    return (pixels.to(torch.float32) - mean_t) / std_t


def preprocess_image(image, settings: ImagePreprocessing = ImagePreprocessing(), what: str = "input"):
    """One image (PIL, uint8 array or path) -> ``pixel_values`` ``[3, crop, crop]`` float32."""
    import torchvision.transforms.v2.functional as tvF

    rgb = torch.from_numpy(np.array(image_to_rgb_uint8(image, what))).permute(2, 0, 1).contiguous()
    size = resized_size(rgb.shape[1], rgb.shape[2], settings.resize_shortest_edge)
    resized = tvF.resize(rgb, list(size), interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    return normalize(center_crop(resized, settings.crop_size), settings.mean, settings.std)


def clip_to_rgb_uint8(clip, what: str = "input") -> np.ndarray:
    """A clip as a uint8 ``[T, H, W, 3]`` array or a list of frames (anything ``image_to_rgb_uint8``
    takes) -> uint8 ``[T, H, W, 3]``."""
    if isinstance(clip, torch.Tensor):
        clip = clip.cpu().numpy()
    if isinstance(clip, np.ndarray) and clip.ndim == 4:
        if clip.dtype != np.uint8 or clip.shape[-1] != 3:
            raise InputError(f"{what}: a clip array is uint8 [T, H, W, 3], got {clip.dtype} {clip.shape}")
        return np.ascontiguousarray(clip)
    if isinstance(clip, (list, tuple)) and clip:
        frames = [image_to_rgb_uint8(f, f"{what} frame {i}") for i, f in enumerate(clip)]
        if len({f.shape for f in frames}) > 1:
            raise InputError(f"{what}: the frames have different sizes {sorted({f.shape for f in frames})}")
        return np.stack(frames)
    raise InputError(f"{what}: a clip is a uint8 [T, H, W, 3] array or a list of frames, got {type(clip).__name__}")


def preprocess_clip(clip, settings: ClipPreprocessing = ClipPreprocessing(), what: str = "input"):
    """One clip (uint8 ``[T, H, W, 3]`` or a list of frames) -> ``[3, T, crop, crop]`` float32, through the
    same transforms as hiera_det's video evaluation."""
    from hiera_det.data import video_transforms as vt

    frames = clip_to_rgb_uint8(clip, what)
    geometry = vt.test_transform(frames.shape[1], frames.shape[2], crop_size=settings.crop_size)
    frames = vt.apply_to_clip(geometry, frames)
    mean = [255.0 * m for m in settings.mean]
    std = [255.0 * s for s in settings.std]
    return vt.normalize_clip(vt.clip_to_tensor(frames, "RGB"), mean, std)
