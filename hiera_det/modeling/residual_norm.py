"""A block's attention residual add and its second LayerNorm as one Triton kernel, for compiled inference.

``torch.compile`` (inductor) does not store the residual stream after each add when the add is cheap to
redo: every later LayerNorm kernel recomputes the stream from all the branch outputs that made it. In
Hiera-B 224's stage 1 at batch 128 the four LayerNorm kernels then read one to four 77 MB tensors each,
three of them twice (looped reductions): 0.75 ms on an H100 against about 0.37 ms for reading two tensors
and writing two (session 10's profile, ``benchmarks/results/trunk_kernel.md``). ``add_layer_norm`` is an
opaque op that takes the stream and stores both the sum and its norm, so inductor must store the stream once
per block and each LayerNorm reads it once. It took the compiled model's GPU time per call from 10.38 to
9.96 ms, and Hiera-B 224 b128 from 12,010 to 12,467 im/s (bf16 weights, session 11).

Eager code stores the stream anyway, so the kernel runs only under ``torch.compile``, for 16-bit CUDA
inference (no autograd, not exporting), where Triton is installed. The sum is rounded to the stream's dtype
before it is normalised, as the unfused eager path does; under autocast the stream is fp32 and only the
norm is 16-bit. Registering the op imports Triton, which happens when the first model that wants it is built
on a machine with CUDA (``register_kernel``), never at import.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from .window_attention import exporting, static_shapes

DTYPES = (torch.bfloat16, torch.float16)  # of the branch and the norm; the stream may also be fp32
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_registered = False
_kernel = None


def register_kernel() -> bool:
    """Register ``hiera_det::add_layer_norm`` (importing Triton) if Triton and CUDA are there; whether it
    is registered."""
    global _registered
    if not _registered and _HAS_TRITON and torch.cuda.is_available():
        torch.library.triton_op("hiera_det::add_layer_norm", _add_layer_norm_op, mutates_args=())
        _registered = True
    return _registered


def kernel_applies(x: torch.Tensor, y: torch.Tensor, norm_dtype: torch.dtype) -> bool:
    """Whether ``add_layer_norm`` runs the kernel for stream ``x`` and branch ``y``: compiled 16-bit CUDA
    inference, same shapes, not exporting or tracing."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    return (
        _registered
        and torch.compiler.is_compiling()
        and x.is_cuda
        and y.dtype in DTYPES
        and norm_dtype in DTYPES
        and x.shape == y.shape
        and not needs_grad
        and not torch.jit.is_tracing()
        and not exporting()
    )


def add_layer_norm(
    x: torch.Tensor, y: torch.Tensor, norm: nn.LayerNorm, use_kernel: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + y, norm(x + y))``; one kernel where ``use_kernel`` and ``kernel_applies``, else the plain ops.
    The norm comes out in autocast's dtype where autocast is on, else in ``y``'s."""
    norm_dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else y.dtype
    if not (use_kernel and kernel_applies(x, y, norm_dtype)):
        total = x + y
        return total, norm(total)
    weight, bias = norm.weight.to(norm_dtype), norm.bias.to(norm_dtype)
    return torch.ops.hiera_det.add_layer_norm(
        x.contiguous(), y.contiguous(), weight, bias, norm.eps, norm_dtype
    )


def _triton_kernel():
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


def launch(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, norm_dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, layer_norm(s))`` with ``s = x + y`` in ``x``'s dtype (``x``, ``y`` contiguous ``[..., D]``) and the
    norm in ``norm_dtype``; any device Triton runs on (its interpreter included)."""
    import triton

    global _kernel
    _kernel = _kernel or _triton_kernel()
    D = x.shape[-1]
    rows = x.numel() // D
    total = torch.empty_like(x)
    normed = torch.empty(x.shape, dtype=norm_dtype, device=x.device)
    if rows == 0:
        return total, normed
    d_block = triton.next_power_of_2(D)
    block_m = max(1, 4096 // d_block)
    torch.library.wrap_triton(_kernel)[(triton.cdiv(rows, block_m),)](
        x, y, weight, bias, total, normed, rows, D=D, D_BLOCK=d_block, BLOCK_M=block_m, EPS=eps,
        num_warps=4 if d_block <= 256 else 8,
    )  # fmt: skip
    return total, normed


def _add_layer_norm_op(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    norm_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    if static_shapes(x, y):
        return launch(x, y, weight, bias, eps, norm_dtype)
    # symbolic sizes (dynamic shapes) cannot be the kernel's constants: the same function in plain ops
    total = x + y
    normed = F.layer_norm(total.float(), total.shape[-1:], weight.float(), bias.float(), eps)
    return total, normed.to(norm_dtype)
