"""Mask R-CNN mask targets cut from polygons on the GPU: polygons packed as padded tensors, rasterised inside
every RoI box at once (what Detectron2's ``PolygonMasks.crop_and_resize`` does with pycocotools on the CPU,
one instance at a time)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# pycocotools rasterises on a grid 5 times finer than the pixels and rounds the polygon's vertices to it;
# rounding the same way makes the targets match Detectron2's CPU targets almost pixel for pixel.
_COCO_SUBPIXELS = 5
# elements of the largest intermediate tensor (RoIs x parts x vertices x mask columns) per chunk
_CHUNK_ELEMENTS = 1 << 24


def pack_polygons(instances: Sequence[Sequence[np.ndarray]]) -> torch.Tensor:
    """Polygons of every instance as one float32 tensor (instances, parts, vertices, 2) of (x, y).

    An instance is a list of flat ``[x0, y0, x1, y1, ...]`` arrays (its parts, as in COCO and Detectron2's
    ``PolygonMasks``). Each part is padded to the longest by repeating its first vertex, which adds only
    zero-length edges; missing parts are all zeros, whose edges are zero-length too. Neither changes what
    :func:`rasterize_polygons_in_boxes` fills.
    """
    parts = max((len(polygons) for polygons in instances), default=0)
    vertices = max((len(p) // 2 for polygons in instances for p in polygons), default=0)
    packed = np.zeros((len(instances), max(parts, 1), max(vertices, 1), 2), dtype=np.float32)
    for i, polygons in enumerate(instances):
        for j, polygon in enumerate(polygons):
            points = np.asarray(polygon, dtype=np.float32).reshape(-1, 2)
            if len(points):
                packed[i, j, : len(points)] = points
                packed[i, j, len(points):] = points[0]
    return torch.from_numpy(packed)


def pad_polygons(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Packed polygons of several images padded to common (parts, vertices), the same way as
    :func:`pack_polygons` pads (first vertex repeated, missing parts zero), ready to concatenate."""
    parts = max(t.shape[1] for t in tensors)
    vertices = max(t.shape[2] for t in tensors)
    padded = []
    for t in tensors:
        if t.shape[2] < vertices:
            t = torch.cat([t, t[:, :, :1].expand(-1, -1, vertices - t.shape[2], -1)], dim=2)
        if t.shape[1] < parts:
            t = torch.cat([t, t.new_zeros(t.shape[0], parts - t.shape[1], vertices, 2)], dim=1)
        padded.append(t)
    return padded


def rasterize_polygons_in_boxes(polygons: torch.Tensor, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
    """Boolean masks (R, mask_size, mask_size): polygons ``(R, parts, vertices, 2)`` (packed as by
    :func:`pack_polygons`, one instance per box) rasterised inside boxes ``(R, 4)`` (x0, y0, x1, y1).

    The box is stretched to the mask as Detectron2 does (each side at least 0.1). A pixel is inside a part if
    a vertical ray from its centre crosses the part's edges an odd number of times (even-odd rule), and inside
    the instance if it is inside any part (the union pycocotools makes of an instance's polygons). Vertices are
    rounded to pycocotools' 1/5-pixel grid first. Each (box, part, column) counts its crossings into row bins
    and a cumulative sum gives the parity of every pixel, so the work is (boxes x edges x columns), not
    (boxes x edges x pixels).
    """
    if polygons.dim() != 4 or polygons.shape[-1] != 2 or boxes.shape != (polygons.shape[0], 4):
        raise ValueError(f"polygons must be (R, parts, vertices, 2) and boxes (R, 4) for the same R; got "
                         f"{tuple(polygons.shape)} and {tuple(boxes.shape)}")
    count, parts, vertices, _ = polygons.shape
    chunk = max(1, _CHUNK_ELEMENTS // max(1, parts * vertices * mask_size))
    if count > chunk:
        return torch.cat([rasterize_polygons_in_boxes(polygons[i: i + chunk], boxes[i: i + chunk], mask_size)
                          for i in range(0, count, chunk)])
    polygons, boxes = polygons.float(), boxes.float()
    origin = boxes[:, None, None, :2]
    scale = mask_size / (boxes[:, 2:] - boxes[:, :2]).clamp(min=0.1)
    points = (polygons - origin) * scale[:, None, None, :]
    points = torch.floor(points * _COCO_SUBPIXELS + 0.5) / _COCO_SUBPIXELS
    x_start, y_start = points[..., 0, None], points[..., 1, None]  # (R, P, V, 1)
    x_end, y_end = points.roll(-1, dims=2)[..., 0, None], points.roll(-1, dims=2)[..., 1, None]
    centres = torch.arange(mask_size, device=polygons.device, dtype=torch.float32) + 0.5
    # half-open test: an edge ending exactly on a column counts once with its neighbour, never twice
    spans = (x_start > centres) != (x_end > centres)  # (R, P, V, M)
    run = torch.where(spans, x_end - x_start, torch.ones_like(x_start))
    y_cross = y_start + (centres - x_start) * (y_end - y_start) / run
    # the crossing counts for every row whose centre lies below it: rows >= floor(y - 0.5) + 1
    first_row = (torch.floor(y_cross - 0.5) + 1).clamp(0, mask_size).long()
    first_row = torch.where(spans, first_row, torch.full_like(first_row, mask_size))
    crossings = torch.zeros(count, parts, mask_size, mask_size + 1, device=polygons.device, dtype=torch.int32)
    crossings.scatter_add_(3, first_row.transpose(2, 3), torch.ones_like(first_row, dtype=torch.int32)
                           .transpose(2, 3))
    inside = (crossings.cumsum(3)[..., :mask_size] & 1).bool().any(dim=1)  # (R, column, row)
    return inside.transpose(1, 2)
