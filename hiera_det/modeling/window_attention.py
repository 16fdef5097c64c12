"""Attention inside many short windows (at most 64 keys) in one Triton kernel: Hiera's inference path on CUDA.

Hiera's mask-unit windows hold 64, 16 or 4 queries over 16-64 keys (head dim 96 in every Hiera-B), and
there are thousands of them per batch. Fused attention kernels (cuDNN, Flash) tile at 64x128, so most of each
tile is padding and the early blocks cost far more than their bytes. Here one program holds whole windows:
it loads a window's queries, keys and values once, takes the scores with one ``tl.dot``, the exact softmax in
fp32, and writes the output. The kernel reads the projections in place (``[N, L, heads, d]`` views of the qkv
output) and writes ``[N, Lq, heads, d]``, the layout the output projection reads, so no transposes are copied.

It runs only for inference on CUDA (no autograd: training keeps ``scaled_dot_product_attention``) and only
where Triton is installed. It is a ``torch.library.triton_op``: ``torch.compile`` sees the Triton kernel and
launches it from its own generated code (no graph break, no decomposition, no Python dispatch per call), and
CUDA graphs capture it. Registering the op imports Triton, so it happens when the first model that wants the
kernel is built on a machine with CUDA (``register_kernel``), never at import.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch
import torch.nn.functional as F

MAX_KEYS = 64  # longer windows (stage 3 global attention) fill the fused kernels' tiles: SDPA is right there
MAX_HEAD_DIM = 128
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_registered = False


def register_kernel() -> bool:
    """Register the ``hiera_det::window_attention`` op (importing Triton) if Triton and CUDA are there;
    whether it is registered. Models call this when built with the kernel on."""
    global _registered
    if not _registered and _HAS_TRITON and torch.cuda.is_available():
        torch.library.triton_op("hiera_det::window_attention", _window_attention_op, mutates_args=())
        _registered = True
    return _registered


def exporting() -> bool:
    """Whether ``torch.export`` (or an exporter built on it) is tracing the model.

    Not ``torch.compiler.is_exporting()``: under ``torch.compile``, the dynamo of torch 2.11 answers it with
    True (a constant it folds for every trace; later releases read the flag), which turned the kernel off in
    every compiled model (found on an H100, session 7). The flag that ``torch.export`` sets is read
    instead."""
    return bool(getattr(torch.compiler, "_is_exporting_flag", False)) or (
        not torch.compiler.is_compiling() and torch.compiler.is_exporting()
    )


def static_shapes(*tensors: torch.Tensor) -> bool:
    """Whether every size and stride of ``tensors`` is a plain int. The inference kernels take them as Triton
    compile-time constants, which a symbolic size cannot be: under ``torch.compile`` with dynamic shapes
    (``dynamic=True``, or dynamo's automatic dynamic shapes once a model has met a second input size) each
    op's body computes with the plain ops instead. It is asked inside the ops' bodies, which inductor traces
    with the real symbolic sizes; dynamo's own trace answers ``isinstance(size, int)`` with True for them."""
    return all(isinstance(n, int) for t in tensors for n in (*t.shape, *t.stride()))


def kernel_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``window_attention`` runs the Triton kernel for these ``[N, L, heads, d]`` inputs. Never while
    exporting or tracing: an exported graph keeps standard operators (SDPA)."""
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return (
        _registered
        and q.is_cuda
        and not needs_grad
        and not torch.jit.is_tracing()
        and not exporting()
        and k.shape[1] <= MAX_KEYS
        and q.shape[-1] <= MAX_HEAD_DIM
        and q.dtype in DTYPES
        and q.dtype == k.dtype == v.dtype
    )


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, use_kernel: bool = True
) -> torch.Tensor:
    """Softmax attention inside each of N windows: ``q`` ``[N, Lq, heads, d]``, ``k`` and ``v``
    ``[N, Lk, heads, d]`` (any strides) -> ``[N, Lq, heads, d]``, scaled by ``d ** -0.5`` as SDPA does.
    The Triton kernel if ``use_kernel`` and ``kernel_applies``, ``scaled_dot_product_attention`` otherwise."""
    if use_kernel and kernel_applies(q, k, v):
        return torch.ops.hiera_det.window_attention(q, k, v)
    return sdpa(q, k, v)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """What the kernel computes, through ``scaled_dot_product_attention``, in the same layouts."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _window_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return launch(q, k, v) if static_shapes(q, k, v) else sdpa(q, k, v)


def launch_config(q_block: int, k_block: int) -> tuple[int, int]:
    """(windows x heads per program, warps) for a score tile of ``q_block`` x ``k_block``: the fastest of a
    sweep at Hiera-B's shapes on an H100 (``benchmarks/trunk_variants.py``, ``window_attention_micro``)."""
    return {(64, 64): (2, 4), (16, 64): (1, 2)}.get((q_block, k_block), (2, 2))


def launch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, per_program: int = 0, warps: int = 0
) -> torch.Tensor:
    """Run the kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``); ``per_program`` and
    ``warps`` override ``launch_config`` (benchmarks sweep them)."""
    import triton

    N, q_len, heads, head_dim = q.shape
    k_len = k.shape[1]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    # tl.dot needs every tile side a power of two and at least 16
    q_block, k_block, d_block = (max(16, triton.next_power_of_2(n)) for n in (q_len, k_len, head_dim))
    default_per_program, default_warps = launch_config(q_block, k_block)
    per_program = per_program or default_per_program
    pairs = N * heads
    # The scale is a compile-time constant because it must not be a run-time float: launched from
    # torch.compile'd code a Python float arrives as fp64, and the kernel then scaled and exponentiated its
    # scores in double precision, 2-3x slower with twice the registers (H100, session 8,
    # benchmarks/window_kernel_launch.py).
    torch.library.wrap_triton(_kernel())[(triton.cdiv(pairs, per_program),)](
        q, k, v, out, pairs, SCALE_LOG2=head_dim**-0.5 * math.log2(math.e),
        HEADS=heads, Q_LEN=q_len, K_LEN=k_len, HEAD_DIM=head_dim, **_strides(q=q, k=k, v=v, o=out),
        Q_BLOCK=q_block, K_BLOCK=k_block, D_BLOCK=d_block, PER_PROGRAM=per_program,
        IEEE=q.dtype == torch.float32, num_warps=warps or default_warps,
    )  # fmt: skip
    return out


