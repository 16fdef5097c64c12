"""Exports of tiny Hiera models (ONNX through onnxruntime, torch.export .pt2) against eager PyTorch on CPU,
and the combinations that are refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("skimage")

from detectron2.modeling import build_model  # noqa: E402

import hiera_det.d2  # noqa: E402,F401
from hiera_det.config import get_hiera_cfg, merge_config  # noqa: E402
from hiera_det.export import (  # noqa: E402
    ONNX_OPSET,
    TRACED_ONNX_OPSET,
    ExportRefused,
    build_target,
    export_and_check,
    refusal,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import export_model  # noqa: E402

TINY_DETECTOR = [
    "MODEL.HIERA.NAME",
    "hiera_tiny_224",
    "MODEL.HIERA.STAGES",
    "[1, 1, 1, 1]",
    "MODEL.DEVICE",
    "cpu",
    "INPUT.LSJ.ENABLED",
    "False",
]


def _model(config: str, opts: list[str]):
    cfg = get_hiera_cfg()
    merge_config(cfg, config, opts)
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def _video_classifier_model():
    """The bundled-data clip classifier config (8 x 64 x 64, one block per stage) with a head that gives
    logits of order 1 (its initialisation scales them to 1e-3, which any tolerance would accept)."""
    cfg, model = _model("video/moving_shapes_cls.yaml", [])
    with torch.no_grad():
        model.trunk.head.projection.weight.normal_(0, 0.5)
    return cfg, model


def _report(results) -> None:
    for r in results:
        for c in r.checks:
            print(f"\n{r.fmt} {c}")


def _assert_all_ok(results, formats) -> None:
    assert [r.fmt for r in results] == formats
    for r in results:
        assert r.refused is None and r.checks, r
        assert r.ok, "\n".join(str(c) for c in r.checks)


def _opset(path) -> int:
    import onnx

    return next(
        o.version
        for o in onnx.load(path, load_external_data=False).opset_import
        if o.domain in ("", "ai.onnx")
    )


def _export_tiny_backbone(folder, formats: list[str], size=(64, 96), **options):
    """The tiny Hiera + FPN exported from a batch of 2 and checked; asserts every check passed."""
    cfg, model = _model("hiera_fpn.yaml", TINY_DETECTOR)
    target = build_target("backbone", cfg, model, size, batch=2)
    results = export_and_check(target, cfg, formats, str(folder), dynamic_batch=True, **options)
    _report(results)
    _assert_all_ok(results, formats)
    return target, results


def test_backbone_fpn_dynamic_batch_onnx_and_torch_export(tmp_path):
    target, results = _export_tiny_backbone(tmp_path, ["onnx", "torch_export"], optimize=False)
    assert [c.label.split(" [")[0] for c in results[0].checks] == [
        "traced input",
        "other photographs",
        "batch 3",
    ]
    onnx_path = results[0].path
    assert _opset(onnx_path) >= 17 and ONNX_OPSET >= 17

    # The documented way to run it: onnxruntime on the CPU, float pixels 0-255 in INPUT.FORMAT order.
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).uniform(0, 255, (1, 3, 64, 96)).astype(np.float32)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images})))
    assert list(outputs) == ["p2", "p3", "p4", "p5", "p6"] and outputs["p2"].shape == (1, 256, 16, 24)
    with torch.no_grad():
        eager = target.module(torch.from_numpy(images))
    assert np.abs(outputs["p6"] - eager[-1].numpy()).max() < 1e-3


def test_video_classifier_and_trunk_torch_export_against_eager(tmp_path):
    cfg, model = _video_classifier_model()
    classifier = build_target("video_classifier", cfg, model, (64, 64), batch=1)
    # its ONNX file is checked in test_dynamic_size_in_multiples_of_32 (slow: each ONNX translation costs ~15 s)
    results = export_and_check(classifier, cfg, ["torch_export"], str(tmp_path))
    _report(results)
    _assert_all_ok(results, ["torch_export"])
    assert classifier.example.shape == (1, 3, 8, 64, 64) and classifier.output_names == [
        "logits",
        "probabilities",
    ]

    trunk = build_target("video_trunk", cfg, model, (64, 64), batch=1)
    results = export_and_check(trunk, cfg, ["torch_export"], str(tmp_path))
    _report(results)
    _assert_all_ok(results, ["torch_export"])
    assert trunk.output_names == ["stage1", "stage2", "stage3", "stage4"]


def test_refusals_name_the_reason(tmp_path, capsys):
    cfg, model = _model("hiera_fpn.yaml", TINY_DETECTOR)
    with pytest.raises(ExportRefused, match=r"size 100x128 is not a multiple of 32.*Export at 128x128"):
        build_target("backbone", cfg, model, (100, 128), batch=1)
    detector = build_target("mask_rcnn", cfg, model, (64, 64), batch=1)
    assert detector.output_names == ["boxes", "classes", "masks", "scores", "image_size"]
    assert "find_top_rpn_proposals" in refusal(detector, "torch_export", False, False)
    assert "records the one image" in refusal(detector, "onnx", True, False)
    assert refusal(detector, "onnx", False, False) is None
    results = export_and_check(detector, cfg, ["torch_export"], str(tmp_path), check=False)
    assert results[0].refused and not list(tmp_path.iterdir())

    video_cfg, video_model = _model("video/moving_shapes_keyframe.yaml", [])
    with pytest.raises(ExportRefused, match="video_classifier needs a HieraVideoClassifier config"):
        build_target("video_classifier", video_cfg, video_model, (64, 64), batch=1)
    with pytest.raises(ExportRefused, match="needs an image detector config"):
        build_target("backbone", video_cfg, video_model, (64, 64), batch=1)

    opts = ["--config", "hiera_fpn.yaml", "--output", str(tmp_path), *TINY_DETECTOR]
    assert export_model.main(["--target", "backbone", "--size", "96", "100", *opts]) == 2
    assert "size 96x100 is not a multiple of 32" in capsys.readouterr().err
    assert export_model.main(["--target", "backbone", *opts]) == 2  # no LSJ, so no default size
    assert "give --size H W" in capsys.readouterr().err
    assert (
        export_model.main(
            ["--target", "mask_rcnn", "--format", "torch_export", "--size", "64", "64", "--no-check", *opts]
        )
        == 2
    )
    assert "refused mask_rcnn as torch_export: torch.export cannot capture" in capsys.readouterr().err


@pytest.mark.slow  # the traced export and three onnxruntime runs of a whole detector: minutes on two cores
def test_mask_rcnn_onnx_matches_eager_detections(tmp_path):
    cfg, model = _model("hiera_fpn.yaml", TINY_DETECTOR + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    detector = build_target("mask_rcnn", cfg, model, (128, 160), batch=1)
    results = export_and_check(detector, cfg, ["onnx"], str(tmp_path))
    _report(results)
    _assert_all_ok(results, ["onnx"])
    assert _opset(results[0].path) == TRACED_ONNX_OPSET
    for check in results[0].checks:
        assert "matched 100" in check.lines[0]
    # the number of detections is the image's, not a constant recorded from the traced image
    import onnx

    graph = onnx.load(results[0].path, load_external_data=False).graph
    per_detection = [o for o in graph.output if o.name in ("boxes", "classes", "masks", "scores")]
    assert len(per_detection) == 4
    for output in per_detection:
        assert not output.type.tensor_type.shape.dim[0].HasField("dim_value"), output.name


@pytest.mark.slow  # symbolic sizes through the unrolled token layout make torch.export slow
def test_dynamic_size_in_multiples_of_32(tmp_path):
    with pytest.raises(ExportRefused, match="traced at 128x128 or larger"):
        _export_tiny_backbone(tmp_path, ["torch_export"], dynamic_size=True)
    _, results = _export_tiny_backbone(tmp_path, ["torch_export", "onnx"], (128, 160), dynamic_size=True)
    labels = [c.label.split(" [")[0] for c in results[0].checks]
    assert labels[-2:] == ["size 160x224", "stored position-embedding size"]  # 224x224 for hiera_tiny_224
    assert results[0].checks[-1].lines[0].startswith("the .pt2 refuses this size with its guard")
    assert "max |diff|" in results[1].checks[-1].lines[0]  # the ONNX file runs it

    video_cfg, video_model = _video_classifier_model()  # stores 8 x 64 x 64
    with pytest.raises(ExportRefused, match="cannot be traced at 64x64, the size the trunk stores"):
        export_and_check(
            build_target("video_classifier", video_cfg, video_model, (64, 64), batch=2),
            video_cfg,
            ["torch_export"],
            str(tmp_path),
            dynamic_size=True,
        )
    classifier = build_target("video_classifier", video_cfg, video_model, (96, 128), batch=2)
    results = export_and_check(
        classifier,
        video_cfg,
        ["torch_export", "onnx"],
        str(tmp_path),
        dynamic_batch=True,
        dynamic_size=True,
        optimize=False,
    )
    _report(results)
    _assert_all_ok(results, ["torch_export", "onnx"])


def test_export_loads_weights_as_the_demos_do_never_unpickling_unasked(tmp_path, capsys):
    import pickle

    class RunsCode:  # unpickling calls os.system: the proof that a loader ran the file's code
        def __reduce__(self):
            import os

            return (os.system, (f"touch {tmp_path / 'ran'}",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": RunsCode()}))
    opts = [
        "--config",
        "hiera_fpn.yaml",
        "--output",
        str(tmp_path / "out"),
        "--target",
        "backbone",
        "--size",
        "64",
        "64",
        "--no-check",
        *TINY_DETECTOR,
    ]
    assert export_model.main([*opts, "MODEL.WEIGHTS", str(evil)]) == 2
    assert "pass --allow-pickle" in capsys.readouterr().err and not (tmp_path / "ran").exists()
    # a checkpoint of another model: refused, where a partial load would export initial weights
    other = tmp_path / "other.pth"
    torch.save({"model": {"backbone.bottom_up.trunk.pos_embed": torch.zeros(1, 3)}}, other)
    assert export_model.main([*opts, "MODEL.WEIGHTS", str(other)]) == 2
    assert "does not fit the model of this config" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
