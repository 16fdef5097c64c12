"""Hiera (Ryali et al., ICML 2023) for dense prediction, images and video, in plain PyTorch.

``Hiera(...)`` returns the four stage outputs as grids (``[B, C, H, W]`` or ``[B, C, T, H, W]``) and,
on request, classification logits. Two attention schemes share every module:

* ``attention="mask_unit"``: the paper's mask-unit attention in the early stages and global attention
  after; loads the official, Hugging Face and timm weights exactly.
* ``attention="window"``: HieraDet (SAM2's image encoder), windowed attention with a per-stage window and
  full attention at chosen blocks, with "absolute-win" position embeddings (Bolya et al., ICLR 2024).

Attention always reaches ``scaled_dot_product_attention`` as 4-D tensors so that the fused kernels apply.
The whole architecture is in this file; where the tokens sit between blocks (and so what an attention
window is) lives in ``token_layout``, and the position embeddings in ``pos_embed``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import fused_mlp as mlp_kernels
from . import residual_norm as residual_norm_kernel
from .pos_embed import absolute_pos_embed, create_pos_embed, separate_pos_embed, window_pos_embed
from .token_layout import GLOBAL, MASK_UNIT, SpatialLayout, UnrolledLayout
from .window_attention import register_kernel, window_attention

ATTENTION_LAYOUTS = ("mask_unit", "window")
STEMS = ("patch", "conv")


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """fc1, exact (erf) GELU, fc2.

    For 16-bit inference on CUDA, ``fused`` (the default) runs the GELU inside the GEMMs where that is faster
    (``fused_mlp.route``, ``fused_mlp.worth_launching``): the whole MLP as one kernel for narrow layers, fc1 +
    GELU as one kernel for middle widths. Same function, at least as close to fp32. ``gelu_epilogue=True`` (opt-in) runs fc1 and a
    tanh-approximated GELU as one cuBLASLt GEMM instead; it is not the official models' function, so it is off
    by default and fp32 always takes erf."""

    def __init__(self, dim: int, hidden: int, gelu_epilogue: bool = False, fused: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.gelu_epilogue = gelu_epilogue
        self.fused = fused and mlp_kernels.register_kernels()
        self.gelu_form = mlp_kernels.GELU_FORM  # how the fused kernels compute the erf GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _inference_dtype_on_cuda(x)
        if self.gelu_epilogue and dtype == torch.bfloat16:
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            w, b = self.fc1.weight.to(dtype), self.fc1.bias.to(dtype)
            hidden = torch._addmm_activation(b, x2, w.t(), use_gelu=True).view(*x.shape[:-1], -1)
            return self.fc2(hidden)
        path, x16, params = self._kernel_path(x, dtype)
        if path != "unfused":
            with torch.autocast("cuda", enabled=False):
                if path == "mlp":
                    return torch.ops.hiera_det.mlp(x16, *params, self.gelu_form)
                w1, b1, w2, b2 = params
                return F.linear(torch.ops.hiera_det.linear_gelu(x16, w1, b1, self.gelu_form), w2, b2)
        return self.fc2(self.act(self.fc1(x)))

    def _kernel_path(self, x: torch.Tensor, dtype: torch.dtype | None):
        """The fused path a call takes (``"mlp"``, ``"linear_gelu"``) with ``x`` and the parameters in
        ``dtype``, or ``("unfused", x, ())``."""
        hidden, dim = self.fc1.weight.shape
        path = mlp_kernels.route(dim, hidden) if self.fused and dtype in mlp_kernels.DTYPES else "unfused"
        if path != "unfused" and mlp_kernels.worth_launching(x.numel() // dim, hidden):
            x16 = x.to(dtype)
            params = tuple(
                p.to(dtype) for p in (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
            )
            if mlp_kernels.kernel_applies(x16, *params):
                return path, x16, params
        return "unfused", x, ()


def _inference_dtype_on_cuda(x: torch.Tensor) -> torch.dtype | None:
    """The dtype a CUDA inference call computes in, ``None`` if ``x`` is not on CUDA or autograd is on."""
    if not x.is_cuda or torch.is_grad_enabled():
        return None
    return _compute_dtype(x)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """CUDA autocast's dtype where it is on, else ``x``'s."""
    return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype


class PartitionedAttention(nn.Module):
    """Multi-head attention inside each part of a token layout's partition, with optional q-pooling.

    The layout decides what a part is, so this one module serves every attention pattern of both layouts:
    a mask unit or the whole image (``UnrolledLayout``, the paper's mask-unit and global attention), and a
    square window or the whole image (``SpatialLayout``, HieraDet's windowed and global attention).
    Attention itself never crosses a part; the layout hands the parts over as one batch of sequences.
    With ``window_kernel`` (the default), inference on CUDA over parts of at most 64 tokens runs the
    small-window Triton kernel of ``window_attention``; everything else runs ``scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, dim_out: int, heads: int, window_kernel: bool = True):
        super().__init__()
        self.heads = heads
        self.head_dim = dim_out // heads
        self.dim_out = dim_out
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)
        self.window_kernel = window_kernel and register_kernel()

    def forward(self, x: torch.Tensor, layout, partition, pool: bool) -> torch.Tensor:
        N, L, _ = x.shape
        q, k, v = self.qkv(x).view(N, L, 3, self.heads, self.head_dim).unbind(2)
        if pool:
            q = layout.pool_q(q, partition)
        out = window_attention(q, k, v, use_kernel=self.window_kernel)
        return self.proj(out.reshape(N, -1, self.dim_out))


