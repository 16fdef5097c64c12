"""Where Hiera keeps its tokens between blocks, and how they are cut into attention sequences.

Attention windows, q-pooling and the stage outputs all depend on which tokens sit next to each other.
Two layouts serve the two attention schemes:

* ``UnrolledLayout`` (the paper's mask-unit attention). Tokens are stored as ``[B, units, L, C]``: one row
  per mask unit, and inside a unit the tokens ordered so that the ones pooled next come first. A mask-unit
  window and a global window are then both free views, and every q-pool is a max over a leading axis. The
  only copies are at the entry (from the patch grid) and at each stage output (back to a grid).
* ``SpatialLayout`` (HieraDet / SAM2 windowed attention). Tokens stay on the grid, ``[B, H, W, C]``, and
  each windowed block partitions (with zero padding, as SAM2 does) and merges its windows.

Both expose the same four operations that ``HieraBlock`` needs: ``partition`` (tokens -> attention
sequences, plus a record of the cut: ``UnrolledPartition`` or ``SpatialPartition``), ``pool_q`` (pool
queries inside those sequences), ``merge`` (sequences -> tokens) and ``pool`` (the shortcut's pooling),
plus ``enter`` / ``to_grid`` at the ends of the trunk. Both ends are channels-last (``[B, *grid, C]``), so
every copy moves whole C-vectors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

GLOBAL = 0  # window size that means "attend over the whole image"
MASK_UNIT = -1  # window size that means "attend inside each mask unit"


# The partition records are NamedTuples rather than dataclasses: one is built per block per forward, and a
# NamedTuple costs no more than the plain tuple it replaces, in eager mode and under torch.compile alike.
class UnrolledPartition(NamedTuple):
    """How ``UnrolledLayout.partition`` cut ``[B, units, L, C]`` tokens into attention sequences."""

    batch: int
    units: int
    units_per_sequence: int  # 1 for mask-unit attention, ``units`` for global attention


class SpatialPartition(NamedTuple):
    """How ``SpatialLayout.partition`` cut ``[B, H, W, C]`` tokens into attention sequences."""

    batch: int
    height: int
    width: int
    padded_height: int  # the grid padded to a multiple of the window (no padding for global attention)
    padded_width: int
    window: int  # window side, or GLOBAL for one sequence over the whole grid


def _level_axes(ndim: int, levels: int, first: int) -> list[list[int]]:
    """Axis numbers of a ``[*, (coarse, s_{levels-1}, ..., s_0) per dim, *]`` view, per level per dim."""
    group = levels + 1
    coarse = [first + d * group for d in range(ndim)]
    per_level = [[first + d * group + levels - lev for d in range(ndim)] for lev in range(levels)]
    return [coarse] + per_level


class UnrolledLayout:
    """Tokens as ``[B, units, L, C]``; within a unit, ordered by pooling level (finest level outermost)."""

    def __init__(self, q_stride: tuple[int, ...], levels: int):
        self.q_stride = tuple(q_stride)
        self.levels = levels
        self.flat_stride = math.prod(q_stride)

    def unit_size(self) -> tuple[int, ...]:
        return tuple(s**self.levels for s in self.q_stride)

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Channels-last tokens ``[B, *grid, C]`` -> ``[B, units, L, C]`` and the grid of mask units."""
        B, *grid, C = x.shape
        D = len(grid)
        coarse = tuple(g // u for g, u in zip(grid, self.unit_size()))
        shape = [B]
        for d in range(D):
            shape += [coarse[d]] + [self.q_stride[d]] * self.levels
        axes = _level_axes(D, self.levels, first=1)
        order = [0] + axes[0] + [a for lev in axes[1:] for a in lev] + [1 + D * (self.levels + 1)]
        x = x.reshape(*shape, C).permute(order)
        return x.reshape(B, math.prod(coarse), -1, C), coarse

    def to_grid(self, x: torch.Tensor, coarse: tuple[int, ...], pooled: int) -> torch.Tensor:
        """``[B, units, L, C]`` after ``pooled`` q-pools -> channels-last ``[B, *grid, C]``."""
        B, _, _, C = x.shape
        D = len(coarse)
        left = self.levels - pooled
        shape = [B, *coarse]
        for _ in range(left):
            shape += list(self.q_stride)
        x = x.reshape(*shape, C)
        # axes of the view: coarse dims, then one group of D axes per remaining level (finest first)
        order = [0]
        for d in range(D):
            order.append(1 + d)
            for lev in reversed(range(left)):
                order.append(1 + D + lev * D + d)
        x = x.permute(order + [x.dim() - 1])
        grid = [coarse[d] * self.q_stride[d] ** left for d in range(D)]
        return x.reshape(B, *grid, C)

    def partition(self, x: torch.Tensor, window: int) -> tuple[torch.Tensor, UnrolledPartition]:
        B, units, L, C = x.shape
        if window == MASK_UNIT:
            return x.reshape(B * units, L, C), UnrolledPartition(B, units, 1)
        if window != GLOBAL:
            raise ValueError("the mask-unit layout supports mask-unit and global attention only")
        return x.reshape(B, units * L, C), UnrolledPartition(B, units, units)

    def pool_q(self, q: torch.Tensor, partition: UnrolledPartition) -> torch.Tensor:
        per_seq = partition.units_per_sequence
        N, L, h, d = q.shape
        s = self.flat_stride
        return q.view(N, per_seq, s, L // (per_seq * s), h, d).amax(2).view(N, L // s, h, d)

    def merge(self, y: torch.Tensor, partition: UnrolledPartition, pooled: bool) -> torch.Tensor:
        return y.view(partition.batch, partition.units, -1, y.shape[-1])

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        B, units, L, C = x.shape
        return x.view(B, units, self.flat_stride, L // self.flat_stride, C).amax(2)


class SpatialLayout:
    """Tokens on their 2-D grid, ``[B, H, W, C]``, windowed per block as in SAM2's Hiera."""

    def __init__(self, q_stride: tuple[int, ...]):
        if len(q_stride) != 2:
            raise ValueError("windowed (HieraDet) attention is defined for images only, not video clips")
        self.q_stride = tuple(q_stride)

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x, None

    def to_grid(self, x: torch.Tensor, coarse, pooled: int) -> torch.Tensor:
        return x

    def partition(self, x: torch.Tensor, window: int) -> tuple[torch.Tensor, SpatialPartition]:
        B, H, W, C = x.shape
        if window == GLOBAL:
            return x.reshape(B, H * W, C), SpatialPartition(B, H, W, H, W, GLOBAL)
        if window == MASK_UNIT:
            raise ValueError("the windowed layout takes explicit window sizes, not mask units")
        pad_h, pad_w = (-H) % window, (-W) % window
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        x = x.view(B, Hp // window, window, Wp // window, window, C).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, window * window, C), SpatialPartition(B, H, W, Hp, Wp, window)

    def pool_q(self, q: torch.Tensor, partition: SpatialPartition) -> torch.Tensor:
        N, _, h, d = q.shape
        sh, sw = self.q_stride
        window = partition.window
        wh, ww = (partition.padded_height, partition.padded_width) if window == GLOBAL else (window, window)
        q = q.view(N, wh // sh, sh, ww // sw, sw, h, d).amax(dim=(2, 4))
        return q.reshape(N, -1, h, d)

    def merge(self, y: torch.Tensor, partition: SpatialPartition, pooled: bool) -> torch.Tensor:
        B, H, W = partition.batch, partition.height, partition.width
        Hp, Wp, window = partition.padded_height, partition.padded_width, partition.window
        C = y.shape[-1]
        if pooled:
            sh, sw = self.q_stride
            H, W, Hp, Wp = H // sh, W // sw, Hp // sh, Wp // sw
            window = window // sh
        if window == GLOBAL:
            return y.view(B, H, W, C)
        y = y.view(B, Hp // window, Wp // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(B, Hp, Wp, C)
        if Hp != H or Wp != W:
            y = y[:, :H, :W].contiguous()
        return y

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        sh, sw = self.q_stride
        return x.view(B, H // sh, sh, W // sw, sw, C).amax(dim=(2, 4))
