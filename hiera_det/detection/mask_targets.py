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
    """Polygons of every instance as the edges of its parts: one float32 tensor (instances, edges, 5) of
    (x_start, y_start, x_end, y_end, part).

    An instance is a list of flat ``[x0, y0, x1, y1, ...]`` arrays (its parts, as in COCO and Detectron2's
    ``PolygonMasks``); each part is closed (its last vertex joins its first). Instances with fewer edges are
    padded with zero-length edges, which no ray crosses, so padding never changes what
    :func:`rasterize_polygons_in_boxes` fills. Edges rather than (parts, vertices) keep the padding small when
    parts differ in length, as contour polygons do.
    """
    edges = []
    for polygons in instances:
        parts = []
        for part, polygon in enumerate(polygons):
            points = np.asarray(polygon, dtype=np.float32).reshape(-1, 2)
            if len(points):
                ids = np.full((len(points), 1), part, dtype=np.float32)
                parts.append(np.concatenate([points, np.roll(points, -1, axis=0), ids], axis=1))
        edges.append(np.concatenate(parts) if parts else np.zeros((0, 5), np.float32))
    packed = np.zeros((len(instances), max([len(e) for e in edges] + [1]), 5), dtype=np.float32)
    for i, e in enumerate(edges):
        packed[i, : len(e)] = e
    return torch.from_numpy(packed)


def clipped_bounds(points: np.ndarray, width: float, height: float) -> np.ndarray | None:
    """Bounding box (x0, y0, x1, y1) of the part of polygon ``points`` (K, 2) inside the image ``[0, width] x
    [0, height]``, None when nothing is inside: what the box of the polygon cropped to the image would be.

    The extremes of that part lie on the polygon's vertices inside the image, on the crossings of its edges
    with the image's sides, or on the image's corners inside the polygon (even-odd rule), so those are all
    that is looked at.
    """
    x, y = points[:, 0], points[:, 1]
    inside = (x >= 0) & (x <= width) & (y >= 0) & (y <= height)
    found = [points[inside]]
    end = np.roll(points, -1, axis=0)
    step = end - points
    for axis, bound in ((0, 0.0), (0, width), (1, 0.0), (1, height)):
        other, limit = 1 - axis, (height if axis == 0 else width)
        crosses = (points[:, axis] - bound) * (end[:, axis] - bound) <= 0
        crosses &= step[:, axis] != 0
        t = (bound - points[crosses, axis]) / step[crosses, axis]
        along = points[crosses, other] + t * step[crosses, other]
        along = along[(along >= 0) & (along <= limit)]
        crossing = np.empty((len(along), 2))
        crossing[:, axis], crossing[:, other] = bound, along
        found.append(crossing)
    corners = np.array([[0.0, 0.0], [width, 0.0], [0.0, height], [width, height]])
    spans = (y[None] > corners[:, 1:]) != (end[None, :, 1] > corners[:, 1:])
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x[None] + (corners[:, 1:] - y[None]) * step[None, :, 0] / step[None, :, 1]
    found.append(corners[((spans & (corners[:, :1] < x_cross)).sum(1) % 2).astype(bool)])
    found = np.concatenate(found)
    if len(found) == 0:
        return None
    return np.concatenate([found.min(0), found.max(0)])


