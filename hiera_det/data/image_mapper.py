"""Detectron2's dataset mapper for image detectors, reading through ``image_io`` (clear errors, 16-bit
scaling), with large-scale jitter for training when ``INPUT.LSJ.ENABLED`` and polygon masks handed over as
padded tensors when ``MODEL.ROI_MASK_HEAD.GPU_TARGETS``."""

from __future__ import annotations

import copy

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as d2_utils
from detectron2.structures import Boxes, BoxMode, Instances
from pycocotools import mask as mask_utils

from ..config import uses_gpu_mask_targets
from ..detection.mask_head import POLYGON_FIELD
from ..detection.mask_targets import clipped_bounds, pack_polygons

from .image_io import check_image_size, read_image_or_skip


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` reading through :func:`read_image_or_skip` and :func:`check_image_size`.

    Same constructor, configuration and output as ``DatasetMapper``; only the image reading differs (see the
    module docstring). Semantic-segmentation label files are read as Detectron2 reads them: as stored, since
    their values are class ids that must not be rescaled.

    With ``polygon_tensors`` (``MODEL.ROI_MASK_HEAD.GPU_TARGETS``) polygon masks leave the worker as one
    padded tensor per image (``instances.gt_polygons``, see ``hiera_det.detection.mask_targets``) instead of
    ``gt_masks``: the main process then moves one tensor to the GPU instead of indexing Python lists of
    polygons for every sampled proposal, and the mask head rasterises the targets there. The polygons are
    transformed but not cropped: targets are rasterised inside proposal boxes, which lie in the image, so
    only the boxes recomputed from the masks need the crop, and those come from the polygons' clipped
    bounds. So no shapely (which cropping a polygon needs in Detectron2) and no per-instance geometry.
    """

    polygon_tensors = False

    def __call__(self, dataset_dict: dict) -> dict | None:
        """The mapped dict, or None for an unreadable training image (:func:`read_image_or_skip`)."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_or_skip(dataset_dict["file_name"], self.image_format, self.is_train)
        if image is None:
            return None
        check_image_size(dataset_dict, image)
        sem_seg_file = dataset_dict.pop("sem_seg_file_name", None)
        sem_seg_gt = None if sem_seg_file is None else d2_utils.read_image(sem_seg_file, "L").squeeze(2)

        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        # tensors travel between DataLoader workers through shared memory rather than pickles
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            d2_utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            if self._wants_polygon_tensors(dataset_dict["annotations"]):
                dataset_dict["instances"] = self._polygon_tensor_instances(dataset_dict, transforms, image_shape)
                return dataset_dict
            if self.instance_mask_format == "bitmask":
                _polygons_to_rle(dataset_dict)
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

    def _wants_polygon_tensors(self, annotations: list[dict]) -> bool:
        return (self.polygon_tensors and self.use_instance_mask and self.instance_mask_format == "polygon"
                and not self.use_keypoint
                and all(isinstance(a.get("segmentation"), list) for a in annotations if not a.get("iscrowd", 0)))

    def _polygon_tensor_instances(self, dataset_dict: dict, transforms, image_shape) -> Instances:
        """Instances with ``gt_boxes``, ``gt_classes`` and packed ``gt_polygons`` (see the class docstring);
        the same boxes and the same instances kept as Detectron2's polygon path gives."""
        height, width = image_shape
        boxes, classes, polygons = [], [], []
        for annotation in dataset_dict.pop("annotations"):
            if annotation.get("iscrowd", 0):
                continue
            parts = [transforms.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2))
                     for p in annotation["segmentation"]]
            if self.recompute_boxes:
                bounds = [b for b in (clipped_bounds(p, width, height) for p in parts) if b is not None]
                if not bounds:
                    continue  # cropped away
                bounds = np.stack(bounds)
                box = np.concatenate([bounds[:, :2].min(0), bounds[:, 2:].max(0)])
            else:
                box = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
                box = np.minimum(transforms.apply_box(np.array([box]))[0].clip(min=0), [width, height] * 2)
            if box[2] - box[0] <= 1e-5 or box[3] - box[1] <= 1e-5:
                continue  # Detectron2's filter_empty_instances drops these
            boxes.append(box)
            classes.append(annotation["category_id"])
            polygons.append([p.reshape(-1) for p in parts])
        instances = Instances(image_shape)
        instances.gt_boxes = Boxes(torch.as_tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4)))
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        instances.set(POLYGON_FIELD, pack_polygons(polygons))
        return instances


def _polygons_to_rle(dataset_dict: dict) -> None:
    """Rasterise polygon masks before the augmentations when the model wants bitmasks anyway: cropping a
    polygon needs shapely (not a Detectron2 dependency), cropping a bitmask needs nothing."""
    height, width = dataset_dict["height"], dataset_dict["width"]
    for annotation in dataset_dict["annotations"]:
        polygons = annotation.get("segmentation")
        if isinstance(polygons, list) and polygons:
            annotation["segmentation"] = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))



def build_lsj_augmentations(cfg) -> list[T.Augmentation]:
    """Large-scale jitter (``INPUT.LSJ``): random rescale, crop or pad to a square, horizontal flip."""
    lsj = cfg.INPUT.LSJ
    size = lsj.IMAGE_SIZE
    return [
        T.ResizeScale(
            min_scale=lsj.MIN_SCALE, max_scale=lsj.MAX_SCALE, target_height=size, target_width=size
        ),
        T.FixedSizeCrop(crop_size=(size, size)),
        T.RandomFlip(horizontal=True),
    ]


def build_detection_train_mapper(cfg) -> CheckedDatasetMapper:
    """Detectron2's ``DatasetMapper`` for training, reading images through ``hiera_det.data.image_io`` (clear
    errors for unreadable files, 16-bit scaling); with ``INPUT.LSJ.ENABLED`` its augmentations are LSJ."""
    if not cfg.INPUT.LSJ.ENABLED:
        mapper = CheckedDatasetMapper(cfg, is_train=True)
    else:
        # Cropping cuts instances, so boxes are recomputed from the cropped masks when there are masks.
        mapper = CheckedDatasetMapper(
            cfg, is_train=True, augmentations=build_lsj_augmentations(cfg), recompute_boxes=cfg.MODEL.MASK_ON
        )
    mapper.polygon_tensors = uses_gpu_mask_targets(cfg)
    return mapper
