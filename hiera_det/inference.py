"""Fixed-shape inference on CUDA with the least host work per call: compiled once, replayed from CUDA graphs.

``torch.compile(mode="reduce-overhead")`` also replays CUDA graphs, but checks its guards, copies the inputs
and walks its tree of graphs on every call: 0.9-1.2 ms of host time before the first kernel of a Hiera-B 224
batch of 128 on an H100 (session 10), about 9% of the call. ``CudaGraphRunner`` compiles in the default mode,
captures one graph per input shape itself and replays it: a copy into the static input and one replay per
call. Hiera-B 224 at batch 128 with bf16 weights: 12,467 im/s per call against 11,649 through
reduce-overhead on the same H100 (session 11, ``benchmarks/results/trunk_kernel.md``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

WARMUP_CALLS = 3  # the first compiles; the others settle the allocator's blocks before the capture


class CudaGraphRunner:
    """``fn(x)`` for CUDA inputs, compiled (``torch.compile``, static shapes) and replayed from CUDA graphs.

    One graph is captured per input shape, dtype and autocast setting, on the first call that brings it, and
    the calls run under ``torch.no_grad``. With ``pad_batch`` (the default) a batch smaller than one already
    captured is padded with zeros to the smallest such batch and the outputs are cut back to it, so a run
    whose last batch is short (or whose bad inputs were dropped) captures no new graph. That is right for
    models that treat each sample on its own, as Hiera does (no batch statistics); pass ``pad_batch=False``
    for others.

    The outputs are the graph's own buffers: **the next call overwrites them**. Copy what you keep (``.clone()``,
    ``.cpu()``) before calling again. Inputs of the same shape as a captured one need not be on the GPU: they
    are copied into the graph's input buffer.

    Args:
        fn: the module or function; it takes one tensor ``[B, ...]`` and returns tensors, or a dict, list or
            tuple of them, each with the batch as its first dimension when ``pad_batch`` is on.
        compile: compile ``fn`` before capturing (the default; ``False`` captures the eager calls).
        compile_options: inductor options for ``torch.compile(options=...)``.
        max_graphs: how many graphs a runner may hold (each keeps its own memory); more shapes are an error
            that says to use fewer shapes.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], Any],
        compile: bool = True,
        compile_options: dict | None = None,
        pad_batch: bool = True,
        max_graphs: int = 8,
    ):
        if not torch.cuda.is_available():
            raise RuntimeError(
                "CudaGraphRunner replays CUDA graphs and this machine has no CUDA device; call the model "
                "directly (or through torch.compile) on the CPU"
            )
        if isinstance(fn, torch.nn.Module) and fn.training:
            raise ValueError("CudaGraphRunner is for inference: call .eval() on the module first")
        self.forward = torch.compile(fn, dynamic=False, options=compile_options) if compile else fn
        self.pad_batch = pad_batch
        self.max_graphs = max_graphs
        # (per-sample shape, dtype, autocast, autocast dtype) -> batch -> graph
        self._graphs: dict[tuple, dict[int, _Graph]] = {}

    @property
    def num_graphs(self) -> int:
        return sum(len(by_batch) for by_batch in self._graphs.values())

    def __call__(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            raise ValueError(f"CudaGraphRunner takes one batched tensor [B, ...], got {type(x).__name__}")
        autocast = torch.is_autocast_enabled("cuda")
        key = (tuple(x.shape[1:]), x.dtype, autocast, torch.get_autocast_dtype("cuda") if autocast else None)
        by_batch = self._graphs.setdefault(key, {})
        batch = len(x)
        fits = [b for b in by_batch if b >= batch] if self.pad_batch else [batch] * (batch in by_batch)
        graph = by_batch[min(fits)] if fits else self._capture(by_batch, x)
        return graph.run(x)

    def _capture(self, by_batch: dict[int, _Graph], x: torch.Tensor) -> _Graph:
        if self.num_graphs >= self.max_graphs:
            shapes = [(b, *key[0]) for key, graphs in self._graphs.items() for b in graphs]
            raise RuntimeError(
                f"CudaGraphRunner already holds {self.num_graphs} graphs (input shapes {shapes}) and would need "
                f"another for {tuple(x.shape)}; feed fewer distinct shapes (resize or pad the inputs to a few "
                f"sizes) or raise max_graphs"
            )
        graph = _Graph(self.forward, x, self.pad_batch)
        by_batch[len(x)] = graph
        return graph


class _Graph:
    """One captured call: the static input, the graph and its outputs."""

    def __init__(self, forward: Callable, x: torch.Tensor, pad_batch: bool):
        if not x.is_cuda:
            raise ValueError(
                f"the first input of each shape must be a CUDA tensor (it picks the device the graph runs "
                f"on), got one on {x.device}"
            )
        self.pad_batch = pad_batch
        self.input = x.detach().clone(memory_format=torch.contiguous_format)
        autocast = torch.is_autocast_enabled("cuda")
        # autocast's cache of cast weights lives outside the graph and is emptied when autocast exits, so
        # a graph captured from eager code must not read it
        no_cache = torch.autocast(
            "cuda", torch.get_autocast_dtype("cuda"), enabled=autocast, cache_enabled=False
        )
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), torch.no_grad(), no_cache:
            for _ in range(WARMUP_CALLS):
                forward(self.input)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), no_cache, torch.cuda.graph(self.graph):
            self.outputs = forward(self.input)

    def run(self, x: torch.Tensor):
        n = len(x)
        if n == len(self.input):
            self.input.copy_(x, non_blocking=True)
        else:  # a shorter batch: zeros after it, outputs cut back to it
            self.input[:n].copy_(x, non_blocking=True)
            self.input[n:].zero_()
        self.graph.replay()
        if n == len(self.input):
            return self.outputs
        return pytree.tree_map(lambda t: t[:n] if isinstance(t, torch.Tensor) else t, self.outputs)
