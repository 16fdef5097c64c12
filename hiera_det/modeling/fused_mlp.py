"""The MLP's exact-erf GELU fused into its GEMMs, in Triton: Hiera's 16-bit inference path on CUDA.

Unfused, ``fc2(gelu(fc1(x)))`` writes the 4x-wide hidden tensor, reads and writes it again for the GELU and
reads it once more in fc2: about 1.2 G elements per Hiera-B 224 batch of 128, 1.8 ms of an H100's time for
the GELU pass alone. cuBLASLt can fuse only the tanh approximation into a GEMM, which is not the official
models' function. Here the erf GELU is applied to the fp32 accumulator inside the GEMM:

* ``linear_gelu``: ``gelu(x @ w1.T + b1)`` in one kernel, so the hidden tensor is written once and never
  re-read for the activation;
* ``mlp``: the whole MLP in one kernel for narrow layers (``dim`` <= ``MLP_MAX_DIM``): each program keeps its
  rows' output accumulator in registers and walks the hidden width in chunks, so the hidden tensor never
  reaches memory at all.

The GELU inside the kernels (``GELU_FORM``) is ``"rational"``: ``x * (0.5 + r(x))`` with ``r`` a rational
minimax fit of ``erf(x / sqrt(2)) / 2`` (degree 5 over 5 in ``x**2``, clamped at 5.75 where it is 1/2 to fp32
precision; ``benchmarks/gelu_rational_fit.py`` fits it). Its error in fp32 is at most 2.7e-7 of
``max(|x|, 1)`` (with fp32 ``erf``: 1.1e-7), 10,000 times below a 16-bit output's rounding. It takes about 19
instructions per element against about 27 for libdevice's ``erf``, and at Hiera's narrow widths that epilogue
arithmetic is a large share of the kernels' time (session 9's H100 sweep, stage 3: 0.075 ms without any
activation, 0.101 rational, 0.115 ``erf``). ``"erf"`` is the libdevice form.

Widths and strides are compile-time constants (see ``window_attention._strides``); only the row count is
a run-time argument. The GELU takes the fp32 accumulator (the unfused path rounds the pre-activation to bf16
first), so both are at least as close to fp32 as the unfused path. They run only for 16-bit inference on CUDA
(no autograd) where Triton is installed; everything else runs the plain modules. Both are
``torch.library.triton_op``s, so ``torch.compile`` launches them from its generated code and CUDA graphs
capture them. The Triton code is in ``fused_mlp_triton``; registering the ops imports Triton, which happens
when the first model that wants them is built on a machine with CUDA (``register_kernels``), never at import.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from .window_attention import exporting, static_shapes

GELU_FORMS = ("rational", "erf")
GELU_FORM = "rational"
MLP_MAX_DIM = 256  # wider layers: the output accumulator of a 64-row tile no longer fits in registers
DTYPES = (torch.bfloat16, torch.float16)
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_registered = False


def register_kernels() -> bool:
    """Register ``hiera_det::linear_gelu`` and ``hiera_det::mlp`` (importing Triton) if Triton and CUDA are
    there; whether they are registered."""
    global _registered
    if not _registered and _HAS_TRITON and torch.cuda.is_available():
        torch.library.triton_op("hiera_det::linear_gelu", _linear_gelu_op, mutates_args=())
        torch.library.triton_op("hiera_det::mlp", _mlp_op, mutates_args=())
        _registered = True
    return _registered


def kernel_applies(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether the fused kernels run for input ``x`` and parameters ``params`` (already in ``x``'s dtype):
    16-bit CUDA tensors, no autograd, not exporting or tracing (an exported graph keeps standard ops)."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    return (
        _registered
        and x.is_cuda
        and x.dtype in DTYPES
        and all(p.dtype == x.dtype for p in params)
        and not needs_grad
        and not torch.jit.is_tracing()
        and not exporting()
    )


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def route(dim: int, hidden: int) -> str:
    """Which path runs an MLP of these widths in 16-bit CUDA inference: ``"mlp"`` (the whole MLP in one
    kernel), ``"linear_gelu"`` (fc1 + GELU in one kernel, then cuBLAS fc2) or ``"unfused"`` (cuBLAS fc1, the
    GELU pass, cuBLAS fc2). The fastest at Hiera-B's widths on an H100 (``benchmarks/fused_mlp_sweep.py``,
    session 8, GPU time per MLP against unfused): 96 and 192 the whole-MLP kernel (0.30 against 0.55 ms,
    0.24 against 0.27 ms), 384 fc1 + GELU (0.16 against 0.19 ms), 768 unfused (0.12 against 0.12 ms with
    fc1 + GELU). The wider the layer, the more cuBLAS's lead over a Triton GEMM outweighs the saved pass.
    The whole-MLP kernel pads the width to a power of two; where that would waste more than the third it
    wastes at 96 and 192 (Hiera-L's 144 pads to 256), fc1 + GELU runs instead. Other widths than Hiera-B's
    (Hiera-S/B+/L/H) follow these rules unmeasured."""
    if dim <= MLP_MAX_DIM and 3 * _pow2(dim) <= 4 * dim:
        return "mlp"
    return "linear_gelu" if dim <= 384 else "unfused"


# hidden-tensor elements below which an eager launch costs more host time than it saves
EAGER_MIN_HIDDEN = 1 << 26


def worth_launching(rows: int, hidden: int) -> bool:
    """Whether a fused kernel pays for its launch. Compiled code launches it as cheaply as any kernel (and CUDA
    graphs for free), so there always. An eager launch goes through the op's Python dispatch and Triton's
    launcher, which cost more host time than cuBLAS's: for a small hidden tensor the GPU time saved is smaller
    than that, and a small call is host-bound. Measured: Mask R-CNN on one 1024 image, eager, backbone 25.4 ms
    fused against 19.3 ms unfused (stage-1 hidden tensor 25 M elements; H200, session 8), where Hiera-B 224 at
    batch 128 (154 M) gains."""
    return torch.compiler.is_compiling() or rows * hidden >= EAGER_MIN_HIDDEN


def linear_gelu_config(rows: int, dim: int, hidden: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) for ``linear_gelu``: the fastest of the same sweep."""
    return (128, 128, 64, 8, 3) if dim >= 384 and dim % 64 == 0 else (128, 64, 32, 4, 4)


def mlp_config(rows: int, dim: int, hidden: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_H, warps, stages) for ``mlp``, from the same sweep."""
    return (64, 32, 4, 2) if dim <= 128 else (128, 64, 8, 2)


def launch_linear_gelu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    config: tuple[int, ...] = (),
    gelu_form: str | None = None,
) -> torch.Tensor:
    """``gelu(x @ weight.T + bias)``, erf GELU: ``x`` ``[..., dim]``, ``weight`` ``[hidden, dim]`` (any
    strides with a unit stride on one side), ``bias`` ``[hidden]``. ``config`` overrides
    ``linear_gelu_config`` and ``gelu_form`` ``GELU_FORM`` (benchmarks sweep them; ``"none"`` leaves the
    activation out, to time the GEMM alone)."""
    import triton

    from . import fused_mlp_triton as kernels

    x2 = _rows(x)
    rows, dim = x2.shape
    hidden = weight.shape[0]
    block_m, block_n, block_k, warps, stages = config or linear_gelu_config(rows, dim, hidden)
    out = torch.empty(rows, hidden, device=x.device, dtype=x.dtype)
    if rows == 0:
        return out.view(*x.shape[:-1], hidden)
    grid = (triton.cdiv(rows, block_m) * triton.cdiv(hidden, block_n),)
    torch.library.wrap_triton(kernels.linear_gelu_kernel)[grid](
        x2, weight, bias, out, rows, N=hidden, K=dim, x_sm=x2.stride(0), w_sn=weight.stride(0),
        w_sk=weight.stride(1), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
        EVEN_K=dim % block_k == 0, GELU=_gelu_form(gelu_form),
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out.view(*x.shape[:-1], hidden)


def launch_mlp(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    config: tuple[int, ...] = (),
    gelu_form: str | None = None,
) -> torch.Tensor:
    """``gelu(x @ w1.T + b1) @ w2.T + b2`` in one kernel: ``x`` ``[..., dim]`` with ``dim <= MLP_MAX_DIM``,
    ``w1`` ``[hidden, dim]``, ``w2`` ``[dim, hidden]``. ``config`` and ``gelu_form`` as in
    ``launch_linear_gelu``."""
    import triton

    from . import fused_mlp_triton as kernels

    x2 = _rows(x)
    rows, dim = x2.shape
    hidden = w1.shape[0]
    if dim > MLP_MAX_DIM:
        raise ValueError(f"the fused MLP holds at most {MLP_MAX_DIM} channels per row, got {dim}")
    block_m, block_h, warps, stages = config or mlp_config(rows, dim, hidden)
    out = torch.empty(rows, dim, device=x.device, dtype=x.dtype)
    if rows == 0:
        return out.view(*x.shape[:-1], dim)
    torch.library.wrap_triton(kernels.mlp_kernel)[(triton.cdiv(rows, block_m),)](
        x2, w1, b1, w2, b2, out, rows, D=dim, H=hidden, x_sm=x2.stride(0), w1_sh=w1.stride(0),
        w1_sd=w1.stride(1), w2_sd=w2.stride(0), w2_sh=w2.stride(1), o_sm=out.stride(0), BLOCK_M=block_m,
        BLOCK_H=block_h, D_BLOCK=max(16, _pow2(dim)), EVEN_H=hidden % block_h == 0,
        GELU=_gelu_form(gelu_form), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out.view(*x.shape[:-1], dim)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``[rows, dim]`` with unit stride along ``dim`` (a view where it can be)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _gelu_form(form: str | None) -> str:
    form = GELU_FORM if form is None else form
    if form not in (*GELU_FORMS, "none"):
        raise ValueError(
            f"unknown GELU form {form!r}; choose one of {', '.join(GELU_FORMS)} (or 'none', no activation, "
            "to time the GEMM alone)"
        )
    return form


# The ops' schemas take no tuples: the launch settings are the shipped tables. Symbolic sizes (dynamic shapes)
# cannot be the kernels' constants: there the plain ops compute the same function.
def _linear_gelu_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu_form: str
) -> torch.Tensor:
    if not static_shapes(x, weight, bias):
        return F.gelu(F.linear(x, weight, bias))
    return launch_linear_gelu(x, weight, bias, gelu_form=gelu_form)


def _mlp_op(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, gelu_form: str
) -> torch.Tensor:
    if not static_shapes(x, w1, b1, w2, b2):
        return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    return launch_mlp(x, w1, b1, w2, b2, gelu_form=gelu_form)
