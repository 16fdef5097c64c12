"""Masked-autoencoder pre-training of Hiera (the paper's MAE), images and video, in plain PyTorch.

``MaskedAutoencoderHiera`` is a ``Hiera`` trunk plus the paper's pre-training parts, under the official
``mae_hiera_*`` tensor names, so official MAE checkpoints load into it (decoder included) and the ones it
writes load into every hiera_det backbone through ``load_checkpoint`` (which drops the decoder):

* masking: whole mask units are hidden, ``mask_ratio`` of them per sample (0.6 for images and 0.9 for video
  in the paper; ``mask_mode="time"`` hides whole time steps of a clip instead). The pixels under hidden
  units are zeroed before the patch convolution, whose kernel overlaps unit borders. In the mask-unit layout
  the hidden units are then *dropped* from the unrolled ``[B, units, L, C]`` tokens: the blocks run on the
  visible units only (mask-unit attention never crosses a unit, global attention runs over the visible
  tokens);
* multi-scale fusion: each stage output before the last q-pool is strided down to the final unit size by a
  convolution and summed with the last stage, then normalised (``encoder_norm``);
* decoder: a linear embedding, a learned mask token in every hidden unit, a position embedding, plain global
  transformer blocks and a linear prediction of the ``pred_stride`` x ``pred_stride`` pixels of each final
  token (video: of the first frame of each temporal patch, as the official model does);
* loss: mean squared error on the hidden tokens only, against per-patch normalised pixels by default.

The windowed HieraDet layout (``attention="window"``, images) cannot drop tokens: its windows are cut from
the complete grid. It masks densely instead (as SimMIM and ConvNeXt V2 do), at the same mask-unit
granularity: every token of a hidden unit is replaced by a learned ``encoder_mask_token`` before the
position embedding, and the encoder runs on the whole grid. Fusion, decoder and loss are the same
(``docs/mae.md``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .hiera import Hiera, HieraBlock
from .specs import hiera_kwargs
from .token_layout import GLOBAL, UnrolledLayout

DEFAULT_MASK_RATIO = {2: 0.6, 3: 0.9}  # images, video (Ryali et al. 2023, section 4)
ENCODER_INITS = ("xavier", "trunk")
MASK_MODES = ("units", "time")


class MAEOutput(NamedTuple):
    """One MAE forward: the loss and what it was computed from.

    ``pred`` and ``target`` are ``[B, tokens, pixels]`` over every final token in raster order; ``visible``
    is the ``[B, units]`` mask-unit mask that was used (True = seen by the encoder) and ``token_visible``
    the same at the resolution of ``pred`` (the loss covers the tokens where it is False).
    """

    loss: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    visible: torch.Tensor
    token_visible: torch.Tensor


def check_mask_ratio(mask_ratio: float) -> float:
    if not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(
            f"mask_ratio must be strictly between 0 and 1 (the fraction of mask units hidden), got {mask_ratio}; "
            f"the paper uses 0.6 for images and 0.9 for video"
        )
    return float(mask_ratio)


class MaskedAutoencoderHiera(Hiera):
    """Hiera encoder + multi-scale fusion + MAE decoder; ``forward(x)`` returns an ``MAEOutput``."""

    def __init__(
        self,
        *,
        mask_ratio: float | None = None,
        norm_pix_loss: bool = True,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        q_pool: int = 2,
        encoder_init: str = "xavier",
        mask_mode: str = "units",
        **hiera_args,
    ):
        if encoder_init not in ENCODER_INITS:
            raise ValueError(f"encoder_init must be one of {ENCODER_INITS}, got {encoder_init!r}")
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        hiera_args["num_classes"] = 0
        super().__init__(q_pool=q_pool, **hiera_args)
        if self.stem != "patch":
            raise ValueError(f"MAE pre-training masks pixels per patch, which needs stem='patch', got {self.stem!r}")
        if mask_mode == "time" and self.ndim != 3:
            raise ValueError("mask_mode 'time' hides whole time steps of a clip: it needs a video model; use 'units'")
        self.mask_mode = mask_mode
        del self.norm  # MAE normalises the fused features instead (encoder_norm)
        self.mask_ratio = check_mask_ratio(DEFAULT_MASK_RATIO[self.ndim] if mask_ratio is None else mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.windowed = self.attention == "window"
        # the mask unit of the paper: what the three q-pools of a four-stage trunk shrink to one token
        self.unit_size = tuple(s ** (len(self.stage_ends) - 1) for s in self.q_stride)
        if self.windowed:
            # dense masking: the whole grid enters the encoder, hidden tokens replaced by this learned token
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, self.blocks[0].dim))
            self.size_multiple = tuple(u * p for u, p in zip(self.unit_size, self.patch_stride))
            bad = [s for s, m in zip(self.input_size, self.size_multiple) if s % m]
            if bad:
                raise ValueError(
                    f"windowed MAE masks units of {self.size_multiple} px, so input_size {self.input_size} must "
                    f"be a multiple of it; use e.g. {tuple(max(m, s // m * m) for s, m in zip(self.input_size, self.size_multiple))}"
                )
        self.unit_grid = tuple(t // u for t, u in zip(self.token_grid, self.unit_size))
        self.num_units = math.prod(self.unit_grid)
        pool = [s**q_pool for s in self.q_stride]
        self.final_unit_size = tuple(u // p for u, p in zip(self.unit_size, pool))
        self.final_token_grid = tuple(t // p for t, p in zip(self.token_grid, pool))
        self.pred_stride = self.patch_stride[-1] * self.q_stride[-1] ** q_pool
        norm_eps = hiera_args.get("norm_eps", 1e-6)
        mlp_ratio = hiera_args.get("mlp_ratio", 4.0)
        encoder_dim = self.blocks[-1].dim_out

        self.encoder_norm = nn.LayerNorm(encoder_dim, eps=norm_eps)
        conv = nn.Conv2d if self.ndim == 2 else nn.Conv3d
        self.fused_stages = self.stage_ends[:q_pool] + self.stage_ends[-1:]
        self.multi_scale_fusion_heads = nn.ModuleList()
        unit = self.unit_size
        for end in self.stage_ends[:q_pool]:
            kernel = tuple(u // f for u, f in zip(unit, self.final_unit_size))
            self.multi_scale_fusion_heads.append(conv(self.blocks[end].dim_out, encoder_dim, kernel, kernel))
            unit = tuple(u // s for u, s in zip(unit, self.q_stride))
        self.multi_scale_fusion_heads.append(nn.Identity())

        self.decoder_embed = nn.Linear(encoder_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.final_token_grid), decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(
            HieraBlock(decoder_embed_dim, decoder_embed_dim, decoder_num_heads, GLOBAL, False, mlp_ratio, 0.0, norm_eps)
            for _ in range(decoder_depth)
        )
        # the decoder's blocks see one sequence of every token: global attention in either trunk layout
        self.decoder_layout = UnrolledLayout(self.q_stride, len(self.stage_ends) - 1)
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.pred_stride ** min(2, self.ndim) * self.in_chans)
        self._init_mae_weights(encoder_init)

    def _init_mae_weights(self, encoder_init: str):
        # "xavier" is the official MAE initialisation: xavier linears everywhere (and the patch embedding seen
        # as a linear). On narrow trunks that makes the encoder's weights several times larger than Hiera's
        # trunc-normal(0.02) (0.12-0.17 rms at width 32). "trunk" keeps the encoder at Hiera's own
        # initialisation, where a random-init fine-tune starts, and gives xavier to the decoder's linears only
        # (the fusion heads are convolutions and keep their own initialisation either way, as officially): with
        # it an MAE run differs from random init by its pre-training alone.
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        if self.windowed:
            nn.init.trunc_normal_(self.encoder_mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)
        encoder = {id(m) for m in self.blocks.modules()} if encoder_init == "trunk" else set()
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in encoder:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if encoder_init == "xavier":
            w = self.patch_embed.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    # ----------------------------------------------------------------------------------------------- masking
    def random_mask(
        self, batch: int, mask_ratio: float | None = None, device=None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``[batch, units]`` bool, True = visible: the ``int(units * (1 - ratio))`` units with the smallest
        uniform noise are kept, as the official ``get_random_mask`` does (same seed, same mask). With
        ``mask_mode="time"`` the draw is over the time steps of the unit grid instead, and a kept step keeps
        every unit at that time: the hidden instants must then be predicted from other instants."""
        ratio = check_mask_ratio(self.mask_ratio if mask_ratio is None else mask_ratio)
        slots = self.unit_grid[0] if self.mask_mode == "time" else self.num_units
        keep = int(slots * (1 - ratio))
        if keep < 1:
            what = "time steps of mask units" if self.mask_mode == "time" else "mask units"
            raise ValueError(
                f"mask_ratio {ratio} hides all {slots} {what} of a {self.input_size} input; "
                f"lower the ratio or use a larger input"
            )
        noise = torch.rand(batch, slots, device=device, generator=generator)
        kept = noise.argsort(dim=1)[:, :keep]
        visible = torch.zeros(batch, slots, dtype=torch.bool, device=device).scatter_(1, kept, True)
        if self.mask_mode == "time":  # units are numbered time-major (unit_grid is [T, H, W])
            visible = visible.repeat_interleave(self.num_units // slots, dim=1)
        return visible

    def _check_mask(self, visible: torch.Tensor, batch: int) -> torch.Tensor:
        if visible.dtype != torch.bool or tuple(visible.shape) != (batch, self.num_units):
            raise ValueError(
                f"the mask must be a bool tensor [batch={batch}, units={self.num_units}] (True = visible), "
                f"got {visible.dtype} {tuple(visible.shape)}"
            )
        counts = visible.sum(dim=1)
        if (counts != counts[0]).any() or counts[0] == 0:
            raise ValueError(
                f"every sample needs the same, non-zero number of visible mask units, got {counts.tolist()}"
            )
        return visible

    def token_mask(self, visible: torch.Tensor, grid_unit: Sequence[int]) -> torch.Tensor:
        """Unit mask ``[B, units]`` -> ``[B, *unit_grid * grid_unit]`` (each unit covering ``grid_unit``)."""
        m = visible.view(visible.shape[0], *self.unit_grid)
        for d, rep in enumerate(grid_unit):
            m = m.repeat_interleave(rep, dim=d + 1)
        return m

    # --------------------------------------------------------------------------------------------- encoder
    def forward_encoder(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Fused, normalised features: ``[B, visible units, final tokens, C]`` of the visible units (mask-unit
        layout), or ``[B, *final grid, C]`` of every token (windowed layout, hidden units included)."""
        self.check_input(x)
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(
                f"MAE pre-training runs at the model's input_size {self.input_size} (the decoder position "
                f"embedding is fixed), got {tuple(x.shape[2:])}; resize or crop the input"
            )
        B = x.shape[0]
        pixel_visible = self.token_mask(visible, [u * p for u, p in zip(self.unit_size, self.patch_stride)])
        x = x * pixel_visible.unsqueeze(1).to(x.dtype)
        x = self.patch_embed.proj(x).movedim(1, -1)
        if self.windowed:
            # before the position embedding, so that each mask token still knows where it is
            seen = self.token_mask(visible, self.unit_size).unsqueeze(-1)
            x = torch.where(seen, x, self.encoder_mask_token.to(x.dtype))
        x = x + self.pos_embed_for(x.shape[1:-1]).movedim(1, -1).to(x.dtype)
        x, _ = self.layout.enter(x)
        if not self.windowed:
            x = x[visible].view(B, -1, *x.shape[2:])  # drop the hidden units: the blocks never see them
        units = x.shape[1]
        heads = iter(self.multi_scale_fusion_heads)
        fused = 0.0
        pooled = 0
        checkpointing = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            x = checkpoint(block, x, self.layout, use_reentrant=False) if checkpointing else block(x, self.layout)
            pooled += int(block.q_pool)
            if i in self.fused_stages:
                fused = fused + (self._fuse_grid(x, next(heads)) if self.windowed
                                 else self._fuse_units(x, next(heads), B, units, pooled))
        if self.windowed:
            return self.encoder_norm(fused)
        return self.encoder_norm(fused).view(B, units, -1, fused.shape[-1])

    def _fuse_units(self, x: torch.Tensor, head: nn.Module, B: int, units: int, pooled: int) -> torch.Tensor:
        """A stage output ``[B, units, L, C]`` -> ``[B * units, final unit tokens, C]``."""
        # each unit's tokens back onto the unit's own grid, [B * units, *unit grid, C]
        per_unit = x.reshape(B * units, 1, *x.shape[2:])
        grid = self.layout.to_grid(per_unit, (1,) * self.ndim, pooled).flatten(1, -2)
        if isinstance(head, nn.Identity):
            return grid
        unit_grid = [u // s**pooled for u, s in zip(self.unit_size, self.q_stride)]
        grid = grid.view(B * units, *unit_grid, -1).movedim(-1, 1)
        return head(grid).movedim(1, -1).flatten(1, -2)

    def _fuse_grid(self, x: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """A windowed stage output ``[B, H, W, C]`` -> ``[B, *final grid, C]``: the kernel is the stride, so
        no output mixes two mask units, as in the mask-unit layout."""
        if isinstance(head, nn.Identity):
            return x
        return head(x.movedim(-1, 1)).movedim(1, -1)

    # --------------------------------------------------------------------------------------------- decoder
    def forward_decoder(self, latent: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Pixel predictions ``[B, final tokens, pixels]`` for every token, in raster order."""
        x = self.decoder_embed(latent)
        B, C = x.shape[0], x.shape[-1]
        if self.windowed:
            # the encoder's outputs at hidden units are replaced, as the mask-unit layout never has them
            seen = self.token_mask(visible, self.final_unit_size).unsqueeze(-1)
            x = torch.where(seen, x, self.mask_token.to(x.dtype)).reshape(B, -1, C)
        else:
            L = x.shape[2]
            full = self.mask_token.to(x.dtype).expand(B, self.num_units, L, C).clone()
            full[visible] = x.flatten(0, 1)
            # units -> spatial grid: within a unit the final tokens are already in raster order
            full = full.view(B, *self.unit_grid, *self.final_unit_size, C)
            D = self.ndim
            order = [0] + [a for d in range(D) for a in (1 + d, 1 + D + d)] + [1 + 2 * D]
            x = full.permute(order).reshape(B, -1, C)
        x = x + self.decoder_pos_embed.to(x.dtype)
        x = x.unsqueeze(1)  # one "unit" holding every token: the decoder blocks attend globally
        for block in self.decoder_blocks:
            x = block(x, self.decoder_layout)
        return self.decoder_pred(self.decoder_norm(x.squeeze(1)))

    # ------------------------------------------------------------------------------------------------ loss
    def pixel_targets(self, x: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        """``[B, final tokens, pixels]``: the pixels each final token predicts, normalised per token when
        ``normalize`` (default: ``norm_pix_loss``). Images flatten (channel, row, column); video takes the first frame of each
        temporal patch and flattens (row, column, channel), both as the official model does."""
        s = self.pred_stride
        B, C = x.shape[:2]
        if self.ndim == 2:
            H, W = x.shape[2:]
            target = x.view(B, C, H // s, s, W // s, s).permute(0, 2, 4, 1, 3, 5)
        else:
            x = x[:, :, :: self.patch_stride[0]]
            T, H, W = x.shape[2:]
            target = x.reshape(B, C, T, H // s, s, W // s, s).permute(0, 2, 3, 5, 4, 6, 1)
        target = target.reshape(B, math.prod(self.final_token_grid), -1)
        if self.norm_pix_loss if normalize is None else normalize:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward(
        self, x: torch.Tensor, visible: torch.Tensor | None = None, mask_ratio: float | None = None
    ) -> MAEOutput:
        """MAE loss on ``x`` (``[B, C, H, W]`` or ``[B, C, T, H, W]`` at ``input_size``); ``visible`` is a
        ``[B, units]`` bool mask (True = seen), drawn with ``random_mask`` when not given."""
        B = x.shape[0]
        if visible is None:
            visible = self.random_mask(B, mask_ratio, device=x.device)
        visible = self._check_mask(visible, B)
        pred = self.forward_decoder(self.forward_encoder(x, visible), visible)
        token_visible = self.token_mask(visible, self.final_unit_size).flatten(1)
        target = self.pixel_targets(x)
        hidden = ~token_visible
        loss = (pred[hidden].float() - target[hidden].float()).pow(2).mean()
        return MAEOutput(loss, pred, target, visible, token_visible)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, final tokens, pixels]`` -> images ``[B, C, H, W]`` (video: ``[B, C, T', H, W]``, one frame
        per temporal patch), the inverse of ``pixel_targets`` without normalisation."""
        s, C = self.pred_stride, self.in_chans
        B = tokens.shape[0]
        if self.ndim == 2:
            h, w = self.final_token_grid
            x = tokens.view(B, h, w, C, s, s).permute(0, 3, 1, 4, 2, 5)
            return x.reshape(B, C, h * s, w * s)
        t, h, w = self.final_token_grid
        x = tokens.view(B, t, h, w, s, s, C).permute(0, 6, 1, 2, 4, 3, 5)
        return x.reshape(B, C, t, h * s, w * s)


def build_mae(name: str, **overrides) -> MaskedAutoencoderHiera:
    """A MAE model on an official Hiera architecture, e.g. ``build_mae("hiera_base_224")``; the overrides
    are ``MaskedAutoencoderHiera`` / ``Hiera`` arguments (``None`` keeps the default)."""
    mae_keys = ("mask_ratio", "norm_pix_loss", "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "q_pool",
                "encoder_init", "mask_mode")
    mae_args = {k: overrides.pop(k) for k in mae_keys if overrides.get(k) is not None}
    overrides.pop("num_classes", None)
    kwargs = hiera_kwargs(name, **overrides)
    kwargs.pop("num_classes", None)
    return MaskedAutoencoderHiera(**kwargs, **mae_args, name=name)
