"""Unlabeled images and videos for MAE pre-training: registration, checks, and the mapper that crops them.

* ``images:FOLDER``: every image under ``FOLDER`` (recursively);
* ``videos:LIST``: a text file with one video (file or frame folder) per line, relative to the list's folder;
  anything after the first space (a PySlowFast label) is ignored.

Their dataset dicts are ``{"file_name"}`` (videos also ``"label": -1`` and ``"video_id"``) with
``evaluator_type`` ``"unlabeled"``. ``MAEInputMapper`` also reads the images and videos of any labeled
dataset (labels are ignored), so the bundled generators pre-train without conversion.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from . import catalog
from .image_io import ImageReadError, read_image, read_image_or_skip

UNLABELED = "unlabeled"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class UnlabeledDataError(ValueError):
    """An unlabeled image folder or video list that cannot be used; the message names the path and the fix."""


def load_image_folder(folder: str) -> list[dict]:
    if not os.path.isdir(folder):
        raise UnlabeledDataError(f"image folder {folder} does not exist; check the path after 'images:'")
    files = sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(folder)
        for f in names
        if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise UnlabeledDataError(
            f"image folder {folder} holds no images (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return [{"file_name": f, "image_id": i} for i, f in enumerate(files)]


def load_video_list(list_file: str) -> list[dict]:
    if not os.path.isfile(list_file):
        raise UnlabeledDataError(f"video list {list_file} does not exist; check the path after 'videos:'")
    root = os.path.dirname(list_file)
    with open(list_file, encoding="utf-8") as f:
        paths = [line.split(" ")[0].strip() for line in f if line.strip()]
    if not paths:
        raise UnlabeledDataError(f"video list {list_file} is empty; write one video path per line")
    return [
        {"file_name": os.path.join(root, p), "label": -1, "video_id": p}
        for p in paths
    ]


def register_unlabeled(name: str, kind: str, path: str) -> None:
    """Register ``images:FOLDER`` (``kind="images"``) or ``videos:LIST`` (``kind="videos"``) as ``name``."""
    loader = {"images": load_image_folder, "videos": load_video_list}[kind]
    catalog.register_dataset(name, lambda: loader(path), evaluator_type=UNLABELED, unlabeled_kind=kind,
                             source=path)


def check_unlabeled(kind: str, path: str, name: str) -> list[str]:
    """Every problem of an unlabeled dataset: a missing or empty source, each unreadable file named."""
    try:
        records = (load_image_folder if kind == "images" else load_video_list)(path)
    except UnlabeledDataError as e:
        return [f"{name}: {e}"]
    problems = []
    if kind == "images":
        for record in records:
            try:
                read_image(record["file_name"], format="RGB")
            except ImageReadError as e:
                problems.append(f"{name}: {e}")
    else:
        # existence and size only: opening every video of a pre-training list (Kinetics: 240k) would take
        # long; a file that exists but does not decode is skipped with a warning when it is drawn
        for r in records:
            path = r["file_name"]
            if not os.path.exists(path):
                problems.append(f"{name}: video {path} does not exist")
            elif os.path.isfile(path) and os.path.getsize(path) == 0:
                problems.append(f"{name}: video {path} is empty (0 bytes)")
    return problems


class MAEInputMapper:
    """Dataset dict -> ``{"image": uint8 [3, S, S]}`` (a random resized crop, scale ``crop_scale``, and a
    horizontal flip, as MAE pre-training does) or, for a video trunk, ``{"clip": uint8 [3, T, S, S]}``
    through ``VideoClassificationMapper``. An unreadable file is skipped in training (logged, another
    sample is drawn) and raises in evaluation."""

    def __init__(self, cfg, is_train: bool = True):
        from ..config import is_video_config, trunk_input_size

        self.is_train = is_train
        self.video = is_video_config(cfg)
        self.size = trunk_input_size(cfg)[-2:]
        self.crop_scale = tuple(cfg.MODEL.MAE.IMAGE_CROP_SCALE)
        self.flip = cfg.INPUT.RANDOM_FLIP == "horizontal"
        self.image_format = cfg.INPUT.FORMAT
        if self.video:
            from .video_mapper import VideoClassificationMapper

            self.video_mapper = VideoClassificationMapper(cfg, is_train=is_train)

    def __call__(self, dataset_dict: dict) -> dict | None:
        if self.video:
            mapped = self.video_mapper(dict(dataset_dict, label=dataset_dict.get("label", -1),
                                            video_id=dataset_dict.get("video_id", dataset_dict["file_name"])))
            return None if mapped is None else {"clip": mapped["clip"], "file_name": mapped["file_name"]}
        image = read_image_or_skip(dataset_dict["file_name"], self.image_format, self.is_train)
        if image is None:
            return None
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": self.crop(image), "file_name": dataset_dict["file_name"]}

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        H, W = image.shape[1:]
        if self.is_train:
            top, left, h, w = _random_resized_box(H, W, self.crop_scale)
        else:  # the largest centered square
            side = min(H, W)
            top, left, h, w = (H - side) // 2, (W - side) // 2, side, side
        crop = image[:, top:top + h, left:left + w].float().unsqueeze(0)
        crop = F.interpolate(crop, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        crop = crop.squeeze(0).round().clamp(0, 255).to(torch.uint8)
        if self.is_train and self.flip and np.random.rand() < 0.5:
            crop = crop.flip(-1)
        return crop


def _random_resized_box(H: int, W: int, scale: tuple[float, float], ratio=(3 / 4, 4 / 3)):
    area = H * W
    for _ in range(10):
        target = area * np.random.uniform(*scale)
        aspect = np.exp(np.random.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = int(round((target * aspect) ** 0.5)), int(round((target / aspect) ** 0.5))
        if 0 < w <= W and 0 < h <= H:
            return np.random.randint(0, H - h + 1), np.random.randint(0, W - w + 1), h, w
    side = min(H, W)
    return (H - side) // 2, (W - side) // 2, side, side