class HieraBlock(nn.Module):
    """Pre-norm transformer block; a stage's first block also widens channels and pools queries."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        window: int,
        q_pool: bool,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        window_kernel: bool = True,
        gelu_epilogue: bool = False,
        fused_mlp: bool = True,
        residual_norm: bool = True,
    ):
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window = window
        self.q_pool = q_pool
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = PartitionedAttention(dim, dim_out, heads, window_kernel)
        self.norm2 = nn.LayerNorm(dim_out, eps=norm_eps)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), gelu_epilogue, fused_mlp)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)
        self.residual_norm = residual_norm and residual_norm_kernel.register_kernel()

    def forward(self, x: torch.Tensor, layout) -> torch.Tensor:
        x, attn = self.shortcut_and_attention(x, layout)
        if self.residual_norm and not self.training:
            x, normed = residual_norm_kernel.add_layer_norm(x, attn, self.norm2)
            return x + self.mlp(normed)
        x = x + self.drop_path(attn)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def shortcut_and_attention(self, x: torch.Tensor, layout) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream the attention branch adds to (widened and pooled in a stage's first block)
        and that branch's output, both as tokens of ``layout``."""
        x_norm = self.norm1(x)
        if self.dim != self.dim_out:
            x = self.proj(x_norm)
        if self.q_pool:
            x = layout.pool(x)
        seqs, partition = layout.partition(x_norm, self.window)
        attn = self.attn(seqs, layout, partition, self.q_pool)
        return x, layout.merge(attn, partition, self.q_pool)

    def extra_repr(self) -> str:
        kind = {GLOBAL: "global", MASK_UNIT: "mask_unit"}.get(self.window, f"window={self.window}")
        return f"attention={kind}, q_pool={self.q_pool}"


class ClassificationHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.dropout(x))


