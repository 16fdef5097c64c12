"""Exporting Hiera models for deployment: ONNX (run with onnxruntime) and ``torch.export`` programs (.pt2).

Targets (``hiera_det.export.targets``): the image backbone + FPN, the full Mask R-CNN, the video trunk and the
video clip classifier. ``export_and_check`` writes them and compares each file with eager PyTorch on real
photographs; ``tools/export_model.py`` is its command line.
"""

from .checking import BOX_TOLERANCE, FEATURE_ATOL, FEATURE_RTOL, MASK_IOU_MIN, SCORE_TOLERANCE, CheckResult
from .exporting import FORMATS, ONNX_OPSET, TRACED_ONNX_OPSET, export_onnx, export_program, load_export, refusal
from .pipeline import ExportResult, export_and_check
from .targets import TARGETS, ExportRefused, ExportTarget, build_target

__all__ = [
    "BOX_TOLERANCE",
    "FEATURE_ATOL",
    "FEATURE_RTOL",
    "FORMATS",
    "MASK_IOU_MIN",
    "ONNX_OPSET",
    "SCORE_TOLERANCE",
    "TARGETS",
    "TRACED_ONNX_OPSET",
    "CheckResult",
    "ExportRefused",
    "ExportResult",
    "ExportTarget",
    "build_target",
    "export_and_check",
    "export_onnx",
    "export_program",
    "load_export",
    "refusal",
]
