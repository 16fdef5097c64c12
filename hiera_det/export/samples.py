"""Real photographs (public-domain, bundled with scikit-image) as export examples and check inputs.

Exports are traced on, and checked against eager PyTorch on, these pictures rather than noise, so that
attention, pooling and the detector's score ranking see natural image statistics. Video inputs are camera
pans across a photograph: real pixels with real motion between frames.
"""

from __future__ import annotations

import numpy as np
import torch

PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def _photo(index: int) -> np.ndarray:
    from skimage import data

    name = PHOTOGRAPHS[index % len(PHOTOGRAPHS)]
    image = getattr(data, name)()
    return image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _channels(rgb: np.ndarray, image_format: str) -> np.ndarray:
    return rgb[..., ::-1] if image_format == "BGR" else rgb


def photographs(batch: int, size: tuple[int, int], image_format: str = "RGB", first: int = 0) -> torch.Tensor:
    """``batch`` different photographs resized to ``size``, as float ``[B, 3, H, W]`` pixels 0-255."""
    images = [_channels(_resize(_photo(first + i), size), image_format) for i in range(batch)]
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).astype(np.float32))


def panning_clips(
    batch: int, frames: int, size: tuple[int, int], image_format: str = "RGB", first: int = 0
) -> torch.Tensor:
    """``batch`` clips of ``frames`` frames, each a pan across a photograph: float ``[B, 3, T, H, W]``."""
    clips = []
    for b in range(batch):
        photo = _photo(first + b)
        height, width = photo.shape[:2]
        window = (int(height * 0.75), int(width * 0.75))
        frames_list = []
        for t in range(frames):
            y = int((height - window[0]) * t / max(frames - 1, 1))
            x = int((width - window[1]) * t / max(frames - 1, 1))
            crop = photo[y : y + window[0], x : x + window[1]]
            frames_list.append(_channels(_resize(crop, size), image_format))
        clips.append(np.stack(frames_list))
    return torch.from_numpy(np.stack(clips).transpose(0, 4, 1, 2, 3).astype(np.float32))
