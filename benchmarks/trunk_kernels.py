"""Experimental inference kernels for the trunk's small shapes (measured by ``trunk_variants``, not shipped as
defaults): many small attention windows packed into one attention sequence (FlexAttention, or SDPA with a
block-diagonal mask) and fc1 + erf GELU fused at every width. (Session 10's residual add + LayerNorm kernel
was measured here and now ships: ``hiera_det.modeling.residual_norm``.)

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
) -> torch.nn.Module:
    """A copy of ``model`` (same weights) with fc1 + GELU fused, attention windows of at most
    ``pack_up_to`` keys (default ``pack_keys // 2``) packed ``pack_keys`` keys to a sequence through
    ``pack_kernel`` ("flex" or "sdpa"; ``pack_keys=0`` packs nothing)."""
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
