"""Experimental inference kernels for the trunk's small shapes (measured by ``trunk_variants``, not shipped as
defaults): many small attention windows packed into one attention sequence (FlexAttention, or SDPA with a
block-diagonal mask), fc1 + erf GELU fused at every width, and the block's residual add + LayerNorm as one
kernel that stores the residual stream (``residual_norm``).

``with_fast_kernels(model, ...)`` returns a copy of a ``Hiera`` whose MLPs and attention modules use them.
Both compute the model's function: the packed attention masks every packed window to itself, and the fused
fc1 is the shipped ``hiera_det.modeling.fused_mlp`` kernel (CUDA, 16-bit, autograd off; elsewhere the plain
path runs), here forced onto every MLP instead of the widths ``fused_mlp.route`` gives it. Session 5's own
fused fc1 kernel and the packed attention were slower than the shipped model on an H100
(results/trunk_h100.md); the fused fc1 was rewritten in session 8 (results/trunk_kernel.md).
"""

from __future__ import annotations

import copy
import types

import torch
import torch.nn.functional as F

from hiera_det.modeling import fused_mlp

# --------------------------------------------------------------------------------------------------------
# packed small-window attention


def _same_window(q_len: int, k_len: int):
    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.where(q_idx // q_len == kv_idx // k_len, score, -float("inf"))

    return score_mod


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pack_keys: int, kernel: str):
    """Attention inside each of N short windows, computed on windows packed ``pack_keys // Lk`` to a
    sequence, each masked to itself.

    ``q`` is ``[N, Lq, heads, d]``, ``k`` and ``v`` ``[N, Lk, heads, d]`` (the layout the qkv projection
    gives, so packing is a view); returns ``[N, Lq, heads, d]``. ``kernel`` is "flex" (FlexAttention with
    a same-window score mask; needs torch.compile to be fast) or "sdpa" (a boolean block-diagonal mask,
    which sends ``scaled_dot_product_attention`` to its memory-efficient kernel).
    """
    N, Lq, h, d = q.shape
    Lk = k.shape[1]
    per_pack = max(pack_keys // Lk, 1)
    pad = (-N) % per_pack
    if pad:  # padded windows are all zeros: a uniform softmax over zeros, then dropped
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, 0, 0, pad)) for t in (q, k, v))
    groups = (N + pad) // per_pack
    qp = q.reshape(groups, per_pack * Lq, h, d).transpose(1, 2)
    kp = k.reshape(groups, per_pack * Lk, h, d).transpose(1, 2)
    vp = v.reshape(groups, per_pack * Lk, h, d).transpose(1, 2)
    if kernel == "flex":
        from torch.nn.attention.flex_attention import flex_attention

        out = flex_attention(qp, kp, vp, score_mod=_same_window(Lq, Lk))
    elif kernel == "sdpa":
        qi = torch.arange(per_pack * Lq, device=q.device) // Lq
        ki = torch.arange(per_pack * Lk, device=q.device) // Lk
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=qi[:, None] == ki[None, :])
    else:
        raise ValueError(f"unknown packed attention kernel {kernel!r}; choose 'flex' or 'sdpa'")
    out = out.transpose(1, 2).reshape(groups * per_pack, Lq, h, d)
    return out[:N] if pad else out


# --------------------------------------------------------------------------------------------------------
# residual add + LayerNorm
#
# Session 10's H100 profile of the compiled Hiera-B 224 b128: inductor does not store the residual stream
# after each stage-1 block. Each LayerNorm kernel recomputes it from every earlier branch output (the patch
# GEMM's output, the position embedding, each attention and MLP output), so the four stage-1 LayerNorms read
# 1 to 4 tensors of 77 MB, three of them twice (looped reductions): 0.75 ms, against about 0.37 ms for
# read-two-write-two. An opaque op that takes the stream as input makes inductor store it, and this one also
# stores the sum it makes; both LayerNorms of a block then cost read-two-write-two.

_registered = False


def _add_layer_norm_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def add_layer_norm_kernel(
        x_ptr, y_ptr, w_ptr, b_ptr, sum_ptr, norm_ptr, M, D: tl.constexpr, D_BLOCK: tl.constexpr,
        BLOCK_M: tl.constexpr, EPS: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
        cols = tl.arange(0, D_BLOCK)[None, :]
        mask = (rows < M) & (cols < D)
        at = rows.to(tl.int64) * D + cols
        x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + at, mask=mask, other=0.0).to(tl.float32)
        # the sum as stored (the stream's dtype), as the unfused path normalizes it
        s = (x + y).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + at, s, mask=mask)
        s = s.to(tl.float32)
        mean = tl.sum(s, 1) / D
        centered = tl.where(mask, s - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 1) / D + EPS)
        w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
        out = centered * rstd[:, None] * w + b
        tl.store(norm_ptr + at, out.to(norm_ptr.dtype.element_ty), mask=mask)

    return add_layer_norm_kernel


_KERNEL = None


