"""Hiera in Detectron2: the trunk from a config, the backbone (image or video trunk), FPN, and the registry
builders (registered by importing ``hiera_det.d2``)."""

from .backbone import HieraBackbone, HieraFPN
from .trunk import build_trunk, freeze_trunk, freeze_unread

__all__ = ["HieraBackbone", "HieraFPN", "build_trunk", "freeze_trunk", "freeze_unread"]
