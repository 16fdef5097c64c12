"""Writing export targets as ONNX (run by onnxruntime) or ``torch.export`` programs (``.pt2``), and loading
them back to run.

Two routes, chosen per target:

* ``torch.export`` (non-strict) for the backbone and the video models. The ``.pt2`` is that program; the
  ONNX file is the same program translated by ``torch.onnx.export(dynamo=True)``. Batch and image size can
  be dynamic (sizes as multiples of the trunk's 32).
* tracing for the full Mask R-CNN, Detectron2's supported route (``TracingAdapter`` + the TorchScript ONNX
  exporter). ``torch.export`` cannot capture Detectron2's proposal and box post-processing, and a traced
  graph holds the one image size it saw; see ``refusal``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .targets import ExportRefused, ExportTarget

FORMATS = ("onnx", "torch_export")
SUFFIXES = {"onnx": ".onnx", "torch_export": ".pt2"}
ONNX_OPSET = 18
# The TorchScript exporter's route (Detectron2's): torchvision registers RoIAlign / NMS for opsets >= 16.
TRACED_ONNX_OPSET = 17
MAX_BATCH = 1024
MAX_SIDE = 4096

MASK_RCNN_TORCH_EXPORT = (
    "torch.export cannot capture the full Mask R-CNN: Detectron2's RPN post-processing branches in Python on "
    "tensor values (detectron2/modeling/proposal_generator/proposal_utils.py, find_top_rpn_proposals: "
    "`if not valid_mask.all():`), and NMS and score thresholding give data-dependent numbers of boxes that "
    "its Python code then uses as sizes. Only a rewrite of Detectron2's RPN and ROI-head inference would "
    "fix that. Export the detector to ONNX (--format onnx, traced as Detectron2 does), or export the backbone "
    "with torch.export (--target backbone) and run the heads in Python"
)
MASK_RCNN_DYNAMIC = (
    "the full Mask R-CNN is exported by tracing (Detectron2's TracingAdapter), which records the one image "
    "it runs: the batch of one image and the image size (in Hiera's token layout, the anchors and the "
    "RoI-pooler levels) become constants, so dynamic batch or size cannot be offered. Export at the size "
    "you will run and resize / pad images to it, or export --target backbone with dynamic shapes"
)


def refusal(target: ExportTarget, fmt: str, dynamic_batch: bool, dynamic_size: bool) -> str | None:
    """Why this combination cannot be exported, or None when it can."""
    if fmt not in FORMATS:
        return f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}"
    if target.tracing_only and fmt == "torch_export":
        return MASK_RCNN_TORCH_EXPORT
    if target.tracing_only and (dynamic_batch or dynamic_size):
        return MASK_RCNN_DYNAMIC
    return None


def dynamic_shapes(target: ExportTarget, dynamic_batch: bool, dynamic_size: bool) -> dict | None:
    """``torch.export`` dynamic shapes for the target's input (sizes as multiples of its size multiple)."""
    from torch.export import Dim

    spec = {}
    if dynamic_batch:
        spec[target.dynamic_dims["batch"]] = Dim("batch", min=1, max=MAX_BATCH)
    if dynamic_size:
        m = target.size_multiple
        spec[target.dynamic_dims["height"]] = m * Dim("height_blocks", min=1, max=MAX_SIDE // m)
        spec[target.dynamic_dims["width"]] = m * Dim("width_blocks", min=1, max=MAX_SIDE // m)
    return {target.input_name: spec} if spec else None


def export_program(target: ExportTarget, dynamic_batch: bool = False, dynamic_size: bool = False):
    """``torch.export.export`` of the target (non-strict), with the requested dynamic dimensions."""
    why = refusal(target, "torch_export", dynamic_batch, dynamic_size)
    if why:
        raise ExportRefused(why)
    # torch.export fixes every dimension that is 1 in the example, so dynamic ones must be traced larger
    if dynamic_batch and target.example.shape[0] < 2:
        raise ExportRefused("a dynamic batch must be traced with an example batch of at least 2 (torch.export "
                            "specialises a batch of 1); pass --batch 2 or more")
    smallest = 2 * target.max_stride
    if dynamic_size and min(target.example.shape[-2:]) < smallest:
        raise ExportRefused(f"a dynamic size must be traced at {smallest}x{smallest} or larger, where the coarsest "
                            f"output (stride {target.max_stride}) is at least 2x2 (torch.export specialises a "
                            f"size of 1); pass --size {smallest} {smallest} or larger")
    if dynamic_size and tuple(target.example.shape[-2:]) == target.stored_size:
        h, w = target.stored_size
        m = target.size_multiple
        raise ExportRefused(
            f"a dynamic size cannot be traced at {h}x{w}, the size the trunk stores its position embedding for: "
            f"there Hiera skips the resampling, and torch.export would fix the size to {h}x{w}. Trace at "
            f"another size (e.g. --size {h + m} {w + m}); the export still runs at {h}x{w} (the .onnx; the "
            f".pt2 excepts that one size, see docs/features_and_export.md)"
        )
    with torch.no_grad():
        return torch.export.export(
            target.module, (target.example,), dynamic_shapes=dynamic_shapes(target, dynamic_batch, dynamic_size),
            strict=False,
        )


def save_program(program, path: str) -> None:
    torch.export.save(program, path)


def export_onnx(
    target: ExportTarget, path: str, program=None, dynamic_batch=False, dynamic_size=False, optimize=True
) -> None:
    """Write ``path`` (ONNX). ``program``: an ``ExportedProgram`` of the target to translate (made here when
    None); the traced route ignores it. ``optimize=False`` skips onnxscript's graph optimiser (a faster
    export of a larger graph that computes the same)."""
    why = refusal(target, "onnx", dynamic_batch, dynamic_size)
    if why:
        raise ExportRefused(why)
    if target.tracing_only:
        with _onnx_movedim_fix(), torch.no_grad():
            torch.onnx.export(
                target.module, (target.example,), path, dynamo=False, opset_version=TRACED_ONNX_OPSET,
                input_names=[target.input_name], output_names=target.output_names,
            )
        return
    if program is None:
        program = export_program(target, dynamic_batch, dynamic_size)
    torch.onnx.export(
        program, (target.example,), path, dynamo=True, opset_version=ONNX_OPSET,
        input_names=[target.input_name], output_names=target.output_names, external_data=_large(program),
        optimize=optimize,
    )


def _large(program) -> bool:
    # ONNX protobufs stop at 2 GB; beyond that the weights go to a side file next to the .onnx
    size = sum(t.numel() * t.element_size() for t in program.state_dict.values())
    return size > 1.8e9


@contextlib.contextmanager
def _onnx_movedim_fix():
    """The TorchScript exporter's ``aten::movedim`` writes negative axes into Transpose's ``perm`` (Hiera
    uses ``movedim(1, -1)`` and ``movedim(-1, 1)``), which onnxruntime rejects; this symbolic normalises them
    for the duration of one export."""
    from torch.onnx import symbolic_helper

    def constant_dims(value) -> list[int]:
        return torch.as_tensor(symbolic_helper._node_get(value.node(), "value")).view(-1).tolist()

    def movedim(g, self, source, destination):
        rank = symbolic_helper._get_tensor_rank(self)
        src = [d % rank for d in constant_dims(source)]
        dst = [d % rank for d in constant_dims(destination)]
        rest = iter(d for d in range(rank) if d not in src)
        placed = dict(zip(dst, src))
        perm = [placed[d] if d in placed else next(rest) for d in range(rank)]
        return g.op("Transpose", self, perm_i=perm)

    torch.onnx.register_custom_op_symbolic("aten::movedim", movedim, TRACED_ONNX_OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::movedim", TRACED_ONNX_OPSET)


@dataclass
class LoadedExport:
    """An exported file loaded to run: ``loaded(x)`` -> list of output tensors."""

    fmt: str
    path: str
    runner: object

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.fmt == "onnx":
            name = self.runner.get_inputs()[0].name
            return [torch.from_numpy(o) for o in self.runner.run(None, {name: x.numpy()})]
        with torch.no_grad():
            out = self.runner(x)
        return list(out) if isinstance(out, (tuple, list)) else [out]


def load_export(fmt: str, path: str) -> LoadedExport:
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = min(os.cpu_count() or 1, 8)
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return LoadedExport(fmt, path, session)
    return LoadedExport(fmt, path, torch.export.load(path).module())
