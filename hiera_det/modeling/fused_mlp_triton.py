"""The Triton kernels of ``fused_mlp`` (imported only when a kernel launches, so that importing the model
never imports Triton): fc1 + GELU, and the whole MLP of a narrow layer, both applying the GELU to their fp32
accumulator."""

import triton
import triton.language as tl


@triton.jit
def _poly5(s, c5, c4, c3, c2, c1, c0):
    # c5 s^5 + ... + c0 by Horner's rule
    return ((((c5 * s + c4) * s + c3) * s + c2) * s + c1) * s + c0


@triton.jit
def gelu(h, FORM: tl.constexpr):
    """The GELU the kernels apply to their fp32 accumulator (``fused_mlp.GELU_FORM``)."""
    if FORM == "rational":
        # erf(h / sqrt(2)) / 2 = hc * p(hc^2) / q(hc^2): a minimax fit on [0, 5.75], where it reaches 1/2
        hc = tl.minimum(tl.maximum(h, -5.75), 5.75)
        s = hc * hc
        p = _poly5(
            s, 2.298864032468373e-08, 5.988931661704555e-06, 0.00014515293878503144, 0.004524098243564367,
            0.03174901008605957, 0.398942232131958,
        )  # fmt: skip
        q = _poly5(
            s, 1.1785172091549612e-06, 6.511114770546556e-05, 0.0017477747751399875, 0.02738162875175476,
            0.24624933302402496, 1.0,
        )  # fmt: skip
        return h * (0.5 + hc * p / q)
    elif FORM == "erf":
        return 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    else:  # "none": benchmarks time the GEMMs without their activation
        return h


@triton.jit
def linear_gelu_kernel(
    x_ptr, w_ptr, b_ptr, o_ptr, M, N: tl.constexpr, K: tl.constexpr, x_sm: tl.constexpr,
    w_sn: tl.constexpr, w_sk: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, GELU: tl.constexpr,
):  # fmt: skip
    # grouped order: the programs that run together share rows of x, which then come from L2
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * grid_n
    first_m = (pid // group_size) * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % size_m
    pid_n = (pid % group_size) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # rows and columns past the end wrap around instead of being masked, so the loads need no mask
    # (the store below drops them)
    rm_in = (rm % M).to(tl.int64)
    rn_in = rn % N
    rk = tl.arange(0, BLOCK_K)
    x_at = x_ptr + rm_in[:, None] * x_sm + rk[None, :]
    w_at = w_ptr + rn_in[None, :] * w_sn + rk[:, None] * w_sk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_at)
            b = tl.load(w_at)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(x_at, mask=rk[None, :] < k_left, other=0.0)
            b = tl.load(w_at, mask=rk[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc)
        x_at += BLOCK_K
        w_at += BLOCK_K * w_sk
    store_bias_gelu(acc, b_ptr, o_ptr, rm, rn, rn_in, M, N, GELU)


@triton.jit
def store_bias_gelu(acc, b_ptr, o_ptr, rm, rn, rn_in, M, N, GELU: tl.constexpr):
    """The fc1 + GELU epilogue: bias and GELU on the fp32 accumulator of output tile (``rm``, ``rn``),
    stored in the output's dtype; ``rn_in`` is ``rn`` clamped into the bias."""
    acc += tl.load(b_ptr + rn_in).to(tl.float32)[None, :]
    acc = gelu(acc, GELU)
    o_at = o_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :]
    tl.store(o_at, acc.to(o_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def mlp_kernel(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, o_ptr, M, D: tl.constexpr, H: tl.constexpr, x_sm: tl.constexpr,
    w1_sh: tl.constexpr, w1_sd: tl.constexpr, w2_sd: tl.constexpr, w2_sh: tl.constexpr,
    o_sm: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, D_BLOCK: tl.constexpr, EVEN_H: tl.constexpr,
    GELU: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rm_in = (rm % M).to(tl.int64)
    rd = tl.arange(0, D_BLOCK)
    d_real = rd < D
    # the rows' inputs stay in registers for the whole hidden walk; padded channels are zero
    x = tl.load(x_ptr + rm_in[:, None] * x_sm + rd[None, :], mask=d_real[None, :], other=0.0)
    acc = tl.zeros((BLOCK_M, D_BLOCK), dtype=tl.float32)
    rh = tl.arange(0, BLOCK_H)
    for h0 in range(0, H, BLOCK_H):
        h = h0 + rh
        if EVEN_H:
            w1 = tl.load(w1_ptr + h[None, :] * w1_sh + rd[:, None] * w1_sd, mask=d_real[:, None], other=0.0)
            b1 = tl.load(b1_ptr + h).to(tl.float32)
            w2 = tl.load(w2_ptr + rd[None, :] * w2_sd + h[:, None] * w2_sh, mask=d_real[None, :], other=0.0)
        else:
            h_real = h < H
            w1 = tl.load(w1_ptr + h[None, :] * w1_sh + rd[:, None] * w1_sd,
                         mask=d_real[:, None] & h_real[None, :], other=0.0)  # fmt: skip
            b1 = tl.load(b1_ptr + h, mask=h_real, other=0.0).to(tl.float32)
            w2 = tl.load(w2_ptr + rd[None, :] * w2_sd + h[:, None] * w2_sh,
                         mask=d_real[None, :] & h_real[:, None], other=0.0)  # fmt: skip
        hidden = tl.dot(x, w1) + b1[None, :]
        hidden = gelu(hidden, GELU)
        # the unfused path hands fc2 the hidden tensor in the 16-bit dtype; so does this one
        acc = tl.dot(hidden.to(x.dtype), w2, acc)
    acc += tl.load(b2_ptr + rd, mask=d_real, other=0.0).to(tl.float32)[None, :]
    o_at = o_ptr + rm.to(tl.int64)[:, None] * o_sm + rd[None, :]
    tl.store(o_at, acc.to(o_ptr.dtype.element_ty), mask=(rm[:, None] < M) & d_real[None, :])
