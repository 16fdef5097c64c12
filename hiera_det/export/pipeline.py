"""``export_and_check``: write the requested formats of a target, then compare each with eager PyTorch."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from . import samples
from .checking import CheckResult, compare_detections, compare_outputs
from .exporting import SUFFIXES, export_onnx, export_program, load_export, refusal, save_program
from .targets import ExportTarget


@dataclass
class ExportResult:
    """One format of one target: where it went (or why it was refused) and how it compared."""

    fmt: str
    path: str | None = None
    refused: str | None = None
    seconds: float = 0.0
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.refused is None and all(c.ok for c in self.checks)


def check_inputs(target: ExportTarget, cfg, dynamic_batch: bool, dynamic_size: bool) -> list[tuple[str, torch.Tensor]]:
    """Real photographs (or pans across them) the export is compared on: the traced ones, others of the same
    shape, and, for dynamic dimensions, another batch and another size."""
    fmt = cfg.INPUT.FORMAT
    example = target.example
    if target.tracing_only:
        size = tuple(example.shape[-2:])
        return [(f"photograph {i} {size[0]}x{size[1]}", samples.photographs(1, size, fmt, first=i)[0])
                for i in range(3)]

    def make(batch, size, first):
        if example.dim() == 5:
            return samples.panning_clips(batch, example.shape[2], size, fmt, first)
        return samples.photographs(batch, size, fmt, first)

    batch, size = example.shape[0], tuple(example.shape[-2:])
    inputs = [("traced input", example), ("other photographs", make(batch, size, batch))]
    if dynamic_batch:
        inputs.append((f"batch {batch + 1}", make(batch + 1, size, 1)))
    if dynamic_size:
        m = target.size_multiple
        other = (size[0] + m, size[1] + 2 * m)
        inputs.append((f"size {other[0]}x{other[1]}", make(batch, other, 2)))
        if min(target.stored_size) >= 2 * target.max_stride:
            inputs.append((STORED_SIZE_LABEL, make(batch, target.stored_size, 3)))
    return [(f"{label} {list(x.shape)}", x) for label, x in inputs]


STORED_SIZE_LABEL = "stored position-embedding size"
PT2_STORED_SIZE_GAP = (
    "the .pt2 refuses this size with its guard, as expected: Hiera.pos_embed_for resamples the position "
    "embedding only when the input size differs from the stored one, and torch.export keeps that branch as a "
    "guard, so a dynamic-size .pt2 runs every other multiple of 32; the .onnx runs this size too"
)


def compare(target: ExportTarget, cfg, loaded, inputs) -> list[CheckResult]:
    results = []
    for label, x in inputs:
        with torch.no_grad():
            eager = list(target.module(x))
        try:
            exported = loaded(x)
        except Exception as e:  # noqa: BLE001 - a failed run is a failed check, reported with its reason
            gap = loaded.fmt == "torch_export" and label.startswith(STORED_SIZE_LABEL) and "Guard failed" in str(e)
            reason = PT2_STORED_SIZE_GAP if gap else f"the export raised {type(e).__name__}: {str(e)[:300]}"
            results.append(CheckResult(label, [reason], ok=gap))
            continue
        if target.tracing_only:
            threshold = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
            results.append(compare_detections(label, target.output_names, eager, exported,
                                              tuple(x.shape[-2:]), threshold))
        else:
            results.append(compare_outputs(label, target.output_names, eager, exported))
    return results


def export_and_check(
    target: ExportTarget,
    cfg,
    formats: list[str],
    output: str,
    *,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    check: bool = True,
    optimize: bool = True,
) -> list[ExportResult]:
    """Export ``target`` in each of ``formats`` into ``output`` and, unless ``check=False``, compare each
    file with eager PyTorch. A refused format is reported (``ExportResult.refused``), not raised.
    ``optimize``: run onnxscript's ONNX graph optimiser (see ``export_onnx``)."""
    os.makedirs(output, exist_ok=True)
    results, program = [], None
    inputs = check_inputs(target, cfg, dynamic_batch, dynamic_size) if check else []
    dynamic = "".join(f"_dynamic_{d}" for d, on in (("batch", dynamic_batch), ("size", dynamic_size)) if on)
    for fmt in formats:
        why = refusal(target, fmt, dynamic_batch, dynamic_size)
        if why:
            results.append(ExportResult(fmt, refused=why))
            continue
        path = os.path.join(output, f"{target.name}{dynamic}{SUFFIXES[fmt]}")
        start = time.perf_counter()
        if fmt == "torch_export" or (fmt == "onnx" and not target.tracing_only):
            if program is None:
                program = export_program(target, dynamic_batch, dynamic_size)
        if fmt == "torch_export":
            save_program(program, path)
        else:
            export_onnx(target, path, program, dynamic_batch, dynamic_size, optimize)
        result = ExportResult(fmt, path, seconds=time.perf_counter() - start)
        if check:
            result.checks = compare(target, cfg, load_export(fmt, path), inputs)
        results.append(result)
    return results
