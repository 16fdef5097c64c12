"""Fit the rational GELU of the fused MLP kernels (``hiera_det/modeling/fused_mlp_triton.py``, ``gelu``) and
report its error. (CPU, about a minute.)

The kernels compute ``gelu(x) = x * (0.5 + r(xc))`` with ``xc = clamp(x, -X, X)`` and
``r(x) = x * p(x**2) / q(x**2)`` approximating ``erf(x / sqrt(2)) / 2``: ``p`` of degree 5, ``q`` of degree 5
with ``q(0) = 1``, ``X = 5.75`` (where ``erf(X / sqrt(2)) / 2`` is 1/2 to fp32 precision). The fit minimises
the largest absolute error of ``r`` on ``[0, X]`` by the differential-correction method: each round solves
the linear programme ``min d`` subject to ``|x p(s) - f(x) q(s)| <= d * q_prev(s)`` on a dense grid (``s =
x**2``, ``q_prev`` the previous round's denominator), which converges to the minimax rational function.
The report evaluates the kernel's arithmetic in fp32 (Horner, as the kernel does) on a dense grid and, for
comparison, the libdevice form ``0.5 * x * (1 + erf(x / sqrt(2)))`` with PyTorch's fp32 ``erf``.

    python -m benchmarks.gelu_rational_fit [--degree 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.special import erf

CLAMP = 5.75


def target(x: np.ndarray) -> np.ndarray:
    return 0.5 * erf(x / np.sqrt(2))


def fit(degree: int, rounds: int = 12, points: int = 3000) -> tuple[np.ndarray, np.ndarray, float]:
    """Coefficients of ``p`` and ``q`` (lowest power first, ``q[0] = 1``) and the fp64 max error of ``r``."""
    x = (np.cos(np.linspace(np.pi, 0, points)) * 0.5 + 0.5) * CLAMP  # Chebyshev points: dense at both ends
    x = np.unique(np.concatenate([x, np.linspace(0, CLAMP, points)]))
    s, f = x * x, target(x)
    p_cols = x[:, None] * s[:, None] ** np.arange(degree + 1)
    q_cols = s[:, None] ** np.arange(1, degree + 1)
    scale = np.concatenate([np.abs(p_cols).max(0), np.abs(q_cols).max(0)])  # conditioning of the programme
    a = np.concatenate([p_cols, -f[:, None] * q_cols], 1) / scale
    dense = np.linspace(0, CLAMP, 2_000_001)
    q_prev, best = np.ones_like(x), None
    for _ in range(rounds):
        n = a.shape[1]
        bound = np.block([[a, -q_prev[:, None]], [-a, -q_prev[:, None]]])
        positive_q = np.concatenate([np.zeros((len(x), degree + 1)), -q_cols / scale[degree + 1 :]], 1)
        a_ub = np.vstack([bound, np.concatenate([positive_q, np.zeros((len(x), 1))], 1)])
        b_ub = np.concatenate([f, -f, 0.5 * np.ones(len(x))])  # q >= 1/2: no pole on the interval
        cost = np.zeros(n + 1)
        cost[-1] = 1.0
        solution = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * (n + 1), method="highs")
        c = solution.x[:-1] / scale
        p, q = c[: degree + 1], np.concatenate([[1.0], c[degree + 1 :]])
        s_dense = dense * dense
        error = np.abs(
            dense * np.polyval(p[::-1], s_dense) / np.polyval(q[::-1], s_dense) - target(dense)
        ).max()
        if best is None or error < best[2]:
            best = (p, q, float(error))
        q_prev = np.polyval(q[::-1], s)
    return best


def kernel_gelu_fp32(x: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The kernel's arithmetic, in fp32."""
    f32 = np.float32
    xc = np.clip(x, -f32(CLAMP), f32(CLAMP))
    s = xc * xc
    num, den = f32(p[-1]), f32(q[-1])
    for c in p[-2::-1]:
        num = num * s + f32(c)
    for c in q[-2::-1]:
        den = den * s + f32(c)
    return x * (f32(0.5) + xc * num / den)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--degree", type=int, default=5, help="degree of p and of q")
    args = parser.parse_args(argv)
    p, q, error = fit(args.degree)
    print(
        f"r = x p(x^2) / q(x^2), degree {args.degree}/{args.degree}: "
        f"max |r - erf(x/sqrt 2)/2| = {error:.3g} (fp64)"
    )
    print("p (highest power first, as the kernel's Horner steps):", [float(np.float32(c)) for c in p[::-1]])
    print("q (highest power first):", [float(np.float32(c)) for c in q[::-1]])
    x = np.concatenate(
        [np.linspace(-12, 12, 20_000_001), np.logspace(-30, 1, 100_000), -np.logspace(-30, 1, 100_000)]
    )
    x = x.astype(np.float32)
    exact = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    scale = np.maximum(np.abs(x.astype(np.float64)), 1.0)
    ours = np.abs(kernel_gelu_fp32(x, p, q) - exact) / scale
    xt = torch.from_numpy(x)
    libdevice_like = (0.5 * xt * (1 + torch.special.erf(xt * 0.7071067811865476))).numpy()
    theirs = np.abs(libdevice_like - exact) / scale
    print(f"GELU error / max(|x|, 1), fp32 on {x.size:,} points: rational {ours.max():.3g}, "
          f"fp32 erf {theirs.max():.3g}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