def pad_polygons(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Packed polygons of several images padded to a common edge count with zero-length edges, as
    :func:`pack_polygons` pads, ready to concatenate."""
    edges = max(t.shape[1] for t in tensors)
    return [torch.cat([t, t.new_zeros(t.shape[0], edges - t.shape[1], 5)], dim=1) if t.shape[1] < edges else t
            for t in tensors]


def rasterize_polygons_in_boxes(polygons: torch.Tensor, boxes: torch.Tensor, mask_size: int,
                                parts: int | None = None) -> torch.Tensor:
    """Boolean masks (R, mask_size, mask_size): polygons ``(R, edges, 5)`` (packed by :func:`pack_polygons`,
    one instance per box) rasterised inside boxes ``(R, 4)`` (x0, y0, x1, y1).

    The box is stretched to the mask as Detectron2 does (each side at least 0.1). A pixel is inside a part if
    a vertical ray from its centre crosses the part's edges an odd number of times (even-odd rule), and inside
    the instance if it is inside any part (the union pycocotools makes of an instance's polygons). Vertices are
    rounded to pycocotools' 1/5-pixel grid first. Each (box, edge, column) drops its crossing into a row bin
    of its part and a cumulative sum over the rows gives the parity of every pixel, so the work is (boxes x
    edges x columns), not (boxes x edges x pixels). ``parts``: the most parts of an instance, when the caller
    knows it (otherwise read from the tensor, which waits for the GPU).
    """
    if polygons.dim() != 3 or polygons.shape[-1] != 5 or boxes.shape != (polygons.shape[0], 4):
        raise ValueError(f"polygons must be (R, edges, 5) and boxes (R, 4) for the same R; got "
                         f"{tuple(polygons.shape)} and {tuple(boxes.shape)}")
    count, edges, _ = polygons.shape
    if parts is None:
        parts = int(polygons[..., 4].max()) + 1 if polygons.numel() else 1
    chunk = max(1, _CHUNK_ELEMENTS // max(1, edges * mask_size))
    if count > chunk:
        return torch.cat([rasterize_polygons_in_boxes(polygons[i: i + chunk], boxes[i: i + chunk], mask_size, parts)
                          for i in range(0, count, chunk)])
    polygons, boxes = polygons.float(), boxes.float()
    origin = boxes[:, None, :2].repeat(1, 1, 2)
    scale = (mask_size / (boxes[:, 2:] - boxes[:, :2]).clamp(min=0.1)).repeat(1, 2)[:, None]
    first_row, spans = _first_rows((polygons[..., :4] - origin) * scale, mask_size)
    first_row = torch.where(spans, first_row, torch.full_like(first_row, mask_size))
    part = polygons[..., 4, None].long().clamp(0, parts - 1)
    column = torch.arange(mask_size, device=polygons.device)
    bins = (part * mask_size + column) * (mask_size + 1) + first_row  # (R, E, M) into (parts, M, M + 1)
    crossings = torch.zeros(count, parts * mask_size * (mask_size + 1), device=polygons.device, dtype=torch.int32)
    crossings.scatter_add_(1, bins.flatten(1), torch.ones_like(bins, dtype=torch.int32).flatten(1))
    crossings = crossings.view(count, parts, mask_size, mask_size + 1)
    inside = (crossings.cumsum(3)[..., :mask_size] & 1).bool().any(dim=1)  # (R, column, row)
    return inside.transpose(1, 2)


def _first_rows(ends: torch.Tensor, mask_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For edges ``(R, E, 4)`` in mask coordinates and every mask column: whether the edge crosses the
    column's centre line, and the first row whose pixels lie below the crossing (R, E, M).

    pycocotools' rasteriser, reproduced: it works in units of 1/5 pixel, rounds the vertices to them
    (truncating ``5 v + 0.5`` as C's int cast does), walks each edge one unit at a time along its longer
    axis rounding the other coordinate, and takes the smaller of the two rows on either side of a column
    centre. Following it rather than the exact crossing makes the targets Detectron2's, pixel for pixel.
    """
    units = torch.trunc(ends * _COCO_SUBPIXELS + 0.5).double()  # float64: C computes these in double
    xa, ya, xb, yb = units.unbind(-1)
    x_major = (xb - xa).abs() >= (yb - ya).abs()
    # both walks start at the end with the smaller walked coordinate
    swap = torch.where(x_major, xa > xb, ya > yb)
    xs, xe = torch.where(swap, xb, xa)[..., None], torch.where(swap, xa, xb)[..., None]
    ys, ye = torch.where(swap, yb, ya)[..., None], torch.where(swap, ya, yb)[..., None]
    x_major = x_major[..., None]
    centre = torch.arange(mask_size, device=ends.device, dtype=torch.float64) * _COCO_SUBPIXELS + 2.5
    spans = (torch.minimum(xs, xe) < centre) & (centre < torch.maximum(xs, xe))
    # x-major: the rows of the walk at the units either side of the centre (5x + 2, 5x + 3)
    slope_x = (ye - ys) / (xe - xs).clamp(min=1)
    row_left = torch.trunc(ys + slope_x * (centre - 0.5 - xs) + 0.5)
    row_right = torch.trunc(ys + slope_x * (centre + 0.5 - xs) + 0.5)
    below_x = torch.minimum(row_left, row_right)
    # y-major: the step t at which the walk's rounded column passes the centre; the smaller row is ys + t - 1
    slope_y = (xe - xs) / (ye - ys).clamp(min=1)
    steps = (centre - xs) / torch.where(slope_y == 0, torch.ones_like(slope_y), slope_y)
    below_y = ys + torch.where(slope_y > 0, torch.ceil(steps) - 1, torch.floor(steps))
    below = torch.where(x_major, below_x, below_y)
    first_row = torch.ceil(((below + 0.5) / _COCO_SUBPIXELS - 0.5).clamp(0, mask_size)).long()
    return first_row, spans
