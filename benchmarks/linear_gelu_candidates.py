"""Candidate fc1 + GELU kernels for ``fused_mlp_sweep``: persistent grids, with pointer loads or with the
Hopper bulk tensor copies (TMA descriptors), against the shipped one-tile-per-program kernel.

Why: without its activation the shipped kernel's GEMM takes 0.075 ms at Hiera-B 224 b128's stage 3 where
cuBLAS takes 0.057 (H100, session 9), and the epilogue (bias + GELU, about 19 instructions per element) then
runs while the tensor cores idle. A persistent program walks many tiles; with the tile and K loops
flattened, Triton's pipeliner issues the next tile's loads during the current tile's epilogue. Measured by
``python -m benchmarks.fused_mlp_sweep --candidates``.

Session 10 (H100, ``results/trunk_kernel.md#session-10-h100``): the best TMA setting beat the shipped kernel
alone (0.090 against 0.101 ms at stage 3, 0.070 against 0.077 at stage 4), but inside the compiled Hiera-B 224
b128, on and off in one process, the model was 0.08-0.15 ms slower per call with it, so the model keeps the
shipped kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hiera_det.modeling.fused_mlp_triton import gelu, store_bias_gelu


@triton.jit
def _tile(tile_id, grid_m, GROUP_M: tl.constexpr, grid_n):
    # grouped order, as in the shipped kernel: programs running together share rows of x through L2
    group_size = GROUP_M * grid_n
    first_m = (tile_id // group_size) * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (tile_id % group_size) % size_m
    pid_n = (tile_id % group_size) // size_m
    return pid_m, pid_n


@triton.jit
def persistent_kernel(
    x_ptr, w_ptr, b_ptr, o_ptr, M, N: tl.constexpr, K: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PROGRAMS: tl.constexpr,
    GELU: tl.constexpr,
):  # fmt: skip
    # x [M, K] and w [N, K] contiguous, K a multiple of BLOCK_K
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    tiles = grid_m * grid_n
    k_tiles = K // BLOCK_K
    rk = tl.arange(0, BLOCK_K)
    for tile_id in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=True):
        pid_m, pid_n = _tile(tile_id, grid_m, GROUP_M, grid_n)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rm_in = tl.max_contiguous(tl.multiple_of(tl.where(rm < M, rm, 0), BLOCK_M), BLOCK_M).to(tl.int64)
        rn_in = tl.max_contiguous(tl.multiple_of(tl.where(rn < N, rn, 0), BLOCK_N), BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k_tiles):
            kk = k * BLOCK_K + rk
            a = tl.load(x_ptr + rm_in[:, None] * K + kk[None, :])
            b = tl.load(w_ptr + rn_in[None, :] * K + kk[:, None])
            acc = tl.dot(a, b, acc)
        store_bias_gelu(acc, b_ptr, o_ptr, rm, rn, rn_in, M, N, GELU)


@triton.jit
def tma_kernel(
    x_ptr, w_ptr, b_ptr, o_ptr, M, N: tl.constexpr, K: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PROGRAMS: tl.constexpr,
    GELU: tl.constexpr, SUBTILE: tl.constexpr, FLATTEN: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip
    # the descriptors zero-fill loads past the edges and clip stores there, so nothing is masked
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    o_desc = tl.make_tensor_descriptor(
        o_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N // 2 if SUBTILE else BLOCK_N]
    )
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    tiles = grid_m * grid_n
    k_tiles = K // BLOCK_K
    for tile_id in tl.range(
        tl.program_id(0), tiles, PROGRAMS, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE
    ):
        pid_m, pid_n = _tile(tile_id, grid_m, GROUP_M, grid_n)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k_tiles):
            a = x_desc.load([off_m, k * BLOCK_K])
            b = w_desc.load([off_n, k * BLOCK_K])
            acc = tl.dot(a, b.T, acc)
        if SUBTILE:  # two halves: the epilogue holds half the tile's temporaries at a time
            acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            rn = off_n + tl.arange(0, BLOCK_N // 2)
            acc0 += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
            o_desc.store([off_m, off_n], gelu(acc0, GELU).to(o_ptr.dtype.element_ty))
            rn += BLOCK_N // 2
            acc1 += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
            o_desc.store([off_m, off_n + BLOCK_N // 2], gelu(acc1, GELU).to(o_ptr.dtype.element_ty))
        else:
            rn = off_n + tl.arange(0, BLOCK_N)
            acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
            o_desc.store([off_m, off_n], gelu(acc, GELU).to(o_ptr.dtype.element_ty))


_allocator_set = False


def _scratch(size: int, alignment: int, stream):
    return torch.empty(size, device="cuda", dtype=torch.int8)


def launch(
    kind: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, config: tuple, form: str
) -> torch.Tensor:
    """``gelu(x @ w.T + b)`` through candidate ``kind`` (``"persistent"`` or ``"tma"``) at ``config``:
    persistent (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, programs per SM); tma adds (subtile, flatten,
    warp_specialize)."""
    global _allocator_set
    rows, dim = x.shape
    hidden = w.shape[0]
    block_m, block_n, block_k, warps, stages, per_sm, *extra = config
    if dim % block_k:
        raise ValueError(f"the candidates need dim % BLOCK_K == 0, got {dim} and {block_k}")
    out = torch.empty(rows, hidden, device=x.device, dtype=x.dtype)
    tiles = triton.cdiv(rows, block_m) * triton.cdiv(hidden, block_n)
    programs = min(tiles, per_sm * torch.cuda.get_device_properties(x.device).multi_processor_count)
    common = dict(
        M=rows, N=hidden, K=dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
        PROGRAMS=programs, GELU=form, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    if kind == "persistent":
        persistent_kernel[(programs,)](x, w, b, out, **common)
        return out
    if not _allocator_set:  # device-side descriptors live in a scratch buffer Triton asks the caller for
        triton.set_allocator(_scratch)
        _allocator_set = True
    subtile, flatten, warp_specialize = extra
    tma_kernel[(programs,)](
        x, w, b, out, SUBTILE=subtile, FLATTEN=flatten, WARP_SPECIALIZE=warp_specialize, **common
    )
    return out
