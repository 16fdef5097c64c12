"""Experimental inference kernels for the trunk's small shapes (measured by ``trunk_variants``, not shipped):
fc1 with its exact (erf) GELU in one Triton pass, and many small attention windows packed into one
attention sequence (FlexAttention, or SDPA with a block-diagonal mask).

``with_fast_kernels(model, ...)`` returns a copy of a ``Hiera`` whose MLPs and attention modules use them.
Both compute the model's function: the fused fc1 applies the erf GELU to the fp32 accumulator (the plain
path rounds to bf16 first), and the packed attention masks every packed window to itself. The fused fc1
needs CUDA and Triton and has no backward, so it runs only on CUDA, in 16-bit, with autograd off; elsewhere
the plain path runs. On an H100 both were slower than the shipped model (results/trunk_h100.md).
"""

from __future__ import annotations

import copy
import functools
import os
import types

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------------
# fc1 + erf GELU


@functools.cache
def _linear_gelu_kernel():
    """The Triton kernel, built on first use so that importing the model never needs Triton."""
    import triton
    import triton.language as tl

    def tile(m, n, k, warps, stages):
        return triton.Config(
            {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=warps, num_stages=stages
        )

    configs = [tile(128, 128, 32, 8, 4), tile(128, 256, 64, 8, 3), tile(128, 128, 64, 4, 4)]
    if os.environ.get("TRITON_INTERPRET") == "1":  # the CPU interpreter (tests): one small tile, no tuning
        configs = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2})]

    @triton.autotune(configs=configs, key=["M", "N", "K"])
    @triton.jit
    def _fc1_gelu_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, sxm, sxk, swn, swk, sym, syn,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        pid = tl.program_id(0)
        grid_m = tl.cdiv(M, BLOCK_M)
        grid_n = tl.cdiv(N, BLOCK_N)
        # grouped order: consecutive programs share rows of x, so x tiles are read from L2, not HBM
        width = GROUP_M * grid_n
        group = pid // width
        first_m = group * GROUP_M
        size_m = min(grid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % width) % size_m
        pid_n = (pid % width) // size_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        x_tile = x_ptr + rm[:, None] * sxm + rk[None, :] * sxk
        w_tile = w_ptr + rn[None, :] * swn + rk[:, None] * swk
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(x_tile, mask=(rm[:, None] < M) & (rk[None, :] < k_left), other=0.0)
            b = tl.load(w_tile, mask=(rk[:, None] < k_left) & (rn[None, :] < N), other=0.0)
            acc = tl.dot(a, b, acc)
            x_tile += BLOCK_K * sxk
            w_tile += BLOCK_K * swk
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        y = y_ptr + rm[:, None] * sym + rn[None, :] * syn
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))

    return _fc1_gelu_kernel


@torch.library.custom_op("hiera_det::linear_gelu", mutates_args=())
def _linear_gelu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    import triton

    x2 = x.reshape(-1, x.shape[-1])
    M, K = x2.shape
    N = weight.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    kernel = _linear_gelu_kernel()

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    kernel[grid](x2, weight, bias, y, M, N, K, x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1),
                 y.stride(0), y.stride(1))
    return y.view(*x.shape[:-1], N)


@_linear_gelu_op.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(linear(x, weight, bias))`` (erf GELU) in one kernel, in the autocast dtype if autocast is on.
    CUDA only, no autograd."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return _linear_gelu_op(x, weight, bias)


def linear_gelu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What ``linear_gelu`` computes, in plain PyTorch ops (the fallback and the tests' reference)."""
    return F.gelu(F.linear(x, weight, bias))


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
# a model that uses them


def _fused_gelu_applies(x: torch.Tensor) -> bool:
    if not x.is_cuda or torch.is_grad_enabled():
        return False
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    return dtype in (torch.bfloat16, torch.float16)


def _mlp_forward(self, x):
    if _fused_gelu_applies(x):
        return self.fc2(linear_gelu(x, self.fc1.weight, self.fc1.bias))
    return self.fc2(self.act(self.fc1(x)))


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
) -> torch.nn.Module:
    """A copy of ``model`` (same weights) with fc1 + GELU fused, and attention windows of at most
    ``pack_up_to`` keys (default ``pack_keys // 2``) packed ``pack_keys`` keys to a sequence through
    ``pack_kernel`` ("flex" or "sdpa"). ``pack_keys=0`` packs nothing."""
    from hiera_det.modeling.hiera import Mlp, PartitionedAttention

    if pack_kernel not in ("flex", "sdpa"):
        raise ValueError(f"unknown pack_kernel {pack_kernel!r}; choose 'flex' or 'sdpa'")
    pack_up_to = pack_keys // 2 if pack_up_to is None else pack_up_to
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, Mlp) and fused_gelu:
            module.forward = types.MethodType(_mlp_forward, module)
        elif isinstance(module, PartitionedAttention) and pack_keys:
            module.forward = types.MethodType(_attention_forward(pack_keys, pack_up_to, pack_kernel), module)
    return model
