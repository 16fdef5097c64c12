"""Hiera's position embeddings: their parameters, their value on any token grid, and their resampling.

Three kinds, named by ``Hiera(pos_embed=...)``, stored under the parameter names of the public checkpoints:

* ``"absolute"``: one learned embedding per token of the training grid, ``pos_embed`` ``[1, N, C]``
  (official image models);
* ``"separate"``: a spatial ``pos_embed_spatial`` ``[1, H*W, C]`` plus a temporal ``pos_embed_temporal``
  ``[1, T, C]`` (official video models);
* ``"absolute_win"``: a background ``pos_embed`` ``[1, C, h, w]`` interpolated to the grid plus a window
  embedding ``pos_embed_window`` ``[1, C, w0, w0]`` tiled over it (HieraDet / SAM2, Bolya et al. 2024).

A grid other than the stored one is reached by interpolation: bicubic in space, linear in time, trilinear
over a ``(T, H, W)`` grid. The model and the checkpoint loader share ``resample`` for this.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

POS_EMBED_MODES = ("absolute", "separate", "absolute_win")

# interpolation mode by grid rank: (T,), (H, W), (T, H, W)
INTERPOLATION = {1: "linear", 2: "bicubic", 3: "trilinear"}


def create_pos_embed(
    mode: str,
    token_grid: Sequence[int],
    dim: int,
    window: int | None = None,
    background: Sequence[int] | None = None,
) -> dict[str, nn.Parameter]:
    """Zero parameters of one kind for a ``token_grid`` of ``dim``-channel tokens, by attribute name.

    ``window`` is the stage-1 window of an ``"absolute_win"`` embedding and ``background`` its stored grid
    (14x14 unless given).
    """
    ndim = len(token_grid)
    if mode not in POS_EMBED_MODES:
        raise ValueError(f"unknown position embedding {mode!r}; choose one of {POS_EMBED_MODES}")
    if mode == "absolute":
        return {"pos_embed": nn.Parameter(torch.zeros(1, math.prod(token_grid), dim))}
    if mode == "separate":
        if ndim != 3:
            raise ValueError("separate (spatial + temporal) position embeddings are for video models")
        t, h, w = token_grid
        return {
            "pos_embed_spatial": nn.Parameter(torch.zeros(1, h * w, dim)),
            "pos_embed_temporal": nn.Parameter(torch.zeros(1, t, dim)),
        }
    if ndim != 2:
        raise ValueError("absolute-win position embeddings are for image models")
    if window is None:
        raise ValueError("absolute-win position embeddings need window_spec (the stage-1 window)")
    return {
        "pos_embed": nn.Parameter(torch.zeros(1, dim, *(background or (14, 14)))),
        "pos_embed_window": nn.Parameter(torch.zeros(1, dim, window, window)),
    }


def tokens_to_grid(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """``[1, N, C]`` embedding of a row-major ``grid`` -> ``[1, C, *grid]``."""
    return tokens.transpose(1, 2).reshape(1, tokens.shape[-1], *grid)


def grid_to_tokens(grid_first: torch.Tensor) -> torch.Tensor:
    """``[1, C, *grid]`` -> ``[1, N, C]``, the inverse of ``tokens_to_grid``."""
    return grid_first.flatten(2).transpose(1, 2)


def resample(grid_first: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Interpolate a ``[1, C, *grid]`` embedding to ``size``: linear, bicubic or trilinear by grid rank."""
    size = tuple(size)
    return F.interpolate(grid_first, size=size, mode=INTERPOLATION[len(size)], align_corners=False)


def resize_tokens(tokens: torch.Tensor, grid: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """A stored ``[1, N, C]`` embedding of ``grid`` resampled to ``size``, computed in float32 (half
    precision has no bicubic kernel on CPU) and returned in the input's dtype."""
    resized = resample(tokens_to_grid(tokens, grid).float(), size)
    return grid_to_tokens(resized).to(tokens.dtype)


def absolute_pos_embed(
    pos_embed: torch.Tensor, stored_grid: tuple[int, ...], grid: tuple[int, ...]
) -> torch.Tensor:
    """An ``"absolute"`` embedding on ``grid``, ``[1, C, *grid]``."""
    pe = tokens_to_grid(pos_embed, stored_grid)
    return pe if grid == stored_grid else resample(pe, grid)


def separate_pos_embed(
    spatial: torch.Tensor, temporal: torch.Tensor, stored_grid: tuple[int, ...], grid: tuple[int, ...]
) -> torch.Tensor:
    """A ``"separate"`` embedding on a ``(T, H, W)`` grid: spatial and temporal parts broadcast and added."""
    spatial = tokens_to_grid(spatial, stored_grid[1:])
    temporal = tokens_to_grid(temporal, stored_grid[:1])
    if grid[1:] != stored_grid[1:]:
        spatial = resample(spatial, grid[1:])
    if grid[0] != stored_grid[0]:
        temporal = resample(temporal, grid[:1])
    return spatial.unsqueeze(2) + temporal[..., None, None]


def window_pos_embed(background: torch.Tensor, window: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """An ``"absolute_win"`` embedding on ``grid``: the background interpolated to it (always, as SAM2
    does) plus the window embedding tiled over it, cut to the grid where the window does not divide it."""
    reps = [math.ceil(g / w) for g, w in zip(grid, window.shape[2:])]
    tiled = window.tile([1, 1, *reps])[..., : grid[0], : grid[1]]
    return resample(background, grid) + tiled