class PatchEmbed(nn.Module):
    """Pixels to the first token grid: one strided convolution (``proj``, the paper's), optionally after a
    convolutional ``stem`` that does the downsampling instead.

    The conv stem (``stem="conv"``): two 3x3 stride-2 convolutions with GroupNorm and GELU, then ``proj`` as
    a 1x1 convolution. A transformer with such a stem optimises faster and tolerates more learning rates than
    one with a single patchifying convolution (Xiao et al., "Early convolutions help transformers see
    better", NeurIPS 2021), which matters when a trunk is trained from random init on little data. Images only,
    and only a patch stride of 4; official checkpoints hold no stem, so it is for training from scratch.

    Video inference on CUDA (``video_as_frames``, on by default) runs the 3-D patch convolution as one 2-D
    convolution over the frames with the temporal taps stacked as channels: the same sum, but cuDNN runs
    3-D convolutions of 3-channel clips on a slow generic kernel (2.4 ms of a 16-clip batch on an H100).
    16-bit inference on CUDA (``patches_as_gemm``, on by default) then runs that 2-D convolution as one GEMM
    over the gathered patches (``conv2d_as_gemm``): cuDNN pads 3 input channels to 8, converts the image to
    channels-last and runs an Ampere-style kernel, 0.64 ms of Hiera-B 224's batch of 128 on an H100 for 11
    GFLOP; the gather and a cuBLAS GEMM read and write each byte once or twice.
    """

    def __init__(
        self, ndim: int, in_chans: int, embed_dim: int, kernel, stride, padding, stem: str = "patch"
    ):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        self.video_as_frames = True
        self.patches_as_gemm = True
        if stem == "patch":
            self.stem = None
            self.proj = conv(in_chans, embed_dim, kernel, stride, padding)
            return
        if ndim != 2 or tuple(stride) != (4, 4):
            raise ValueError(
                f"the conv stem is for images at patch stride 4, got {ndim}-d input and stride "
                f"{tuple(stride)}; use stem='patch'"
            )
        widths = (max(embed_dim // 4, 16), max(embed_dim // 2, 32))
        layers, c_in = [], in_chans
        for width in widths:
            layers += [nn.Conv2d(c_in, width, 3, 2, 1, bias=False), nn.GroupNorm(8, width), nn.GELU()]
            c_in = width
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5 and self.video_as_frames and x.is_cuda and not torch.is_grad_enabled():
            return self.video_by_frames(x)
        if self.stem is None and x.dim() == 4 and self._as_gemm(x):
            conv = self.proj
            return conv2d_as_gemm(x, conv.weight, conv.bias, conv.stride, conv.padding)
        return self.proj(x if self.stem is None else self.stem(x))

    def _as_gemm(self, x: torch.Tensor) -> bool:
        return self.patches_as_gemm and _inference_dtype_on_cuda(x) in mlp_kernels.DTYPES

    def video_by_frames(self, x: torch.Tensor) -> torch.Tensor:
        """``self.proj(x)`` for clips ``[B, C, T, H, W]``, computed as a 2-D convolution over output frames
        whose input channels are the (channel, temporal tap) pairs that frame sums over."""
        conv = self.proj
        (taps, *_), (t_stride, *stride), (t_pad, *padding) = conv.kernel_size, conv.stride, conv.padding
        frames = F.pad(x, (0, 0, 0, 0, t_pad, t_pad)).unfold(2, taps, t_stride)  # [B, C, T', H, W, taps]
        B, C, T, H, W, _ = frames.shape
        frames = frames.permute(0, 2, 1, 5, 3, 4).reshape(B * T, C * taps, H, W)
        weight = conv.weight.flatten(1, 2)  # [out, C * taps, kh, kw], channel c * taps + tap as above
        if self._as_gemm(x):
            y = conv2d_as_gemm(frames, weight, conv.bias, stride, padding)
        else:
            frames = frames.contiguous(memory_format=torch.channels_last)
            y = F.conv2d(frames, weight, conv.bias, stride, padding)
        return y.view(B, T, *y.shape[1:]).transpose(1, 2)


def conv2d_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias, stride, padding) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` as one GEMM over the gathered patches, in autocast's
    dtype (or ``x``'s); the result is ``[B, out, H', W']`` in channels-last memory. The patch length is padded
    with zeros to a multiple of 8, the alignment cuBLAS's tensor-core kernels need."""
    dtype = _compute_dtype(x)
    (kh, kw), (sh, sw), (ph, pw) = weight.shape[2:], _tuple(stride, 2), _tuple(padding, 2)
    patches = F.pad(x.to(dtype), (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)
    B, C, H, W = patches.shape[:4]  # of [B, C, H', W', kh, kw]
    length = C * kh * kw
    pad = -length % 8
    patches = F.pad(patches.permute(0, 2, 3, 1, 4, 5).reshape(B * H * W, length), (0, pad))
    w = F.pad(weight.to(dtype).flatten(1), (0, pad))
    with torch.autocast("cuda", enabled=False):
        y = F.linear(patches, w, None if bias is None else bias.to(dtype))
    return y.view(B, H, W, -1).permute(0, 3, 1, 2)


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class Hiera(nn.Module):
    """Hierarchical ViT trunk returning ``{"stage1": ..., "stage4": ...}`` grids (strides 4/8/16/32).

    Inference kernels: ``window_kernel`` (default on) runs attention over windows of at most 64 tokens through
    the small-window Triton kernel on CUDA (same function as SDPA); ``fused_mlp`` (default on) runs the erf
    GELU inside the MLP's GEMMs in 16-bit CUDA inference (same function); ``residual_norm`` (default on) runs
    each block's attention residual add and second LayerNorm as one kernel in compiled 16-bit CUDA inference,
    so that compiled code stores the residual stream (``hiera_det.modeling.residual_norm``; same function);
    ``gelu_epilogue`` (default off) fuses fc1 and a tanh GELU in bf16 CUDA inference, a small departure from
    the exact-erf models (see ``Mlp``).
    """

    def __init__(
        self,
        input_size: Sequence[int] = (224, 224),
        in_chans: int = 3,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (2, 3, 16, 3),
        q_pool: int = 3,
        q_stride: Sequence[int] = (2, 2),
        mask_unit_size: Sequence[int] = (8, 8),
        mask_unit_attn: Sequence[bool] = (True, True, False, False),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        patch_kernel: Sequence[int] = (7, 7),
        patch_stride: Sequence[int] = (4, 4),
        patch_padding: Sequence[int] = (3, 3),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        num_classes: int = 1000,
        head_dropout: float = 0.0,
        attention: str = "mask_unit",
        window_spec: Sequence[int] | None = None,
        global_blocks: Sequence[int] = (),
        pos_embed: str | None = None,
        pos_embed_bkg_size: Sequence[int] | None = None,
        activation_checkpointing: bool = False,
        norm_eps: float = 1e-6,
        stem: str = "patch",
        window_kernel: bool = True,
        gelu_epilogue: bool = False,
        fused_mlp: bool = True,
        residual_norm: bool = True,
        name: str = "hiera",
    ):
        super().__init__()
        ndim = len(input_size)
        if ndim not in (2, 3):
            raise ValueError(f"input_size must be (H, W) or (T, H, W), got {tuple(input_size)}")
        if attention not in ATTENTION_LAYOUTS:
            raise ValueError(f"unknown attention layout {attention!r}; choose one of {ATTENTION_LAYOUTS}")
        if pos_embed is None:
            pos_embed = {"window": "absolute_win"}.get(attention, "separate" if ndim == 3 else "absolute")
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool must be in [0, {len(stages) - 1}], got {q_pool}")

        self.name = name
        self.input_size = tuple(input_size)
        self.ndim = ndim
        self.in_chans = in_chans
        self.patch_stride = _tuple(patch_stride, ndim)
        self.q_stride = _tuple(q_stride, ndim)
        self.attention = attention
        self.pos_embed_mode = pos_embed
        self.activation_checkpointing = activation_checkpointing
        self.num_classes = num_classes
        levels = len(stages) - 1
        self.pool_levels = q_pool

        mask_unit_size = _tuple(mask_unit_size, ndim)
        if attention == "mask_unit":
            self.layout = UnrolledLayout(self.q_stride, levels)
            if tuple(mask_unit_size) != self.layout.unit_size():
                raise ValueError(
                    f"mask_unit_size {mask_unit_size} must equal q_stride ** {levels} = "
                    f"{self.layout.unit_size()}: mask units are what the stages pool"
                )
            self.size_multiple = tuple(p * u for p, u in zip(self.patch_stride, mask_unit_size))
        else:
            self.layout = SpatialLayout(self.q_stride)
            self.size_multiple = tuple(p * s**q_pool for p, s in zip(self.patch_stride, self.q_stride))

        self.token_grid = tuple(i // s for i, s in zip(self.input_size, self.patch_stride))
        self.stem = stem
        self.patch_embed = PatchEmbed(
            ndim,
            in_chans,
            embed_dim,
            _tuple(patch_kernel, ndim),
            self.patch_stride,
            _tuple(patch_padding, ndim),
            stem,
        )
        first_window = window_spec[0] if window_spec else None
        pos_params = create_pos_embed(pos_embed, self.token_grid, embed_dim, first_window, pos_embed_bkg_size)
        for param_name, param in pos_params.items():
            self.register_parameter(param_name, param)

        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        q_pool_blocks = {end + 1 for end in self.stage_ends[:q_pool]}
        if attention == "window":
            if window_spec is None or len(window_spec) != len(stages):
                raise ValueError(f"window attention needs one window size per stage, got {window_spec}")
        depth = sum(stages)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        global_blocks = set(global_blocks)
        self.blocks = nn.ModuleList()
        self.stage_dims = []
        stage = 0
        for i in range(depth):
            dim_out = embed_dim
            # A stage's first block still attends in the previous stage's pattern: it runs at the
            # pre-pooling resolution, where the new stage's (coarser) pattern would not fit.
            if attention == "mask_unit":
                window = MASK_UNIT if mask_unit_attn[stage] else GLOBAL
            else:
                window = GLOBAL if i in global_blocks else window_spec[stage]
            if (i - 1) in self.stage_ends:
                dim_out = int(embed_dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(
                HieraBlock(
                    embed_dim,
                    dim_out,
                    num_heads,
                    window,
                    i in q_pool_blocks,
                    mlp_ratio,
                    dpr[i],
                    norm_eps,
                    window_kernel,
                    gelu_epilogue,
                    fused_mlp,
                    residual_norm,
                )
            )
            embed_dim = dim_out
            if i in self.stage_ends:
                self.stage_dims.append(dim_out)

        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = ClassificationHead(embed_dim, num_classes, head_dropout) if num_classes > 0 else None
        self.stage_strides = [
            self.patch_stride[-1] * self.q_stride[-1] ** min(k, q_pool) for k in range(len(stages))
        ]
        self._init_weights()

    def _init_weights(self):
        for name, p in self.named_parameters():
            if name.startswith("pos_embed"):
                nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.head is not None:
            self.head.projection.weight.data.mul_(0.001)

    def set_inference_kernels(
        self,
        window_kernel: bool | None = None,
        gelu_epilogue: bool | None = None,
        fused_mlp: bool | None = None,
        patches_as_gemm: bool | None = None,
        gelu_form: str | None = None,
        residual_norm: bool | None = None,
    ):
        """Switch the inference kernels of every block (the constructor's flags of the same names), the
        patch embedding's ``patches_as_gemm`` and the fused MLP's ``gelu_form`` (``fused_mlp.GELU_FORMS``);
        ``None`` leaves a setting as it is. Returns the model."""
        if gelu_form is not None and gelu_form not in mlp_kernels.GELU_FORMS:
            raise ValueError(
                f"unknown gelu_form {gelu_form!r}; choose one of {', '.join(mlp_kernels.GELU_FORMS)}"
            )
        if patches_as_gemm is not None:
            self.patch_embed.patches_as_gemm = patches_as_gemm
        for block in self.blocks:
            if window_kernel is not None:
                block.attn.window_kernel = window_kernel and register_kernel()
            if gelu_epilogue is not None:
                block.mlp.gelu_epilogue = gelu_epilogue
            if fused_mlp is not None:
                block.mlp.fused = fused_mlp and mlp_kernels.register_kernels()
            if gelu_form is not None:
                block.mlp.gelu_form = gelu_form
            if residual_norm is not None:
                block.residual_norm = residual_norm and residual_norm_kernel.register_kernel()
        return self

    @property
    def out_features(self) -> list[str]:
        return [f"stage{i + 1}" for i in range(len(self.stage_ends))]

    def check_input(self, x: torch.Tensor) -> None:
        expected = 2 + self.ndim
        kind = "image batch [B, C, H, W]" if self.ndim == 2 else "clip batch [B, C, T, H, W]"
        if x.dim() != expected:
            raise ValueError(f"{self.name} expects a {kind}, got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"{self.name} expects {self.in_chans} input channels, got {x.shape[1]}")
        sizes = tuple(x.shape[2:])
        bad = [(s, m) for s, m in zip(sizes, self.size_multiple) if s % m or s == 0]
        if bad:
            names = ("T", "H", "W")[-self.ndim :]
            rule = " x ".join(f"{n}%{m}==0" for n, m in zip(names, self.size_multiple))
            raise ValueError(
                f"{self.name} got input of size {'x'.join(map(str, sizes))}, but needs {rule} "
                f"(patch stride {self.patch_stride} times the {self.attention} pooling); pad the input "
                f"(Detectron2 does this through size_divisibility) or resize it"
            )

    def pos_embed_for(self, grid: Sequence[int]) -> torch.Tensor:
        """Position embedding for a token grid, as ``[1, C, *grid]``, resized from the stored one."""
        grid = tuple(grid)
        if self.pos_embed_mode == "absolute":
            return absolute_pos_embed(self.pos_embed, self.token_grid, grid)
        if self.pos_embed_mode == "separate":
            return separate_pos_embed(self.pos_embed_spatial, self.pos_embed_temporal, self.token_grid, grid)
        return window_pos_embed(self.pos_embed, self.pos_embed_window, grid)

    def forward(self, x: torch.Tensor, return_logits: bool = False) -> dict[str, torch.Tensor]:
        """Stage outputs as ``[B, C, *grid]`` tensors in channels-last memory (the layout convolutions
        downstream prefer), plus ``"logits"`` on request."""
        self.check_input(x)
        memory_format = torch.channels_last if self.ndim == 2 else torch.channels_last_3d
        x = self.patch_embed(x.contiguous(memory_format=memory_format)).movedim(1, -1)
        x = x + self.pos_embed_for(x.shape[1:-1]).movedim(1, -1).to(x.dtype)
        x, coarse = self.layout.enter(x)
        outputs = {}
        pooled = 0
        checkpointing = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if checkpointing:
                x = checkpoint(block, x, self.layout, use_reentrant=False)
            else:
                x = block(x, self.layout)
            pooled += int(block.q_pool)
            if i in self.stage_ends:
                stage = self.stage_ends.index(i) + 1
                outputs[f"stage{stage}"] = self.layout.to_grid(x, coarse, pooled).movedim(-1, 1)
        if return_logits:
            if self.head is None:
                raise ValueError(f"{self.name} was built with num_classes=0 (features only): no logits")
            pooled_tokens = x.flatten(1, -2).mean(dim=1)
            outputs["logits"] = self.head(self.norm(pooled_tokens))
        return outputs