def _strides(**tensors: torch.Tensor) -> dict[str, int]:
    """The window, row and head strides of each tensor (``q_sn``, ``q_sl``, ``q_sh``, ...) as the kernel's
    compile-time constants: each model position has fixed sizes and strides, so only the window count is a
    run-time argument."""
    return {f"{name}_s{dim}": int(s) for name, t in tensors.items() for dim, s in zip("nlh", t.stride()[:3])}


@functools.cache
def _kernel():
    """The Triton kernel, defined on first use so that importing the model never imports Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def window_attention_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, pairs, SCALE_LOG2: tl.constexpr,
        HEADS: tl.constexpr, Q_LEN: tl.constexpr, K_LEN: tl.constexpr, HEAD_DIM: tl.constexpr,
        q_sn: tl.constexpr, q_sl: tl.constexpr, q_sh: tl.constexpr, k_sn: tl.constexpr, k_sl: tl.constexpr,
        k_sh: tl.constexpr, v_sn: tl.constexpr, v_sl: tl.constexpr, v_sh: tl.constexpr, o_sn: tl.constexpr,
        o_sl: tl.constexpr, o_sh: tl.constexpr, Q_BLOCK: tl.constexpr, K_BLOCK: tl.constexpr,
        D_BLOCK: tl.constexpr, PER_PROGRAM: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        heads, q_len, k_len, head_dim = HEADS, Q_LEN, K_LEN, HEAD_DIM
        rows_q = tl.arange(0, Q_BLOCK)[:, None]
        rows_k = tl.arange(0, K_BLOCK)[:, None]
        cols = tl.arange(0, D_BLOCK)[None, :]
        key_is_real = tl.arange(0, K_BLOCK)[None, :] < k_len
        for i in tl.static_range(PER_PROGRAM):
            pair = tl.program_id(0) * PER_PROGRAM + i  # one (window, head)
            n = (pair // heads).to(tl.int64)
            h = pair % heads
            q_mask = (pair < pairs) & (rows_q < q_len) & (cols < head_dim)
            kv_mask = (pair < pairs) & (rows_k < k_len) & (cols < head_dim)
            q = tl.load(q_ptr + n * q_sn + h * q_sh + rows_q * q_sl + cols, mask=q_mask, other=0.0)
            k = tl.load(k_ptr + n * k_sn + h * k_sh + rows_k * k_sl + cols, mask=kv_mask, other=0.0)
            v = tl.load(v_ptr + n * v_sn + h * v_sh + rows_k * v_sl + cols, mask=kv_mask, other=0.0)
            if IEEE:  # fp32 in, fp32 products (not TF32), as SDPA computes them
                scores = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                scores = tl.dot(q, tl.trans(k))
            scores = tl.where(key_is_real, scores * SCALE_LOG2, float("-inf"))
            p = tl.exp2(scores - tl.max(scores, 1)[:, None])
            if IEEE:
                o = tl.dot(p, v, input_precision="ieee")
            else:
                o = tl.dot(p.to(v.dtype), v)
            o = o / tl.sum(p, 1)[:, None]
            o_at = o_ptr + n * o_sn + h * o_sh + rows_q * o_sl + cols
            tl.store(o_at, o.to(o_ptr.dtype.element_ty), mask=q_mask)

    return window_attention_kernel
