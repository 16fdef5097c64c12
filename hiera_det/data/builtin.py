"""Registers the bundled datasets with Detectron2 (run at ``import hiera_det``).

* ``hiera_shapes_train`` / ``hiera_shapes_val``: COCO instance segmentation in
  ``$DETECTRON2_DATASETS/hiera_shapes`` (default ``./datasets/hiera_shapes``), made by
  ``python -m hiera_det.data.shapes``.
* ``moving_shapes_{cls,kf}_{train,val}`` (video) in ``$DETECTRON2_DATASETS/moving_shapes``, registered by
  ``hiera_det.data.moving_shapes`` when that module is present.

Registration only records where the files are; nothing is generated or read until ``DatasetCatalog.get``.
Calling :func:`register_all` again (another root, or a module reload) replaces these registrations.
"""

from __future__ import annotations

import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from .annotations import load_coco_json_checked
from .shapes_spec import SHAPES_CLASSES, SHAPES_DIRNAME, ShapesDatasetPaths, default_datasets_root

__all__ = ["SHAPES_DATASETS", "register_all", "register_shapes_datasets"]

# dataset name -> split
SHAPES_DATASETS = {"hiera_shapes_train": "train", "hiera_shapes_val": "val"}


def _load_shapes_split(name: str, paths: ShapesDatasetPaths, split: str) -> list[dict]:
    json_file = paths.annotation_file(split)
    if not json_file.is_file():
        raise FileNotFoundError(
            f"Dataset '{name}' is not generated: {json_file} does not exist. Run "
            f"`python -m hiera_det.data.shapes --root {paths.root}` (or scripts/main.sh) to generate it, "
            "or point $DETECTRON2_DATASETS at the directory that holds hiera_shapes/."
        )
    return load_coco_json_checked(str(json_file), str(paths.image_dir(split)), name)


def _replace_registration(name: str) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def register_shapes_datasets(root: str | os.PathLike) -> None:
    """Registers ``hiera_shapes_{train,val}`` for the dataset folder ``root`` (holding ``annotations/``)."""
    paths = ShapesDatasetPaths(Path(root))
    for name, split in SHAPES_DATASETS.items():
        _replace_registration(name)
        DatasetCatalog.register(name, lambda name=name, split=split: _load_shapes_split(name, paths, split))
        # Set before loading (loading sets the same values), so evaluators and visualizers that read the
        # metadata of a never-loaded dataset map category ids and names correctly.
        MetadataCatalog.get(name).set(
            json_file=str(paths.annotation_file(split)),
            image_root=str(paths.image_dir(split)),
            evaluator_type="coco",
            thing_classes=list(SHAPES_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
        )


def register_all(root: str | os.PathLike | None = None) -> None:
    """Registers every bundled dataset under the Detectron2 dataset root ``root``.

    ``root`` defaults to ``$DETECTRON2_DATASETS``, else ``./datasets`` (resolved against the working directory
    when a dataset is loaded, as Detectron2's own builtin datasets are).
    """
    root = Path(root) if root is not None else default_datasets_root()
    register_shapes_datasets(root / SHAPES_DIRNAME)

    # ---- Video datasets: hiera_det.data.moving_shapes (owned by the video side) registers its own, ----
    # ---- given the dataset's folder: <root>/moving_shapes.                                         ----
    try:
        from .moving_shapes import register_moving_shapes_datasets
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.moving_shapes":
            raise
    else:
        register_moving_shapes_datasets(str(root / "moving_shapes"))


register_all()
