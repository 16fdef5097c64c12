"""How the benchmarks measure: warm-up, then CUDA-event (GPU) or wall-clock (CPU) timing of interleaved
repeats, peak memory, FLOPs, torch.compile on and off, and subjects measured alone when they cannot share
the GPU. Nothing here knows about Hiera; the detector workload speaks Detectron2's meta-architecture API.

Protocol (why each piece is there):

* Every subject of a comparison is timed in the same process on the same inputs, and the repeats are
  interleaved (round r runs the subjects in an order rotated by r), so that clock boosts, thermal drift
  and allocator state hit ours and the peers alike.
* GPU calls are bracketed by CUDA events and synchronized after each call; CPU calls by ``perf_counter``.
* Latency is summarized by the median with p10 / p90, never the mean alone: one page-fault or recompile
  must not move the headline number.
* Peak memory is what a subject would need on its own although all subjects stay resident: the bytes it
  holds between calls (weights, buffers, optimizer state) plus the peak growth of
  ``torch.cuda.max_memory_allocated`` during one call (activations, gradients, workspaces).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

import torch
import torch.nn as nn

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ALL_DTYPES = tuple(AUTOCAST_DTYPES)
# the command line's compile choices and the torch.compile mode each one runs (None: eager)
COMPILE_MODES = {"off": None, "on": "default", "reduce-overhead": "reduce-overhead"}


def autocast(dtype: str, device: torch.device):
    """The autocast context of a benchmark dtype name ("fp32" runs without autocast)."""
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(AUTOCAST_DTYPES)}")
    if AUTOCAST_DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[dtype])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds one call of ``fn`` takes on ``device`` (CUDA events on GPU, wall clock on CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_back_to_back(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """Milliseconds per call of ``calls`` calls of ``fn`` issued back to back, timed from before the first to
    after the last: the steady state of an inference loop, where the host prepares each call while the GPU
    runs the one before (``time_call`` starts from an idle GPU and so also counts the host's dispatch)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (q in [0, 100]) of a non-empty sequence."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of an empty sequence")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(times_ms: Sequence[float]) -> dict:
    return {
        "median_ms": statistics.median(times_ms),
        "p10_ms": percentile(times_ms, 10),
        "p90_ms": percentile(times_ms, 90),
        "min_ms": min(times_ms),
        "repeats": len(times_ms),
    }


def describe_error(e: BaseException) -> str:
    """One line naming an exception, short enough for a table cell."""
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class InterleavedResult:
    times_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    stopped_early: bool = False


def time_interleaved(
    calls: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    deadline: float | None = None,
    min_repeats: int = 1,
) -> InterleavedResult:
    """Time every call ``repeats`` times in rotating order. A call that raises is dropped (its error is
    kept); once ``deadline`` (a ``time.monotonic()`` value) has passed, rounds stop after ``min_repeats``."""
    result = InterleavedResult(times_ms={name: [] for name in calls})
    live = list(calls)
    for r in range(repeats):
        if r >= min_repeats and deadline is not None and time.monotonic() > deadline:
            result.stopped_early = True
            break
        shift = r % max(len(live), 1)
        for name in live[shift:] + live[:shift]:
            if name in result.errors:
                continue
            try:
                result.times_ms[name].append(time_call(calls[name], device))
            except Exception as e:  # a peer failing mid-run (e.g. OOM) must not end the comparison
                result.errors[name] = describe_error(e)
                release_memory(device)
        live = [n for n in live if n not in result.errors]
        if not live:
            break
    return result


def tensor_bytes(tensors: Iterable[torch.Tensor], device: torch.device | None = None) -> int:
    """Bytes of the distinct storages behind ``tensors`` (on ``device`` if given)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        if device is not None and t.device.type != device.type:
            continue
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def resident_bytes(module: nn.Module, optimizer: torch.optim.Optimizer | None = None, device=None) -> int:
    """Bytes a model keeps between calls: parameters, buffers, gradients, optimizer state."""
    tensors = list(module.parameters()) + list(module.buffers())
    tensors += [p.grad for p in module.parameters() if p.grad is not None]
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(tensors, device)


def peak_call_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak allocated bytes above the level before the call, during one call of ``fn``; None on CPU
    (PyTorch keeps no allocation high-water mark there)."""
    if device.type != "cuda":
        fn()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of one call of ``fn``, as ``torch.utils.flop_counter`` counts them:
    matmuls, convolutions and attention, forward and (if the call runs it) backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_ceiling(
    device: torch.device, size: int, dtype: torch.dtype, warmup: int = 3, repeats: int = 10
) -> dict:
    """Achieved TFLOP/s of a ``size``^3 matmul on random data: the practical roof for the dense work."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b)
    times = [time_call(lambda: torch.mm(a, b), device) for _ in range(repeats)]
    stats = summarize(times)
    flops = 2 * size**3
    del a, b
    release_memory(device)
    return {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "median_ms": stats["median_ms"],
        "tflops": flops / (stats["median_ms"] * 1e-3) / 1e12,
        "tflops_p10_time": flops / (stats["p90_ms"] * 1e-3) / 1e12,
        "tflops_p90_time": flops / (stats["p10_ms"] * 1e-3) / 1e12,
        "repeats": stats["repeats"],
    }


# ------------------------------------------------------------------------------------------------------
# Workloads: one measured call of a model on its inputs, under an autocast dtype and a compile mode


# a mode of our own: the default-mode compiled module captured in one CUDA graph by hand (ForwardWorkload)
GRAPH_MODE = "graph"


def compiled(module: nn.Module, mode: str, options: dict | None = None) -> nn.Module:
    """``torch.compile`` with static shapes; ``mode`` is a torch.compile mode name ("default" included), or
    ``GRAPH_MODE``, which compiles in the default mode (the workload captures the graph). ``options`` are
    inductor options: given to torch.compile rather than patched into inductor's config, because dynamo
    would otherwise reuse code compiled for another module of the same class with other options."""
    mode = None if mode in ("default", GRAPH_MODE) else mode
    if not options:
        return torch.compile(module, mode=mode, dynamic=False)
    if mode not in (None, "reduce-overhead"):
        raise ValueError(f"inductor options go with the default or reduce-overhead mode, not {mode!r}")
    options = dict(options, **({"triton.cudagraphs": True} if mode == "reduce-overhead" else {}))
    return torch.compile(module, options=options, dynamic=False)


class Workload(Protocol):
    def step(self, dtype: str, mode: str | None) -> Callable[[], None]:
        """The call to time, under autocast ``dtype``, compiled with ``mode`` (None: eager)."""

    def resident_bytes(self) -> int:
        """Bytes the workload holds between calls."""


class ForwardWorkload:
    """Inference forward pass of a feature extractor on one input batch."""

    def __init__(self, module: nn.Module, inputs: torch.Tensor, compile_options: dict | None = None):
        self.module = module.eval()
        self.inputs = inputs
        self.compile_options = compile_options
        self._compiled: dict[str, nn.Module] = {}

    def module_for(self, mode: str | None) -> nn.Module:
        """The module that ``step(dtype, mode)`` calls: compiled once per mode."""
        if mode is None:
            return self.module
        if mode not in self._compiled:
            self._compiled[mode] = compiled(self.module, mode, self.compile_options)
        return self._compiled[mode]

    def step(self, dtype: str, mode: str | None) -> Callable[[], None]:
        if mode == GRAPH_MODE:
            return self._graphed(dtype)
        module, x = self.module_for(mode), self.inputs

        def run():
            with torch.no_grad(), autocast(dtype, x.device):
                module(x)

        return run

    def _graphed(self, dtype: str) -> Callable[[], torch.Tensor]:
        """The module through ``hiera_det.inference.CudaGraphRunner``: compiled in the default mode and
        replayed from one CUDA graph, as a deployment that owns its buffers runs it. ``mode="reduce-overhead"``
        replays the same kernels from CUDA graphs too, behind per-call checks (guards, input copies, its tree
        of graphs): those cost the host 0.9-1.2 ms per Hiera-B 224 b128 call before the first kernel starts
        (session 10, results/trunk_kernel.md)."""
        if not self.inputs.is_cuda:
            raise ValueError(f"mode {GRAPH_MODE!r} captures a CUDA graph: give the workload CUDA inputs")
        if GRAPH_MODE not in self._compiled:
            from hiera_det.inference import CudaGraphRunner

            self._compiled[GRAPH_MODE] = CudaGraphRunner(self.module, compile_options=self.compile_options)
        runner, x = self._compiled[GRAPH_MODE], self.inputs

        def run():
            with autocast(dtype, x.device):
                return runner(x)

        return run  # its first call compiles and captures

    def resident_bytes(self) -> int:
        return resident_bytes(self.module)


class DetectorWorkload:
    """A Detectron2 meta-architecture on a list of input dicts: inference, or one training iteration
    (forward, backward, optimizer step). torch.compile, when on, compiles the backbone, where nearly all
    FLOPs are; proposals and box post-processing have data-dependent shapes and stay eager. A model without a
    ``.backbone`` (the video classifier: ``.trunk``) runs eager only."""

    def __init__(self, model: nn.Module, inputs: list[dict], optimizer=None):
        self.model = model
        self.inputs = inputs
        self.optimizer = optimizer
        self.backbones: dict[str | None, nn.Module | None] = {None: getattr(model, "backbone", None)}

    def _backbone(self, mode: str | None) -> nn.Module | None:
        if mode not in self.backbones:
            if self.backbones[None] is None:
                raise ValueError(
                    f"{type(self.model).__name__} has no .backbone to compile: time it eager (mode None)"
                )
            self.backbones[mode] = compiled(self.backbones[None], mode)
        return self.backbones[mode]

    def step(self, dtype: str, mode: str | None) -> Callable[[], None]:
        model, inputs, backbone = self.model, self.inputs, self._backbone(mode)
        device = next(model.parameters()).device
        if self.optimizer is None:

            def infer():
                if backbone is not None:
                    model.backbone = backbone
                model.eval()
                with torch.no_grad(), autocast(dtype, device):
                    model(inputs)

            return infer

        from detectron2.utils.events import EventStorage

        optimizer = self.optimizer
        scaler = torch.amp.GradScaler(device.type) if dtype == "fp16" else None
        storage = EventStorage()  # the heads log training statistics into the current storage

        def train():
            if backbone is not None:
                model.backbone = backbone
            model.train()
            with storage, autocast(dtype, device):
                losses = model(inputs)
            total = sum(losses.values())
            if scaler is None:
                total.backward()
                optimizer.step()
            else:
                scaler.scale(total).backward()
                scaler.step(optimizer)
                scaler.update()
            # gradients are freed here, so that the peak of the next call counts them as its own
            optimizer.zero_grad(set_to_none=True)

        return train

    def resident_bytes(self) -> int:
        return resident_bytes(self.model, self.optimizer)


# ------------------------------------------------------------------------------------------------------
# Measuring a set of subjects on one input, under one dtype and compile mode


def warm_up(
    workload: Workload, dtype: str, mode: str | None, device: torch.device, warmup: int, with_flops: bool
) -> tuple[Callable[[], None], dict]:
    """The call to time, after ``warmup`` calls, and what the warm-up found: ``compile_s`` (the first
    compiled call compiles), ``flops`` or ``flops_error`` if ``with_flops`` (counted on one eager call: for
    an eager workload, the first warm-up call), ``peak_mem_bytes`` on the GPU (resident + one call's peak)."""
    facts = {}
    fn = workload.step(dtype, mode)
    warmups = warmup
    if with_flops:
        try:
            facts["flops"] = count_flops(fn if mode is None else workload.step(dtype, None))
        except Exception as e:  # a failing call fails again, and is reported, in the warm-up
            facts["flops_error"] = f"flop count failed: {describe_error(e)}"
        warmups -= mode is None
    if mode is not None:
        t0 = time.monotonic()
        fn()
        synchronize(device)
        facts["compile_s"] = time.monotonic() - t0
        warmups -= 1
    for _ in range(warmups):
        fn()
    if device.type == "cuda":
        facts["peak_mem_bytes"] = workload.resident_bytes() + peak_call_bytes(fn, device)
    return fn, facts


def measure_subjects(
    names: Sequence[str],
    build: Callable[[str], Workload | str],
    dtype: str,
    mode: str | None,
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    min_repeats: int = 1,
    deadline: float | None = None,
    flops: dict[str, int | str] | None = None,
    isolate: bool = False,
    release: Callable[[list[str]], None] | None = None,
) -> tuple[dict[str, dict], bool]:
    """Measures the workloads ``build(name)`` gives (a string: why it could not be built): warm-up, then
    interleaved timing. Returns one entry per name (``status`` "ok" with the latency statistics, or "error"
    with the error) and whether the deadline cut the repeats short.

    ``flops`` caches the FLOP count per name across calls (filled here). ``isolate`` measures the subjects
    one after another, each alone on the GPU, calling ``release([name])`` after each: for models that
    cannot share the memory."""
    flops = {} if flops is None else flops
    entries, stopped_early = {}, False
    for group in [[n] for n in names] if isolate else [list(names)]:
        stopped_early |= _measure_group(
            group, build, dtype, mode, device, warmup, repeats, min_repeats, deadline, flops, entries
        )
        if isolate and release is not None:
            release(group)  # the group's calls, and the models they hold, are gone with _measure_group
    return entries, stopped_early


def _measure_group(group, build, dtype, mode, device, warmup, repeats, min_repeats, deadline, flops, entries):
    calls = {}
    for name in group:
        entry = entries[name] = {}
        workload = build(name)
        if isinstance(workload, str):
            entry.update(status="error", error=workload)
            continue
        try:
            fn, facts = warm_up(workload, dtype, mode, device, warmup, with_flops=name not in flops)
            if name not in flops:
                flops[name] = facts.pop("flops") if "flops" in facts else facts.pop("flops_error")
            entry["flops" if isinstance(flops[name], int) else "flops_error"] = flops[name]
            entry.update(facts)
            calls[name] = fn
        except Exception as e:
            stage = "compile or run" if mode else "run"
            entry.update(status="error", error=f"{stage} failed: {describe_error(e)}")
            release_memory(device)
    timed = time_interleaved(calls, device, repeats, deadline=deadline, min_repeats=min_repeats)
    for name in calls:
        if name in timed.errors:
            entries[name].update(status="error", error=f"run failed: {timed.errors[name]}")
        else:
            entries[name].update(status="ok", **summarize(timed.times_ms[name]))
    return timed.stopped_early
