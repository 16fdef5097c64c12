"""What the bundled "hiera_shapes" dataset is called and where its files live.

Kept apart from the generator (``shapes.py``) so that registering the dataset at package import does not
import the generator: ``python -m hiera_det.data.datasets.shapes`` would otherwise find its own module already
imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Category ids in the json are 1-based in this order (COCO convention); Detectron2 maps them to 0..K-1.
SHAPES_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "ring", "cross")
SHAPES_DIRNAME = "hiera_shapes"
SHAPES_SPLITS = ("train", "val")
# Written last, inside the temporary directory, so its presence means the generation finished.
SHAPES_MARKER = "GENERATED.json"


def datasets_root() -> Path:
    """Detectron2's dataset root, the one place it is computed: ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    return Path(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


@dataclass(frozen=True)
class ShapesDatasetPaths:
    """Files of one generated copy of the dataset, rooted at ``root``."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / SHAPES_MARKER

    def image_dir(self, split: str) -> Path:
        return self.root / _checked_split(split)

    def annotation_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{_checked_split(split)}.json"


def _checked_split(split: str) -> str:
    if split not in SHAPES_SPLITS:
        raise ValueError(f"Unknown hiera_shapes split {split!r}; expected one of {SHAPES_SPLITS}.")
    return split
