"""The checkpoint loader's formats, fitting, reports and errors, and the Detectron2 converter.

Parity with the reference implementations is in test_parity.py; these tests use hiera_det's own models
(whose names are the official ones) so that they stay fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from hiera_det.checkpoint import FORMATS, CheckpointError, LoadReport, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_state(hiera_model):
    """A hiera_tiny_224 state dict with random, nonzero weights (official key names, 1000-class head)."""
    torch.manual_seed(0)
    model = hiera_model("hiera_tiny_224")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def small_state(hiera_model):
    return {k: v.clone() for k, v in hiera_model("hiera_small_224").state_dict().items()}


def _features(model, x):
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------------------------------ formats, in memory


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="bare"),
        pytest.param(lambda sd: {"model_state": sd, "epoch": 5}, id="model_state"),
        pytest.param(lambda sd: {"state_dict": sd}, id="state_dict"),
        pytest.param(lambda sd: {f"module.{k}": v for k, v in sd.items()}, id="ddp-module-prefix"),
    ],
)
def test_official_containers(tiny_state, wrap, hiera_model):
    model = hiera_model("hiera_tiny_224")
    report = load_checkpoint(model, wrap(tiny_state), strict=True)
    assert report.format == FORMATS["official"] and report.checkpoint_architecture == "hiera_tiny_224"
    assert len(report.loaded_keys) == len(tiny_state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny_state[k]), k


@pytest.mark.parametrize("prefix", ["backbone.bottom_up.trunk.", "backbone.trunk.", "trunk."])
def test_detectron2_prefixes_round_trip(tiny_state, prefix, hiera_model):
    state = {prefix + k: v for k, v in tiny_state.items()}
    state["backbone.fpn_output2.weight"] = torch.randn(256, 256, 3, 3)
    state["roi_heads.box_predictor.cls_score.weight"] = torch.randn(81, 1024)
    model = hiera_model("hiera_tiny_224")
    report = load_checkpoint(model, {"model": state, "__author__": "hiera_det"}, strict=True)
    assert report.format == FORMATS["hiera_det"]
    dropped = report.dropped_keys
    assert "roi_heads.box_predictor.cls_score.weight" in dropped and "backbone.fpn_output2.weight" in dropped
    assert torch.equal(model.blocks[5].mlp.fc2.weight, tiny_state["blocks.5.mlp.fc2.weight"])


def test_timm_names(tiny_state, hiera_model):
    state = {}
    for k, v in tiny_state.items():
        k = k.replace("head.projection.", "head.fc.")
        state["head." + k if k.startswith("norm.") else k] = v
    model = hiera_model("hiera_tiny_224")
    report = load_checkpoint(model, state, strict=True)
    assert report.format == FORMATS["timm"]
    assert torch.equal(model.norm.weight, tiny_state["norm.weight"])
    assert torch.equal(model.head.projection.weight, tiny_state["head.projection.weight"])


def test_timm_hub_directory(tiny_state, tmp_path, hiera_model):
    from safetensors.torch import save_file

    # timm's hub layout: model.safetensors beside a timm config.json (no transformers model_type)
    state = {k.replace("head.projection.", "head.fc."): v for k, v in tiny_state.items()}
    state = {("head." + k if k.startswith("norm.") else k): v.contiguous() for k, v in state.items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "hiera_tiny_224", "num_classes": 1000}))
    model = hiera_model("hiera_tiny_224")
    report = load_checkpoint(model, tmp_path, strict=True)
    assert report.format == FORMATS["timm"]
    assert torch.equal(model.norm.bias, tiny_state["norm.bias"])


def test_timm_layer_scale_variant_is_refused(tiny_state, hiera_model):
    state = dict(tiny_state, **{"blocks.0.ls1.gamma": torch.ones(96), "head.fc.weight": torch.zeros(1, 768)})
    with pytest.raises(CheckpointError, match="layer scale"):
        load_checkpoint(hiera_model("hiera_tiny_224"), state)


def test_module_with_a_trunk_attribute(tiny_state, hiera_model):
    wrapper = nn.Module()
    wrapper.trunk = hiera_model("hiera_tiny_224")
    load_checkpoint(wrapper, tiny_state, strict=True)
    assert torch.equal(wrapper.trunk.pos_embed, tiny_state["pos_embed"])
    with pytest.raises(TypeError, match="Hiera"):
        load_checkpoint(nn.Linear(2, 2), tiny_state)


# ---------------------------------------------------------------------------------------- head handling


def test_head_kept_dropped_for_features_only_and_for_new_class_count(tiny_state, hiera_model):
    same = hiera_model("hiera_tiny_224")
    report = load_checkpoint(same, tiny_state, strict=True)
    assert not report.dropped and torch.equal(same.head.projection.bias, tiny_state["head.projection.bias"])

    features = hiera_model("hiera_tiny_224", num_classes=0)
    report = load_checkpoint(features, tiny_state, strict=True)
    [(reason, keys)] = report.dropped.items()
    assert "num_classes=0" in reason and keys == ["head.projection.weight", "head.projection.bias"]
    assert "num_classes=0" in str(report)

    finetune = hiera_model("hiera_tiny_224", num_classes=10)
    init = finetune.head.projection.weight.detach().clone()
    report = load_checkpoint(finetune, tiny_state, strict=True)
    [(reason, keys)] = report.dropped.items()
    assert "1000 classes" in reason and "10" in reason
    assert torch.equal(finetune.head.projection.weight, init)  # left for fine-tuning


def test_strict_and_missing_keys(tiny_state, hiera_model):
    partial = {k: v for k, v in tiny_state.items() if not k.startswith("blocks.3.mlp.")}
    with pytest.raises(CheckpointError, match="strict load failed(.|\n)*blocks.3.mlp.fc1.weight"):
        load_checkpoint(hiera_model("hiera_tiny_224"), partial, strict=True)
    report = load_checkpoint(hiera_model("hiera_tiny_224"), partial)
    assert sorted(report.missing_keys) == sorted(k for k in tiny_state if k.startswith("blocks.3.mlp."))
    assert "missing, left at initialization" in str(report)

    extra = dict(tiny_state, **{"blocks.3.attn.rel_pos": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(hiera_model("hiera_tiny_224"), extra, strict=True)
    assert load_checkpoint(hiera_model("hiera_tiny_224"), extra).unexpected_keys == ["blocks.3.attn.rel_pos"]


# --------------------------------------------------------------------------------- position embeddings


def test_checkpoint_at_another_size_is_resampled(tiny_state, hiera_model):
    model = hiera_model("hiera_tiny_224", input_size=(256, 256))
    report = load_checkpoint(model, tiny_state, strict=True)
    assert "[1, 3136, 96] -> [1, 4096, 96]" in report.resized["pos_embed"]
    # going back to 224 from 256 is not the identity, but a same-size load must be exact
    back = hiera_model("hiera_tiny_224")
    load_checkpoint(back, tiny_state, strict=True)
    assert torch.equal(back.pos_embed, tiny_state["pos_embed"])


def test_window_layout_keeps_the_parameter_object(tiny_state, hiera_model):
    model = hiera_model("hiera_tiny_224", attention="window", num_classes=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    load_checkpoint(model, tiny_state, strict=True)
    assert any(p is model.pos_embed for group in optimizer.param_groups for p in group["params"])
    model(torch.randn(1, 3, 64, 64))["stage4"].sum().backward()
    optimizer.step()  # the reshaped parameter trains
    assert model.pos_embed.grad.shape == (1, 96, 56, 56)


def test_sam2_checkpoint_needs_window_attention(tiny_state, hiera_model):
    window = hiera_model("hiera_tiny_224", attention="window", num_classes=0)
    sam2_trunk = {
        k.replace(".mlp.fc1.", ".mlp.layers.0.").replace(".mlp.fc2.", ".mlp.layers.1."): v
        for k, v in window.state_dict().items()
        if not k.startswith("norm.")
    }
    model = hiera_model("hiera_tiny_224", attention="window", num_classes=0)
    report = load_checkpoint(model, sam2_trunk, strict=True)
    assert report.format == FORMATS["sam2"] and not report.resized
    with pytest.raises(CheckpointError, match="attention='window'"):
        load_checkpoint(hiera_model("hiera_tiny_224"), sam2_trunk)
    wrong_window = hiera_model("hiera_tiny_224", attention="window", window_spec=(4, 4, 14, 7), num_classes=0)
    with pytest.raises(CheckpointError, match="window_spec starting at 8"):
        load_checkpoint(wrong_window, sam2_trunk)


# ------------------------------------------------------------------------------------------------ errors


def test_other_architecture_names_both(tiny_state, small_state, hiera_model):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(hiera_model("hiera_tiny_224"), small_state)
    message = str(err.value)
    assert "hiera_small_224" in message and "hiera_tiny_224" in message and "(1, 2, 11, 2)" in message
    assert "build_hiera('hiera_small_224'" in message


def test_video_and_image_weights_are_not_interchangeable(tiny_state, hiera_model):
    video = hiera_model("hiera_base_16x224", input_size=(4, 64, 64))
    image = hiera_model("hiera_tiny_224")
    with pytest.raises(CheckpointError, match="holds video weights.*hiera_base_16x224.*an image model"):
        load_checkpoint(image, video.state_dict())
    with pytest.raises(CheckpointError, match="holds image weights.*hiera_tiny_224.*a video model"):
        load_checkpoint(video, tiny_state)


def test_shape_mismatch_names_the_tensors(tiny_state, hiera_model):
    model = hiera_model("hiera_tiny_224", mlp_ratio=2.0)
    expected = r"blocks\.0\.mlp\.fc1\.weight: checkpoint \[384, 96\] vs model \[192, 96\]"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(model, tiny_state)


def test_unknown_format_lists_the_known_ones(hiera_model):
    expected = "not a Hiera checkpoint in a known format(.|\n)*timm(.|\n)*SAM2"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(hiera_model("hiera_tiny_224"), {"conv1.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_checkpoint(hiera_model("hiera_tiny_224"), {"epoch": 3})


def test_missing_path_and_empty_directory(tmp_path, hiera_model):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(hiera_model("hiera_tiny_224"), tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="holds no checkpoint.*model.safetensors"):
        load_checkpoint(hiera_model("hiera_tiny_224"), tmp_path)


def test_truncated_and_corrupt_files(tiny_state, tmp_path, hiera_model):
    path = tmp_path / "hiera_tiny_224.pth"
    torch.save({"model_state": tiny_state}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{path}.*truncated or corrupt.*again"):
        load_checkpoint(hiera_model("hiera_tiny_224"), path)

    st = tmp_path / "hf" / "model.safetensors"
    st.parent.mkdir()
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        load_checkpoint(hiera_model("hiera_tiny_224"), st.parent)


class _Opaque:
    pass


def test_pickled_objects_are_refused_with_a_way_out(tiny_state, tmp_path, hiera_model):
    path = tmp_path / "with_objects.pth"
    torch.save({"model_state": tiny_state, "args": _Opaque()}, path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        load_checkpoint(hiera_model("hiera_tiny_224"), path)


# ---------------------------------------------------------------------------------- files and directories


def test_huggingface_sharded_directory_and_config_check(tiny_state, tmp_path, hiera_model):
    from safetensors.torch import save_file

    hf = {
        "hiera.embeddings.position_embeddings": tiny_state["pos_embed"],
        "hiera.embeddings.patch_embeddings.projection.weight": tiny_state["patch_embed.proj.weight"],
        "hiera.embeddings.patch_embeddings.projection.bias": tiny_state["patch_embed.proj.bias"],
        "hiera.pooler.layernorm.weight": tiny_state["norm.weight"],
        "hiera.pooler.layernorm.bias": tiny_state["norm.bias"],
        "classifier.weight": tiny_state["head.projection.weight"],
        "classifier.bias": tiny_state["head.projection.bias"],
    }
    starts = [0, 1, 3, 10, 12]
    names = {"norm1.": "layernorm_before.", "norm2.": "layernorm_after."}
    for k, v in tiny_state.items():
        if k.startswith("blocks."):
            i, rest = int(k.split(".")[1]), k.split(".", 2)[2]
            stage = max(s for s in range(4) if starts[s] <= i)
            for ours, theirs in names.items():
                rest = rest.replace(ours, theirs)
            hf[f"hiera.encoder.stages.{stage}.layers.{i - starts[stage]}.{rest}"] = v
    keys = sorted(hf)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, part in shards.items():
        save_file({k: hf[k].contiguous() for k in part}, str(tmp_path / name))
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "model_type": "hiera",
        "embed_dim": 96,
        "depths": [1, 2, 7, 2],
        "num_heads": [1, 2, 4, 8],
        "image_size": [224, 224],
        "patch_stride": [4, 4],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))

    model = hiera_model("hiera_tiny_224")
    report = load_checkpoint(model, tmp_path, strict=True)
    assert report.format == FORMATS["huggingface"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny_state[k]), k

    (tmp_path / "config.json").write_text(json.dumps(dict(config, model_type="sam2_hiera_det_model")))
    with pytest.raises(CheckpointError, match="model_type='sam2_hiera_det_model'"):
        load_checkpoint(hiera_model("hiera_tiny_224"), tmp_path)


def test_detectron2_output_directory(tiny_state, tmp_path, hiera_model):
    torch.save(
        {"model": {"backbone.bottom_up.trunk." + k: v for k, v in tiny_state.items()}, "iteration": 9},
        tmp_path / "model_0000009.pth",
    )
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    report = load_checkpoint(hiera_model("hiera_tiny_224"), tmp_path, strict=True)
    assert report.source.endswith("model_0000009.pth") and report.format == FORMATS["hiera_det"]


def test_report_is_readable(tiny_state, hiera_model):
    report = load_checkpoint(hiera_model("hiera_tiny_224", num_classes=0, input_size=(256, 256)), tiny_state)
    assert isinstance(report, LoadReport)
    text = str(report)
    assert text.startswith("official Hiera (hiera-transformer) checkpoint <in-memory state dict>")
    assert "resized pos_embed" in text and "dropped 2" in text
    assert report.resized_keys == ["pos_embed"] and report.dropped_keys == [
        "head.projection.weight",
        "head.projection.bias",
    ]


# -------------------------------------------------------------------------------------------- converter


def test_converter_output_loads_in_detectron2_and_back(tiny_state, tmp_path, hiera_model):
    pytest.importorskip("detectron2")
    from detectron2.checkpoint import DetectionCheckpointer

    from hiera_det.engine.checkpointer import convert_for_detectron2

    src, out = tmp_path / "official.pth", tmp_path / "d2" / "hiera_tiny_d2.pth"
    torch.save({"model_state": tiny_state}, src)
    text = convert_for_detectron2(str(src), str(out), "hiera_tiny_224")
    assert "official Hiera (hiera-transformer) checkpoint" in text and "num_classes=0" in text
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # written in place, no temporary left

    saved = torch.load(out, weights_only=True)
    assert saved["__author__"] == "hiera_det" and saved["matching_heuristics"] is False
    assert all(k.startswith("backbone.bottom_up.trunk.") for k in saved["model"])

    detector = nn.Module()
    detector.backbone = nn.Module()
    detector.backbone.bottom_up = nn.Module()
    detector.backbone.bottom_up.trunk = hiera_model("hiera_tiny_224", num_classes=0)
    DetectionCheckpointer(detector).load(str(out))
    loaded = detector.state_dict()
    assert set(loaded) == set(saved["model"])  # nothing missing, nothing unexpected
    for k, v in saved["model"].items():
        assert torch.equal(loaded[k], v), k
    qkv = loaded["backbone.bottom_up.trunk.blocks.4.attn.qkv.weight"]
    assert torch.equal(qkv, tiny_state["blocks.4.attn.qkv.weight"])

    # and hiera_det reads the converted file back into an equal model
    again = hiera_model("hiera_tiny_224", num_classes=0)
    report = load_checkpoint(again, out, strict=True)
    assert report.format == FORMATS["hiera_det"]
    x = torch.randn(1, 3, 224, 224)
    a, b = _features(again, x), _features(detector.backbone.bottom_up.trunk, x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_converter_window_layout_prefix_and_errors(tiny_state, tmp_path):
    pytest.importorskip("detectron2")
    from hiera_det.engine.checkpointer import convert_for_detectron2

    src, out = tmp_path / "official.pth", tmp_path / "win.pth"
    torch.save({"model_state": tiny_state}, src)
    text = convert_for_detectron2(str(src), str(out), "hiera_tiny_224", attention="window", prefix="trunk.")
    assert "background position embedding is 56x56, not the preset 7x7; MODEL.WEIGHTS" in text
    saved = torch.load(out, weights_only=True)["model"]
    assert saved["trunk.pos_embed"].shape == (1, 96, 56, 56)
    assert torch.count_nonzero(saved["trunk.pos_embed_window"]) == 0

    # as MODEL.WEIGHTS: the preset 7x7 background takes the file's 56x56 grid rather than being skipped
    from hiera_det.engine.checkpointer import AtomicDetectionCheckpointer
    from hiera_det.modeling import build_hiera

    holder = torch.nn.Module()
    holder.trunk = build_hiera("hiera_tiny_224", num_classes=0, attention="window")
    assert holder.trunk.pos_embed.shape == (1, 96, 7, 7)
    incompatible = AtomicDetectionCheckpointer(holder)._load_model({"model": dict(saved)})
    assert not incompatible.incorrect_shapes and not incompatible.missing_keys
    assert torch.equal(holder.trunk.pos_embed, saved["trunk.pos_embed"])

    # wrong architecture: an error naming both, and no output file
    bad = tmp_path / "bad.pth"
    with pytest.raises(CheckpointError, match="hiera_tiny_224"):
        convert_for_detectron2(str(src), str(bad), "hiera_small_224")
    assert not bad.exists()


def _convert_checkpoint(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    command = [sys.executable, "-W", "ignore", str(ROOT / "tools" / "convert_checkpoint.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_convert_checkpoint_command_line(tiny_state, tmp_path, hiera_model):
    pytest.importorskip("detectron2")
    src, out = tmp_path / "official.pth", tmp_path / "hiera_tiny_d2.pth"
    torch.save({"model_state": tiny_state}, src)
    done = _convert_checkpoint("--input", src, "--output", out, "--model", "hiera_tiny_224")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "official Hiera (hiera-transformer) checkpoint" in done.stdout
    prefix = "backbone.bottom_up.trunk."
    assert f"wrote {out} (hiera_tiny_224, attention=mask_unit, keys prefixed {prefix!r})" in done.stdout
    trunk = hiera_model("hiera_tiny_224", num_classes=0).state_dict()
    assert set(torch.load(out, weights_only=True)["model"]) == {prefix + k for k in trunk}

    shown = _convert_checkpoint("--help")
    assert shown.returncode == 0
    assert "absolute-win" in shown.stdout and "zero window embedding" in shown.stdout
    assert "backbone.bottom_up.trunk." in shown.stdout


def test_an_unreadable_checkpoint_error_never_advises_weights_only_false(tmp_path):
    import pickle

    from hiera_det.checkpoint.reading import _corrupt
    from hiera_det.modeling import build_hiera

    advice = pickle.UnpicklingError(
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely "
        "succeed, but it can result in arbitrary code execution.\nPlease file an issue.\n\n"
        "WeightsUnpickler error: Unsupported operand 97"
    )
    message = str(_corrupt(tmp_path / "x.pth", advice))
    assert "weights_only" not in message and "WeightsUnpickler error: Unsupported operand 97" in message
    text = tmp_path / "notes.pth"
    text.write_text("just text")
    with pytest.raises(CheckpointError, match="truncated or corrupt, or not a checkpoint at all") as info:
        load_checkpoint(build_hiera("hiera_tiny_224", num_classes=0), str(text))
    assert "weights_only" not in str(info.value)