def launch_add_layer_norm(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, norm_dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, layer_norm(s))`` with ``s = x + y`` in ``x``'s dtype (``x``, ``y`` contiguous ``[..., D]``) and
    the norm in ``norm_dtype`` (under autocast the stream is fp32 and the norm feeds a bf16 GEMM)."""
    import triton

    global _KERNEL
    _KERNEL = _KERNEL or _add_layer_norm_kernel()
    D = x.shape[-1]
    rows = x.numel() // D
    total = torch.empty_like(x)
    norm = torch.empty(x.shape, dtype=norm_dtype, device=x.device)
    if rows == 0:
        return total, norm
    d_block = triton.next_power_of_2(D)
    block_m = max(1, 4096 // d_block)
    torch.library.wrap_triton(_KERNEL)[(triton.cdiv(rows, block_m),)](
        x, y, weight, bias, total, norm, rows, D=D, D_BLOCK=d_block, BLOCK_M=block_m, EPS=eps,
        num_warps=4 if d_block <= 256 else 8,
    )  # fmt: skip
    return total, norm


def _add_layer_norm_op(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    norm_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    return launch_add_layer_norm(x, y, weight, bias, eps, norm_dtype)


def register_add_layer_norm() -> bool:
    global _registered
    if not _registered and torch.cuda.is_available():
        torch.library.triton_op("hiera_det_bench::add_layer_norm", _add_layer_norm_op, mutates_args=())
        _registered = True
    return _registered


def add_layer_norm(
    x: torch.Tensor, y: torch.Tensor, norm: torch.nn.LayerNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + y, norm(x + y))``: one kernel for CUDA inference with 16-bit ``y`` (the stream ``x`` may be
    fp32, as under autocast), the plain ops elsewhere."""
    autocast = torch.is_autocast_enabled("cuda")
    norm_dtype = torch.get_autocast_dtype("cuda") if autocast else y.dtype
    applies = (
        _registered
        and x.is_cuda
        and not torch.is_grad_enabled()
        and y.dtype in fused_mlp.DTYPES  # the 16-bit dtypes of the model's other inference kernels
        and norm_dtype in fused_mlp.DTYPES
        and x.shape == y.shape
        and x.is_contiguous()
        and y.is_contiguous()
    )
    if not applies:
        total = x + y
        return total, norm(total)
    params = (norm.weight.to(norm_dtype), norm.bias.to(norm_dtype))
    return torch.ops.hiera_det_bench.add_layer_norm(x, y, *params, norm.eps, norm_dtype)


def _block_forward(self, x, layout):
    """``HieraBlock.forward`` with the attention residual add and ``norm2`` as one ``add_layer_norm``; the
    stream is then stored after every block (the op takes it as input)."""
    x, attn = self.shortcut_and_attention(x, layout)
    x, h = add_layer_norm(x.contiguous(), attn.contiguous(), self.norm2)
    return x + self.mlp(h)


# --------------------------------------------------------------------------------------------------------
# a model that uses them


def _mlp_forward(self, x):
    """``Mlp.forward`` with fc1 + GELU in the shipped fused kernel (``hiera_det.modeling.fused_mlp``) at every
    width, never the whole-MLP kernel; the plain modules where the kernel does not apply."""
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    params = [p.to(dtype) for p in (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)]
    if not (x.is_cuda and fused_mlp.register_kernels() and fused_mlp.kernel_applies(x.to(dtype), *params)):
        return self.fc2(self.act(self.fc1(x)))
    with torch.autocast("cuda", enabled=False):
        hidden = torch.ops.hiera_det.linear_gelu(x.to(dtype), params[0], params[1], self.gelu_form)
        return F.linear(hidden, params[2], params[3])


def _attention_forward(pack_keys: int, pack_up_to: int, kernel: str):
    """``PartitionedAttention.forward`` with windows of at most ``pack_up_to`` keys packed. Mirrors the
    shipped forward's signature and projections (hiera_det/modeling/hiera.py)."""

    def forward(self, x, layout, partition, pool):
        N, L, _ = x.shape
        q, k, v = self.qkv(x).view(N, L, 3, self.heads, self.head_dim).unbind(2)
        if pool:
            q = layout.pool_q(q, partition)
        if L <= pack_up_to and N > 1:
            out = packed_attention(q, k, v, pack_keys, kernel)
            return self.proj(out.reshape(N, -1, self.dim_out))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(N, -1, self.dim_out))

    return forward


def with_fast_kernels(
    model: torch.nn.Module,
    fused_gelu: bool = False,
    pack_keys: int = 0,
    pack_up_to: int | None = None,
    pack_kernel: str = "flex",
    residual_norm: bool = False,
) -> torch.nn.Module:
    """A copy of ``model`` (same weights) with fc1 + GELU fused, attention windows of at most
    ``pack_up_to`` keys (default ``pack_keys // 2``) packed ``pack_keys`` keys to a sequence through
    ``pack_kernel`` ("flex" or "sdpa"; ``pack_keys=0`` packs nothing), and with ``residual_norm`` each
    block's attention residual add and second LayerNorm as one kernel (``add_layer_norm``)."""
    from hiera_det.modeling.hiera import HieraBlock, Mlp, PartitionedAttention

    if pack_kernel not in ("flex", "sdpa"):
        raise ValueError(f"unknown pack_kernel {pack_kernel!r}; choose 'flex' or 'sdpa'")
    pack_up_to = pack_keys // 2 if pack_up_to is None else pack_up_to
    model = copy.deepcopy(model)
    if residual_norm:
        register_add_layer_norm()
    for module in model.modules():
        if isinstance(module, Mlp) and fused_gelu:
            module.forward = types.MethodType(_mlp_forward, module)
        elif isinstance(module, PartitionedAttention) and pack_keys:
            module.forward = types.MethodType(_attention_forward(pack_keys, pack_up_to, pack_kernel), module)
        elif isinstance(module, HieraBlock) and residual_norm:
            if not isinstance(module.drop_path, torch.nn.Identity):
                raise ValueError("residual_norm is for inference models: build the trunk without drop_path")
            module.forward = types.MethodType(_block_forward, module)
    return model
