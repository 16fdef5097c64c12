"""Hiera image detectors in Detectron2: the backbone, FPN variants and their registry builders.

Importing this package registers ``build_hiera_backbone``, ``build_hiera_fpn_backbone`` and
``build_hiera_retinanet_fpn_backbone`` in Detectron2's ``BACKBONE_REGISTRY``.
"""

from .backbone import HieraBackbone, HieraFPN
from .build import (
    build_hiera_backbone,
    build_hiera_fpn_backbone,
    build_hiera_retinanet_fpn_backbone,
    build_hiera_trunk,
)
from .data import build_detection_train_mapper, build_lsj_augmentations

__all__ = [
    "HieraBackbone",
    "HieraFPN",
    "build_detection_train_mapper",
    "build_hiera_backbone",
    "build_hiera_fpn_backbone",
    "build_hiera_retinanet_fpn_backbone",
    "build_hiera_trunk",
    "build_lsj_augmentations",
]
